//! End-to-end tests of `shmkit sysv`, against segments made by a legacy C
//! program (crates/shmkit/tests/c/sysv_legacy.c) and checked with `ipcs -m`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use shmkit::sysv;

const BIN: &str = env!("CARGO_BIN_EXE_shmkit");

fn legacy() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shmkit/tests/c/sysv_legacy.c");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("sysv_legacy_cli-{}", std::process::id()));
        let st = Command::new("cc")
            .args(["-O1", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run cc");
        assert!(st.success());
        out
    })
}

fn unique_key() -> i32 {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    (0x5e00_0000 | ((std::process::id() & 0xffff) << 8) | (n & 0xff)) as i32
}

/// IPC_RMID on drop: nothing is left behind, even when a test fails.
struct Rmid(i32);
impl Drop for Rmid {
    fn drop(&mut self) {
        let _ = sysv::remove_id(self.0);
    }
}

fn shmkit(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run shmkit")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pattern(i: usize, seed: u32) -> u8 {
    ((i as u32).wrapping_mul(31).wrapping_add(seed) & 0xff) as u8
}

#[test]
fn read_and_write_segments_of_a_legacy_program() {
    let key = unique_key();
    let size = 100_000;
    let out = Command::new(legacy())
        .args(["write", &key.to_string(), &size.to_string(), "5"])
        .output()
        .unwrap();
    let id: i32 = ok(&out).trim().parse().unwrap();
    let _g = Rmid(id);
    let hex = sysv::key_hex(key);

    let read = Command::new(BIN)
        .args(["sysv", "read", &hex])
        .output()
        .unwrap();
    let bytes = read.stdout.clone();
    ok(&read);
    assert_eq!(bytes.len(), size);
    assert!(bytes.iter().enumerate().all(|(i, &b)| b == pattern(i, 5)));

    // --id, --offset, --len.
    let part = shmkit(&[
        "sysv",
        "read",
        "--id",
        &id.to_string(),
        "--offset",
        "10",
        "--len",
        "5",
    ]);
    ok(&part);
    assert_eq!(
        part.stdout,
        (10..15).map(|i| pattern(i, 5)).collect::<Vec<_>>()
    );
    // Out of bounds: refused, nothing printed.
    let bad = shmkit(&["sysv", "read", &hex, "--offset", "99999", "--len", "2"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stdout.is_empty());

    // Overwrite with seed 6 through the CLI; the legacy reader checks.
    let data: Vec<u8> = (0..size).map(|i| pattern(i, 6)).collect();
    let mut child = Command::new(BIN)
        .args(["sysv", "write", &hex])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(child.wait().unwrap().success());
    let st = Command::new(legacy())
        .args(["check", &key.to_string(), &size.to_string(), "6"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));

    // Too much input: nothing written.
    let mut child = Command::new(BIN)
        .args(["sysv", "write", &hex, "--offset", "1"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not fit"));
    let st = Command::new(legacy())
        .args(["check", &key.to_string(), &size.to_string(), "6"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0), "an oversized write changed nothing");
}

/// Our rows of `ipcs -m`: key, shmid, owner, perms, bytes, nattch, status.
fn ipcs_row(id: i32) -> Option<Vec<String>> {
    let out = Command::new("ipcs").arg("-m").output().expect("run ipcs");
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let f: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
        (f.len() >= 6 && f[1] == id.to_string()).then_some(f)
    })
}

#[test]
fn ls_agrees_with_ipcs_and_rm_defers_to_the_last_detach() {
    let key = unique_key();
    let hex = sysv::key_hex(key);
    let id: i32 = ok(&shmkit(&[
        "sysv", "create", &hex, "--size", "8KiB", "--mode", "640",
    ]))
    .trim()
    .parse()
    .unwrap();
    let _g = Rmid(id);
    let mut holder = Command::new(legacy())
        .args(["hold", &key.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();

    let compare = |dest: bool| {
        let v: serde_json::Value =
            serde_json::from_str(&ok(&shmkit(&["sysv", "ls", "--json"]))).unwrap();
        let row = v
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["shmid"] == id)
            .cloned()
            .expect("listed");
        let ipcs = ipcs_row(id).expect("ipcs lists it");
        assert_eq!(row["key"].as_str().unwrap(), ipcs[0], "{row} {ipcs:?}");
        assert_eq!(row["owner"].as_str().unwrap(), ipcs[2]);
        assert_eq!(
            row["mode"].as_str().unwrap().trim_start_matches('0'),
            ipcs[3]
        );
        assert_eq!(row["size"].to_string(), ipcs[4]);
        assert_eq!(row["nattch"].to_string(), ipcs[5]);
        assert_eq!(row["dest"], dest);
        assert_eq!(ipcs.get(6).map(String::as_str) == Some("dest"), dest);
        assert_eq!(row["size"], 8192);
        assert_eq!(row["nattch"], 1);
        assert!(row["cpid"].as_i64().unwrap() > 0);
        row
    };
    let row = compare(false);
    assert_eq!(row["key"], hex);
    // The table shows the same segment.
    let table = ok(&shmkit(&["sysv", "ls"]));
    assert!(table.starts_with("KEY"), "{table}");
    assert!(table
        .lines()
        .any(|l| l.starts_with(&hex) && l.contains("8192")));
    let stat = ok(&shmkit(&["sysv", "stat", &hex]));
    assert!(stat.contains(&format!("shmid        {id}")), "{stat}");

    // rm while attached: the key goes, the segment stays (dest) until the
    // holder detaches.
    ok(&shmkit(&["sysv", "rm", &hex]));
    let row = compare(true);
    assert_eq!(row["key"], "0x00000000");
    let st = shmkit(&["sysv", "stat", &hex]);
    assert_eq!(st.status.code(), Some(1), "the key no longer resolves");
    ok(&shmkit(&["sysv", "stat", "--id", &id.to_string()]));
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
    assert!(ipcs_row(id).is_none(), "freed at the last detach");
    let st = shmkit(&["sysv", "stat", "--id", &id.to_string()]);
    assert_eq!(st.status.code(), Some(1));
}

#[test]
fn key_from_uses_ftok_everywhere() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join(format!("ftok-{}", std::process::id()));
    std::fs::write(&file, b"").unwrap();
    let spec = format!("{}:{}", file.display(), 200 + (std::process::id() % 50));
    let key = sysv::ftok(&file, (200 + (std::process::id() % 50)) as u8).unwrap();
    let out = shmkit(&["sysv", "create", "--key-from", &spec, "--size", "16"]);
    let id: i32 = ok(&out).trim().parse().unwrap();
    let _g = Rmid(id);
    assert_eq!(sysv::stat_id(id).unwrap().key, key);
    let input = dir.join(format!("ftok-in-{}", std::process::id()));
    std::fs::write(&input, b"ftok!").unwrap();
    ok(&shmkit(&[
        "sysv",
        "write",
        "--key-from",
        &spec,
        input.to_str().unwrap(),
    ]));
    let _ = std::fs::remove_file(&input);
    let r = shmkit(&["sysv", "read", "--key-from", &spec, "--len", "5"]);
    ok(&r);
    assert_eq!(r.stdout, b"ftok!");
    let st = ok(&shmkit(&["sysv", "stat", "--key-from", &spec, "--json"]));
    assert!(st.contains(&format!("\"shmid\": {id}")), "{st}");
    ok(&shmkit(&["sysv", "rm", "--key-from", &spec]));
    assert!(sysv::stat_id(id).unwrap_err().is_not_found());

    // Usage errors exit 2.
    for args in [
        vec!["sysv", "read"],
        vec!["sysv", "stat", "0x1", "--id", "3"],
        vec!["sysv", "read", "0x1", "--id", "3", "out"],
        vec!["sysv", "read", "--id", "3", "--key-from", "/:1"],
        vec!["sysv", "rm", "--key-from", "nocolon"],
        vec!["sysv", "rm", "notakey"],
    ] {
        let o = shmkit(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
    }
    let _ = std::fs::remove_file(&file);
}
