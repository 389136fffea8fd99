#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test of the workspace in two
# tiers, then a short fault-injection drill.
#
#   scripts/test.sh        everything (what CI runs)
#   scripts/test.sh fast   tier 1 only: fmt, clippy, and the tests that need no guest kernel
#                          (unit tests, store, validation, CLI errors, disk and CNI pieces)
#
# Tier 2 boots real VMs (TCG where KVM cannot run a guest): the guest kernel and the Debian
# image are built once and then taken from their caches by content hash.
set -euo pipefail
cd "$(dirname "$0")/.."
tier=${1:-all}
./scripts/setup-host.sh
export PATH="$HOME/.cargo/bin:$PATH"
# A clean clone builds once: incremental caches would only double the target directory (a full
# run needs about 4 GiB without them). Say so early when the disk cannot hold it.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
mkdir -p target
free_mib=$(df -Pm target | awk 'NR==2 {print $4}')
if [ "${free_mib:-0}" -lt 6144 ]; then
  echo "test.sh: WARNING: only ${free_mib} MiB free under $(realpath target); a full run needs about 5 GiB" >&2
fi

# Every integration test target belongs to exactly one tier: a new file that is in neither
# list fails here instead of silently never running.
TIER1=(cli:cli cli:templates cli:registry_auth disk:ext4 disk:initramfs disk:overlay net:concurrent supervisor:agent_mux supervisor:supervise runtime:orchestration)
TIER2=(disk:boot cli:e2e cli:agent cli:net cli:ignited cli:faults cli:compat cli:jail cli:firecracker cli:snapshot vmm:firecracker_snapshot)
listed=" ${TIER1[*]} ${TIER2[*]} "
for f in crates/*/tests/*.rs; do
  crate=$(basename "$(dirname "$(dirname "$f")")")
  t="$crate:$(basename "$f" .rs)"
  if [[ $listed != *" $t "* ]]; then
    echo "test.sh: $f is in no tier: add $t to TIER1 or TIER2" >&2
    exit 1
  fi
done
targets() {
  for t in "$@"; do printf -- '-p ignite-%s --test %s ' "${t%%:*}" "${t##*:}"; done
}

cargo fmt --all -- --check
scripts/module-cycles.py
cargo clippy --workspace --all-targets --locked -- -D warnings
# Tier 1: no guest kernel, no VM.
status=0
cargo test --workspace --locked --no-fail-fast --lib --bins || status=1
# The binaries the CLI tests run beside `ignite` (ignited lives in its own crate).
cargo build --locked -p ignite-cli -p ignite-daemon -p ignite-supervisor
for t in "${TIER1[@]}"; do
  # shellcheck disable=SC2046
  cargo test --locked --no-fail-fast $(targets "$t") || status=1
done
[ "$tier" = fast ] && exit $status

# Tier 2: real VMs. The guest kernel: built once (a few minutes), then from the cache.
images/kernel/build.sh >/dev/null
# The Debian systemd test image (debootstrap, about 2 minutes once), cached the same way.
images/debian/build.sh >/dev/null
# The static guest agent the VM tests inject (a target directory of its own).
IGNITE_AGENT="$(scripts/build-agent.sh)"
export IGNITE_AGENT
# Firecracker: no package registry carries it. Users put it on PATH (or IGNITE_FIRECRACKER);
# on the project's machines the upstream binary is provided beside the checkout
# (../shared/bin). Its tests say SKIPPED when there is none.
if [ -z "${IGNITE_FIRECRACKER:-}" ] && ! command -v firecracker >/dev/null 2>&1; then
  for c in ../shared/bin/firecracker /work/shared/bin/firecracker; do
    if [ -x "$c" ]; then
      IGNITE_FIRECRACKER="$(realpath "$c")"
      export IGNITE_FIRECRACKER
      break
    fi
  done
fi
for t in "${TIER2[@]}"; do
  # shellcheck disable=SC2046
  cargo test --locked --no-fail-fast $(targets "$t") || status=1
done
# The fault-injection drill, short: 50 kill points. The seed is fixed so that CI replays one
# schedule; IGNITE_DRILL_SEED=random (or a number) explores others.
cargo build --locked -p ignite-cli -p ignite-daemon -p ignite-supervisor
seed=${IGNITE_DRILL_SEED:-2026}
[ "$seed" = random ] && seed=$((RANDOM * 32768 + RANDOM))
scripts/drill.py --points "${IGNITE_DRILL_POINTS:-50}" --seed "$seed" || status=1
exit $status
