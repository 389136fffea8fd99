#!/usr/bin/env bash
# Builds the ignite guest kernel (vmlinux) from Debian's linux-source-6.1, the patches in
# patches/ (applied in name order) and microvm.config.
#
#   images/kernel/build.sh [--print-key] [--out PATH]
#
# Cached outside the clone by content: key = sha256 over sha256(microvm.config),
# sha256(this script), sha256(the patches, concatenated in name order) and the
# linux-source-6.1 package version. A cache hit prints the path
# at once; a miss builds (tinyconfig + fragment, a few minutes on 2 cores) under a lock, so
# concurrent runs build once.
#
# Cache: ${IGNITE_CACHE_DIR:-/var/cache/ignite}/kernel/<key>/
#          vmlinux  config  build.log  build-seconds  source-version
# stdout: the vmlinux path as the last line (with --print-key: the key only).
# stderr: progress and errors.
#
#   --print-key  print the cache key and exit
#   --out PATH   also copy vmlinux to PATH (atomically)
set -euo pipefail
# (functions called through `run` and the traps are reachable)
# shellcheck disable=SC2317
# The whole script is one function, read by bash before it runs: editing this file while a
# build is under way cannot change what the running build does.
main() {
  usage() { echo "usage: ${0##*/} [--print-key] [--out PATH]" >&2; exit 2; }
  die() { echo "kernel/build.sh: $*" >&2; exit 1; }
  log() { echo "kernel/build.sh: $*" >&2; }

  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  self="$here/$(basename "${BASH_SOURCE[0]}")"
  frag="$here/microvm.config"
  src_pkg=linux-source-6.1
  src_tar=/usr/src/linux-source-6.1.tar.xz
  cache_root="${IGNITE_CACHE_DIR:-/var/cache/ignite}/kernel"

  out=""
  print_key=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --print-key) print_key=1 ;;
      --out) [ $# -ge 2 ] || usage; out="$2"; shift ;;
      --out=*) out="${1#--out=}" ;;
      -h|--help) usage ;;
      *) usage ;;
    esac
    shift
  done

  [ -f "$frag" ] || die "$frag is missing"
  ver=$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null || true)
  if [ -z "$ver" ] || [ ! -f "$src_tar" ]; then
    die "$src_tar is missing: install it with 'apt-get install $src_pkg'"
  fi
  frag_sha=$(sha256sum < "$frag" | cut -d' ' -f1)
  patches=()
  for p in "$here"/patches/*.patch; do [ -f "$p" ] && patches+=("$p"); done
  patches_sha=$(cat /dev/null "${patches[@]}" | sha256sum | cut -d' ' -f1)
  key=$(printf '%s  microvm.config\n%s  build.sh\n%s  patches\n%s  %s\n' \
    "$frag_sha" "$(sha256sum < "$self" | cut -d' ' -f1)" "$patches_sha" "$ver" "$src_pkg" | sha256sum | cut -d' ' -f1)
  if [ "$print_key" = 1 ]; then echo "$key"; exit 0; fi
  dest="$cache_root/$key"

  finish() {
    if [ -n "$out" ]; then
      mkdir -p "$(dirname "$out")"
      cp "$dest/vmlinux" "$out.tmp.$$"
      mv -f "$out.tmp.$$" "$out"
      log "copied to $out"
    fi
    echo "$dest/vmlinux"
    exec 9>&- # release the build lock (if held) before the EXIT trap removes the work tree
    exit 0
  }
  [ -f "$dest/vmlinux" ] && finish

  # --- Cache miss: build ------------------------------------------------------------------------
  need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install it with 'apt-get install $2'"; }
  need make build-essential
  need gcc build-essential
  need ld binutils
  need flex flex
  need bison bison
  need bc bc
  need xz xz-utils
  need perl perl
  need awk mawk
  need flock util-linux
  need patch patch
  # objtool (x86-64 builds always run it) needs libelf's headers
  [ -f /usr/include/gelf.h ] || [ -f /usr/include/libelf.h ] || die "libelf headers missing: install them with 'apt-get install libelf-dev'"

  if ! mkdir -p "$cache_root" 2>/dev/null || [ ! -w "$cache_root" ]; then
    die "cannot write to $cache_root: run as root or set IGNITE_CACHE_DIR to a writable directory"
  fi

  exec 9>"$cache_root/.lock"
  if ! flock -n 9; then
    log "another kernel build holds $cache_root/.lock; waiting for it"
    flock 9
  fi
  [ -f "$dest/vmlinux" ] && finish   # built by the run we waited for

  # Work directories left behind by a killed run (we hold the lock: no build is running).
  for stale in "$cache_root"/.build-*; do
    [ -e "$stale" ] || continue
    log "removing stale $stale"
    rm -rf "$stale"
  done

  work=$(mktemp -d "$cache_root/.build-${key:0:16}.XXXXXX")
  # Long steps run as background children waited for, so that a signal interrupts the wait
  # at once: the trap stops the step (make passes SIGTERM on to its jobs), then the EXIT trap
  # removes the work tree.
  child=""
  run() { "$@" & child=$!; local rc=0; wait "$child" || rc=$?; child=""; return "$rc"; }
  stop() { if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi; exit "$1"; }
  trap 'rm -rf "$work"' EXIT
  trap 'stop 130' INT
  trap 'stop 143' TERM

  # Build from a private copy of the fragment, and only if it is still the one the key names
  # (an edit while this run waited for the lock must not land under the old key).
  cp "$frag" "$work/microvm.config"
  [ "$(sha256sum < "$work/microvm.config" | cut -d' ' -f1)" = "$frag_sha" ] ||
    die "microvm.config changed while this run waited: run it again"
  frag="$work/microvm.config"
  mkdir "$work/patches"
  [ ${#patches[@]} -eq 0 ] || cp "${patches[@]}" "$work/patches/"
  [ "$(cat /dev/null "$work"/patches/*.patch 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$patches_sha" ] ||
    die "patches/ changed while this run waited: run it again"

  start=$(date +%s)
  jobs=$(nproc)
  log "cache miss: building kernel $key"
  log "  from $src_pkg $ver + $here/microvm.config, make -j$jobs (a few minutes; cached afterwards)"
  log "  extracting $src_tar"
  run tar -C "$work" -xf "$src_tar"
  ksrc="$work/linux-source-6.1"
  [ -d "$ksrc" ] || die "$src_tar did not unpack to linux-source-6.1/"

  for p in "$work"/patches/*.patch; do
    [ -f "$p" ] || continue
    log "  applying ${p##*/}"
    patch -d "$ksrc" -p1 --forward --quiet < "$p" || die "patch ${p##*/} does not apply to $src_pkg $ver"
  done

  log "  configuring: tinyconfig + microvm.config + olddefconfig"
  configure() {
    cd "$ksrc" && make -s tinyconfig &&
      ./scripts/kconfig/merge_config.sh -m .config "$frag" && make -s olddefconfig
  }
  run configure > "$work/config.log" 2>&1 || { tail -30 "$work/config.log" >&2; die "configuration failed (log above)"; }

  # Kconfig drops options whose dependencies are unmet without a word: check every line.
  dropped=()
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*)
        grep -qxF "$line" "$ksrc/.config" || {
          name=${line%%=*}
          now=$(grep -E "^$name=|^# $name is not set" "$ksrc/.config" || echo "absent")
          dropped+=("$line (final: $now)")
        } ;;
      "# CONFIG_"*" is not set")
        name=${line#\# }; name=${name%% *}
        if grep -qE "^$name=" "$ksrc/.config"; then dropped+=("$line (final: $(grep -E "^$name=" "$ksrc/.config"))"); fi ;;
    esac
  done < "$frag"
  if [ ${#dropped[@]} -gt 0 ]; then
    echo "kernel/build.sh: Kconfig did not keep these microvm.config settings (add the options they depend on):" >&2
    printf '  %s\n' "${dropped[@]}" >&2
    exit 1
  fi

  log "  compiling vmlinux (log: $work/build.log)"
  if ! run nice -n 10 make -C "$ksrc" -j"$jobs" vmlinux > "$work/build.log" 2>&1; then
    tail -40 "$work/build.log" >&2
    die "make vmlinux failed (log above)"
  fi

  stage="$work/out"
  mkdir -p "$stage"
  cp "$ksrc/vmlinux" "$stage/vmlinux"
  chmod 0644 "$stage/vmlinux"
  cp "$ksrc/.config" "$stage/config"
  cat "$work/config.log" "$work/build.log" > "$stage/build.log"
  echo "$src_pkg $ver" > "$stage/source-version"
  echo "$(( $(date +%s) - start ))" > "$stage/build-seconds"
  sync -f "$stage/vmlinux" 2>/dev/null || true
  # Atomic install: the stage is on the cache's filesystem, so this rename is all-or-nothing.
  rm -rf "$dest"
  mv "$stage" "$dest"
  log "built in $(cat "$dest/build-seconds")s: vmlinux $(du -h --apparent-size "$dest/vmlinux" | cut -f1)"
  finish
}

main "$@"
