#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu machine: install what is needed, build ignite, and
# show it working against a throw-away state root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p ignite-cli
IGNITE="$PWD/target/release/ignite"
export IGNITE_ROOT="${IGNITE_ROOT:-$(mktemp -d /tmp/ignite-demo.XXXXXX)}"
echo "== state root: $IGNITE_ROOT"
set -x
"$IGNITE" version
"$IGNITE" create busybox --name demo --cpus 1 --memory 256MB -p 8080:80 -l app=demo
"$IGNITE" ps -a
"$IGNITE" inspect vm demo -o yaml
"$IGNITE" inspect vm demo -t '{{.Spec.Image.OCI}} {{.Spec.Memory}}'
set +x
echo "== booting VMs is the next milestone: 'ignite start demo' says so plainly:"
"$IGNITE" start demo || true
