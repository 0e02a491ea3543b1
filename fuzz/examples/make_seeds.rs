//! Writes the seed corpus of `segment_raw`: one real segment file of each
//! kind, made by the library (`cargo run --example make_seeds -- DIR`). The
//! raw target starts from these instead of having to find a checksum.

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "seeds/segment_raw".into());
    std::fs::create_dir_all(&dir).expect("create seed dir");
    for (name, bytes) in shmkit_fuzz::seeds::all() {
        let path = format!("{dir}/{name}");
        std::fs::write(&path, bytes).expect("write seed");
        println!("{path}");
    }
}
