#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: sets up a real libvirt host
# (packages, users, virtlogd, libvirtd, test bridge) idempotently, then runs
# formatting and lint checks, every test (unit, test driver, real guests) and builds
# the fuzz target. Benchmarks are built (and criterion's run once) by
# cargo test --all-targets. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-host.sh
# cargo-deb for tests/package.rs (builds, installs and purges the .deb)
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "== installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --all-targets --features failpoints --quiet -- -D warnings
echo "== cargo test"
# real-host test binaries boot guests; they cap themselves at two at a time.
# failpoints: fail points compiled in (no-ops unless FAILPOINTS names them), so a
# test can kill -9 the daemon between two knob changes
cargo test --all-targets --features failpoints --no-fail-fast 2>&1 | tee /tmp/virt-persona-test.log
if [ -d fuzz ]; then
  echo "== fuzz targets build"
  bash scripts/fuzz-build.sh
fi
echo "== all checks passed"
