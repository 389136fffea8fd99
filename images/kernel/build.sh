#!/usr/bin/env bash
# Builds the ignite guest kernel (vmlinux) from Debian's linux-source-6.1 and microvm.config,
# cached outside the clone by content: key = sha256(microvm.config, this script, the
# linux-source package version). A cache hit prints the path at once.
#
#   images/kernel/build.sh [--print-key] [--out PATH]
#
# Cache: ${IGNITE_CACHE_DIR:-/var/cache/ignite}/kernel/<key>/{vmlinux,config,build.log}
# The last line on stdout is the vmlinux path; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
frag="$here/microvm.config"
cache="${IGNITE_CACHE_DIR:-/var/cache/ignite}/kernel"
out=""
print_key=0
while [ $# -gt 0 ]; do
  case "$1" in
    --print-key) print_key=1 ;;
    --out) out="$2"; shift ;;
    *) echo "usage: build.sh [--print-key] [--out PATH]" >&2; exit 2 ;;
  esac
  shift
done

src_tar=/usr/src/linux-source-6.1.tar.xz
ver=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || true)
if [ -z "$ver" ] || [ ! -f "$src_tar" ]; then
  echo "build.sh: $src_tar missing: apt-get install linux-source-6.1" >&2
  exit 1
fi
key=$( { cat "$frag" "$0"; echo "$ver"; } | sha256sum | cut -c1-16)
if [ $print_key = 1 ]; then echo "$key"; exit 0; fi
dest="$cache/$key"

finish() {
  if [ -n "$out" ]; then cp "$dest/vmlinux" "$out.tmp.$$" && mv "$out.tmp.$$" "$out"; fi
  echo "$dest/vmlinux"
}
if [ -f "$dest/vmlinux" ]; then finish; exit 0; fi

for tool in make gcc flex bison bc xz; do
  command -v $tool >/dev/null || { echo "build.sh: $tool missing: apt-get install build-essential flex bison bc xz-utils libelf-dev libssl-dev" >&2; exit 1; }
done
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if [ -f "$dest/vmlinux" ]; then finish; exit 0; fi   # built by a concurrent run

work=$(mktemp -d "$cache/.build-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "build.sh: building kernel $key from linux-source $ver (a few minutes; cached afterwards)" >&2
tar -C "$work" -xf "$src_tar"
ksrc=$(echo "$work"/linux-source-6.1)
(
  cd "$ksrc"
  make -s tinyconfig >/dev/null
  ./scripts/kconfig/merge_config.sh -m .config "$frag" >/dev/null
  make -s olddefconfig >/dev/null
) >&2
missing=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=y) grep -qx "$line" "$ksrc/.config" || missing+=("${line%=y}") ;;
  esac
done < "$frag"
if [ ${#missing[@]} -gt 0 ]; then
  echo "build.sh: these options were dropped by Kconfig (a dependency is missing): ${missing[*]}" >&2
  exit 1
fi
if grep -q '^CONFIG_MODULES=y' "$ksrc/.config"; then echo "build.sh: CONFIG_MODULES must stay off" >&2; exit 1; fi
nice -n 10 make -C "$ksrc" -j"$(nproc)" vmlinux > "$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
stage="$work/out"
mkdir -p "$stage"
cp "$ksrc/vmlinux" "$stage/vmlinux"
cp "$ksrc/.config" "$stage/config"
cp "$work/build.log" "$stage/build.log"
echo "$(( $(date +%s) - start ))" > "$stage/build-seconds"
rm -rf "$dest"
mv "$stage" "$dest"
echo "build.sh: built in $(cat "$dest/build-seconds")s: $(du -h "$dest/vmlinux" | cut -f1) $dest/vmlinux" >&2
finish
