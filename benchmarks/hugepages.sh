#!/usr/bin/env bash
# 16 MiB frames through a shmkit ring (crates/shmkit/examples/hugepages.rs)
# with /dev/shm on ordinary 4 KiB pages against transparent huge pages
# (tmpfs huge=always). Each run gets its own private mount namespace with
# a fresh tmpfs mounted over /dev/shm, so the machine's /dev/shm is never
# touched. The two kinds alternate round by round (load changes hit both);
# the table gives the median over rounds (min–max) and the ratio of the
# medians, huge / 4 KiB.
# Needs root (unshare -m, mount).
#
#   benchmarks/hugepages.sh [ROUNDS] [FRAMES]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
frames=${2:-100}
if [ "$(id -u)" != 0 ]; then
  echo "hugepages.sh: needs root (unshare -m and mount)" >&2
  exit 2
fi
cargo build --release -q -p shmkit --example hugepages
bin=$PWD/target/release/examples/hugepages
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "kernel $(uname -r); shmem_enabled: $(cat /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null || echo n/a)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
  for huge in never always; do
    line=$(unshare -m -- sh -c "mount -t tmpfs -o size=1G,huge=$huge tmpfs /dev/shm && '$bin' $frames")
    echo "$huge $line" | tee -a "$out"
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'PY'
import sys, statistics as st
rows = {"never": {}, "always": {}}
for line in open(sys.argv[1]):
    kind, *pairs = line.split()
    for p in pairs:
        k, v = p.split("=")
        rows[kind].setdefault(k, []).append(float(v))
print()
print("| figure (median of %d rounds) | 4 KiB pages | huge pages | huge / 4 KiB |" % len(rows["never"]["steady_gbps"]))
print("|---|---:|---:|---:|")
for key, label in [("create_ms", "create (reserve 64 MiB), ms"),
                   ("first_pass_ms", "first 4 frames (cold slots, faults), ms"),
                   ("steady_gbps", "steady 16 MiB frames, GB/s"),
                   ("shmem_pmd_mapped_kb", "ShmemPmdMapped during the run, KiB")]:
    na, nb = rows["never"][key], rows["always"][key]
    a, b = st.median(na), st.median(nb)
    ratio = f"{b / a:.2f}" if a else "-"
    span = lambda v: f"{st.median(v):.3f} ({min(v):.3f}–{max(v):.3f})"
    print(f"| {label} | {span(na)} | {span(nb)} | {ratio} |")
PY
