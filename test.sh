#!/usr/bin/env bash
# The whole test suite: this is the README's test command, and CI runs it.
# Each section below tests one part of the project; a failing section stops
# the run with a non-zero exit status.
set -euo pipefail
cd "$(dirname "$0")"

echo "=== Rust workspace: cargo test --workspace"
cargo test --workspace

# --- C ABI and System V (issue 10): section added by that work ---
# Nothing to add: these are cargo integration tests that invoke cc, make,
# pkg-config, valgrind and ipcs, run above by `cargo test --workspace`:
# crates/shmkit-c/tests/{c_api,header}.rs, crates/shmkit/tests/sysv.rs,
# crates/shmkit-cli/tests/sysv_cli.rs.

# --- Python package (issue 9): section added by that work ---

# --- Zenoh bridge (issue 11): section added by that work ---

echo "=== test.sh: every section passed"
