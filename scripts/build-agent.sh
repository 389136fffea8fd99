#!/usr/bin/env bash
# Builds the guest agent as a static executable (glibc, -C target-feature=+crt-static: guest
# images need not have a C library) and prints its path. With --install DIR, copies it there
# as DIR/ignite-agent (where `ignite` looks: next to itself, /usr/local/lib/ignite, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target=x86_64-unknown-linux-gnu
# A target directory of its own: different RUSTFLAGS must not invalidate the main build.
export CARGO_TARGET_DIR="$PWD/target/agent"
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols CARGO_PROFILE_RELEASE_LTO=true CARGO_PROFILE_RELEASE_OPT_LEVEL=s \
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked -p ignite-agent --bin ignite-agent --target "$target"
bin="$CARGO_TARGET_DIR/$target/release/ignite-agent"
if [ "${1:-}" = --install ]; then
	install -D -m 0755 "$bin" "${2:?--install needs a directory}/ignite-agent"
	bin="$2/ignite-agent"
fi
echo "$bin"
