#!/usr/bin/env bash
# Builds the Debian bookworm test image (this project's weaveworks/ignite-ubuntu): systemd as
# init, udev, openssh-server, iproute2 — with debootstrap, no Docker — packed as an OCI layout
# (tag latest) and a `docker save` archive, cached by content under
# ${IGNITE_CACHE_DIR:-/var/cache/ignite}/images/debian-<key>/. Prints that directory.
#
# In the VM, a oneshot unit prints one console line once multi-user is reached:
#   IGNITE-DEBIAN-READY hostname=<h> boot=<n> keys=<authorized_keys lines> uptime=<s>
# The root account has no password on the serial console (test image only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
pkgs=systemd-sysv,udev,openssh-server,iproute2,iputils-ping,procps,ca-certificates
cache="${IGNITE_CACHE_DIR:-/var/cache/ignite}/images"
key=$( { cat "$0" "$here/../oci-pack.py"; echo "$mirror $suite $pkgs"; } | sha256sum | cut -c1-16)
dest="$cache/debian-$key"
if [ -f "$dest/oci/index.json" ]; then echo "$dest"; exit 0; fi
command -v debootstrap >/dev/null || { echo "build.sh: debootstrap missing: apt-get install debootstrap" >&2; exit 1; }
mkdir -p "$cache"
exec 9>"$cache/.debian.lock"
flock 9
if [ -f "$dest/oci/index.json" ]; then echo "$dest"; exit 0; fi
work=$(mktemp -d "$cache/.debian-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
start=$(date +%s)
echo "build.sh: debootstrap $suite from $mirror (about a minute; cached afterwards)" >&2
debootstrap --variant=minbase --include="$pkgs" "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2; exit 1; }

# Console login without a password (test image), serial getty, ssh host keys at first boot.
chroot "$root" passwd -d root >/dev/null
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-keygen-ignite.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
UNIT
cat > "$root/usr/local/sbin/ignite-ready" <<'SH'
#!/bin/sh
n=$(cat /var/lib/bootcount 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > /var/lib/bootcount; sync
keys=$(wc -l < /root/.ssh/authorized_keys 2>/dev/null || echo 0)
echo "IGNITE-DEBIAN-READY hostname=$(hostname) boot=$n keys=$keys uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
SH
chmod 0755 "$root/usr/local/sbin/ignite-ready"
cat > "$root/etc/systemd/system/ignite-ready.service" <<'UNIT'
[Unit]
Description=Tell the host the VM is up
After=multi-user.target ssh.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ignite-ready
[Install]
WantedBy=multi-user.target
UNIT
chroot "$root" systemctl enable ssh-keygen-ignite.service ignite-ready.service >/dev/null 2>&1
# The VM's hostname and hosts come from ignite; machine-id is generated at first boot.
: > "$root/etc/machine-id"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

mkdir -p "$work/out"
"$here/../oci-pack.py" "$root" "$work/out/oci" --tag latest \
  --docker-archive "$work/out/debian.tar" --repo-tag debian-systemd:latest --cmd /sbin/init >/dev/null
echo "$(( $(date +%s) - start ))" > "$work/out/build-seconds"
rm -rf "$dest"
mv "$work/out" "$dest"
echo "build.sh: built in $(cat "$dest/build-seconds")s: $(du -sh "$dest/oci" | cut -f1)" >&2
echo "$dest"
