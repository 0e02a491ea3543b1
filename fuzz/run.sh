#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 30) under AddressSanitizer,
# after replaying the committed seeds and regression inputs. Fails on any
# crash, hang (-timeout) or out-of-memory, and if a segment file is left
# in /dev/shm. Needs cargo-fuzz (`cargo install --locked cargo-fuzz`).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# As root it runs in a private mount + IPC namespace with its own tmpfs
# on /dev/shm (nothing else on the machine can see or collect the
# fuzzer's segments, and the fuzzer's `list` sees no one else's).
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")"
secs=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(segment_raw segment_ops)
fi
export RUSTC_BOOTSTRAP=1

if [ "${SHMKIT_FUZZ_NS:-}" != 1 ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null &&
  unshare -m -i true 2>/dev/null; then
  export SHMKIT_FUZZ_NS=1
  exec unshare -m -i -- bash -c 'mount -t tmpfs -o size=4G tmpfs /dev/shm && exec "$0" "$@"' \
    "$self" "$secs" "${targets[@]}"
fi
# One build for all targets (ASan is cargo-fuzz's default sanitizer).
cargo fuzz build

# Per-target libFuzzer options: inputs large enough for a ring or pub/sub
# file (raw) or a long script (ops); -timeout turns a hang into a failure.
opts() {
  case $1 in
    segment_raw) echo "-max_len=16384" ;;
    segment_ops) echo "-max_len=1024 -len_control=20" ;;
  esac
}

run_all() {
  local t
  for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "seeds/$t" "regressions/$t" "artifacts/$t"
    echo "--- $t: ${secs}s (seeds and regressions replayed first)"
    local log="artifacts/$t/last-run.log" rc=0
    # shellcheck disable=SC2046
    cargo fuzz run "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
      -max_total_time="$secs" -timeout=20 -rss_limit_mb=3000 \
      -print_final_stats=1 $(opts "$t") >"$log" 2>&1 || rc=$?
    grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::average_exec_per_sec|Done )' "$log" || true
    if [ "$rc" -ne 0 ]; then
      tail -n 60 "$log"
      echo "FAIL: $t failed (exit $rc: crash, hang, OOM or build error); a failing input is saved under fuzz/artifacts/$t/"
      return 1
    fi
  done
  local left
  left=$(find /dev/shm -maxdepth 1 -name 'shmkit.fz*' -printf '%f\n')
  if [ -n "$left" ]; then
    echo "FAIL: the fuzz harness left segments in /dev/shm:"; echo "$left"
    return 1
  fi
  echo "ok: no crash, nothing left in /dev/shm"
}

run_all
