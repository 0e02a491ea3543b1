//! End-to-end tests of `shmkit bench`.

use std::process::Command;

fn shmkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmkit"))
}

#[test]
fn bench_measures_every_mechanism_and_prints_json() {
    let out = shmkit()
        .args(["bench", "--size", "8", "--size", "4KiB", "--iters", "50"])
        .args(["--rounds", "1", "--json"])
        .output()
        .expect("run shmkit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = v.as_array().expect("an array");
    assert_eq!(rows.len(), 2 * 4, "{v}");
    for r in rows {
        assert!(r["samples"].as_u64().unwrap_or(0) >= 20, "{r}");
        assert!(r["p50_ns"].as_u64().unwrap_or(0) > 0, "{r}");
        assert!(r["mechanism"].is_string(), "{r}");
    }
}

#[test]
fn bench_table_and_usage_errors() {
    let out = shmkit()
        .args(["bench", "--size", "64", "--iters", "20", "--rounds", "1"])
        .output()
        .expect("run shmkit");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("SIZE"), "{text}");
    for m in ["floor", "shmkit", "pipe", "unix-socket"] {
        assert!(text.contains(m), "{m}: {text}");
    }

    let bad = shmkit()
        .args(["bench", "--size", "7"])
        .output()
        .expect("run shmkit");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.starts_with("shmkit: "), "{err}");
    assert!(bad.stdout.is_empty());
}
