#!/usr/bin/env bash
# Sets up a real libvirt/QEMU host for development and CI on Debian 12, idempotently.
# No systemd is assumed: virtlogd and libvirtd are started as background processes.
# Safe to run again: installs only what is missing, starts only what is not running.
set -euo pipefail

log() { printf 'setup-host: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root (installs packages and starts libvirtd)"; exit 1
fi

# --build-only: just what building the crate needs (libvirt's headers and
# library, pkg-config); enough for the embedded default on the test driver.
build_only=false
[ "${1:-}" = "--build-only" ] && build_only=true

export DEBIAN_FRONTEND=noninteractive
if $build_only; then
  pkgs=(libvirt-dev libvirt0 pkg-config)
else
  pkgs=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients libvirt-dev
        qemu-system-x86 pkg-config binutils iproute2 procps systemd
        haproxy prometheus prometheus-alertmanager)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get update -qq
  extra=()
  # qemu-system-x86 from Debian 12 requires qemu-utils of the same version; an image may
  # carry a newer backport, which must be downgraded in the same transaction.
  qsys=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  qutils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [ -n "$qutils" ] && [ -n "$qsys" ] && [ "$qutils" != "$qsys" ]; then
    if apt-cache madison qemu-utils | awk '{print $3}' | grep -qx "$qsys"; then
      extra+=("qemu-utils=$qsys")
    fi
  fi
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}" "${extra[@]}" >/dev/null
fi

if $build_only; then
  log "build dependencies ready"
  exit 0
fi

# Users and groups libvirtd expects (the package may not create them in a container).
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt >/dev/null || groupadd --system libvirt
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd --system -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
[ -e /dev/kvm ] && chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || true

# The simplest working setup: QEMU runs as root (no dynamic ownership games in a container).
conf=/etc/libvirt/qemu.conf
if ! grep -qE '^user = "root"' "$conf"; then
  printf '\n# virt-persona test host\nuser = "root"\ngroup = "root"\n' >> "$conf"
fi

mkdir -p /run/libvirt /var/run/libvirt /var/log/libvirt /var/lib/libvirt/images
if ! pgrep -x virtlogd >/dev/null; then
  log "starting virtlogd"
  /usr/sbin/virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
  log "starting libvirtd"
  /usr/sbin/libvirtd -d
fi
for _ in $(seq 1 50); do
  virsh -q -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -q -c qemu:///system version >/dev/null || { log "libvirtd did not come up"; exit 1; }

# A bridge for test guests: no address, no uplink; it only gives guest NICs a vnet device.
if ! ip link show vpbr0 >/dev/null 2>&1; then
  log "creating bridge vpbr0"
  ip link add vpbr0 type bridge
  ip link set vpbr0 up
fi

if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
  log "ready (KVM available)"
else
  log "ready (no usable /dev/kvm: test guests run under TCG)"
fi
