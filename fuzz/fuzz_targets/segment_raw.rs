//! The input is a whole segment file: header decoding and every open path
//! on arbitrary bytes (see `shmkit_fuzz::run_raw`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmkit_fuzz::run_raw(data));
