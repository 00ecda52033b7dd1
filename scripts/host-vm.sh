#!/usr/bin/env bash
# A Debian 12 KVM host in a VM: systemd as PID 1, cgroup v2 unified, libvirtd
# and QEMU from Debian's packages, booted with its own kernel. The suite's
# tests/host_vm.rs installs the package on it and drives it (tests/README:
# "the hosts admins run"). Run as root.
#
#   scripts/host-vm.sh build     build the image once (cached under
#                                $VP_HOST_VM_CACHE, default /var/cache/virt-persona/host-vm,
#                                keyed by the recipe below); prints its directory
#   scripts/host-vm.sh path      the directory the current recipe's image lives in
#   scripts/host-vm.sh run [DIR] boot it on this terminal (a scratch overlay, the
#                                serial console; Ctrl-a x quits), DIR shared at /share
#
# The image holds vmlinuz, initrd.img and base.img (raw ext4, root file system
# built with mmdebstrap and mkfs.ext4 -d: no loop mount). Boots use a qcow2
# overlay, so base.img is never written. The guest has no network: the host
# talks to it through a 9p share (/share), where vp-agent runs each
# /share/cmd/ID.sh in turn and leaves /share/out/ID.out and ID.rc.
#
# KVM did not boot a Linux kernel on the development machine (only real-mode
# guests run under it), so the VM runs under TCG unless VP_HOST_VM_ACCEL=kvm.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'host-vm: %s\n' "$*" >&2; }

cache=${VP_HOST_VM_CACHE:-/var/cache/virt-persona/host-vm}
suite=bookworm
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security

# Everything that decides what the image holds. Its text (declare -f) is the
# cache key: change a package or a file here and the next build makes a new image.
packages() {
  echo systemd-sysv,linux-image-amd64,libvirt-daemon-system,libvirt-clients,qemu-system-x86,udev,kmod,iproute2,dbus,procps,less
}
customize() {
  local root=$1
  echo vphost > "$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 vphost\n' > "$root/etc/hosts"
  cat > "$root/etc/fstab" <<'EOF'
/dev/vda / ext4 rw,errors=remount-ro 0 1
share /share 9p trans=virtio,version=9p2000.L,msize=524288,nofail,x-systemd.device-timeout=20s 0 0
EOF
  mkdir -p "$root/share"
  printf '9p\n9pnet_virtio\n' > "$root/etc/modules-load.d/vp-share.conf"
  # root logs in on the serial console without a password (a throwaway VM)
  chroot "$root" passwd -d root >/dev/null
  # nothing periodic that could run in the middle of a test
  for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
           man-db.timer dpkg-db-backup.timer systemd-tmpfiles-clean.timer logrotate.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$t"
  done
  # the agent: runs what the host puts in /share/cmd, one at a time, in order
  cat > "$root/usr/local/sbin/vp-agent" <<'EOF'
#!/bin/bash
# Runs each /share/cmd/ID.sh (IDs sort in the order they were written) with
# bash, output in /share/out/ID.out, exit status in /share/out/ID.rc (renamed
# into place last, so a host that sees ID.rc sees the whole output).
mkdir -p /share/cmd /share/out
echo "$(date +%s.%N) $(systemctl is-system-running 2>&1)" > /share/out/agent-started
while :; do
  for f in /share/cmd/*.sh; do
    [ -e "$f" ] || continue
    id=$(basename "$f" .sh)
    mv "$f" "/run/vp-agent-$id.sh" 2>/dev/null || continue
    bash "/run/vp-agent-$id.sh" > "/share/out/$id.out" 2>&1 < /dev/null
    echo $? > "/share/out/$id.rc.tmp"
    mv "/share/out/$id.rc.tmp" "/share/out/$id.rc"
  done
  sleep 0.1
done
EOF
  chmod 755 "$root/usr/local/sbin/vp-agent"
  cat > "$root/etc/systemd/system/vp-agent.service" <<'EOF'
[Unit]
Description=virt-persona test agent (commands from the host over /share)
After=share.mount
Requires=share.mount

[Service]
ExecStart=/usr/local/sbin/vp-agent
Restart=always

[Install]
WantedBy=multi-user.target
EOF
  # a bridge without uplink for the test guests' NICs (as scripts/setup-host.sh makes on this machine)
  mkdir -p "$root/etc/systemd/network"
  printf '[NetDev]\nName=vpbr0\nKind=bridge\n' > "$root/etc/systemd/network/vpbr0.netdev"
  printf '[Match]\nName=vpbr0\n[Network]\nLinkLocalAddressing=no\nConfigureWithoutCarrier=yes\n' \
    > "$root/etc/systemd/network/vpbr0.network"
  chroot "$root" systemctl enable --quiet vp-agent.service systemd-networkd.service
  # libvirt's default NAT network needs dnsmasq and is not used
  rm -f "$root/etc/libvirt/qemu/networks/autostart/default.xml"
}

key() {
  { declare -f packages customize; echo "$suite $mirror $security"; } | sha256sum | cut -c1-16
}

image_dir() { echo "$cache/$suite-$(key)"; }

build() {
  local dir
  dir=$(image_dir)
  if [ -e "$dir/ready" ]; then
    log "cached: $dir"
    echo "$dir"
    return
  fi
  mkdir -p "$cache"
  exec 9>"$cache/.lock"
  flock 9
  if [ -e "$dir/ready" ]; then echo "$dir"; return; fi
  local start; start=$(date +%s)
  for tool in mmdebstrap qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils mkfs.ext4:e2fsprogs; do
    local cmd=${tool%%:*} pkg=${tool#*:}
    if ! command -v "$cmd" >/dev/null 2>&1; then
      log "installing $pkg"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; }
    fi
  done
  local tmp="$dir.tmp.$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  log "building the Debian 12 root file system (mmdebstrap, about a minute)"
  { declare -f customize; echo 'customize "$1"'; } > "$tmp/customize.sh"
  mmdebstrap --quiet --variant=apt --include="$(packages)" \
    --customize-hook="bash $tmp/customize.sh \"\$1\"" \
    "$suite" "$tmp/root" \
    "deb $mirror $suite main" "deb $mirror $suite-updates main" "deb $security $suite-security main" \
    2>&1 | grep -v '^I: ' >&2 || true
  [ -e "$tmp/root/usr/sbin/libvirtd" ] || { log "mmdebstrap did not produce a root file system"; exit 1; }
  cp "$(readlink -f "$tmp"/root/vmlinuz)" "$tmp/vmlinuz"
  cp "$(readlink -f "$tmp"/root/initrd.img)" "$tmp/initrd.img"
  log "making base.img (ext4, 6 GiB sparse)"
  mkfs.ext4 -q -F -L vproot -d "$tmp/root" "$tmp/base.img" 6G
  rm -rf "$tmp/root"
  date -u +%FT%TZ > "$tmp/ready"
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
  log "built $dir in $(( $(date +%s) - start )) s"
  echo "$dir"
}

case "${1:-}" in
  build) build ;;
  path) image_dir ;;
  run)
    dir=$(build)
    share=${2:-$(mktemp -d)}
    overlay=$(mktemp --suffix=.qcow2)
    qemu-img create -q -f qcow2 -b "$dir/base.img" -F raw "$overlay"
    accel=${VP_HOST_VM_ACCEL:-tcg,thread=multi}
    exec qemu-system-x86_64 -machine pc -accel "$accel" -cpu max -smp 2 -m 3072 -nographic \
      -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" \
      -append "root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1" \
      -drive "file=$overlay,format=qcow2,if=virtio" \
      -virtfs "local,path=$share,mount_tag=share,security_model=none,id=share" \
      -nic none
    ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
