#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: sets up a real libvirt host
# (packages, users, virtlogd, libvirtd, test bridge) idempotently, then runs
# formatting and lint checks, every test (unit, test driver, real guests) and builds
# the fuzz target. Benchmarks are built (and criterion's run once) by
# cargo test --all-targets. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# each step says when it began, so the suite's time can be read per step
step() { echo "== $* (at $(( $(date +%s) - start )) s)"; }

bash scripts/setup-host.sh
# cargo-deb for tests/package.rs (builds, installs and purges the .deb)
if ! command -v cargo-deb >/dev/null 2>&1; then
  step "installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

export CARGO_TERM_COLOR=never
# the previous release, for tests/upgrade.rs: built once per machine (cached
# under /var/tmp/virt-persona-releases; about 4 minutes the first time)
step "the previous release (tests/upgrade/previous)"
bash scripts/previous-release.sh
# the Debian 12 host (systemd, cgroup v2) that tests/host_vm.rs boots: built
# once per machine and recipe (mmdebstrap, about 3 minutes), cached under
# /var/cache/virt-persona/host-vm
step "the Debian 12 host image (scripts/host-vm.sh build)"
vm_start=$(date +%s)
bash scripts/host-vm.sh build >/dev/null
echo "   ready in $(( $(date +%s) - vm_start )) s"
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --all-targets --features failpoints --quiet -- -D warnings
step "cargo doc (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --quiet
step "cargo test"
# real-host test binaries boot guests; they cap themselves at two at a time.
# failpoints: fail points compiled in (no-ops unless FAILPOINTS names them), so a
# test can kill -9 the daemon between two knob changes
# the tests whose outcome could depend on the date, the hour or the zone set
# the daemon's clock (VP_TEST_CLOCK, tests/common): all of them at a weekday
# 10:00 in Berlin (office hours for the shipped schedules), and some again at
# a second clock (below)
export VP_TEST_CLOCK='2026-12-01T10:00:00[Europe/Berlin]'
cargo test --all-targets --features failpoints --no-run --quiet
# Beside the other tests, which hold on a busy machine: tests/host_vm.rs (the
# Debian 12 VM under TCG, five minutes, most of it the VM's own CPU), then the
# time-dependent tests again at a second clock: a Sunday 03:00 in Berlin, the
# night the clocks go forward (the forecast's two weeks of history run across
# the change), with the machine in another zone — the README walk-through,
# the forecast and schedule tests and the unit tests must hold at both. Their
# output follows the others'.
vm_log=/tmp/virt-persona-host-vm.log
clock_log=/tmp/virt-persona-second-clock.log
(
  rc=0
  cargo test --features failpoints --no-fail-fast --test host_vm >"$vm_log" 2>&1 || rc=1
  VP_TEST_CLOCK='2027-03-28T03:00:00[Europe/Berlin]' TZ=America/New_York \
    cargo test --features failpoints --no-fail-fast --lib --test walkthrough --test forecast --test personas \
    >"$clock_log" 2>&1 || rc=$((rc + 2))
  exit "$rc"
) &
beside=$!
# every other target by name, so a new test file is never left out
targets=(--lib --bins --benches)
for f in tests/*.rs; do
  t=$(basename "$f" .rs)
  [ "$t" = host_vm ] || targets+=(--test "$t")
done
failed=()
cargo test "${targets[@]}" --features failpoints --no-fail-fast 2>&1 | tee /tmp/virt-persona-test.log \
  || failed+=("cargo test")
if [ -d fuzz ]; then
  step "fuzz targets build"
  bash scripts/fuzz-build.sh || failed+=("the fuzz build")
fi
step "tests/host_vm.rs and the second clock (ran beside the others; their output)"
rc=0
wait "$beside" || rc=$?
(( rc & 1 )) && failed+=("tests/host_vm.rs")
(( rc & 2 )) && failed+=("the second clock")
echo "== tests/host_vm.rs"
tee -a /tmp/virt-persona-test.log <"$vm_log"
echo "== time-dependent tests at a second clock: Sunday 03:00 Berlin across the DST change, host zone America/New_York"
tee -a /tmp/virt-persona-test.log <"$clock_log"
if [ ${#failed[@]} -gt 0 ]; then
  echo "== FAILED: ${failed[*]} (after $(( $(date +%s) - start )) s)"
  exit 1
fi
echo "== all checks passed in $(( $(date +%s) - start )) s"
