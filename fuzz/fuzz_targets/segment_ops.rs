//! A real segment of a chosen kind, edited by the input (header fields
//! re-checksummed, size, body), then a script of operations under a
//! poking peer (see `shmkit_fuzz::run_ops`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmkit_fuzz::run_ops(data));
