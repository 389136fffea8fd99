#!/usr/bin/env bash
# Proves that the guest kernel boots under QEMU microvm (TCG) to a userspace init, with a
# virtio-blk root disk, and with a virtio-net device configured by the kernel's `ip=`.
#
#   images/kernel/boot-test.sh [--runs N] [VMLINUX]
#
# VMLINUX defaults to the one build.sh builds (or finds in its cache). Each boot uses a tiny
# busybox-static root on an ext4 image made by `mke2fs -d` (no mount, no root needed); its
# /sbin/init prints `IGNITE-BOOT-OK uptime=...` and resets the machine (`reboot -f` with
# `reboot=k`: the keyboard-controller reset makes `qemu -no-reboot` exit; `poweroff -f`
# would only halt, since without ACPI the guest has no way to power off).
#
# Boots: 1. disk only (N times, default 1; the median wall time is reported),
#        2. disk + virtio-net (`-netdev user`), passing only if the guest shows
#           10.0.2.15/24 on eth0.
# Each boot has a 60 s limit (BOOT_TIMEOUT). Passes only if every boot printed the marker.
#
# QEMU runs as crates/runtime's QEMU backend runs it: `-M microvm,...,acpi=off` (QEMU then
# appends virtio_mmio.device= to the command line) plus `-device i8042`. microvm has no
# keyboard controller of its own; without one `reboot=k` finds nothing at port 0x64 and the
# kernel spends ~1.6 s in keyboard-controller retries before it resets the CPU another way.
#
# TSC: under TCG the guest's TSC runs at the host's TSC rate, and a guest that calibrates it
# against the emulated PIT sometimes hangs (FACTS.md), so `tsc_early_khz=` is passed. Its value
# (override: TSC_KHZ) is taken from the host kernel's own measurement when the kernel log still
# has it ("tsc: Refined TSC clocksource calibration: X MHz", else "tsc: Detected X MHz"), else
# from /proc/cpuinfo "cpu MHz" (the TSC rate on virtual machines and on hosts without cpufreq;
# on hosts with frequency scaling it may be off, which only skews guest timing).
set -euo pipefail

die() { echo "kernel/boot-test.sh: $*" >&2; exit 1; }
log() { echo "kernel/boot-test.sh: $*" >&2; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
runs=1
vmlinux=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) [ $# -ge 2 ] || die "--runs needs a number"; runs=$2; shift ;;
    -h|--help) sed -n '2,/^set -e/{/^#/p}' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
    -*) die "unknown option $1" ;;
    *) vmlinux=$1 ;;
  esac
  shift
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive number"
timeout_s=${BOOT_TIMEOUT:-60}

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install it with 'apt-get install $2'"; }
need qemu-system-x86_64 qemu-system-x86
need timeout coreutils
PATH="$PATH:/usr/sbin:/sbin"
need mke2fs e2fsprogs
busybox=""
for b in /bin/busybox /usr/bin/busybox; do [ -x "$b" ] && busybox=$b && break; done
[ -n "$busybox" ] || die "busybox not found: install it with 'apt-get install busybox-static'"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked: install the static one with 'apt-get install busybox-static'"
fi

if [ -z "$vmlinux" ]; then
  vmlinux=$("$here/build.sh" | tail -n1)
fi
[ -f "$vmlinux" ] || die "$vmlinux: no such file"

host_tsc_khz() {
  local klog mhz
  klog=$( { dmesg 2>/dev/null || journalctl -k -b --no-pager 2>/dev/null || true; } | grep -E 'tsc: (Refined TSC clocksource calibration|Detected) [0-9.]+ MHz' || true)
  mhz=$(grep -m1 -oE 'Refined TSC clocksource calibration: [0-9.]+' <<<"$klog" | grep -oE '[0-9.]+$' || true)
  [ -n "$mhz" ] || mhz=$(grep -m1 -oE 'Detected [0-9.]+ MHz' <<<"$klog" | grep -oE '[0-9.]+' || true)
  [ -n "$mhz" ] || mhz=$(awk -F: '/^cpu MHz/ { gsub(/ /, "", $2); print $2; exit }' /proc/cpuinfo)
  [ -n "$mhz" ] || return 1
  awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 }'
}
tsc_khz=${TSC_KHZ:-$(host_tsc_khz || true)}
[ -n "$tsc_khz" ] || die "cannot tell the host TSC frequency: set TSC_KHZ"

work=$(mktemp -d "${TMPDIR:-/tmp}/ignite-boot-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Root filesystem: busybox + applet links + init ----------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,root}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || [ "$applet" = init ] || ln -s busybox "$root/bin/$applet"
done
cat > "$root/sbin/init" <<'EOF'
#!/bin/busybox sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "IGNITE-BOOT-OK uptime=$(cat /proc/uptime)"
echo "IGNITE-INFO kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) root=$(grep ' / ' /proc/mounts | cut -d' ' -f1-3)"
mount -t cgroup2 cgroup2 /sys/fs/cgroup && echo "IGNITE-INFO cgroup2 controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
if [ -e /sys/class/net/eth0 ]; then
  ip addr show
  echo "IGNITE-NET $(ip -4 -o addr show dev eth0 | awk '{ print $2, $4 }')"
  if ping -c1 -W2 10.0.2.2 >/dev/null 2>&1; then echo "IGNITE-NET ping 10.0.2.2 ok"; else echo "IGNITE-NET ping 10.0.2.2 failed"; fi
fi
reboot -f
EOF
chmod 0755 "$root/sbin/init"
img="$work/root.ext4"
mke2fs -q -t ext4 -d "$root" -F "$img" 64M > /dev/null || die "mke2fs -d failed"

# --- Boots ----------------------------------------------------------------------------------------
# boot NAME EXTRA_APPEND [EXTRA_QEMU_ARGS...]: serial output to $work/NAME.log, wall time from
# QEMU start to the marker (ms) to $work/NAME.ms; fails unless the marker appeared.
boot() {
  local name=$1 extra_append=$2
  shift 2
  local logf="$work/$name.log" start rc
  : > "$logf"
  rm -f "$work/$name.ms"
  start=$EPOCHREALTIME
  set +e
  timeout "$timeout_s" qemu-system-x86_64 \
    -M microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off \
    -accel tcg -cpu max -m 256 -smp 1 \
    -nodefaults -no-user-config -nographic -serial stdio -device i8042 \
    -kernel "$vmlinux" \
    -append "console=ttyS0 reboot=k panic=1 root=/dev/vda rw tsc_early_khz=$tsc_khz$extra_append" \
    -drive "id=root,file=$img,format=raw,if=none" -device virtio-blk-device,drive=root \
    -no-reboot "$@" < /dev/null 2>&1 |
    while IFS= read -r line; do
      line=${line%$'\r'}
      printf '%s\n' "$line" >> "$logf"
      case "$line" in
        IGNITE-BOOT-OK*)
          awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%d\n", (b - a) * 1000 }' > "$work/$name.ms" ;;
      esac
    done
  rc=${PIPESTATUS[0]}
  set -e
  local end=$EPOCHREALTIME
  if [ ! -f "$work/$name.ms" ]; then
    echo "---- serial console of boot '$name' (last 40 lines) ----" >&2
    tail -n 40 "$logf" >&2
    [ "$rc" = 124 ] && die "boot '$name': no IGNITE-BOOT-OK within ${timeout_s}s"
    die "boot '$name': QEMU exited ($rc) without IGNITE-BOOT-OK"
  fi
  [ "$rc" = 0 ] || log "boot '$name': warning: QEMU exit status $rc after the marker"
  log "boot '$name': $(grep -m1 IGNITE-BOOT-OK "$logf"); wall to marker $(cat "$work/$name.ms") ms, to QEMU exit $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%d", (b - a) * 1000 }') ms"
}

log "kernel $vmlinux ($(du -h --apparent-size "$vmlinux" | cut -f1)), tsc_early_khz=$tsc_khz, TCG"
times=()
for i in $(seq 1 "$runs"); do
  boot "disk$i" ""
  times+=("$(cat "$work/disk$i.ms")")
done
if [ "$runs" -gt 1 ]; then
  sorted=$(printf '%s\n' "${times[@]}" | sort -n | tr '\n' ' ')
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2) }')
  log "disk boots: wall to init marker, ms: $sorted(median $median)"
fi
grep IGNITE-INFO "$work/disk1.log" >&2 || true

boot net " ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off" \
  -netdev user,id=n0 -device virtio-net-device,netdev=n0
grep '^IGNITE-NET' "$work/net.log" >&2 || true
if ! grep -q '^IGNITE-NET eth0 10\.0\.2\.15/24$' "$work/net.log"; then
  echo "---- serial console of boot 'net' ----" >&2
  cat "$work/net.log" >&2
  die "boot 'net': the guest does not show 10.0.2.15/24 on eth0"
fi
log "PASS: boots to init from virtio-blk; eth0 configured by ip= over virtio-net"
