//! Consumers that receive with acknowledgement, `kill -9`ed at random
//! instants while holding 1..8 pending messages: every message sent is
//! acknowledged exactly once by the end, and the messages of the dead are
//! delivered again.
//!
//! `SHMQ_ACK_KILLS` sets the number of kills (default 250).

mod common;

use common::{TestDir, append, child, child_dir, kill9, role};
use shmq::OpenOptions;
use shmq::inspect::{Health, Inspector};
use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

const NAME: &str = "/ack";
/// A consumer has this message.
const RECEIVED: u32 = 1;
/// A consumer is about to acknowledge it.
const ACKING: u32 = 2;
/// Its acknowledgement returned.
const ACKED: u32 = 3;

fn record(path: &Path, kind: u32, id: u32) {
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&kind.to_le_bytes());
    rec[4..].copy_from_slice(&id.to_le_bytes());
    append(path, &rec);
}

fn records(path: &Path) -> Vec<(u32, u32)> {
    std::fs::read(path)
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|c| {
            (
                u32::from_le_bytes(c[..4].try_into().unwrap()),
                u32::from_le_bytes(c[4..].try_into().unwrap()),
            )
        })
        .collect()
}

/// A small generator, different in every process.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng((t ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Holds 1..8 messages at a time, dawdles, acknowledges them; records each
/// step in its own log.
fn consumer(dir: &Path, log: &Path) {
    let q = OpenOptions::readonly().dir(dir).open(NAME).unwrap();
    let mut rng = Rng::new();
    let mut bufs = [[0u8; 16]; 8];
    loop {
        let want = 1 + rng.below(8) as usize;
        let mut held = Vec::new();
        for b in bufs.iter_mut().take(want) {
            let p = if held.is_empty() {
                q.recv_pending(b).unwrap()
            } else {
                match q.recv_pending_timeout(b, Duration::from_millis(2)) {
                    Ok(p) => p,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                    Err(e) => panic!("{e}"),
                }
            };
            let id = u32::from_le_bytes(b[..4].try_into().unwrap());
            record(log, RECEIVED, id);
            held.push((id, p));
        }
        if rng.below(2) == 0 {
            std::thread::sleep(Duration::from_micros(rng.below(2000)));
        }
        for (id, p) in held {
            record(log, ACKING, id);
            p.ack().unwrap();
            record(log, ACKED, id);
        }
    }
}

#[test]
fn consumers_killed_while_holding_pending_messages() {
    let test = "consumers_killed_while_holding_pending_messages";
    if role().is_some() {
        let log = std::env::var("SHMQ_TEST_LOG").unwrap();
        consumer(&child_dir(), Path::new(&log));
        return;
    }
    let kills: u32 = std::env::var("SHMQ_ACK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let d = TestDir::new("ack-kill");
    let dir = d.path().to_path_buf();
    let q = Arc::new(
        OpenOptions::readwrite()
            .capacity(32)
            .max_msg_len(16)
            .create_new()
            .dir(&dir)
            .open(NAME)
            .unwrap(),
    );
    // The producer sends numbered messages until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU32::new(0));
    let producer = {
        let (q, stop, sent) = (Arc::clone(&q), Arc::clone(&stop), Arc::clone(&sent));
        std::thread::spawn(move || {
            let mut id = 0u32;
            while !stop.load(Ordering::Relaxed) {
                match q.send_timeout(id % 7, &id.to_le_bytes(), Duration::from_millis(20)) {
                    Ok(()) => {
                        id += 1;
                        sent.store(id, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => panic!("send: {e}"),
                }
            }
        })
    };
    let mut logs = Vec::new();
    let spawn = |logs: &mut Vec<std::path::PathBuf>| -> Child {
        let log = dir.join(format!(".consumer-{}.log", logs.len()));
        logs.push(log.clone());
        child(test, "consumer", &dir)
            .env("SHMQ_TEST_LOG", &log)
            .spawn()
            .unwrap()
    };
    let mut live: Vec<Child> = (0..2).map(|_| spawn(&mut logs)).collect();
    let mut rng = Rng::new();
    let start = Instant::now();
    let mut killed = Vec::new();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_micros(2000 + rng.below(15_000)));
        let i = rng.below(live.len() as u64) as usize;
        let mut victim = live.swap_remove(i);
        kill9(&mut victim);
        killed.push(victim.id());
        live.push(spawn(&mut logs));
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
    for c in &mut live {
        kill9(c);
    }
    let n = sent.load(Ordering::Relaxed);
    // Whatever is left, the dead's included, is acknowledged here.
    let mut last = Vec::new();
    let mut buf = [0u8; 16];
    loop {
        match q.recv_pending_timeout(&mut buf, Duration::from_millis(200)) {
            Ok(p) => {
                last.push(u32::from_le_bytes(buf[..4].try_into().unwrap()));
                p.ack().unwrap();
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("drain: {e}"),
        }
    }

    // Per message: deliveries, acknowledgements that returned, and
    // acknowledgements cut by a kill (which may or may not have happened).
    let mut delivered: HashMap<u32, u32> = HashMap::new();
    let mut acked: HashMap<u32, u32> = HashMap::new();
    let mut cut: HashMap<u32, u32> = HashMap::new();
    // Killed consumers by how many messages they held when killed.
    let mut held_at_death = [0u32; 9];
    for log in &logs {
        let mut acking = None;
        let mut holding = 0usize;
        for (kind, id) in records(log) {
            match kind {
                RECEIVED => {
                    *delivered.entry(id).or_default() += 1;
                    holding += 1;
                }
                ACKING => acking = Some(id),
                ACKED => {
                    assert_eq!(acking.take(), Some(id), "{}", log.display());
                    *acked.entry(id).or_default() += 1;
                    holding -= 1;
                }
                _ => panic!("bad record in {}", log.display()),
            }
        }
        if let Some(id) = acking {
            *cut.entry(id).or_default() += 1;
        }
        held_at_death[holding.min(8)] += 1;
    }
    for &id in &last {
        *delivered.entry(id).or_default() += 1;
        *acked.entry(id).or_default() += 1;
    }
    let mut cut_acks = 0;
    for id in 0..n {
        let a = acked.get(&id).copied().unwrap_or(0);
        assert!(a <= 1, "message {id} acknowledged {a} times");
        if a == 0 {
            // Its only acknowledgement was cut by a kill: it must have
            // happened, since the queue is empty now.
            assert!(cut.contains_key(&id), "message {id} never acknowledged");
            cut_acks += 1;
        }
    }
    assert!(
        delivered.keys().chain(acked.keys()).all(|&id| id < n),
        "a message that was never sent"
    );
    let deliveries: u32 = delivered.values().sum();
    let info = Inspector::open(NAME, Some(&dir)).unwrap().info().unwrap();
    assert_eq!((info.current_messages, info.pending), (0, 0));
    assert_eq!(info.total_sent, u64::from(n));
    // The count of messages received is a statistic, bumped right after
    // the slot is freed: an acknowledgement killed between the two is not
    // counted. Every other one is, once.
    let counted = info.total_received;
    assert!(
        (u64::from(n - cut_acks)..=u64::from(n)).contains(&counted),
        "{counted} messages counted received of {n}, {cut_acks} acknowledgements cut by a kill"
    );
    assert!(!matches!(info.health, Health::Damaged { .. }));
    println!(
        "{kills} kills in {:?}: {n} messages, {deliveries} deliveries recorded ({} redeliveries), \
         {cut_acks} acknowledged at the instant of a kill, {} left for the drain; consumers by \
         messages held when killed (0..=8): {held_at_death:?}",
        start.elapsed(),
        deliveries - n,
        last.len()
    );
}
