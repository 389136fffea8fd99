#!/usr/bin/env bash
# Builds the busybox test image from Debian's busybox-static, no Docker: a root filesystem
# whose boot prints a known line, packed as an OCI layout (and a `docker save` archive).
#
#   images/busybox/build.sh OUTDIR        -> OUTDIR/oci (tag latest), OUTDIR/busybox.tar
#
# Boot: /sbin/init is busybox init (PID 1); /etc/init.d/rcS mounts the pseudo filesystems,
# counts boots in /var/lib/bootcount (so tests can see the disk survive a restart), and
# prints "IGNITE-BUSYBOX-READY hostname=<h> boot=<n> uptime=<s>". A shell runs on the serial
# console; Ctrl-Alt-Del (ignite stop) and `poweroff` end the VM.
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
bb=/bin/busybox
[ -x "$bb" ] || { echo "build.sh: $bb missing: apt-get install busybox-static" >&2; exit 1; }
file "$bb" 2>/dev/null | grep -q 'static' || ldd "$bb" 2>&1 | grep -q 'not a dynamic' || {
  echo "build.sh: $bb is not static: apt-get install busybox-static" >&2; exit 1; }

mkdir -p "$out"
root=$(mktemp -d "$out/rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc/init.d,proc,sys,dev,tmp,root,var/lib,run,usr/bin,usr/sbin}
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
install -m 0755 "$bb" "$root/bin/busybox"
for app in $("$bb" --list-full); do
  [ "$app" = "bin/busybox" ] && continue
  mkdir -p "$root/$(dirname "$app")"
  rel=$(realpath --relative-to="$root/$(dirname "$app")" "$root/bin/busybox")
  ln -sf "$rel" "$root/$app"
done
cat > "$root/etc/inittab" <<'TAB'
::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/poweroff
::shutdown:/bin/sync
TAB
cat > "$root/etc/init.d/rcS" <<'RCS'
#!/bin/sh
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
n=$(cat /var/lib/bootcount 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > /var/lib/bootcount
sync
[ -f /root/copied.txt ] && echo "IGNITE-COPIED $(cat /root/copied.txt)"
[ -f /mnt/data/marker ] && echo "IGNITE-VOLUME $(cat /mnt/data/marker)"
echo "IGNITE-BUSYBOX-READY hostname=$(hostname) boot=$n uptime=$(cut -d' ' -f1 /proc/uptime)"
RCS
chmod 0755 "$root/etc/init.d/rcS"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
echo "busybox" > "$root/etc/hostname"

rm -rf "$out/oci"
"$here/../oci-pack.py" "$root" "$out/oci" --tag latest \
  --docker-archive "$out/busybox.tar" --repo-tag busybox:latest --cmd /sbin/init
