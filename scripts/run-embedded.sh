#!/usr/bin/env bash
# Runs the daemon on the embedded default: libvirt's built-in test driver, no
# libvirtd and no KVM. Installs the build dependencies first if they are missing.
# Extra arguments go to virt-personad (e.g. --interval 1s).
#   scripts/run-embedded.sh                          test:///default (one domain)
#   VP_URI=test://$PWD/fixtures/test-host.xml scripts/run-embedded.sh   five domains
set -euo pipefail
cd "$(dirname "$0")/.."
if ! pkg-config --exists libvirt 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then bash scripts/setup-host.sh --build-only; else sudo bash scripts/setup-host.sh --build-only; fi
fi
state=${VP_STATE:-/tmp/virt-persona-embedded}
mkdir -p "$state"
exec cargo run --quiet --bin virt-personad -- \
  -c "${VP_URI:-test:///default}" --personas personas --state-dir "$state" --socket "$state/api.sock" "$@"
