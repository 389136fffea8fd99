#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace,
# including the ones that boot real VMs (TCG where KVM cannot run a guest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-host.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The guest kernel: built once (a few minutes), then taken from the cache by content hash.
images/kernel/build.sh >/dev/null
# The Debian systemd test image (debootstrap, about 2 minutes once), cached the same way.
images/debian/build.sh >/dev/null
# The static guest agent the VM tests inject (a target directory of its own).
IGNITE_AGENT="$(scripts/build-agent.sh)"
export IGNITE_AGENT
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
