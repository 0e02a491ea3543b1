//! The C API from C: the API test program (also under AddressSanitizer and
//! valgrind), the examples built with their Makefile and pkg-config, and
//! cross-language pairs (C and the `shmkit` CLI, Rust and C).
//!
//! Needs `cc`, `make` and `pkg-config` (and `valgrind` for its test); the
//! library is the one cargo built for this test run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shmkit::segment;
use shmkit::sync::{LockError, NamedMutex};

/// Where `cargo test` put the libshmkit_c.{so,a} it built for this run
/// (target/<profile>/deps: the directory of this test binary; the
/// uplifted copies in target/<profile> are only refreshed by `cargo
/// build`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().expect("deps dir").to_owned()
}

/// The `shmkit` CLI: built by `cargo test --workspace` (or here, when
/// only this package is tested).
fn shmkit_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = lib_dir().parent().expect("target dir").join("shmkit");
        if !bin.exists() {
            let st = Command::new(env!("CARGO"))
                .args(["build", "-p", "shmkit-cli"])
                .status()
                .expect("run cargo build");
            assert!(st.success());
        }
        bin
    })
}

/// The libraries, checked present once.
fn ensure_built() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = lib_dir();
        for f in ["libshmkit_c.a", "libshmkit_c.so"] {
            assert!(dir.join(f).exists(), "{} missing", dir.join(f).display());
        }
        dir
    })
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

/// Compiles C sources against the static library.
fn cc(out: &Path, srcs: &[&Path], extra: &[&str]) {
    let lib = ensure_built().join("libshmkit_c.a");
    let o = Command::new("cc")
        .args(["-g", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("include"))
        .args(extra)
        .args(srcs)
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(out)
        .output()
        .expect("run cc");
    assert!(
        o.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn c_src(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(name)
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// No `shmkit.*` file whose name contains `tag` is left in /dev/shm.
fn assert_clean(tag: &str) {
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(tag))
        .collect();
    assert!(left.is_empty(), "left in /dev/shm: {left:?}");
}

fn api_test_binary(variant: &str, flags: &[&str]) -> PathBuf {
    let out = tmp(&format!("api_test-{variant}"));
    cc(&out, &[&c_src("api_test.c")], flags);
    out
}

fn checks_passed(stdout: &str) -> u32 {
    stdout
        .trim()
        .strip_prefix("api_test: ")
        .and_then(|s| s.strip_suffix(" checks passed"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {stdout:?}"))
}

#[test]
fn api_test_passes() {
    let bin = api_test_binary("plain", &[]);
    let tag = format!("plain{}", std::process::id());
    let out = ok(&Command::new(&bin).arg(&tag).output().unwrap());
    assert!(checks_passed(&out) >= 300, "{out}");
    assert_clean(&tag);
}

#[test]
fn api_test_is_clean_under_address_sanitizer() {
    let bin = api_test_binary(
        "asan",
        &["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
    );
    let tag = format!("asan{}", std::process::id());
    let o = Command::new(&bin)
        .arg(&tag)
        .env("ASAN_OPTIONS", "detect_leaks=1:exitcode=23")
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("Sanitizer"), "{err}");
    assert!(!err.contains("runtime error"), "{err}");
    assert!(checks_passed(&ok(&o)) >= 300);
    assert_clean(&tag);
}

#[test]
fn api_test_is_clean_under_valgrind() {
    let bin = api_test_binary("valgrind", &["-O1"]);
    let tag = format!("vg{}", std::process::id());
    let o = Command::new("valgrind")
        .args([
            "--error-exitcode=23",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "-q",
        ])
        .arg(&bin)
        .arg(&tag)
        .output()
        .expect("valgrind is installed (apt-get install valgrind)");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("=="), "valgrind reported:\n{err}");
    assert!(checks_passed(&ok(&o)) >= 300);
    assert_clean(&tag);
}

/// The functions declared in include/shmkit.h.
fn header_functions() -> Vec<String> {
    let h = std::fs::read_to_string(root().join("include/shmkit.h")).unwrap();
    let mut names: Vec<String> = h
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("//") && !l.starts_with("typedef"))
        .filter_map(|l| {
            let open = l.find('(')?;
            let start = l[..open].rfind(|c: char| !(c.is_alphanumeric() || c == '_'))? + 1;
            let name = &l[start..open];
            name.starts_with("shmkit_").then(|| name.to_owned())
        })
        .collect();
    names.dedup();
    names
}

#[test]
fn every_header_function_is_called_by_a_c_test_or_example() {
    let fns = header_functions();
    assert!(fns.len() >= 60, "{fns:?}");
    let mut code = String::new();
    for dir in [c_src(""), root().join("examples/c")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "c") {
                code += &std::fs::read_to_string(p).unwrap();
            }
        }
    }
    let missing: Vec<&String> = fns
        .iter()
        .filter(|f| !code.contains(&format!("{f}(")))
        .collect();
    assert!(missing.is_empty(), "never called from C: {missing:?}");
}

/// Installs the library, header and shmkit.pc into a prefix with the
/// examples' Makefile, then builds the examples with pkg-config.
fn build_examples(variant: &str, cflags: &str) -> (PathBuf, PathBuf) {
    let prefix = tmp(&format!("prefix-{variant}"));
    let build = tmp(&format!("examples-{variant}"));
    std::fs::create_dir_all(&build).unwrap();
    let examples = root().join("examples/c");
    let make = |args: &[&str]| {
        ok(&Command::new("make")
            .arg("-s")
            .arg("-f")
            .arg(examples.join("Makefile"))
            .arg("-C")
            .arg(&build)
            .arg(format!("PREFIX={}", prefix.display()))
            .arg(format!("LIBSRC={}", ensure_built().display()))
            .args(args)
            .output()
            .expect("run make"))
    };
    make(&["install"]);
    // Built out of tree (make -f), so parallel variants do not collide.
    make(&[&format!("CFLAGS={cflags}"), "all"]);
    // The installed pkg-config file describes the library.
    let pc = ok(&Command::new("pkg-config")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
        .args(["--modversion", "shmkit"])
        .output()
        .unwrap());
    assert_eq!(pc.trim(), env!("CARGO_PKG_VERSION"));
    (prefix, build)
}

fn run_examples(build: &Path, tag: &str) {
    let run = |args: &[&str]| {
        let o = Command::new(build.join(args[0]))
            .args(&args[1..])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("Sanitizer"), "{args:?}: {err}");
        ok(&o)
    };
    let image = format!("ex-image-{tag}");
    let out = run(&["writer_a", &image]);
    assert!(out.contains("wrote 8294400 bytes"), "{out}");
    let out = run(&["reader_b", &image]);
    assert!(
        out.contains("verified 8294400 bytes; segment removed"),
        "{out}"
    );
    assert!(segment::stat(&image).unwrap_err().is_not_found());

    let out = run(&[
        "counter",
        &format!("ex-counter-{tag}"),
        "4",
        "2000",
        "--crash",
    ]);
    assert!(
        out.contains("counter: 8000 (expected 8000), 1 owner death(s) repaired"),
        "{out}"
    );

    let ring = format!("ex-ring-{tag}");
    let mut tx = Command::new(build.join("ring_send"))
        .args([&ring, "500"])
        .spawn()
        .unwrap();
    let out = run(&["ring_recv", &ring, "500"]);
    assert!(out.contains("ring_recv: 500 messages"), "{out}");
    assert!(tx.wait().unwrap().success());
    assert_clean(tag);
}

#[test]
fn examples_build_with_make_and_pkg_config_and_run() {
    let (_prefix, build) = build_examples("plain", "-O2 -g -Wall -Wextra -Werror");
    run_examples(&build, &format!("pl{}", std::process::id()));
}

#[test]
fn examples_are_clean_under_address_sanitizer() {
    let (_prefix, build) = build_examples(
        "asan",
        "-O1 -g -Wall -Wextra -Werror -fsanitize=address,undefined -fno-omit-frame-pointer",
    );
    run_examples(&build, &format!("as{}", std::process::id()));
}

#[test]
fn the_readme_cc_line_builds_an_example() {
    // README "C": cc -I include examples/c/writer_a.c -L LIBDIR -lshmkit ...
    let (prefix, _) = build_examples("readme", "-O2");
    let lib = prefix.join("lib");
    let out = tmp("writer_a-readme");
    ok(&Command::new("cc")
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join("examples/c/writer_a.c"))
        .arg(format!("-L{}", lib.display()))
        .arg("-lshmkit")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap());
    let name = format!("readme-{}", std::process::id());
    ok(&Command::new(&out).arg(&name).output().unwrap());
    segment::remove(&name).unwrap();
}

/// Kills and reaps a child on drop, so a failing test leaves no process.
struct Reap(Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peer() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = tmp("peer");
        cc(&out, &[&c_src("peer.c")], &["-O1"]);
        out
    })
}

fn read_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

#[test]
fn c_ring_sender_with_the_shmkit_recv_cli() {
    let name = format!("xl-ring-{}", std::process::id());
    // Just the sender, linked statically.
    let bin = tmp("ring_send-static");
    cc(&bin, &[&root().join("examples/c/ring_send.c")], &["-O1"]);
    let tx = Reap(Command::new(&bin).args([&name, "300"]).spawn().unwrap());
    let start = Instant::now();
    while segment::stat(&name).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "ring never created"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new(shmkit_bin())
        .args(["recv", &name])
        .output()
        .unwrap();
    let text = ok(&out);
    let want: String = (0..300).map(|i| format!("message {i}\n")).collect();
    assert_eq!(text, want);
    let mut tx = tx;
    assert!(tx.0.wait().unwrap().success());
    segment::remove(&name).unwrap();
}

#[test]
fn rust_publisher_with_a_c_subscriber() {
    use shmkit::channel::pubsub::{PubSubOptions, Publisher};
    let name = format!("xl-ps-{}", std::process::id());
    let mut publisher = Publisher::create(&name, &PubSubOptions::new(8, 4096, 4)).unwrap();
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = segment::remove(&self.0);
        }
    }
    let _rm = Rm(name.clone());
    let mut sub = Reap(
        Command::new(peer())
            .args(["sub", &name, "200"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(read_line(&mut sub.0), "joined\n");
    for i in 0..200usize {
        let mut loan = publisher
            .loan_timeout(100 + i, Duration::from_secs(10))
            .unwrap();
        for (j, b) in loan.iter_mut().enumerate() {
            *b = ((i + j) & 0xff) as u8;
        }
        loan.publish();
    }
    drop(publisher);
    assert_eq!(read_line(&mut sub.0), "ok 200\n");
    assert!(sub.0.wait().unwrap().success());
}

#[test]
fn c_lock_holder_killed_gives_the_rust_locker_owner_died() {
    let name = format!("xl-mx-{}", std::process::id());
    let m = NamedMutex::<()>::create(&name, ()).unwrap();
    struct Rm(String);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = segment::remove(&self.0);
        }
    }
    let _rm = Rm(name.clone());
    let mut holder = Reap(
        Command::new(peer())
            .args(["hold", &name])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(read_line(&mut holder.0), "locked\n");
    assert!(matches!(m.try_lock(), Err(LockError::WouldBlock)));
    holder.0.kill().unwrap(); // SIGKILL
    holder.0.wait().unwrap();
    match m.lock_timeout(Duration::from_secs(10)) {
        Err(LockError::OwnerDied(mut g)) => g.mark_consistent(),
        other => panic!("expected OwnerDied, got {:?}", other.map(|_| ())),
    }
    assert!(m.try_lock().is_ok(), "consistent again");
}
