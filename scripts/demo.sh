#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu machine: install what is needed, build ignite, build
# (or take from the cache) the guest kernel and the busybox demo image, then boot a microVM
# from that image and show it working. State goes to a throw-away root unless IGNITE_ROOT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p ignite-cli -p ignite-daemon -p ignite-supervisor
bin="$PWD/target/release"
# The static guest agent, next to ignite (where it looks for it).
scripts/build-agent.sh --install "$bin" >/dev/null
export PATH="$bin:$PATH"
vmlinux=$(images/kernel/build.sh | tail -1)
work=$(mktemp -d /tmp/ignite-demo.XXXXXX)
images/busybox/build.sh "$work/busybox" >/dev/null
export IGNITE_ROOT="${IGNITE_ROOT:-$work/root}"
echo "== state root: $IGNITE_ROOT"
set -x
ignite version
ignite kernel import "$vmlinux" --name localhost/ignite-kernel:6.1
ignite image import "oci:$work/busybox/oci:latest" --name busybox
ignite run busybox --name demo --cpus 1 --memory 256MB
set +x
for _ in $(seq 1 300); do
  ignite logs demo 2>/dev/null | grep -q IGNITE-BUSYBOX-READY && break
  sleep 0.2
done
set -x
ignite ps
ignite logs demo | grep -a -E 'ignite-init|IGNITE-BUSYBOX-READY|Linux version'
ignite exec demo -- uname -a
echo hello-from-the-host | ignite exec demo -- sh -c 'read l; echo "guest read: $l"'
ignite exec demo -- sh -c 'exit 3' || echo "exit code passed through: $?"
ignite inspect vm demo -t 'accel={{.Status.Runtime.Accel}} pid={{.Status.Runtime.Pid}} started={{.Status.StartTime}}'
ignite stop demo
ignite ps -a
ignite rm demo
