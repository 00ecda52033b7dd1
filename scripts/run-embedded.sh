#!/usr/bin/env bash
# Runs the daemon on the embedded default: libvirt's built-in test driver, no
# libvirtd and no KVM. Installs the build dependencies first if they are missing,
# builds both binaries, starts virt-personad and, once it answers, prints the
# commands to talk to it. Ctrl-C stops it.
#   scripts/run-embedded.sh                                   five test domains (fixtures/test-host.xml)
#   VP_URI=test:///default scripts/run-embedded.sh            libvirt's one-domain default
#   VP_INTERVAL=5s scripts/run-embedded.sh --verify-interval 10s   control-loop interval (default 1s here); extra arguments go to virt-personad
# The test driver keeps its state per connection, so each run starts from the
# fixture's values with a fresh state directory (VP_STATE to choose one).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! pkg-config --exists libvirt 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then bash scripts/setup-host.sh --build-only; else sudo bash scripts/setup-host.sh --build-only; fi
fi
cargo build --quiet --bins
bin=$PWD/target/debug
uri=${VP_URI:-test://$PWD/fixtures/test-host.xml}
state=${VP_STATE:-$(mktemp -d /tmp/virt-persona-embedded.XXXXXX)}
mkdir -p "$state"
sock=$state/api.sock

"$bin/virt-personad" -c "$uri" --personas personas --state-dir "$state" --socket "$sock" --interval "${VP_INTERVAL:-1s}" "$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' INT TERM EXIT
for _ in $(seq 1 300); do
  [ -S "$sock" ] && VIRT_PERSONA_SOCKET=$sock "$bin/virt-persona" list >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "virt-personad exited; see the messages above" >&2; exit 1; }
  sleep 0.1
done

cat <<EOF

virt-personad is running on $uri (pid $pid; Ctrl-C stops it).
State and socket: $state
Talk to it from another shell:

  export VIRT_PERSONA_SOCKET=$sock PATH=$bin:\$PATH
  virt-persona list
  virt-persona persona-list
  virt-persona signal-set lb.web.rps 1500          # the load balancer says web is busy
  virt-persona persona-status web-1
  virt-persona persona-explain db-1
  virt-persona persona-history web-1

The README's walk-through goes on from there.

EOF
wait "$pid"
