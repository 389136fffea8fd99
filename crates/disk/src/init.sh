#!/bin/busybox sh
# ignite init shim: PID 1 of a VM's per-boot initramfs (see ignite-disk's vmboot module).
#
# Mounts the VM's root disk, copies the VM's own files (/ignite/files, mirrored at their guest
# paths) into it, so that they land in the VM's copy-on-write layer and never in the shared
# base, sets the hostname and switch_roots to the image's init, which stays PID 1. Anything
# that stops the boot prints one "ignite-init: error: ..." line and powers the VM off.
#
# Parameters: /ignite/env (IGNITE_HOSTNAME, IGNITE_ROOT, IGNITE_INIT; IGNITE_UPPER, the VM's
# writable layer when its root is the image's read-only base under overlayfs;
# IGNITE_AGENT_VSOCK, the agent's vsock port when it is reached over vsock; IGNITE_IPV4_ONLY,
# the interfaces whose network gives no IPv6 address), /ignite/mounts
# ("<device> <mount path>" lines for extra disks) and, optionally, /ignite/agent (the static
# guest agent, copied to /.ignite/ignite-agent on a tmpfs and started before the hand-over).

# The applets it runs are linked in /bin by the archive (SHIM_APPLETS in vmboot.rs), which
# also holds its mount points. Each applet is a process (under TCG a fork costs 5-15 ms):
# builtins where they do.
# The first line of the guest's own on its console (the kernel's informational lines are not
# shown there: images/kernel/microvm.config).
echo "ignite-init: started"
export PATH=/bin

fail() {
	echo "ignite-init: error: $*"
	sync
	poweroff -f
	sleep 10
	exit 1
}

. /ignite/env || fail "/ignite/env is missing from the initramfs"

mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
# IPv6 off on the interfaces of IPv4-only networks, as Docker does for a container's: no
# link-local address, duplicate address detection or router solicitations (the kernel's ip=
# brought eth0 up already; its link-local address goes).
for i in $IGNITE_IPV4_ONLY; do
	f=/proc/sys/net/ipv6/conf/$i/disable_ipv6
	[ ! -w "$f" ] || echo 1 >"$f" || echo "ignite-init: warning: cannot turn IPv6 off on $i"
done
devtmpfs=1
mount -t devtmpfs devtmpfs /dev 2>/dev/null || devtmpfs=0

# The disks may show up a little after init starts: wait up to 5 s.
for disk in "$IGNITE_ROOT" $IGNITE_UPPER; do
	i=0
	while [ ! -b "$disk" ]; do
		if [ $i -ge 100 ]; then
			fail "root device $disk did not appear within 5 s: check that the VM's disk is attached (virtio-blk) and the kernel has CONFIG_VIRTIO_BLK"
		fi
		sleep 0.05
		i=$((i + 1))
		[ $devtmpfs = 1 ] || mdev -s
	done
done
# noinit_itable: the inode tables of ignite's disks read as zeros already; zeroing them
# again would only fill the VM's layer.
if [ -n "$IGNITE_UPPER" ]; then
	# The image's base, shared and read-only, under the VM's own layer.
	mkdir -p /lower /upper
	mount -t ext4 -o ro,noload "$IGNITE_ROOT" /lower ||
		fail "cannot mount the image's base $IGNITE_ROOT (ext4, read-only)"
	mount -t ext4 -o rw,noinit_itable "$IGNITE_UPPER" /upper ||
		fail "cannot mount the VM's writable layer $IGNITE_UPPER (ext4)"
	mkdir -p /upper/root /upper/work || fail "cannot prepare the VM's writable layer"
	mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/root,workdir=/upper/work /newroot ||
		fail "cannot stack the VM's writable layer on the image (overlayfs: CONFIG_OVERLAY_FS)"
else
	mount -t ext4 -o rw,noinit_itable "$IGNITE_ROOT" /newroot ||
		fail "cannot mount $IGNITE_ROOT (ext4) as the VM's root filesystem"
fi

# Sets $target to the path that $1 ends at inside /newroot, following symlinks in its last
# component the way the guest will see them (absolute targets relative to /newroot). Not
# called as $(resolve): a command substitution is one more process.
resolve() {
	target=$1
	n=0
	while [ -L "/newroot$target" ]; do
		n=$((n + 1))
		[ $n -le 40 ] || return 1
		t=$(readlink "/newroot$target")
		case $t in
		/*) target=$t ;;
		*) target=${target%/*}/$t ;;
		esac
	done
}

if ! resolve "$IGNITE_INIT" || [ ! -f "/newroot$target" ] || [ ! -x "/newroot$target" ]; then
	umount /newroot
	fail "$IGNITE_INIT is missing or not executable in the VM's root filesystem ($IGNITE_ROOT): the image needs an init"
fi

# Removes $1 (a file or a link, never followed) if there is one: `rm` is a process.
remove_if_there() {
	[ ! -e "$1" ] && [ ! -L "$1" ] || rm -f "$1"
}

# The VM's files: directories the image has stay as they are; missing ones are copied whole;
# files replace what is there (a symlink is removed first, never written through).
if [ -d /ignite/files ]; then
	cd /ignite/files || fail "cannot read /ignite/files"
	find . -mindepth 1 >/ignite/list || fail "cannot list /ignite/files"
	skip=
	while IFS= read -r p; do
		p=${p#./}
		if [ -n "$skip" ]; then
			case $p in "$skip"/*) continue ;; esac
		fi
		[ "$p" = etc/resolv.conf ] && continue
		d=/newroot/$p
		if [ -d "$p" ] && [ ! -L "$p" ]; then
			[ -d "$d" ] && continue
			remove_if_there "$d"
			cp -a "$p" "$d" || fail "cannot copy /$p into the VM's root filesystem"
			skip=$p
		elif [ -d "$d" ] && [ ! -L "$d" ]; then
			echo "ignite-init: warning: /$p is a directory in the image: not replaced"
		else
			remove_if_there "$d"
			cp -a "$p" "$d" || fail "cannot copy /$p into the VM's root filesystem"
		fi
	done </ignite/list
	cd /
	# The resolver configuration only where the image has none (or a dangling link).
	if [ -f /ignite/files/etc/resolv.conf ]; then
		if ! resolve /etc/resolv.conf || [ ! -e "/newroot$target" ]; then
			[ -d /newroot/etc ] || mkdir -p /newroot/etc
			remove_if_there /newroot/etc/resolv.conf
			cp -a /ignite/files/etc/resolv.conf /newroot/etc/resolv.conf ||
				fail "cannot copy /etc/resolv.conf into the VM's root filesystem"
		fi
	fi
fi

if [ -s /ignite/mounts ]; then
	while read -r dev mp; do
		[ -n "$dev" ] || continue
		j=0
		while [ ! -b "$dev" ] && [ $j -lt 40 ]; do
			sleep 0.05
			j=$((j + 1))
			[ $devtmpfs = 1 ] || mdev -s
		done
		mkdir -p "/newroot$mp"
		mount "$dev" "/newroot$mp" || echo "ignite-init: warning: cannot mount $dev on $mp"
	done </ignite/mounts
fi

# The guest agent (ignite exec/cp without sshd): copied onto a tmpfs of its own at /.ignite
# (nothing written to the VM's disk, nothing to compare or sync at the next boot), started
# below, chrooted into the VM's root, so that it outlives the hand-over to the image's init.
agent_port=
if [ -f /ignite/agent ] && [ -n "$IGNITE_AGENT_VSOCK" ]; then
	agent_port=vsock:$IGNITE_AGENT_VSOCK
fi
if [ -f /ignite/agent ]; then
	j=0
	while [ -z "$agent_port" ] && [ $j -lt 40 ]; do
		for p in /sys/class/virtio-ports/*; do
			n=
			read -r n 2>/dev/null <"$p/name"
			[ "$n" = org.ignite.agent.0 ] && agent_port=/dev/${p##*/}
		done
		[ -n "$agent_port" ] || sleep 0.05
		j=$((j + 1))
	done
	if [ -z "$agent_port" ]; then
		echo "ignite-init: warning: no virtio-serial port org.ignite.agent.0: the guest agent is not started"
	else
		# Never through a link the image may have put there.
		[ -L /newroot/.ignite ] && rm -f /newroot/.ignite
		if ! { { [ -d /newroot/.ignite ] || mkdir /newroot/.ignite; } &&
			mount -t tmpfs -o mode=0700,nodev,nosuid,size=16m ignite-agent /newroot/.ignite; }; then
			echo "ignite-init: warning: cannot mount a tmpfs at /.ignite for the guest agent: it is not started"
			agent_port=
		elif ! cp /ignite/agent /newroot/.ignite/ignite-agent; then
			echo "ignite-init: warning: cannot copy the guest agent to /.ignite: it is not started"
			umount /newroot/.ignite
			agent_port=
		fi
	fi
fi

echo "$IGNITE_HOSTNAME" >/proc/sys/kernel/hostname || echo "ignite-init: warning: cannot set the hostname $IGNITE_HOSTNAME"
sync
echo "ignite-init: provisioned $IGNITE_HOSTNAME"

# /proc and /sys stay, moved into the image's root as /dev is: a command that `ignite exec`
# runs before the image's init has mounted them, or in an image whose init never does (a
# container image's busybox has no rcS), sees them, as in a container. An init that mounts
# them again stacks a second instance over them (harmless); systemd, OpenRC and sysvinit's
# mountkernfs skip what is mounted. Never through a link the image put there.
for m in /proc /sys; do
	if [ -d /newroot$m ] && [ ! -L /newroot$m ]; then mount -o move $m /newroot$m; else umount $m; fi
done
if [ $devtmpfs = 1 ]; then
	if [ -d /newroot/dev ]; then mount -o move /dev /newroot/dev; else umount /dev; fi
fi
if [ -n "$agent_port" ]; then
	if [ $devtmpfs = 0 ]; then
		mount -t devtmpfs devtmpfs /newroot/dev 2>/dev/null
	fi
	# In the foreground: the agent detaches itself once it runs inside /newroot. A background
	# job (`&`) would open the initramfs's /dev/null while switch_root empties it.
	chroot /newroot /.ignite/ignite-agent --port "$agent_port" --detach ||
		echo "ignite-init: warning: the guest agent did not start"
fi
exec switch_root /newroot "$IGNITE_INIT" "$@"
