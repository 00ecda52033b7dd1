#!/usr/bin/env bash
# Builds the Debian package target/debian/virt-persona_<version>-1_<arch>.deb
# with cargo-deb (installed here if missing): both binaries, the systemd unit,
# /etc/virt-persona/virt-personad.toml as a conffile (observe mode: dry_run = true),
# example personas, the persona guide, man pages and bash/zsh/fish completions.
#
#   scripts/package.sh              the `deb` profile: LTO, one codegen unit
#   PROFILE=dev NO_BUILD=1 scripts/package.sh
#                                   package the debug binaries already built (faster compression)
#                                   (tests/package.rs: checks the packaging, not the optimiser)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-deb}
if ! command -v cargo-deb >/dev/null 2>&1; then
  cargo install cargo-deb --locked --quiet
fi
if [ "${NO_BUILD:-}" != 1 ]; then
  cargo build --profile "$profile" --bins
fi
# one packaging at a time: tests/package.rs and tests/host_vm.rs run side by
# side in scripts/test.sh, and both write target/assets
mkdir -p target
exec 9>target/.package.lock
flock 9
case "$profile" in
  dev) out=target/debug ;;
  *) out=target/$profile ;;
esac
mkdir -p target/assets/completions
"$out/virt-persona" man > target/assets/virt-persona.1
"$out/virt-personad" --man > target/assets/virt-personad.8
"$out/virt-persona" completions bash > target/assets/completions/virt-persona
"$out/virt-persona" completions zsh > target/assets/completions/_virt-persona
"$out/virt-persona" completions fish > target/assets/completions/virt-persona.fish
# the tests' packages of the debug binaries: faster compression (5 s, not 19)
fast=()
[ "$profile" = dev ] && fast=(--fast)
cargo deb --no-build --profile "$profile" "${fast[@]}" "$@" 2>&1 | tail -1
