//! The library API embedded in one process, and the importer's handling of
//! sequence gaps, driven by a raw Zenoh publisher.

mod support;

use std::sync::Arc;
use std::time::Duration;

use shmkit::channel::pubsub::{Policy, PubSubOptions, Publisher};
use shmkit::channel::ring::{Receiver, RingOptions, Sender};
use shmkit::channel::RecvError;
use shmkit::segment::Lifetime;
use shmkit_bridge::wire::{Header, Kind};
use shmkit_bridge::{
    zenoh, Ended, ExportOptions, ImportOptions, SessionOptions, Shutdown, Sink, Stats,
};
use support::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn unique(tag: &str) -> String {
    format!("bl{}-{tag}", std::process::id())
}

#[test]
fn export_and_import_embedded_in_one_process() {
    let a = unique("emb-a");
    let b = unique("emb-b");
    let opts = |n: u64| RingOptions::new(n, 64).lifetime(Lifetime::UntilLastDetach);
    let mut tx = Sender::create(&a, &opts(16)).unwrap();
    let src = Receiver::open(&a).unwrap();
    let sink = Sender::create(&b, &opts(16)).unwrap();
    let mut out = Receiver::open(&b).unwrap();
    let port = free_port();
    let rt = rt();
    let key = format!("shmkit-test/{}", unique("emb"));
    let (e, i) = rt.block_on(async {
        let sb = SessionOptions::loopback(&[endpoint(port)], &[])
            .open()
            .await
            .unwrap();
        let sa = SessionOptions::loopback(&[], &[endpoint(port)])
            .open()
            .await
            .unwrap();
        let stats = Arc::new(Stats::default());
        let imp = {
            let key = key.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let o = ImportOptions {
                    once: true,
                    stats,
                    ..Default::default()
                };
                shmkit_bridge::import_with(&sb, &key, sink, o).await
            })
        };
        let exp = {
            let key = key.clone();
            tokio::spawn(async move { shmkit_bridge::export(&sa, src, &key).await })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match out.recv_timeout(Duration::from_secs(60)) {
                    Ok(m) => got.push(m),
                    Err(RecvError::Disconnected) => break got,
                    Err(e) => panic!("recv: {e}"),
                }
            }
        });
        let writer = std::thread::spawn(move || {
            for i in 0..1000u32 {
                tx.send(&i.to_le_bytes()).unwrap();
            }
            // Dropping the sender closes ring A: the end travels to B.
        });
        writer.join().unwrap();
        let e = exp.await.unwrap();
        let i = imp.await.unwrap();
        let got = reader.join().unwrap();
        let want: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        assert_eq!(got, want);
        assert!(
            stats
                .line()
                .starts_with("messages=1000 bytes=4000 dropped=0"),
            "{}",
            stats.line()
        );
        (e, i)
    });
    assert_eq!(e.unwrap(), Ended::Closed);
    assert_eq!(i.unwrap(), Ended::Closed);
}

/// Message `i` of the mixed stream: small and large (fragmented by Zenoh,
/// so handed to the importer's delivery thread) interleaved; the bytes say
/// which message they are, so a reordered, torn or mixed-up one is caught.
fn mixed(i: u32) -> Vec<u8> {
    let len = match i % 4 {
        0 => 8,
        1 => 200 << 10,
        2 => 13,
        _ => (1 << 20) + 3,
    };
    let mut v: Vec<u8> = (0..len as u32)
        .map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(131)) as u8)
        .collect();
    v[..4].copy_from_slice(&i.to_le_bytes());
    v
}

/// Small samples are delivered inline, large ones by the importer's
/// delivery thread: the order across the two paths is kept, the end of
/// the stream comes after the last large message, and with a reader on B
/// that starts late, back-pressure holds everything (nothing lost) and
/// A's sender blocks.
#[test]
fn mixed_small_and_large_samples_keep_order_under_back_pressure() {
    const N: u32 = 96;
    let a = unique("mix-a");
    let b = unique("mix-b");
    let opts = |n: u64| RingOptions::new(n, 2 << 20).lifetime(Lifetime::UntilLastDetach);
    let mut tx = Sender::create(&a, &opts(4)).unwrap();
    let src = Receiver::open(&a).unwrap();
    let sink = Sender::create(&b, &opts(4)).unwrap();
    let mut out = Receiver::open(&b).unwrap();
    let port = free_port();
    let rt = rt();
    let key = format!("shmkit-test/{}", unique("mix"));
    let (e, i) = rt.block_on(async {
        let sb = SessionOptions::loopback(&[endpoint(port)], &[])
            .open()
            .await
            .unwrap();
        let sa = SessionOptions::loopback(&[], &[endpoint(port)])
            .open()
            .await
            .unwrap();
        let stats = Arc::new(Stats::default());
        let imp = {
            let key = key.clone();
            let o = ImportOptions {
                once: true,
                stats: stats.clone(),
                ..Default::default()
            };
            tokio::spawn(async move { shmkit_bridge::import_with(&sb, &key, sink, o).await })
        };
        let exp = {
            let key = key.clone();
            tokio::spawn(async move { shmkit_bridge::export(&sa, src, &key).await })
        };
        let sent = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let writer = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                for i in 0..N {
                    tx.send(&mixed(i)).unwrap();
                    sent.store(i + 1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        // ~50 MiB in all; rings of 4 slots, Zenoh's and TCP's buffers and
        // the importer's queue hold far less: with nobody reading B, A's
        // sender must stop short of the end.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = sent.load(std::sync::atomic::Ordering::Relaxed);
        assert!(before < N, "A's sender did not block: sent all {N}");
        // Drains to the end even after a wrong message (a reader that
        // stopped would block the whole pipeline): returns the count and
        // the first wrong message.
        let reader = std::thread::spawn(move || {
            let mut n = 0u32;
            let mut wrong = None;
            loop {
                match out.recv_timeout(Duration::from_secs(60)) {
                    Ok(m) => {
                        if wrong.is_none() && m != mixed(n) {
                            let first = m
                                .get(..4)
                                .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
                            wrong = Some(format!(
                                "message {n}: got len {} starting {first:?}",
                                m.len()
                            ));
                        }
                        n += 1;
                        // Slow down now and then: the delivery thread is
                        // then busy when the next small samples arrive.
                        if n % 8 == 0 {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    Err(RecvError::Disconnected) => break (n, wrong),
                    Err(e) => break (n, Some(format!("recv: {e}"))),
                }
            }
        });
        writer.join().unwrap();
        let limit = Duration::from_secs(120);
        let e = tokio::time::timeout(limit, exp)
            .await
            .expect("export hangs")
            .unwrap();
        let i = tokio::time::timeout(limit, imp)
            .await
            .expect("import hangs")
            .unwrap();
        assert_eq!(reader.join().unwrap(), (N, None));
        assert!(
            stats.line().contains("dropped=0 missed_local=0 rejected=0"),
            "{}",
            stats.line()
        );
        (e, i)
    });
    assert_eq!(e.unwrap(), Ended::Closed);
    assert_eq!(i.unwrap(), Ended::Closed);
}

#[test]
fn shutdown_stops_an_idle_export_and_closes_its_role() {
    let a = unique("idle-a");
    let seg = RingOptions::new(4, 64)
        .lifetime(Lifetime::UntilLastDetach)
        .create(&a)
        .unwrap();
    let src = Receiver::open(&a).unwrap();
    let rt = rt();
    rt.block_on(async {
        let port = free_port();
        let s = SessionOptions::loopback(&[endpoint(port)], &[])
            .open()
            .await
            .unwrap();
        let shutdown = Shutdown::default();
        let o = ExportOptions {
            shutdown: shutdown.clone(),
            ..Default::default()
        };
        let t = tokio::spawn(async move {
            shmkit_bridge::export_with(&s, src, "shmkit-test/idle", o).await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        shutdown.trigger();
        let r = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("export did not stop");
        assert_eq!(r.unwrap().unwrap(), Ended::Shutdown);
    });
    let st = shmkit::channel::ring::stats(&seg).unwrap();
    assert_eq!(st.consumer, shmkit::channel::PeerState::Closed);
}

/// A raw Zenoh publisher plays the exporter and skips sequence numbers:
/// the importer counts them as dropped, in its log and its `--stats`
/// line, and still delivers every sample it got, in order. The importer
/// runs from a `--config` file (JSON5).
#[test]
fn importer_counts_sequence_gaps_in_log_and_stats_line() {
    let b = Machine::new("b");
    let topic = b.name("gaps");
    let port = free_port();
    let cfg = b.dir.join("zenoh.json5");
    std::fs::write(
        &cfg,
        format!(
            "{{ mode: \"peer\", listen: {{ endpoints: [\"tcp/127.0.0.1:{port}\"] }},\n\
             scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }} }}\n"
        ),
    )
    .unwrap();
    let key = format!("shmkit-test/{}", unique("gaps"));
    let cfg_s = cfg.to_str().unwrap().to_owned();
    let mut imp = b.spawn(
        "importer",
        b.bridge(&[
            "-v",
            "import",
            &key,
            "--into",
            &topic,
            "--slots",
            "8",
            "--slot-size",
            "64",
            "--once",
            "--stats",
            "0.2",
            "--config",
            &cfg_s,
        ]),
    );
    wait_listening(port, Duration::from_secs(30));
    let out = b.dir.join("gaps.out");
    let mut recv = {
        let mut c = b.command(shmkit_bin());
        c.args(["recv", &topic, "--timeout", "60s"])
            .stdout(std::fs::File::create(&out).unwrap());
        // The importer creates the topic; recv must start after that.
        let end = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut st = b.command(shmkit_bin());
            st.args(["stat", &topic])
                .stderr(std::process::Stdio::null());
            if st.status().unwrap().success() {
                break;
            }
            assert!(std::time::Instant::now() < end);
            std::thread::sleep(Duration::from_millis(50));
        }
        b.spawn("recv", c)
    };
    rt().block_on(async {
        let s = SessionOptions::loopback(&[], &[endpoint(port)])
            .open()
            .await
            .unwrap();
        let p = s.declare_publisher(key.clone()).await.unwrap();
        while !p.matching_status().await.unwrap().matching() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ack = s
            .declare_subscriber(shmkit_bridge::wire::ack_key(7))
            .await
            .unwrap();
        for (seq, kind, body) in [
            (0, Kind::Data, "zero\n"),
            (1, Kind::Data, "one\n"),
            (5, Kind::Data, "five\n"),
            (6, Kind::End, ""),
        ] {
            let h = Header {
                stream: 7,
                seq,
                kind,
            }
            .encode();
            p.put(body.as_bytes().to_vec())
                .attachment(h.to_vec())
                .await
                .unwrap();
        }
        // The importer acknowledges the end once everything is delivered.
        tokio::time::timeout(Duration::from_secs(30), ack.recv_async())
            .await
            .expect("no acknowledgement")
            .unwrap();
        let _ = s.close().await;
    });
    let s = imp.expect_exit(Duration::from_secs(60));
    assert!(s.success(), "{}", imp.stderr());
    let s = recv.expect_exit(Duration::from_secs(60));
    assert!(s.success(), "{}", recv.stderr());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "zero\none\nfive\n");
    let err = imp.stderr();
    assert!(
        err.contains("messages lost on the way") && err.contains("lost=3"),
        "{err}"
    );
    assert!(
        err.contains("shmkit-bridge: stats import")
            && err.contains("messages=3 bytes=14 dropped=3"),
        "{err}"
    );
    b.clean();
}

/// A pub/sub sink with drop-oldest never waits for a local subscriber;
/// a sample larger than the slots is refused and counted.
#[test]
fn drop_oldest_sink_does_not_wait_and_oversized_samples_are_counted() {
    let name = unique("dropsink");
    let p = Publisher::create(
        &name,
        &PubSubOptions::new(4, 64, 2)
            .policy(Policy::DropOldest)
            .lifetime(Lifetime::UntilLastDetach),
    )
    .unwrap();
    let rt = rt();
    let port = free_port();
    rt.block_on(async {
        let sb = SessionOptions::loopback(&[endpoint(port)], &[])
            .open()
            .await
            .unwrap();
        let sa = SessionOptions::loopback(&[], &[endpoint(port)])
            .open()
            .await
            .unwrap();
        let stats = Arc::new(Stats::default());
        let key = format!("shmkit-test/{name}");
        let imp = {
            let key = key.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let o = ImportOptions {
                    once: true,
                    stats,
                    ..Default::default()
                };
                shmkit_bridge::import_with(&sb, &key, Sink::PubSub(p, Policy::DropOldest), o).await
            })
        };
        let publ = sa.declare_publisher(key.clone()).await.unwrap();
        while !publ.matching_status().await.unwrap().matching() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for seq in 0..10u64 {
            let h = Header {
                stream: 9,
                seq,
                kind: Kind::Data,
            }
            .encode();
            publ.put(vec![seq as u8; 16])
                .attachment(h.to_vec())
                .await
                .unwrap();
        }
        // Larger than the 64-byte slots: refused, counted, logged.
        let h = Header {
            stream: 9,
            seq: 10,
            kind: Kind::Data,
        }
        .encode();
        publ.put(vec![0u8; 100])
            .attachment(h.to_vec())
            .await
            .unwrap();
        let h = Header {
            stream: 9,
            seq: 11,
            kind: Kind::End,
        }
        .encode();
        publ.put(Vec::<u8>::new())
            .attachment(h.to_vec())
            .await
            .unwrap();
        let r = tokio::time::timeout(Duration::from_secs(30), imp)
            .await
            .expect("import stuck");
        assert_eq!(r.unwrap().unwrap(), Ended::Closed);
        assert_eq!(
            stats.line(),
            "messages=10 bytes=160 dropped=0 missed_local=0 rejected=1"
        );
        let _ = zenoh::Session::close(&sa).await;
    });
}

/// Whether `p` lies in a mapping of the shared-memory file of segment
/// `name` in this process (`/proc/self/maps`).
fn in_mapping_of(p: *const u8, name: &str) -> bool {
    let a = p as usize;
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("/dev/shm/") && l.contains(name))
        .any(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            let lo = usize::from_str_radix(lo, 16).unwrap();
            let hi = usize::from_str_radix(hi, 16).unwrap();
            (lo..hi).contains(&a)
        })
}

/// A 200 KiB message (above the zero-copy threshold) that says which
/// one it is in every byte.
fn big(i: u8) -> Vec<u8> {
    (0..200u32 << 10)
        .map(|k| (k as u8).wrapping_mul(7) ^ i)
        .collect()
}

/// The local end of `zero_copy_export_*`: the channel on A, its sender.
enum Local {
    Ring(Sender),
    PubSub(Publisher),
}

impl Local {
    /// Sends without waiting; false if no slot is free.
    fn try_send(&mut self, m: &[u8]) -> bool {
        let r = match self {
            Local::Ring(s) => s.try_send(m),
            Local::PubSub(p) => p.try_send(m),
        };
        match r {
            Ok(()) => true,
            Err(shmkit::channel::SendError::Full) => false,
            Err(e) => panic!("send: {e}"),
        }
    }
}

/// A large message is put from its slot (Zenoh's payload points into the
/// channel's mapping), and the slot stays held while Zenoh holds the
/// payload: here a subscriber of the exporter's own session keeps the
/// samples. The sender finds no free slot meanwhile, the held bytes stay
/// intact, and once the sample is dropped the stream goes on.
fn zero_copy_export_holds_the_slot(local: Local, source: shmkit_bridge::Source, name: &str) {
    let mut local = local;
    let rt = rt();
    rt.block_on(async {
        let s = SessionOptions::loopback(&[], &[]).open().await.unwrap();
        let key = format!("shmkit-test/{name}");
        let (tx, rx) = std::sync::mpsc::channel::<zenoh::sample::Sample>();
        let tx = std::sync::Mutex::new(tx);
        let _sub = s
            .declare_subscriber(key.clone())
            .callback(move |sample| {
                let _ = tx.lock().unwrap().send(sample);
            })
            .await
            .unwrap();
        let shutdown = Shutdown::default();
        let exp = {
            let s = s.clone();
            let key = key.clone();
            let o = ExportOptions {
                wait_for_importer: false,
                shutdown: shutdown.clone(),
                ..Default::default()
            };
            tokio::spawn(async move { shmkit_bridge::export_with(&s, source, &key, o).await })
        };
        let next = |rx: &std::sync::mpsc::Receiver<zenoh::sample::Sample>| {
            rx.recv_timeout(Duration::from_secs(30)).expect("no sample")
        };
        assert!(local.try_send(&big(0)));
        let s0 = tokio::task::block_in_place(|| next(&rx));
        let slices: Vec<&[u8]> = s0.payload().slices().collect();
        assert_eq!(slices.len(), 1, "one buffer, not copied into pieces");
        assert!(
            in_mapping_of(slices[0].as_ptr(), name),
            "the payload is not in the channel's shared memory: copied"
        );
        // Fill the other slots; then none is free: the held one is not
        // given back while Zenoh (our sample) holds it.
        let mut sent = 1u8;
        while sent < 8 && local.try_send(&big(sent)) {
            sent += 1;
        }
        assert!(sent < 8, "the channel never filled");
        std::thread::sleep(Duration::from_millis(300));
        assert!(!local.try_send(&big(sent)), "a slot Zenoh holds was freed");
        assert_eq!(s0.payload().to_bytes(), big(0), "held bytes changed");
        drop(s0);
        // The stream goes on, one held sample at a time.
        for i in 1..sent {
            let si = tokio::task::block_in_place(|| next(&rx));
            assert_eq!(si.payload().to_bytes(), big(i), "message {i}");
        }
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !local.try_send(&big(sent)) {
            assert!(std::time::Instant::now() < end, "no slot came free");
            std::thread::sleep(Duration::from_millis(5));
        }
        let last = tokio::task::block_in_place(|| next(&rx));
        assert_eq!(last.payload().to_bytes(), big(sent), "message {sent}");
        drop(last);
        shutdown.trigger();
        let r = tokio::time::timeout(Duration::from_secs(30), exp)
            .await
            .expect("export stuck");
        assert_eq!(r.unwrap().unwrap(), Ended::Shutdown);
        let _ = zenoh::Session::close(&s).await;
    });
}

#[test]
fn zero_copy_export_holds_the_ring_slot_until_zenoh_lets_go() {
    let name = unique("zc-ring");
    let o = RingOptions::new(2, 256 << 10).lifetime(Lifetime::UntilLastDetach);
    let tx = Sender::create(&name, &o).unwrap();
    let src = Receiver::open(&name).unwrap();
    zero_copy_export_holds_the_slot(Local::Ring(tx), src.into(), &name);
}

#[test]
fn zero_copy_export_holds_the_pubsub_slot_until_zenoh_lets_go() {
    let name = unique("zc-pubsub");
    let o = PubSubOptions::new(3, 256 << 10, 1).lifetime(Lifetime::UntilLastDetach);
    let p = Publisher::create(&name, &o).unwrap();
    let sub = shmkit::channel::pubsub::Subscriber::open(&name).unwrap();
    zero_copy_export_holds_the_slot(Local::PubSub(p), sub.into(), &name);
}
