//! Request/response: matching under concurrency, client and server death,
//! restart, timeouts.

mod channel_common;

use std::time::{Duration, Instant};

use channel_common::*;
use shmkit::channel::rpc::{Client, RpcError, RpcOptions, Server};
use shmkit::channel::Wait;

/// The reply a test server gives: the request reversed, then its length.
fn answer(req: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = req.iter().rev().copied().collect();
    v.extend_from_slice(&(req.len() as u32).to_le_bytes());
    v
}

/// Removes the service's segments when dropped (also on failure).
struct Service(String);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Server::remove(&self.0);
    }
}

fn connect_retry(name: &str) -> Client {
    let t0 = Instant::now();
    loop {
        match Client::connect(name) {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "cannot connect: {e}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// Child roles: a server (arg: handler delay in microseconds), a caller.
fn child(role: &str, name: &str, arg: u64) {
    match role {
        "server" => {
            let mut s = Server::create(name, &RpcOptions::new().remove_on_drop(false)).unwrap();
            s.serve(|req| {
                if arg > 0 {
                    std::thread::sleep(Duration::from_micros(arg));
                }
                answer(req)
            })
            .unwrap();
        }
        "caller" => {
            let mut c = connect_retry(name);
            let mut i = 0u64;
            loop {
                let req = i.to_le_bytes();
                assert_eq!(c.call(&req).unwrap(), answer(&req));
                i += 1;
            }
        }
        r => panic!("unknown role {r}"),
    }
}

#[test]
fn call_reply_timeout_and_limits() {
    let name = unique("rpc-basic");
    let _s = Service(name.clone());
    let mut server = Server::create(&name, &RpcOptions::new().clients(2).max_request(64)).unwrap();
    assert!(matches!(
        Server::create(&name, &RpcOptions::new()),
        Err(RpcError::ServerRunning(_))
    ));
    let mut a = Client::connect(&name).unwrap();
    let mut b = Client::connect(&name).unwrap();
    assert_ne!(a.slot(), b.slot());
    assert!(matches!(
        Client::connect(&name),
        Err(RpcError::NoSlot { slots: 2, .. })
    ));
    // Nobody serves yet: a timed call gives up.
    assert!(matches!(
        a.call_timeout(b"late", Duration::from_millis(50)),
        Err(RpcError::Timeout)
    ));
    assert!(matches!(
        a.call(&[0; 65]),
        Err(RpcError::TooLarge { len: 65, max: 64 })
    ));
    let h = std::thread::spawn(move || {
        // The late request is served first; its reply must be discarded.
        for _ in 0..3 {
            server.serve_one(Wait::Forever, answer).unwrap();
        }
        server
    });
    assert_eq!(a.call(b"hello").unwrap(), answer(b"hello"));
    assert_eq!(b.call(b"").unwrap(), answer(b""));
    let mut server = h.join().unwrap();
    // Zero-copy on both sides.
    let h = std::thread::spawn(move || {
        let (t, n) = server.recv_with(Wait::Forever, |r| r.len()).unwrap();
        server.reply_with(t, n, |b| b.fill(7)).unwrap();
        server
    });
    let sum = a
        .call_with(
            10,
            Wait::Forever,
            |b| b.fill(1),
            |r| r.iter().map(|&x| u32::from(x)).sum::<u32>(),
        )
        .unwrap();
    assert_eq!(sum, 70);
    let server = h.join().unwrap();
    drop(b);
    assert_eq!(Client::connect(&name).unwrap().slot(), 1 - a.slot());
    drop(server); // removes the service: calls now fail cleanly
    assert!(matches!(
        a.call_timeout(b"x", Duration::from_secs(5)),
        Err(RpcError::ServerClosed)
    ));
}

/// 8 client threads x 10,000 calls against a server process: every reply
/// is the answer to its own request.
#[test]
fn eight_clients_ten_thousand_calls_each() {
    if let Some((role, name, arg)) = child_role() {
        return child(&role, &name, arg);
    }
    let name = unique("rpc-8x");
    let _s = Service(name.clone());
    let mut server = spawn("eight_clients_ten_thousand_calls_each", "server", &name, 0);
    let clients: Vec<_> = (0..8u64)
        .map(|k| {
            let name = name.clone();
            std::thread::spawn(move || {
                let mut c = connect_retry(&name);
                let mut rng = Rng(k * 7919 + 1);
                for i in 0..10_000u64 {
                    let len = (rng.next() % 64) as usize;
                    let mut req = vec![0u8; 16 + len];
                    req[..8].copy_from_slice(&k.to_le_bytes());
                    req[8..16].copy_from_slice(&i.to_le_bytes());
                    req[16..].fill(i as u8);
                    let rep = c.call_timeout(&req, Duration::from_secs(30)).unwrap();
                    assert_eq!(rep, answer(&req), "client {k} call {i}: wrong reply");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(server.try_wait().unwrap().is_none(), "server exited");
}

/// A client process killed in the middle of a call, 100 times: its slot
/// is freed each time (two slots, one held by us), and the server keeps
/// answering.
#[test]
fn client_killed_mid_call_100_times() {
    if let Some((role, name, arg)) = child_role() {
        return child(&role, &name, arg);
    }
    let name = unique("rpc-ckill");
    let _s = Service(name.clone());
    let mut server = Server::create(&name, &RpcOptions::new().clients(2)).unwrap();
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let served = {
        let (stop, count) = (stop.clone(), count.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match server.serve_one(Wait::timeout(Duration::from_millis(20)), |r| {
                    count.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that kills land mid-call.
                    std::thread::sleep(Duration::from_micros(300));
                    answer(r)
                }) {
                    Ok(()) => n += 1,
                    Err(RpcError::Timeout) => {}
                    Err(e) => panic!("server: {e}"),
                }
            }
            (server, n)
        })
    };
    let mut mine = Client::connect(&name).unwrap();
    let mut rng = Rng::from_time();
    for round in 0..100 {
        let before = count.load(Ordering::SeqCst);
        let mut kid = spawn("client_killed_mid_call_100_times", "caller", &name, 0);
        // Wait until the child is calling, then kill it at a random point
        // (it calls back to back, so most points are inside a call).
        let t0 = Instant::now();
        while count.load(Ordering::SeqCst) < before + 2 {
            assert!(t0.elapsed() < Duration::from_secs(30), "child never called");
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 2_000));
        kid.kill().unwrap();
        kid.wait().unwrap();
        // Our calls still work, and the dead child's slot is free again.
        let req = (round as u64).to_le_bytes();
        assert_eq!(
            mine.call_timeout(&req, Duration::from_secs(10)).unwrap(),
            answer(&req)
        );
        let mut other = Client::connect(&name).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(
            other.call_timeout(b"x", Duration::from_secs(10)).unwrap(),
            answer(b"x")
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (_server, n) = served.join().unwrap();
    assert!(n >= 200, "served only {n}");
}

/// A server killed during a call: the caller gets `ServerDied` (no hang);
/// a restarted server answers the same client's next calls.
#[test]
fn server_killed_and_restarted() {
    if let Some((role, name, arg)) = child_role() {
        return child(&role, &name, arg);
    }
    let name = unique("rpc-skill");
    let _s = Service(name.clone());
    for round in 0..3 {
        let mut server = spawn("server_killed_and_restarted", "server", &name, 200_000);
        let mut c = connect_retry(&name);
        // A slow call (200 ms handler): kill the server in the middle.
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            server.kill().unwrap();
            server
        });
        let t0 = Instant::now();
        let r = c.call_timeout(b"doomed", Duration::from_secs(20));
        assert!(
            matches!(r, Err(RpcError::ServerDied)),
            "round {round}: {r:?}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        drop(killer.join().unwrap());
        // Restart: the same client works again (the killed server's
        // stale request and reply are skipped).
        let _server = spawn("server_killed_and_restarted", "server", &name, 0);
        let t0 = Instant::now();
        loop {
            match c.call_timeout(b"again", Duration::from_secs(1)) {
                Ok(rep) => {
                    assert_eq!(rep, answer(b"again"));
                    break;
                }
                Err(RpcError::ServerDied | RpcError::Timeout) => {
                    assert!(
                        t0.elapsed() < Duration::from_secs(30),
                        "restart never served"
                    );
                }
                Err(e) => panic!("{e}"),
            }
        }
        for i in 0..100u32 {
            let req = i.to_le_bytes();
            assert_eq!(c.call(&req).unwrap(), answer(&req));
        }
    }
}

/// Async server and async clients (tokio), blocking clients alongside.
#[cfg(feature = "async")]
#[test]
fn async_server_and_clients() {
    let name = unique("rpc-async");
    let _s = Service(name.clone());
    let mut server = Server::create(&name, &RpcOptions::new().clients(4)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let serving = rt.spawn(async move {
        let _ = server.serve_async(answer).await;
    });
    let blocking = {
        let name = name.clone();
        std::thread::spawn(move || {
            let mut c = connect_retry(&name);
            for i in 0..2000u32 {
                let req = i.to_le_bytes();
                assert_eq!(c.call(&req).unwrap(), answer(&req));
            }
        })
    };
    rt.block_on(async {
        let tasks: Vec<_> = (0..3u32)
            .map(|k| {
                let name = name.clone();
                tokio::spawn(async move {
                    let mut c = connect_retry(&name);
                    for i in 0..2000u32 {
                        let req = [k.to_le_bytes(), i.to_le_bytes()].concat();
                        assert_eq!(c.call_async(&req).await.unwrap(), answer(&req));
                    }
                })
            })
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .unwrap()
                .unwrap();
        }
    });
    blocking.join().unwrap();
    serving.abort();
}

/// Each server wait strategy answers every call, and the doorbell's count
/// stays small: a request the server finds without sleeping on the bell
/// (by its spin, or by a scan) takes its unit back, so a server that never
/// sleeps (`BusyPoll`) does not let the count grow by one per call.
#[test]
fn server_strategies_answer_and_keep_the_doorbell_small() {
    use shmkit::channel::WaitStrategy;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for (k, strategy) in [
        WaitStrategy::Sleep,
        WaitStrategy::default(),
        WaitStrategy::BusyPoll,
    ]
    .into_iter()
    .enumerate()
    {
        let name = unique(&format!("rpc-strategy{k}"));
        let _s = Service(name.clone());
        let opts = RpcOptions::new().clients(2).wait_strategy(strategy);
        let mut server = Server::create(&name, &opts).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let serving = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Relaxed: a stop request, polled.
                while !stop.load(Ordering::Relaxed) {
                    let deadline = Instant::now() + Duration::from_millis(20);
                    match server.recv(Wait::Until(deadline)) {
                        Ok((t, req)) => server.reply(t, &answer(&req)).unwrap(),
                        Err(RpcError::Timeout) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                server
            })
        };
        let mut c = connect_retry(&name);
        for i in 0..5_000u64 {
            let req = i.to_le_bytes();
            let rep = c.call_timeout(&req, Duration::from_secs(30)).unwrap();
            assert_eq!(rep, answer(&req), "{strategy:?}: call {i}");
        }
        stop.store(true, Ordering::Relaxed);
        let server = serving.join().unwrap();
        let bell = shmkit::sync::NamedSemaphore::open(&format!("{name}.rpc.bell")).unwrap();
        let units = bell.value().unwrap();
        assert!(units <= 2, "{strategy:?}: the doorbell holds {units} units");
        drop(server);
    }
}

/// A server killed during an async call: `call_async` ends with
/// `ServerDied` (the reply ring's death check reaches the future), and
/// the same client's async calls work against a restarted server.
#[cfg(feature = "async")]
#[test]
fn server_killed_during_an_async_call() {
    if let Some((role, name, arg)) = child_role() {
        return child(&role, &name, arg);
    }
    let name = unique("rpc-askill");
    let _s = Service(name.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut server = spawn(
        "server_killed_during_an_async_call",
        "server",
        &name,
        200_000,
    );
    let mut c = connect_retry(&name);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        server.kill().unwrap();
        server
    });
    rt.block_on(async {
        let t0 = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(20), c.call_async(b"doomed"))
            .await
            .expect("no hang");
        assert!(matches!(r, Err(RpcError::ServerDied)), "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    });
    drop(killer.join().unwrap());
    let _server = spawn("server_killed_during_an_async_call", "server", &name, 0);
    rt.block_on(async {
        let t0 = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(1), c.call_async(b"again")).await {
                Ok(Ok(rep)) => {
                    assert_eq!(rep, answer(b"again"));
                    break;
                }
                // A timed-out call was dropped mid-way: its late reply is
                // discarded by the next call.
                Ok(Err(RpcError::ServerDied)) | Err(_) => {
                    assert!(t0.elapsed() < Duration::from_secs(30), "never served");
                }
                Ok(Err(e)) => panic!("{e}"),
            }
        }
        for i in 0..100u32 {
            let req = i.to_le_bytes();
            assert_eq!(c.call_async(&req).await.unwrap(), answer(&req));
        }
    });
}
