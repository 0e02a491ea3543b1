//! Benchmark harness (being built in the bench branch).

fn main() {}
