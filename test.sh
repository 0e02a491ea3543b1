#!/usr/bin/env bash
# The whole test suite: this is the README's test command, and CI runs it.
# Each section below tests one part of the project; a failing section stops
# the run with a non-zero exit status.
set -euo pipefail
cd "$(dirname "$0")"

echo "=== Rust workspace: cargo test --workspace"
cargo test --workspace

# --- Async endpoints and rpc (issue 12): the `async` feature's tests ---
echo "=== Rust: async endpoints (feature async)"
cargo test -p shmkit --features async --test aio_ring --test aio_sync --test aio_pubsub --test rpc

# --- C ABI and System V (issue 10): section added by that work ---

# --- Python package (issue 9): section added by that work ---

# --- Zenoh bridge (issue 11): section added by that work ---

echo "=== test.sh: every section passed"
