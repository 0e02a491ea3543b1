#!/usr/bin/env bash
# 1 MiB and 16 MiB frames with /dev/shm on ordinary 4 KiB pages against
# transparent huge pages (tmpfs huge=always), each in a private mount
# namespace so the machine's /dev/shm is untouched. Needs root (unshare -m).
# The two mounts alternate round by round; results go to
# target/hugepages/{small,huge}-N/results.md.
#
#   benchmarks/hugepages.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
cargo build --release -q -p shmkit-bench
bin=$PWD/target/release/shmkit-bench
out=$PWD/target/hugepages
mkdir -p "$out"
contenders=floor,shmkit-ring-spin,shmkit-pubsub-spin,shmkit-ring-block,shmkit-pubsub-block
for r in $(seq 1 "$rounds"); do
  for huge in never always; do
    tag=$([ $huge = always ] && echo huge || echo small)
    unshare -m -- sh -c "mount -t tmpfs -o size=4G,huge=$huge tmpfs /dev/shm &&
      '$bin' --rounds 1 --scenarios latency,bandwidth --sizes 1048576,16777216 \
        --contenders $contenders --out '$out/$tag-$r' >/dev/null 2>'$out/$tag-$r.log'"
    echo "round $r: $tag pages done"
  done
done
# One line per (scenario, size, contender): the median over rounds.
python3 - "$out" "$rounds" <<'PY'
import json, sys, statistics as st
out, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for tag in ("small", "huge"):
    for r in range(1, rounds + 1):
        for c in json.load(open(f"{out}/{tag}-{r}/results.json"))["results"]:
            key = (c["scenario"], c["size"], c["contender"])
            if c.get("latency"):
                v = c["latency"]["p50_ns"] / 1e3
            elif c.get("throughput"):
                v = c["throughput"]["gb_per_s"]
            else:
                continue
            rows.setdefault(key, {}).setdefault(tag, []).append(v)
print("| scenario | payload | contender | 4 KiB pages | huge pages | huge / 4 KiB |")
print("|---|---|---|---:|---:|---:|")
for (sc, size, c), v in sorted(rows.items()):
    if "small" in v and "huge" in v:
        a, b = st.median(v["small"]), st.median(v["huge"])
        unit = "µs p50" if sc == "latency" else "GB/s"
        print(f"| {sc} | {size >> 20} MiB | {c} | {a:.2f} {unit} | {b:.2f} {unit} | {b / a:.2f} |")
PY
