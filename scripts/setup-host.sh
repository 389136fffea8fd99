#!/usr/bin/env bash
# Installs what ignite and its tests need on a Debian 12 / Ubuntu host (idempotent).
# Needs root (or sudo). Prints what it installs; a second run is a no-op.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

PKGS=(
  e2fsprogs            # mke2fs -d: ext4 images without mount
  qemu-system-x86      # the QEMU microvm backend
  qemu-utils           # qemu-img: qcow2 copy-on-write VM disks
  busybox-static       # guest init shim and the busybox test image
  linux-source-6.1     # guest kernel source
  build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils patch  # kernel build
  docker-registry skopeo umoci   # tests: a real local registry and OCI tooling
  apache2-utils openssl          # tests: htpasswd and a private CA for the registry auth tests
  containernetworking-plugins    # CNI plugins
  iproute2 nftables iptables     # networking
  debootstrap                    # the Debian systemd test image
  openssh-client                 # ignite ssh
  hyperfine                      # benchmarks
  python3 git curl ca-certificates
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-host: installing ${missing[*]}" >&2
  $SUDO apt-get update -q
  extra=()
  # qemu-utils from backports can be newer than qemu-system-x86 and conflict with it:
  # pin qemu-utils (and qemu-block-extra) to qemu-system-x86's candidate version.
  cand=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
    have=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [ -n "$have" ] && [ "$have" != "$cand" ]; then
      extra+=("qemu-utils=$cand" "qemu-block-extra=$cand")
    fi
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --allow-downgrades --no-install-recommends \
    "${missing[@]}" "${extra[@]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup-host: cargo not found: install Rust with rustup (https://rustup.rs), then re-run" >&2
    exit 1
  fi
fi
echo "setup-host: ok" >&2
