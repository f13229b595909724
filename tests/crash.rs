//! `kill -9` at awkward moments: holding the lock, blocked, mid-copy. After
//! each, the survivors go on, counts are right, and every message whose send
//! returned is received exactly once by a live receiver.

mod common;

use common::{TestDir, append, child, child_dir, eventually, kill9, read_u32s, role, wait_ok};
use shmq::OpenOptions;
use shmq::inspect::{Health, Inspector};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const WATCHDOG: Duration = Duration::from_secs(120);

fn info(dir: &Path, name: &str) -> shmq::inspect::QueueInfo {
    Inspector::open(name, Some(dir)).unwrap().info().unwrap()
}

#[test]
fn killed_while_holding_the_lock_mid_send_or_mid_receive() {
    if let Some(r) = role() {
        let q = OpenOptions::readwrite()
            .dir(child_dir())
            .open("/lock")
            .unwrap();
        q.__die_holding_lock(r == "mid-receive", &|| {
            println!("SHMQ-LOCKED");
            std::io::stdout().flush().unwrap();
        });
    }
    for round in 0..3 {
        for stage in ["mid-send", "mid-receive"] {
            let d = TestDir::new("lock");
            let q = OpenOptions::readwrite()
                .capacity(4)
                .max_msg_len(32)
                .create_new()
                .dir(d.path())
                .open("/lock")
                .unwrap();
            q.send(5, b"five").unwrap();
            q.send(7, b"seven").unwrap();
            q.send(5, b"five again").unwrap();
            let mut c = child(
                "killed_while_holding_the_lock_mid_send_or_mid_receive",
                stage,
                d.path(),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
            // The child's test harness prints its own lines first.
            let mut out = BufReader::new(c.stdout.take().unwrap());
            let mut line = String::new();
            while !line.ends_with("SHMQ-LOCKED\n") {
                line.clear();
                assert!(
                    out.read_line(&mut line).unwrap() > 0,
                    "round {round} {stage}: child exited"
                );
            }
            kill9(&mut c);
            drop(out);
            // The next locker gets EOWNERDEAD and repairs: nothing lost, nothing
            // added, order kept, and the queue is fully usable.
            let a = q.attributes().unwrap();
            assert_eq!(a.current_messages, 3, "round {round} {stage}");
            let mut buf = [0u8; 32];
            let mut got = Vec::new();
            q.set_nonblocking(true).unwrap();
            while let Ok((p, n)) = q.recv(&mut buf) {
                got.push((p, buf[..n].to_vec()));
            }
            assert_eq!(
                got,
                vec![
                    (7, b"seven".to_vec()),
                    (5, b"five".to_vec()),
                    (5, b"five again".to_vec())
                ]
            );
            for i in 0..4u8 {
                q.send(1, &[i]).unwrap();
            }
            assert_eq!(
                q.send(1, b"full").unwrap_err().kind(),
                std::io::ErrorKind::WouldBlock,
                "all 4 slots usable"
            );
            assert!(matches!(
                info(d.path(), "/lock").health,
                Health::Repaired { .. }
            ));
        }
    }
}

#[test]
fn killed_blocked_receivers_leave_no_phantom_waiters() {
    match role().as_deref() {
        Some("receiver") => {
            let q = OpenOptions::readonly().dir(child_dir()).open("/b").unwrap();
            let mut buf = [0u8; 16];
            let _ = q.recv(&mut buf);
            unreachable!("killed while blocked");
        }
        Some("receiver-live") => {
            let q = OpenOptions::readonly().dir(child_dir()).open("/b").unwrap();
            let mut buf = [0u8; 16];
            let (p, n) = q.recv(&mut buf).unwrap();
            assert_eq!((p, &buf[..n]), (2, &b"for the living"[..]));
            return;
        }
        _ => {}
    }
    let d = TestDir::new("blocked");
    let q = OpenOptions::readwrite()
        .capacity(2)
        .max_msg_len(16)
        .create_new()
        .dir(d.path())
        .open("/b")
        .unwrap();
    for round in 0..3 {
        let mut kids: Vec<_> = (0..3)
            .map(|_| {
                child(
                    "killed_blocked_receivers_leave_no_phantom_waiters",
                    "receiver",
                    d.path(),
                )
                .spawn()
                .unwrap()
            })
            .collect();
        eventually("three receivers blocked", WATCHDOG, || {
            info(d.path(), "/b").blocked_receivers == 3
        });
        // Let them fall asleep on the futex (past the spin phase) before the kill.
        std::thread::sleep(Duration::from_millis(20));
        for k in &mut kids {
            kill9(k);
        }
        assert_eq!(info(d.path(), "/b").blocked_receivers, 0, "round {round}");
        q.send(1, b"still works").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(q.recv(&mut buf).unwrap(), (1, 11));
    }
    // A live blocked receiver is still woken after all those deaths.
    let mut live = child(
        "killed_blocked_receivers_leave_no_phantom_waiters",
        "receiver-live",
        d.path(),
    )
    .spawn()
    .unwrap();
    eventually("live receiver blocked", WATCHDOG, || {
        info(d.path(), "/b").blocked_receivers == 1
    });
    std::thread::sleep(Duration::from_millis(20));
    q.send(2, b"for the living").unwrap();
    wait_ok(&mut live, WATCHDOG);
}

// ---- kill -9 mid-copy, with exact accounting ----------------------------

const MSGSIZE: usize = 4 << 20;
const HDR: usize = 24;
const PER_PRODUCER: u32 = 150;

fn header(p: u32, seq: u32, len: u32) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[..4].copy_from_slice(&0x5348_4d51u32.to_le_bytes());
    h[4..8].copy_from_slice(&p.to_le_bytes());
    h[8..12].copy_from_slice(&seq.to_le_bytes());
    h[12..16].copy_from_slice(&len.to_le_bytes());
    let sum =
        (u64::from(p) << 40) ^ (u64::from(seq) << 20) ^ u64::from(len) ^ 0x9e37_79b9_7f4a_7c15;
    h[16..24].copy_from_slice(&sum.to_le_bytes());
    h
}

/// `(producer, seq)` of a complete, intact message in `buf`.
fn parse(buf: &[u8]) -> Option<(u32, u32)> {
    if buf.len() < HDR {
        return None;
    }
    let u = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().unwrap());
    let (p, seq, len) = (u(4), u(8), u(12));
    let len = len as usize;
    if buf[..HDR] != header(p, seq, len as u32) || len > buf.len() || len < 2 * HDR {
        return None;
    }
    // The header again at the end: a torn copy lacks it.
    (buf[len - HDR..len] == buf[..HDR]).then_some((p, seq))
}

fn producer(dir: &Path, id: u32) {
    let q = OpenOptions::writeonly().dir(dir).open("/copy").unwrap();
    let mut rng = id.wrapping_mul(2_654_435_761) | 1;
    let mut msg = vec![0u8; MSGSIZE];
    for seq in 0..PER_PRODUCER {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        // A third small (copied under the lock), the rest large (copied outside).
        let len = if rng % 3 == 0 {
            2 * HDR + 8
        } else {
            64 << 10 | (rng as usize % (MSGSIZE - (64 << 10)))
        };
        let h = header(id, seq, len as u32);
        msg[..HDR].copy_from_slice(&h);
        msg[len - HDR..len].copy_from_slice(&h);
        q.send(1 + rng % 4, &msg[..len]).unwrap();
        append(&dir.join(format!("sent-{id}")), &seq.to_le_bytes());
    }
}

fn consumer(dir: &Path, id: u32) {
    let q = OpenOptions::readonly().dir(dir).open("/copy").unwrap();
    // Receive straight into a shared file mapping, so that after a kill the
    // test can see which message was being copied.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(format!("buf-{id}")))
        .unwrap();
    f.set_len(MSGSIZE as u64).unwrap();
    // SAFETY: the file is private to this test and sized above.
    let mut buf = unsafe { memmap2::MmapMut::map_mut(&f) }.unwrap();
    loop {
        buf[..HDR].fill(0);
        let (prio, len) = q.recv(&mut buf).unwrap();
        if prio == 0 {
            return;
        }
        let (p, seq) = parse(&buf[..len]).expect("received an intact message");
        let mut rec = [0u8; 8];
        rec[..4].copy_from_slice(&p.to_le_bytes());
        rec[4..].copy_from_slice(&seq.to_le_bytes());
        append(&dir.join(format!("recv-{id}")), &rec);
    }
}

#[test]
fn killed_mid_copy_loses_and_duplicates_nothing() {
    match role().as_deref() {
        Some("producer") => {
            return producer(
                &child_dir(),
                std::env::var("SHMQ_TEST_ID").unwrap().parse().unwrap(),
            );
        }
        Some("consumer") => {
            return consumer(
                &child_dir(),
                std::env::var("SHMQ_TEST_ID").unwrap().parse().unwrap(),
            );
        }
        _ => {}
    }
    let d = TestDir::new("copy");
    let dir = d.path();
    let q = OpenOptions::readwrite()
        .capacity(8)
        .max_msg_len(MSGSIZE)
        .create_new()
        .dir(dir)
        .open("/copy")
        .unwrap();
    let test = "killed_mid_copy_loses_and_duplicates_nothing";
    let spawn = |role: &str, id: u32| {
        child(test, role, dir)
            .env("SHMQ_TEST_ID", id.to_string())
            .spawn()
            .unwrap()
    };
    let mut next_id = 0u32;
    let mut producers: HashMap<u32, std::process::Child> = HashMap::new();
    let mut consumers: HashMap<u32, std::process::Child> = HashMap::new();
    for _ in 0..2 {
        producers.insert(next_id, spawn("producer", next_id));
        next_id += 1;
        consumers.insert(next_id, spawn("consumer", next_id));
        next_id += 1;
    }
    let (mut killed_producers, mut killed_consumers) = (HashSet::new(), HashSet::new());
    let mut rng = 0x2545_f491u32;
    let start = Instant::now();
    // Kill until at least 40 kills happened and one of them was seen to need
    // a repair (a death holding the lock or a slot mid-copy), at most 400.
    let mut kills = 0;
    while kills < 40 || (info(dir, "/copy").health == Health::Ok && kills < 400) {
        kills += 1;
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        std::thread::sleep(Duration::from_millis(u64::from(2 + rng % 10)));
        let victim_is_producer = rng % 2 == 0;
        let pool = if victim_is_producer {
            &mut producers
        } else {
            &mut consumers
        };
        let mut ids: Vec<u32> = pool.keys().copied().collect();
        ids.sort_unstable();
        let id = ids[(rng as usize / 7) % ids.len()];
        let mut c = pool.remove(&id).unwrap();
        if c.try_wait().unwrap().is_none() {
            kill9(&mut c);
            if victim_is_producer {
                killed_producers.insert(id);
            } else {
                killed_consumers.insert(id);
            }
        }
        let role = if victim_is_producer {
            "producer"
        } else {
            "consumer"
        };
        pool.insert(next_id, spawn(role, next_id));
        next_id += 1;
        assert!(start.elapsed() < WATCHDOG);
    }
    for c in producers.values_mut() {
        wait_ok(c, WATCHDOG);
    }
    for _ in 0..consumers.len() {
        q.send(0, b"stop").unwrap();
    }
    for c in consumers.values_mut() {
        wait_ok(c, WATCHDOG);
    }

    // Sent: logged after send returned. A killed producer may also have had
    // one send in progress (the next seq), which may or may not have landed.
    let mut sent = HashSet::new();
    let mut maybe_sent = HashSet::new();
    for id in 0..next_id {
        let seqs = read_u32s(&dir.join(format!("sent-{id}")));
        for (i, &s) in seqs.iter().enumerate() {
            assert_eq!(s, i as u32, "producer {id} logs in order");
            sent.insert((id, s));
        }
        if killed_producers.contains(&id) {
            maybe_sent.insert((id, seqs.len() as u32));
        }
    }
    // Received: logged after receive returned. A killed consumer may have
    // been mid-receive: what its buffer holds may or may not have been taken.
    let mut received = HashSet::new();
    let mut maybe_received = HashSet::new();
    for id in 0..next_id {
        let recs = read_u32s(&dir.join(format!("recv-{id}")));
        for r in recs.chunks_exact(2) {
            assert!(
                received.insert((r[0], r[1])),
                "message {r:?} delivered twice"
            );
        }
        if killed_consumers.contains(&id) {
            if let Ok(b) = std::fs::read(dir.join(format!("buf-{id}"))) {
                if let Some(m) = parse(&b) {
                    maybe_received.insert(m);
                }
            }
        }
    }
    // Anything left in the queue (only stop messages should remain, if any).
    q.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; MSGSIZE];
    while let Ok((prio, len)) = q.recv(&mut buf) {
        if prio != 0 {
            let m = parse(&buf[..len]).unwrap();
            assert!(received.insert(m), "{m:?} delivered twice");
        }
    }
    for m in &sent {
        assert!(
            received.contains(m) || maybe_received.contains(m),
            "message {m:?} was sent and lost"
        );
    }
    for m in &received {
        assert!(
            sent.contains(m) || maybe_sent.contains(m),
            "message {m:?} received but never sent"
        );
    }
    let i = info(dir, "/copy");
    assert_eq!(
        (
            i.current_messages,
            i.in_flight,
            i.blocked_receivers,
            i.blocked_senders
        ),
        (0, 0, 0, 0)
    );
    assert!(!killed_producers.is_empty() && !killed_consumers.is_empty());
    eprintln!(
        "mid-copy crash test: {} sent, {} received by live receivers, {} taken by receivers killed before logging, {} producers and {} consumers killed, {:?}",
        sent.len(),
        received.len(),
        sent.difference(&received).count(),
        killed_producers.len(),
        killed_consumers.len(),
        i.health
    );
    assert!(
        matches!(i.health, Health::Repaired { .. }),
        "some kill landed mid-operation"
    );
}
