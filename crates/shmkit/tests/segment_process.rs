//! Segments across real processes: this binary re-executes itself as the
//! peer (see `common::spawn_peer`), and peers are killed with SIGKILL.

mod common;

use std::time::Duration;

use common::{checksum, fill_pattern, read_line, reply, role, spawn_peer, wait_for, Name};
use shmkit::segment::{self, Error, Lifetime, Segment};

const LIMIT: Duration = Duration::from_secs(60);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("peer needs {name}"))
}

/// Peer roles. Each returns after doing its part (the parent waits on the
/// exit status; a panic here is a non-zero exit).
fn play(role: &str) {
    let name = env("SEG");
    match role {
        "writer" => {
            let size: usize = env("SIZE").parse().unwrap();
            let seg = Segment::create(&name, size as u64).unwrap();
            let mut data = vec![0u8; size];
            fill_pattern(&mut data, size as u64);
            seg.write_at(0, &data).unwrap();
            reply(&format!("{:x}", checksum(&data)));
            seg.detach().unwrap();
        }
        "reader" => {
            let seg = Segment::open(&name).unwrap();
            let mut data = vec![0u8; seg.len()];
            seg.read_at(0, &mut data).unwrap();
            reply(&format!("{:x}", checksum(&data)));
        }
        "open_or_create" => {
            let start: u64 = env("START").parse().unwrap();
            // Everyone starts at the same instant to maximise the race.
            while now_ms() < start {
                std::hint::spin_loop();
            }
            let seg = Segment::builder(&name)
                .size(4096)
                .init(|data| {
                    // Marker visible to anyone who can open the segment.
                    data[..8].copy_from_slice(&0xC0FF_EE00_u64.to_le_bytes());
                    Ok(())
                })
                .open_or_create()
                .unwrap();
            let mut marker = [0u8; 8];
            seg.read_at(0, &mut marker).unwrap();
            assert_eq!(
                u64::from_le_bytes(marker),
                0xC0FF_EE00,
                "saw an uninitialised segment"
            );
            reply(if seg.created() { "created" } else { "opened" });
            // Stay attached until told to go, so the segment is shared.
            std::thread::sleep(Duration::from_millis(200));
        }
        "hold" => {
            let seg = Segment::open(&name).unwrap();
            reply(&format!("attached {}", seg.len()));
            std::thread::sleep(LIMIT);
        }
        "create_hold" => {
            let lifetime = if env("LIFETIME") == "until-last-detach" {
                Lifetime::UntilLastDetach
            } else {
                Lifetime::Persistent
            };
            let _seg = Segment::builder(&name)
                .size(4096)
                .lifetime(lifetime)
                .create()
                .unwrap();
            reply("created");
            std::thread::sleep(LIMIT);
        }
        "create_slow_init" => {
            let r = Segment::builder(&name)
                .size(1 << 20)
                .init(|data| {
                    data[0] = 1;
                    reply("initialising");
                    std::thread::sleep(LIMIT);
                    Ok(())
                })
                .create();
            panic!("should have been killed during init: {r:?}");
        }
        "open_denied" => {
            let e = Segment::open(&name).unwrap_err();
            assert!(matches!(e, Error::PermissionDenied { .. }), "got {e}");
            let e = Segment::builder(&name).read_only().open().unwrap_err();
            assert!(matches!(e, Error::PermissionDenied { .. }), "got {e}");
            reply("denied");
        }
        "open_foreign" => {
            // Not the owner: `O_NOATIME` is refused (EPERM) and the open
            // falls back to a plain one, which must work.
            let e = Segment::open(&name).unwrap_err();
            assert!(matches!(e, Error::ForeignOwner { .. }), "got {e}");
            let seg = Segment::builder(&name).allow_any_owner().open().unwrap();
            let mut buf = [0u8; 5];
            seg.read_at(0, &mut buf).unwrap();
            assert!(!seg.detach().unwrap());
            reply(std::str::from_utf8(&buf).unwrap());
        }
        other => panic!("unknown role {other}"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn transfer(test: &str, size: usize) {
    let name = Name::new("xfer");
    let mut w = spawn_peer(
        test,
        "writer",
        &[("SEG", name.0.clone()), ("SIZE", size.to_string())],
    );
    let sent = read_line(&mut w, LIMIT);
    assert!(wait_for(&mut w, LIMIT).success());
    // The writer has detached and exited; a persistent segment stays.
    let mut r = spawn_peer(test, "reader", &[("SEG", name.0.clone())]);
    let got = read_line(&mut r, LIMIT);
    assert!(wait_for(&mut r, LIMIT).success());
    assert_eq!(sent, got, "checksums differ");
    segment::remove(&name).unwrap();
}

#[test]
fn writer_and_reader_processes_4k() {
    match role() {
        Some(r) => play(&r),
        None => transfer("writer_and_reader_processes_4k", 4096),
    }
}

#[test]
fn writer_and_reader_processes_64m() {
    match role() {
        Some(r) => play(&r),
        None => transfer("writer_and_reader_processes_64m", 64 << 20),
    }
}

#[test]
fn open_or_create_from_8_processes_has_exactly_one_creator() {
    const TEST: &str = "open_or_create_from_8_processes_has_exactly_one_creator";
    if let Some(r) = role() {
        return play(&r);
    }
    for _round in 0..3 {
        let name = Name::new("ooc");
        let start = (now_ms() + 300).to_string();
        let mut kids: Vec<_> = (0..8)
            .map(|_| {
                spawn_peer(
                    TEST,
                    "open_or_create",
                    &[("SEG", name.0.clone()), ("START", start.clone())],
                )
            })
            .collect();
        let answers: Vec<String> = kids.iter_mut().map(|k| read_line(k, LIMIT)).collect();
        for k in &mut kids {
            assert!(wait_for(k, LIMIT).success());
        }
        assert_eq!(
            answers.iter().filter(|a| *a == "created").count(),
            1,
            "{answers:?}"
        );
        assert_eq!(
            answers.iter().filter(|a| *a == "opened").count(),
            7,
            "{answers:?}"
        );
    }
}

#[test]
fn killed_peer_of_until_last_detach_segment_does_not_keep_it_alive() {
    const TEST: &str = "killed_peer_of_until_last_detach_segment_does_not_keep_it_alive";
    if let Some(r) = role() {
        return play(&r);
    }
    let name = Name::new("uld-kill");
    let seg = Segment::builder(&name)
        .size(4096)
        .lifetime(Lifetime::UntilLastDetach)
        .create()
        .unwrap();
    let mut peer = spawn_peer(TEST, "hold", &[("SEG", name.0.clone())]);
    assert_eq!(read_line(&mut peer, LIMIT), "attached 4096");
    let pid = peer.id();
    let mut pids = seg.attached_pids();
    assert!(
        pids.contains(&pid) && pids.contains(&std::process::id()),
        "{pids:?}"
    );
    peer.kill().unwrap(); // SIGKILL
    peer.wait().unwrap();
    pids = seg.attached_pids();
    assert_eq!(pids, vec![std::process::id()], "the dead peer still counts");
    assert!(name.exists());
    assert!(
        seg.detach().unwrap(),
        "last detach should remove the segment"
    );
    assert!(!name.exists());
    assert!(Segment::open(&name).unwrap_err().is_not_found());
}

#[test]
fn only_attached_process_killed_then_list_or_gc_collects() {
    const TEST: &str = "only_attached_process_killed_then_list_or_gc_collects";
    if let Some(r) = role() {
        return play(&r);
    }
    let _serial = common::collectors();
    for collector in ["list", "gc", "open", "stat", "create"] {
        let name = Name::new("uld-alone");
        let mut peer = spawn_peer(
            TEST,
            "create_hold",
            &[
                ("SEG", name.0.clone()),
                ("LIFETIME", "until-last-detach".into()),
            ],
        );
        assert_eq!(read_line(&mut peer, LIMIT), "created");
        peer.kill().unwrap();
        peer.wait().unwrap();
        assert!(name.exists(), "nothing removes it before someone looks");
        match collector {
            "list" => assert!(segment::list().unwrap().iter().all(|i| i.name != *name)),
            "gc" => {
                let dry = segment::gc(true).unwrap();
                assert!(dry.iter().any(|c| c.name == *name));
                assert!(name.exists(), "dry run removed it");
                assert!(segment::gc(false).unwrap().iter().any(|c| c.name == *name));
            }
            "open" => assert!(Segment::open(&name).unwrap_err().is_not_found()),
            "stat" => assert!(segment::stat(&name).unwrap_err().is_not_found()),
            "create" => {
                let s = Segment::create(&name, 64).unwrap();
                assert_eq!(s.len(), 64);
                s.detach().unwrap();
                segment::remove(&name).unwrap();
            }
            _ => unreachable!(),
        }
        assert!(!name.exists(), "{collector} did not collect the orphan");
    }
}

#[test]
fn deferred_removal_survives_sigkill_of_the_holders() {
    const TEST: &str = "deferred_removal_survives_sigkill_of_the_holders";
    if let Some(r) = role() {
        return play(&r);
    }
    let _serial = common::collectors();
    // Marked while one peer is attached; the peer is killed; gc collects.
    let name = Name::new("mark");
    Segment::create(&name, 4096).unwrap().detach().unwrap();
    let mut peer = spawn_peer(TEST, "hold", &[("SEG", name.0.clone())]);
    read_line(&mut peer, LIMIT);
    assert!(
        !segment::remove_when_unused(&name).unwrap(),
        "peer is attached"
    );
    assert!(name.exists());
    assert!(matches!(
        Segment::open(&name),
        Err(Error::MarkedForRemoval { .. })
    ));
    assert!(segment::stat(&name).unwrap().marked);
    peer.kill().unwrap();
    peer.wait().unwrap();
    assert!(segment::gc(false).unwrap().iter().any(|c| c.name == *name));
    assert!(!name.exists());

    // Marked with two attached: the normal detach of the last one deletes.
    let name = Name::new("mark2");
    let a = Segment::create(&name, 4096).unwrap();
    let mut peer = spawn_peer(TEST, "hold", &[("SEG", name.0.clone())]);
    read_line(&mut peer, LIMIT);
    assert!(!segment::remove_when_unused(&name).unwrap());
    peer.kill().unwrap();
    peer.wait().unwrap();
    assert!(name.exists());
    assert!(a.detach().unwrap());
    assert!(!name.exists());
}

#[test]
fn persistent_segment_survives_killed_creator_and_gc() {
    const TEST: &str = "persistent_segment_survives_killed_creator_and_gc";
    if let Some(r) = role() {
        return play(&r);
    }
    let _serial = common::collectors();
    let name = Name::new("persist");
    let mut peer = spawn_peer(
        TEST,
        "create_hold",
        &[("SEG", name.0.clone()), ("LIFETIME", "persistent".into())],
    );
    read_line(&mut peer, LIMIT);
    peer.kill().unwrap();
    peer.wait().unwrap();
    assert!(!segment::gc(false).unwrap().iter().any(|c| c.name == *name));
    let info = segment::list()
        .unwrap()
        .into_iter()
        .find(|i| i.name == *name)
        .expect("listed");
    assert_eq!(info.attached, 0);
    let seg = Segment::open(&name).unwrap();
    drop(seg);
    assert!(name.exists());
    segment::remove(&name).unwrap();
}

#[test]
fn permission_denied_for_another_user() {
    const TEST: &str = "permission_denied_for_another_user";
    if let Some(r) = role() {
        return play(&r);
    }
    let name = Name::new("perm");
    if rustix::process::geteuid().is_root() {
        // Root bypasses mode bits: ask as "nobody" (uid 65534) instead.
        let seg = Segment::create(&name, 4096).unwrap();
        assert_eq!(run_as_nobody(TEST, "open_denied", &name), "denied");
        drop(seg);
    } else {
        // Not root: mode 000 denies even the owner.
        let seg = Segment::builder(&name)
            .size(4096)
            .mode(0o000)
            .create()
            .unwrap();
        let e = Segment::open(&name).unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }), "got {e}");
        drop(seg);
    }
}

#[test]
fn creator_killed_during_initialisation_leaves_nothing() {
    const TEST: &str = "creator_killed_during_initialisation_leaves_nothing";
    if let Some(r) = role() {
        return play(&r);
    }
    let _serial = common::collectors();
    let name = Name::new("init-kill");
    let mut peer = spawn_peer(TEST, "create_slow_init", &[("SEG", name.0.clone())]);
    assert_eq!(read_line(&mut peer, LIMIT), "initialising");
    // Mid-initialisation the segment has no name: nobody can open it.
    assert!(Segment::open(&name).unwrap_err().is_not_found());
    peer.kill().unwrap();
    peer.wait().unwrap();
    assert!(!name.exists());
    assert!(segment::list().unwrap().iter().all(|i| i.name != *name));
    // The next create just works.
    let s = Segment::create(&name, 4096).unwrap();
    assert!(s.created());
}

/// Another user's segment (mode 0666), opened with `allow_any_owner`: the
/// open first asks for `O_NOATIME`, which only the owner gets, and must
/// fall back to a plain open. Needs root (the peer runs as uid 65534).
#[test]
fn another_users_segment_opens_with_allow_any_owner() {
    const TEST: &str = "another_users_segment_opens_with_allow_any_owner";
    if let Some(r) = role() {
        return play(&r);
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("{TEST}: NOT RUN (needs root to run a peer as uid 65534)");
        return;
    }
    let name = Name::new("foreign");
    let seg = Segment::builder(&name)
        .size(4096)
        .mode(0o666)
        .create()
        .unwrap();
    seg.write_at(0, b"hello").unwrap();
    assert_eq!(run_as_nobody(TEST, "open_foreign", &name), "hello");
    drop(seg);
}

/// Runs this test binary's `test` as `role` under uid/gid 65534 ("nobody",
/// root only) on segment `name`; returns its reply line once it exited
/// successfully.
fn run_as_nobody(test: &str, role: &str, name: &Name) -> String {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(common::ROLE, role)
        .env("SEG", &name.0)
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run the test binary as uid 65534");
    let line = read_line(&mut child, LIMIT);
    assert!(wait_for(&mut child, LIMIT).success());
    line
}
