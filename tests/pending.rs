//! Receive with acknowledgement through `PosixMq`: ack, nack and drop,
//! ordering, capacity, wake-ups, notification, and the messages of a
//! holder that dies or execs going back to the queue.

mod common;

use common::{TestDir, child, child_dir, kill9, role};
use shmq::inspect::Inspector;
use shmq::{OpenOptions, PosixMq};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn create(dir: &Path, name: &str, cap: usize) -> PosixMq {
    OpenOptions::readwrite()
        .capacity(cap)
        .max_msg_len(16)
        .create_new()
        .dir(dir)
        .open(name)
        .unwrap()
}

/// Everything receivable now, without blocking.
fn drain(q: &PosixMq) -> Vec<(u32, Vec<u8>)> {
    let mut buf = [0u8; 16];
    let mut out = Vec::new();
    let was = q.is_nonblocking().unwrap();
    q.set_nonblocking(true).unwrap();
    while let Ok((p, n)) = q.recv(&mut buf) {
        out.push((p, buf[..n].to_vec()));
    }
    q.set_nonblocking(was).unwrap();
    out
}

fn msgs(v: &[(u32, &[u8])]) -> Vec<(u32, Vec<u8>)> {
    v.iter().map(|(p, m)| (*p, m.to_vec())).collect()
}

#[test]
fn ack_removes_nack_and_drop_put_back_in_place() {
    let d = TestDir::new("pend-order");
    let q = create(d.path(), "/order", 8);
    for m in [&b"a"[..], b"b", b"c"] {
        q.send(3, m).unwrap();
    }
    q.send(9, b"hi").unwrap();
    let mut b1 = [0u8; 16];
    let mut b2 = [0u8; 16];
    let mut b3 = [0u8; 16];
    let hi = q.recv_pending(&mut b1).unwrap();
    assert_eq!((hi.priority(), &b1[..hi.len()]), (9, &b"hi"[..]));
    let a = q.recv_pending(&mut b2).unwrap();
    let b = q.recv_pending(&mut b3).unwrap();
    assert_eq!((&b2[..a.len()], &b3[..b.len()]), (&b"a"[..], &b"b"[..]));
    // Pending messages are not receivable, and they fill their slots.
    assert_eq!(q.attributes().unwrap().current_messages, 1);
    let info = Inspector::open("/order", Some(d.path()))
        .unwrap()
        .info()
        .unwrap();
    assert_eq!(info.pending, 3);
    q.send(3, b"d").unwrap();
    hi.ack().unwrap();
    // b back first, then a (dropped): both ahead of c and d.
    b.nack().unwrap();
    drop(a);
    assert_eq!(
        drain(&q),
        msgs(&[(3, b"a"), (3, b"b"), (3, b"c"), (3, b"d")])
    );
    let info = Inspector::open("/order", Some(d.path()))
        .unwrap()
        .info()
        .unwrap();
    assert_eq!((info.pending, info.current_messages), (0, 0));
}

#[test]
fn pending_messages_keep_the_queue_full_until_acknowledged() {
    let d = TestDir::new("pend-full");
    let q = Arc::new(create(d.path(), "/full", 2));
    q.send(1, b"x").unwrap();
    q.send(1, b"y").unwrap();
    let mut buf = [0u8; 16];
    let mut buf2 = [0u8; 16];
    let p = q.recv_pending(&mut buf).unwrap();
    let p2 = q.recv_pending(&mut buf2).unwrap();
    assert_eq!(q.attributes().unwrap().current_messages, 0);
    q.set_nonblocking(true).unwrap();
    let e = q.send(1, b"z").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    let e = q.recv_pending(&mut [0u8; 16]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WouldBlock);
    q.set_nonblocking(false).unwrap();
    let e = q
        .recv_pending_timeout(&mut [0u8; 16], Duration::from_millis(20))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    // A blocked sender is woken by an ack (room), not by a nack.
    let q2 = Arc::clone(&q);
    let sender = std::thread::spawn(move || q2.send(1, b"z").unwrap());
    std::thread::sleep(Duration::from_millis(50));
    p2.nack().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(!sender.is_finished());
    p.ack().unwrap();
    sender.join().unwrap();
    assert_eq!(drain(&q), msgs(&[(1, b"y"), (1, b"z")]));
}

#[test]
fn a_blocked_receiver_is_woken_by_a_nack() {
    let d = TestDir::new("pend-wake");
    let q = Arc::new(create(d.path(), "/wake", 2));
    q.send(4, b"m").unwrap();
    let mut buf = [0u8; 16];
    let p = q.recv_pending(&mut buf).unwrap();
    let q2 = Arc::clone(&q);
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        let p = q2.recv_pending(&mut buf).unwrap();
        let got = (p.priority(), buf[..p.len()].to_vec());
        p.ack().unwrap();
        got
    });
    std::thread::sleep(Duration::from_millis(50));
    p.nack().unwrap();
    assert_eq!(receiver.join().unwrap(), (4, b"m".to_vec()));
    assert_eq!(q.attributes().unwrap().current_messages, 0);
}

#[test]
fn a_nack_into_an_empty_queue_notifies() {
    let d = TestDir::new("pend-notify");
    let q = create(d.path(), "/notify", 2);
    q.send(1, b"n").unwrap();
    let mut buf = [0u8; 16];
    let p = q.recv_pending(&mut buf).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    q.notify_with(move || tx.send(()).unwrap()).unwrap();
    p.nack().unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("notified of the message put back");
}

#[test]
fn one_process_holds_many_messages_from_many_threads() {
    let d = TestDir::new("pend-many");
    let q = Arc::new(create(d.path(), "/many", 64));
    for i in 0..64u32 {
        q.send(i % 3, &i.to_le_bytes()).unwrap();
    }
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let q = Arc::clone(&q);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut bufs = vec![[0u8; 16]; 16];
                let all_held = &*barrier;
                let mut held = Vec::new();
                let mut got = Vec::new();
                for b in bufs.iter_mut() {
                    let p = q.recv_pending(b).unwrap();
                    got.push(u32::from_le_bytes(b[..4].try_into().unwrap()));
                    held.push(p);
                }
                // Half acknowledged, half returned (by drop), once every
                // thread holds its share.
                all_held.wait();
                for (i, p) in held.into_iter().enumerate() {
                    if i % 2 == 0 {
                        p.ack().unwrap();
                    }
                }
                got
            })
        })
        .collect();
    let mut all: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (0..64).collect::<Vec<_>>());
    assert_eq!(drain(&q).len(), 32);
}

/// A child holds `n` messages pending, says so, then waits to be killed
/// or execs (`exec` in its role).
fn holder(dir: &Path, how: &str, n: usize) {
    let q = OpenOptions::readwrite().dir(dir).open("/held").unwrap();
    let mut bufs = vec![[0u8; 16]; n];
    let mut held = Vec::new();
    for b in bufs.iter_mut() {
        held.push(q.recv_pending(b).unwrap());
    }
    println!("SHMQ-HELD");
    std::io::stdout().flush().unwrap();
    if how == "exec" {
        use std::os::unix::process::CommandExt;
        let e = std::process::Command::new("sleep").arg("30").exec();
        panic!("exec: {e}");
    }
    std::mem::forget(held);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[test]
fn a_holder_that_dies_or_execs_returns_its_messages() {
    let test = "a_holder_that_dies_or_execs_returns_its_messages";
    if let Some(r) = role() {
        holder(&child_dir(), &r, 3);
        return;
    }
    for how in ["kill", "exec"] {
        let d = TestDir::new("pend-dead");
        let q = create(d.path(), "/held", 4);
        for m in [&b"1"[..], b"2", b"3", b"4"] {
            q.send(2, m).unwrap();
        }
        let mut c = child(test, how, d.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        while !line.ends_with("SHMQ-HELD\n") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "{how}: child exited");
        }
        let mut buf = [0u8; 16];
        let (_, n) = q.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"4");
        assert_eq!(q.attributes().unwrap().current_messages, 0);
        if how == "kill" {
            kill9(&mut c);
        }
        // A receiver blocked on the empty queue gets them back, in order,
        // within a bounded time (an exec'd holder still runs).
        let start = Instant::now();
        let mut got = Vec::new();
        for _ in 0..3 {
            let (_, n) = q.recv_timeout(&mut buf, Duration::from_secs(5)).unwrap();
            got.push(buf[..n].to_vec());
        }
        let took = start.elapsed();
        assert_eq!(got, [b"1", b"2", b"3"].map(|m| m.to_vec()), "{how}");
        assert!(took < Duration::from_secs(2), "{how}: took {took:?}");
        // The exec'd image still runs; the killed child was reaped.
        assert_eq!(c.try_wait().unwrap().is_none(), how == "exec");
        kill9(&mut c);
        println!("{how}: returned after {took:?}");
    }
}

#[test]
fn a_non_blocking_receiver_finds_a_dead_holder_s_messages() {
    let test = "a_non_blocking_receiver_finds_a_dead_holder_s_messages";
    if let Some(r) = role() {
        holder(&child_dir(), &r, 2);
        return;
    }
    let d = TestDir::new("pend-nb");
    let q = create(d.path(), "/held", 4);
    q.send(2, b"1").unwrap();
    q.send(2, b"2").unwrap();
    let mut c = child(test, "kill", d.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    while !line.ends_with("SHMQ-HELD\n") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited");
    }
    kill9(&mut c);
    q.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let got = loop {
        match q.recv(&mut buf) {
            Ok((_, n)) => break buf[..n].to_vec(),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(start.elapsed() < Duration::from_secs(2));
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(got, b"1");
}

#[test]
fn a_forked_child_cannot_end_its_parent_s_hold() {
    let d = TestDir::new("pend-fork");
    let q = create(d.path(), "/fork", 2);
    q.send(1, b"f").unwrap();
    let mut buf = [0u8; 16];
    let p = q.recv_pending(&mut buf).unwrap();
    // SAFETY: the child only calls into the queue and exits with _exit.
    match unsafe { libc::fork() } {
        0 => {
            let code = match p.ack() {
                Err(e)
                    if e.kind() == ErrorKind::InvalidData && e.to_string().contains("not held") =>
                {
                    0
                }
                Err(_) => 2,
                Ok(()) => 1,
            };
            // SAFETY: ends the child without running the parent's exit
            // handlers.
            unsafe { libc::_exit(code) };
        }
        pid => {
            assert!(pid > 0);
            let mut st = 0;
            // SAFETY: waits for the child just forked.
            unsafe { libc::waitpid(pid, &mut st, 0) };
            assert!(libc::WIFEXITED(st), "child status {st:#x}");
            assert_eq!(libc::WEXITSTATUS(st), 0);
        }
    }
    assert_eq!(q.attributes().unwrap().current_messages, 0);
    p.ack().unwrap();
    assert!(drain(&q).is_empty());
}

/// The model: per priority, queued messages as `(send order, bytes)`.
type Model = std::collections::BTreeMap<u32, std::collections::VecDeque<(u32, Vec<u8>)>>;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Through the API: sends, plain and pending receives on several
    /// descriptors of the queue (opened along the way), acks, nacks and
    /// drops, against the model.
    #[test]
    fn the_api_matches_the_model(ops in proptest::collection::vec((0u8..9, 0u32..4, 0usize..8), 1..80)) {
        let d = TestDir::new("pend-model");
        let handles: [std::cell::OnceCell<PosixMq>; 4] = Default::default();
        let open = |k: usize| -> &PosixMq {
            handles[k].get_or_init(|| {
                let q = OpenOptions::readwrite()
                    .capacity(4)
                    .max_msg_len(16)
                    .create()
                    .dir(d.path())
                    .open("/model")
                    .unwrap();
                q.set_nonblocking(true).unwrap();
                q
            })
        };
        let mut opened = 1;
        open(0);
        let mut model = Model::new();
        // (send order, prio, bytes, the hold)
        let mut pending: Vec<(u32, u32, Vec<u8>, shmq::Pending<'_>)> = Vec::new();
        let mut n = 0u32;
        for (op, prio, pick) in ops {
            let q = open(pick % opened);
            let queued: usize = model.values().map(|v| v.len()).sum();
            let mut buf = [0u8; 16];
            match op {
                0 | 1 => {
                    n += 1;
                    let msg = [&n.to_le_bytes()[..], &[0xab; 3][..pick % 4]].concat();
                    let r = q.send(prio, &msg);
                    proptest::prop_assert_eq!(r.is_ok(), queued + pending.len() < 4, "{:?}", r);
                    if r.is_ok() {
                        model.entry(prio).or_default().push_back((n, msg));
                    }
                }
                2 | 3 => {
                    let want = model.iter_mut().next_back().map(|(p, v)| (*p, v.pop_front().unwrap()));
                    model.retain(|_, v| !v.is_empty());
                    if op == 2 {
                        let got = q.recv(&mut buf).ok().map(|(p, l)| (p, buf[..l].to_vec()));
                        proptest::prop_assert_eq!(got, want.map(|(p, (_, m))| (p, m)));
                    } else {
                        match (q.recv_pending(&mut buf), want) {
                            (Ok(h), Some((p, (wn, wm)))) => {
                                proptest::prop_assert_eq!((h.priority(), &buf[..h.len()]), (p, &wm[..]));
                                pending.push((wn, p, wm, h));
                            }
                            (Err(e), None) => proptest::prop_assert_eq!(e.kind(), ErrorKind::WouldBlock),
                            (got, want) => proptest::prop_assert!(false, "{:?} / {:?}", got, want),
                        }
                    }
                }
                4..=6 if !pending.is_empty() => {
                    let (wn, p, wm, h) = pending.remove(pick % pending.len());
                    match op {
                        4 => h.ack().unwrap(),
                        5 => h.nack().unwrap(),
                        _ => drop(h),
                    }
                    if op != 4 {
                        let v = model.entry(p).or_default();
                        let at = v.iter().position(|(m, _)| *m > wn).unwrap_or(v.len());
                        v.insert(at, (wn, wm));
                    }
                }
                7 if opened < handles.len() => {
                    open(opened);
                    opened += 1;
                }
                _ => {}
            }
            let queued: usize = model.values().map(|v| v.len()).sum();
            proptest::prop_assert_eq!(open(0).attributes().unwrap().current_messages, queued);
            let info = Inspector::open("/model", Some(d.path())).unwrap().info().unwrap();
            proptest::prop_assert_eq!(info.pending as usize, pending.len());
        }
        // The holds left are returned (dropped); then everything comes out
        // in the model's order.
        for (wn, p, wm, h) in pending.drain(..) {
            drop(h);
            let v = model.entry(p).or_default();
            let at = v.iter().position(|(m, _)| *m > wn).unwrap_or(v.len());
            v.insert(at, (wn, wm));
        }
        let want: Vec<(u32, Vec<u8>)> = model
            .into_iter()
            .rev()
            .flat_map(|(p, v)| v.into_iter().map(move |(_, m)| (p, m)))
            .collect();
        proptest::prop_assert_eq!(drain(open(0)), want);
    }
}
