//! The CLI against a full or small `/dev/shm`, names that are not
//! segments, other users' segments, other kinds, and usage mistakes.
//!
//! Scripts that need a small `/dev/shm` or another user run in a private
//! mount namespace (`unshare -m`, an 8 MiB tmpfs on `/dev/shm`) as root,
//! with `runuser -u nobody` for the other user: CI runs as root. Without
//! root these tests FAIL; set `SHMKIT_TEST_NO_UNSHARE=1` to skip them
//! explicitly.

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

const BIN: &str = env!("CARGO_BIN_EXE_shmkit");
const OPT_OUT: &str = "SHMKIT_TEST_NO_UNSHARE";

/// A copy of the binary where user `nobody` may run it (the build
/// directory may be private to root), deleted on drop.
struct PublicBin(std::path::PathBuf);

impl PublicBin {
    fn new() -> PublicBin {
        use std::os::unix::fs::PermissionsExt;
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "shmkit-hardening-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.join("shmkit");
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        PublicBin(dir)
    }
}

impl Drop for PublicBin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `script` with `sh` in a private mount namespace whose /dev/shm is
/// an 8 MiB tmpfs, `$S` set to the shmkit binary. The script marks each
/// step with `step NAME CMD...`, which prints `## NAME rc=N` after the
/// step's merged output. Returns step name -> (exit status, output), or
/// `None` if opted out.
fn in_small_shm(script: &str) -> Option<HashMap<String, (i32, String)>> {
    if std::env::var_os(OPT_OUT).is_some() {
        eprintln!("NOT RUN ({OPT_OUT} is set)");
        return None;
    }
    let public = PublicBin::new();
    let dir = &public.0;
    let bin = dir.join("shmkit");
    let prelude = r###"
mount -t tmpfs -o size=8M shmkit-test /dev/shm || { echo "## mount rc=97"; exit 97; }
step() { name=$1; shift; out=$("$@" 2>&1); rc=$?; printf '%s\n## %s rc=%s\n' "$out" "$name" "$rc"; }
fill() { cat /dev/zero > /dev/shm/filler 2>/dev/null; true; }
"###;
    let out = Command::new("timeout")
        .args(["120", "unshare", "-m", "--propagation", "private", "--"])
        .args(["sh", "-c", &format!("{prelude}\n{script}")])
        .env("S", &bin)
        .env("T", dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run unshare ({e}); set {OPT_OUT}=1 to skip"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.contains("## mount rc="),
        "script in a private /dev/shm failed ({}): is this root? set {OPT_OUT}=1 to skip explicitly\n\
         --- stdout\n{text}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut steps = HashMap::new();
    let mut acc = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("## ") {
            let (name, rc) = rest.rsplit_once(" rc=").expect("step line");
            steps.insert(
                name.to_owned(),
                (rc.parse().unwrap(), std::mem::take(&mut acc)),
            );
        } else {
            acc.push_str(line);
            acc.push('\n');
        }
    }
    Some(steps)
}

#[track_caller]
fn step<'a>(steps: &'a HashMap<String, (i32, String)>, name: &str, rc: i32) -> &'a str {
    let (got, out) = steps
        .get(name)
        .unwrap_or_else(|| panic!("step {name} did not run: {steps:#?}"));
    assert_eq!(*got, rc, "step {name}: {out}");
    out
}

#[track_caller]
fn says_no_space(out: &str) {
    for part in ["does not fit", "/dev/shm has", "free", "--shm-size"] {
        assert!(out.contains(part), "{part:?} missing from: {out}");
    }
    assert!(out.starts_with("shmkit: "), "{out}");
}

#[test]
fn no_space_at_every_kind_and_in_the_demo_is_an_error() {
    let Some(s) = in_small_shm(
        r#"
step raw $S create big --size 16MiB
step huge $S create huge --size 100TiB
step ring $S create r --kind ring --capacity 1024 --max-message 64KiB
step pubsub $S create p --kind pubsub --slots 64 --slot-size 1MiB --max-subscribers 2
step demo $S demo --size 16MiB
step left_after_big ls -A /dev/shm
fill
step full_raw $S create small --size 1
step full_mutex $S mutex create m
step full_sem $S sem create s
step full_event $S event create e
step full_ring $S create r2 --kind ring --capacity 4 --max-message 64
step full_pubsub $S create p2 --kind pubsub --slots 2 --slot-size 64 --max-subscribers 1
step full_demo $S demo --size 1KiB
step left_after_full ls -A /dev/shm
"#,
    ) else {
        return;
    };
    for name in ["raw", "huge", "ring", "pubsub"] {
        says_no_space(step(&s, name, 1));
    }
    assert!(step(&s, "huge", 1).contains("100 TiB"));
    // The demo says why it failed (A's error), not just that it did.
    let demo = step(&s, "demo", 1);
    assert!(
        demo.contains("does not fit") && demo.contains("--shm-size"),
        "{demo}"
    );
    assert_eq!(step(&s, "left_after_big", 0).trim(), "");
    for name in [
        "full_raw",
        "full_mutex",
        "full_sem",
        "full_event",
        "full_ring",
        "full_pubsub",
    ] {
        says_no_space(step(&s, name, 1));
    }
    let demo = step(&s, "full_demo", 1);
    assert!(demo.contains("does not fit"), "{demo}");
    assert_eq!(step(&s, "left_after_full", 0).trim(), "filler");
}

#[test]
fn writes_and_sends_into_a_full_dev_shm_never_sigbus() {
    let Some(s) = in_small_shm(
        r#"
step create_seg $S create seg --size 2MiB
step create_r $S create r --kind ring --capacity 16 --max-message 1KiB
step create_sp $S create sp --size 1MiB --sparse
head -c 2097152 /dev/urandom > $T/in.bin
fill
step df df --output=avail /dev/shm
step write $S write seg $T/in.bin
step read_back sh -c '$S read seg | cmp - $T/in.bin && echo same'
step send sh -c 'printf "one\ntwo\n" | $S send r'
step recv $S recv r
step overflow sh -c 'head -c 2097153 /dev/zero | $S write seg'
step sparse_read sh -c '$S read sp | wc -c'
step sparse_write sh -c 'head -c 1048576 /dev/zero | $S write sp'
"#,
    ) else {
        return;
    };
    // Each creation is checked, so that a failure names its cause
    // instead of surfacing later as "no such segment".
    for name in ["create_seg", "create_r", "create_sp"] {
        step(&s, name, 0);
    }
    assert!(step(&s, "df", 0).trim().ends_with('0'), "not full");
    step(&s, "write", 0);
    assert_eq!(step(&s, "read_back", 0), "same\n");
    step(&s, "send", 0);
    assert_eq!(step(&s, "recv", 0), "one\ntwo\n");
    assert!(step(&s, "overflow", 1).contains("does not fit"));
    // A sparse segment in a full /dev/shm: reading its holes takes no
    // memory, and a write that finds no room is an error; neither SIGBUS.
    assert_eq!(step(&s, "sparse_read", 0).trim(), "1048576");
    says_no_space(step(&s, "sparse_write", 1));
}

/// A peer truncating the file while `read` copies: `read` uses `pread`,
/// so it ends with an error, never SIGBUS (exit 135). A slow consumer
/// keeps `read` blocked on its output pipe after its first 1 MiB chunk,
/// and the truncation comes then.
#[test]
fn read_of_a_segment_truncated_mid_copy_never_sigbus() {
    let Some(s) = in_small_shm(
        r#"
$S create t --size 6MiB
{ $S read t 2> $T/err; echo "read-exit=$?" >> $T/err; } | { sleep 1; cat > /dev/null; } &
sleep 0.5
truncate -s 8192 /dev/shm/shmkit.t
wait
step race cat $T/err
"#,
    ) else {
        return;
    };
    let out = step(&s, "race", 0);
    // Not read-exit=135 (SIGBUS). Under heavy load the truncation may
    // come before `read` opens the segment: then the header check at open
    // refuses it (also an error).
    assert!(out.ends_with("read-exit=1\n"), "{out}");
    assert!(
        out.contains("was truncated to 8192 bytes")
            || out.contains("header says 6295552 bytes but the file has 8192"),
        "{out}"
    );
}

#[test]
fn ulimit_f_is_an_error_not_sigxfsz() {
    let Some(s) = in_small_shm(
        r#"
$S create seg --size 1MiB
step create sh -c 'ulimit -f 100 && exec $S create big --size 1MiB'
step read sh -c 'ulimit -f 100 && exec $S read seg $T/out.bin'
"#,
    ) else {
        return;
    };
    // Not 153 (killed by SIGXFSZ).
    let out = step(&s, "create", 1);
    assert!(
        out.contains("file size limit") && out.contains("ulimit -f"),
        "{out}"
    );
    let out = step(&s, "read", 1);
    assert!(out.contains("File too large"), "{out}");
}

#[test]
fn fifo_directory_and_symlink_are_not_segments_and_nothing_blocks() {
    let Some(s) = in_small_shm(
        r#"
$S create real --size 4KiB
mkfifo /dev/shm/shmkit.fifo
mkdir /dev/shm/shmkit.dir
ln -s /dev/shm/shmkit.real /dev/shm/shmkit.link
step ls timeout 20 $S ls
step gc timeout 20 $S gc
for n in fifo dir link; do
  step stat_$n timeout 20 $S stat $n
  step read_$n timeout 20 $S read $n
  step write_$n sh -c "echo x | timeout 20 $S write $n"
  step attach_$n timeout 20 $S attach $n --for 1s
  step create_$n timeout 20 $S create $n --size 1
  step mutex_$n timeout 20 $S mutex create $n
  step rm_when_unused_$n timeout 20 $S rm --when-unused $n
  step recv_$n timeout 20 $S recv $n
done
step ls_json timeout 20 $S ls --json
"#,
    ) else {
        return;
    };
    let ls = step(&s, "ls", 0);
    for n in ["fifo", "dir", "link"] {
        let line = ls.lines().find(|l| l.starts_with(n)).expect(n);
        assert!(line.contains("not-a-segment"), "{ls}");
    }
    assert!(ls
        .lines()
        .any(|l| l.starts_with("real") && l.contains("raw")));
    let gc = step(&s, "gc", 0);
    for n in ["fifo", "dir", "link"] {
        assert!(gc.contains(&format!("skipped {n} (not-a-segment")), "{gc}");
    }
    for (n, what) in [
        ("fifo", "FIFO"),
        ("dir", "directory"),
        ("link", "symbolic link"),
    ] {
        for op in [
            "stat",
            "read",
            "write",
            "attach",
            "create",
            "mutex",
            "rm_when_unused",
            "recv",
        ] {
            let out = step(&s, &format!("{op}_{n}"), 1); // 124 = blocked
            assert!(
                out.contains(what) && out.contains("not a shmkit segment"),
                "{op} {n}: {out}"
            );
        }
    }
    let json: serde_json::Value = serde_json::from_str(step(&s, "ls_json", 0)).unwrap();
    let kinds: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["not-a-segment", "not-a-segment", "not-a-segment", "raw"]
    );
}

#[test]
fn read_write_attach_refuse_another_users_segment_unless_allowed() {
    let Some(s) = in_small_shm(
        r#"
# The attack: another user creates the name first, mode 666.
step trap runuser -u nobody -- $S create frames --size 4KiB --mode 666
step victim_write sh -c 'echo secret | $S write frames'
step victim_read $S read frames --len 6
step victim_attach $S attach frames --for 100ms
step spy sh -c 'runuser -u nobody -- $S read frames --len 6 | od -c | head -1'
step victim_write_opt_in sh -c 'echo hello | $S write frames --allow-any-owner'
step victim_read_opt_in $S read frames --len 5 --allow-any-owner
step victim_attach_opt_in $S attach frames --for 100ms --allow-any-owner
# And the other way round.
$S create mine --size 4KiB --mode 666
step other_read runuser -u nobody -- $S read mine
step other_write sh -c 'echo x | runuser -u nobody -- $S write mine'
step other_attach runuser -u nobody -- $S attach mine --for 100ms
"#,
    ) else {
        return;
    };
    step(&s, "trap", 0);
    for name in ["victim_write", "victim_read", "victim_attach"] {
        let out = step(&s, name, 1);
        assert!(
            out.contains("owned by uid 65534") && out.contains("--allow-any-owner"),
            "{name}: {out}"
        );
    }
    // Nothing of the victim's reached the segment.
    assert!(!step(&s, "spy", 0).contains('s'), "secret leaked");
    step(&s, "victim_write_opt_in", 0);
    assert_eq!(step(&s, "victim_read_opt_in", 0), "hello\n");
    step(&s, "victim_attach_opt_in", 0);
    for name in ["other_read", "other_write", "other_attach"] {
        assert!(step(&s, name, 1).contains("owned by uid 0"), "{name}");
    }
}

#[test]
fn rm_when_unused_by_a_user_who_may_not_delete_fails_before_marking() {
    let Some(s) = in_small_shm(
        r#"
$S create v --size 4KiB --mode 666
step rm runuser -u nobody -- $S rm --when-unused v
step stat $S stat v --json
step ls $S ls
step read $S read v --len 1
step rm_owner $S rm --when-unused v
step gone $S stat v
"#,
    ) else {
        return;
    };
    assert!(step(&s, "rm", 1).contains("permission denied"));
    let v: serde_json::Value = serde_json::from_str(step(&s, "stat", 0)).unwrap();
    assert_eq!(v["marked_for_removal"], false, "{v}");
    assert!(step(&s, "ls", 0).lines().any(|l| l.starts_with("v ")));
    step(&s, "read", 0);
    step(&s, "rm_owner", 0);
    step(&s, "gone", 1);
}

#[test]
fn stat_marks_lock_holders_of_another_uid_as_foreign() {
    let Some(s) = in_small_shm(
        r#"
$S create v --size 4KiB --mode 644
# Read access is enough to take the lock that counts as an attachment.
# The holder keeps the lock until we are done (bounded: 20 s).
done_file=/tmp/shmkit-test-foreign-$$
rm -f "$done_file"
runuser -u nobody -- flock -s /dev/shm/shmkit.v sh -c \
  'i=0; while [ ! -e "$1" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done' _ "$done_file" &
i=0; while [ $i -lt 200 ] && ! $S stat v | grep -q '^attached: *1$'; do sleep 0.05; i=$((i+1)); done
step stat $S stat v
step json $S stat v --json
touch "$done_file"
wait
rm -f "$done_file"
"#,
    ) else {
        return;
    };
    let text = step(&s, "stat", 0);
    let pids = text.lines().find(|l| l.starts_with("pids:")).unwrap();
    assert!(pids.contains("(foreign: uid 65534)"), "{text}");
    let v: serde_json::Value = serde_json::from_str(step(&s, "json", 0)).unwrap();
    assert_eq!(v["foreign_pids"].as_array().unwrap().len(), 1, "{v}");
}

/// A unique name, removed when dropped.
struct Name(String);

impl Name {
    fn new(tag: &str) -> Name {
        static N: AtomicUsize = AtomicUsize::new(0);
        Name(format!(
            "th-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

impl Drop for Name {
    fn drop(&mut self) {
        let _ = shmkit::segment::remove(&self.0);
    }
}

fn shmkit(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run shmkit")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn write_and_read_refuse_other_kinds_unless_forced() {
    let m = Name::new("mutex");
    let r = Name::new("ring");
    assert!(shmkit(&["mutex", "create", &m.0]).status.success());
    assert!(shmkit(&[
        "create",
        &r.0,
        "--kind",
        "ring",
        "--capacity",
        "4",
        "--max-message",
        "64"
    ])
    .status
    .success());
    for (n, kind) in [(&m, "mutex"), (&r, "ring")] {
        for op in ["write", "read"] {
            let o = shmkit(&[op, &n.0]);
            assert_eq!(o.status.code(), Some(1), "{op} {kind}");
            let e = stderr(&o);
            assert!(
                e.contains(&format!("holds a {kind}")) && e.contains("--force"),
                "{e}"
            );
        }
        // The object is intact: `stat` still reads it.
        let o = shmkit(&["stat", &n.0]);
        assert!(o.status.success() && !stderr(&o).contains("corrupt"));
    }
    let o = shmkit(&["read", &m.0, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!o.stdout.is_empty());
}

#[test]
fn usage_errors_keep_clap_detail_after_a_shmkit_line() {
    let check = |args: &[&str], want: &[&str]| {
        let o = shmkit(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(e.starts_with("shmkit: "), "{e}");
        assert_eq!(e.matches("shmkit: ").count(), 1, "{e}");
        for w in want {
            assert!(e.contains(w), "{args:?}: {w:?} missing from {e:?}");
        }
        e
    };
    let e = check(&["create"], &["<NAME>"]);
    assert_eq!(e.lines().count(), 1, "{e}");
    let e = check(&["creat", "x"], &["'creat'", "tip:", "'create'"]);
    assert!(e.lines().nth(1).unwrap().trim_start().starts_with("tip:"));
    check(&["ls", "--jsn"], &["'--jsn'", "tip:", "'--json'"]);
    check(&["create", "x", "--size", "0.1KiB"], &["whole number"]);
    // Keys start with a letter or digit.
    let o = shmkit(&["create", "--size", "1", "--", "-rf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("must start with a letter or a digit"));
}

#[test]
fn sizes_are_si_or_binary_and_fractions_work() {
    let a = Name::new("mb");
    let b = Name::new("frac");
    let size_of = |n: &Name| -> u64 {
        let o = shmkit(&["stat", &n.0, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["size"].as_u64().unwrap()
    };
    // Sparse: this test checks the parser, not the space.
    let o = shmkit(&["create", &a.0, "--size", "64mb", "--sparse"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(size_of(&a), 64_000_000);
    let o = shmkit(&["create", &b.0, "--size", "1.5KiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(size_of(&b), 1536);
    let o = shmkit(&[
        "create",
        "x",
        "--kind",
        "ring",
        "--capacity",
        "4",
        "--max-message",
        "64",
        "--sparse",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--sparse is for raw segments"));
}
