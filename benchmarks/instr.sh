#!/usr/bin/env bash
# Instructions per 8-byte message (send + receive) under callgrind, for the
# shmkit ring, the ring in batches, pub/sub and the bare floor ring. The
# counts are repeatable on a loaded machine; see
# crates/shmkit-bench/examples/instr.rs for what each variant does.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p shmkit-bench --example instr
bin=target/release/examples/instr
n1=100000; n2=200000
refs() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    awk '/Collected/ {print $4}'
}
printf '%-12s %s\n' variant "instructions/message"
for v in floor ring ring-batch pubsub; do
  a=$(refs "$v" $n1); b=$(refs "$v" $n2)
  printf '%-12s %.1f\n' "$v" "$(echo "($b - $a) / ($n2 - $n1)" | bc -l)"
done
