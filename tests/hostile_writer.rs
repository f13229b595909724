//! A hostile writer at work: while producers and consumers pass checksummed
//! messages through a queue with timed calls, another process scribbles over
//! every part of the file (counters, the lock line, lists, bitmap, slots,
//! the notification fields), in bursts with pauses. The honest processes
//! may see errors and spoiled messages; they must never crash, never spend
//! more than a second past a call's deadline, and never spin while they
//! wait. Afterwards a fresh process opens the queue or gets a clean error,
//! and inspection answers.
//!
//! The run lasts `SHMQ_SOAK_SECS` seconds (default 10).

mod common;
mod hostile_support;

use common::TestDir;
use hostile_support::{Raw, Rng, crashed, off, stride, timed, wait_with_watchdog};
use shmq::OpenOptions;
use shmq::inspect::Inspector;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const CAPACITY: usize = 16;
/// Above the 2 KiB copied under the lock: long messages are copied
/// outside it.
const MSGSIZE: usize = 4096;
/// The deadline of every timed call.
const DEADLINE: Duration = Duration::from_millis(100);

fn soak_secs() -> u64 {
    std::env::var("SHMQ_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// FNV-1a, enough to tell a spoiled message from a good one.
fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A message: sequence number, payload, and the checksum of both.
fn message(seq: u64, rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(4) {
        0 => 0,
        1 => rng.below(64) as usize,
        2 => rng.below(2048) as usize,
        _ => 2049 + rng.below((MSGSIZE - 2049 - 16) as u64) as usize,
    };
    let mut m = seq.to_le_bytes().to_vec();
    m.extend(rng.bytes(len));
    let c = checksum(&m);
    m.extend(c.to_le_bytes());
    m
}

fn intact(m: &[u8]) -> bool {
    m.len() >= 16 && {
        let (body, c) = m.split_at(m.len() - 8);
        checksum(body).to_le_bytes() == c
    }
}

/// CPU time used by this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills in the struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

#[test]
fn hostile_writer_child() {
    let Some(role) = common::role() else { return };
    let dir = common::child_dir();
    let until =
        Instant::now() + Duration::from_millis(std::env::var("RUN_MS").unwrap().parse().unwrap());
    match role.as_str() {
        "producer" | "producer-nonblocking" => produce(&dir, until, role.ends_with("nonblocking")),
        "consumer" | "consumer-inspecting" => consume(&dir, until, role.ends_with("inspecting")),
        "idle" => idle(&dir, until),
        "scribbler" => scribble(&dir, until),
        "fresh" => fresh(&dir),
        r => panic!("unknown role {r}"),
    }
}

/// Counts errors by errno, and ends the process (exit code 5) on one that
/// a hostile writer cannot explain: only a deadline (`ETIMEDOUT`), a busy
/// queue (`EAGAIN`) and damage (`EBADMSG`) may come out of a send or a
/// receive here.
#[derive(Default)]
struct Errors(std::collections::BTreeMap<i32, u64>);

impl Errors {
    fn count(&mut self, what: &str, e: &std::io::Error) {
        let code = e
            .raw_os_error()
            .or_else(|| {
                let inner = e.get_ref()?.downcast_ref::<shmq::Error>()?;
                Some(inner.errno() as i32)
            })
            .unwrap_or(-1);
        if ![libc::ETIMEDOUT, libc::EAGAIN, libc::EBADMSG].contains(&code) {
            eprintln!("{what}: unexpected error {e}");
            std::process::exit(5);
        }
        *self.0.entry(code).or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .0
            .iter()
            .map(|(c, n)| format!("{} {n}", shmq::errno_name(nix::errno::Errno::from_raw(*c))))
            .collect();
        write!(f, "errors {} [{}]", self.total(), names.join(", "))
    }
}

fn open(dir: &Path, name: &str) -> shmq::PosixMq {
    OpenOptions::readwrite().dir(dir).open(name).unwrap()
}

fn produce(dir: &Path, until: Instant, nonblocking: bool) {
    let q = open(dir, "/w");
    q.set_nonblocking(nonblocking).unwrap();
    let mut rng = Rng::new(std::process::id() as u64);
    let (mut sent, mut errors) = (0u64, Errors::default());
    while Instant::now() < until {
        let m = message(sent, &mut rng);
        let prio = rng.below(32768) as u32;
        let r = if nonblocking {
            timed("non-blocking send", Duration::ZERO, || q.send(prio, &m))
        } else {
            timed("timed send", DEADLINE, || {
                q.send_timeout(prio, &m, DEADLINE)
            })
        };
        match r {
            Ok(()) => sent += 1,
            Err(e) => {
                errors.count("send", &e);
                if nonblocking {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    println!("\n@@ sent {sent}, {errors}");
}

fn consume(dir: &Path, until: Instant, inspecting: bool) {
    let q = open(dir, "/w");
    let mut buf = vec![0u8; MSGSIZE];
    let (mut good, mut spoiled, mut errors) = (0u64, 0u64, Errors::default());
    let inspector = Inspector::open("/w", Some(dir)).unwrap();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        match timed("timed receive", DEADLINE, || {
            q.recv_timeout(&mut buf, DEADLINE)
        }) {
            Ok((_, len)) if intact(&buf[..len]) => good += 1,
            Ok(_) => spoiled += 1,
            Err(e) => errors.count("receive", &e),
        }
        if inspecting && n % 16 == 0 {
            timed("attributes", Duration::ZERO, || q.attributes().map(drop)).ok();
            timed("inspection", Duration::from_millis(500), || {
                let _ = inspector.info();
                let _ = inspector.peek(Some(4));
            });
        }
    }
    println!("\n@@ received {good}, spoiled {spoiled}, {errors}");
}

/// Waits on a queue nobody sends to (but that is scribbled over too):
/// its CPU time must stay far below the time it waits.
fn idle(dir: &Path, until: Instant) {
    let q = open(dir, "/idle");
    let mut buf = vec![0u8; MSGSIZE];
    let start = Instant::now();
    let cpu0 = cpu_time();
    while Instant::now() < until {
        let d = Duration::from_millis(500);
        let _ = timed("idle receive", d, || q.recv_timeout(&mut buf, d));
    }
    let cpu = cpu_time() - cpu0;
    let wall = start.elapsed();
    println!("\n@@ idle: cpu {cpu:?} in {wall:?}");
    if cpu * 4 > wall {
        eprintln!("idle receiver used {cpu:?} of CPU in {wall:?}: it spins");
        std::process::exit(4);
    }
}

/// Where to scribble: (start, length, weight).
fn targets(len: usize) -> Vec<(usize, usize, u64)> {
    let mut v = vec![
        (off::LOCK_WORD, 64, 6),     // lock word and counters
        (off::SENT, 128, 2),         // sequence numbers, stale bit
        (off::INFLIGHT_HEAD, 64, 3), // in-flight head, sleepers, members
        (off::NOT_EMPTY, 128, 2),    // futex words
        (off::NOTIFY, 64, 2),        // notification fields
        (off::BITMAP_TOP, 4168, 3),  // the bitmap
        (off::TAILS, 131_072, 3),    // list tails
        (0, 64, 1),                  // identity (new openers refuse it)
    ];
    let slots = (len - off::SLOTS) / stride(MSGSIZE);
    for s in 0..slots {
        v.push((off::SLOTS + s * stride(MSGSIZE), stride(MSGSIZE), 1));
    }
    v
}

fn scribble(dir: &Path, until: Instant) {
    let files = [
        Raw::open(&dir.join("w")).unwrap(),
        Raw::open(&dir.join("idle")).unwrap(),
    ];
    let seed = std::env::var("SCRIBBLE_SEED").unwrap().parse().unwrap();
    eprintln!("scribbler seed {seed}");
    let mut rng = Rng::new(seed);
    let t = targets(files[0].len());
    let ti = targets(files[1].len());
    let mut writes = 0u64;
    while Instant::now() < until {
        // A burst of 1 to 50 ms, then a pause of up to 200 ms.
        let burst = Instant::now() + Duration::from_millis(1 + rng.below(50));
        while Instant::now() < burst {
            let which = rng.below(4) == 0;
            let (f, t) = if which {
                (&files[1], &ti)
            } else {
                (&files[0], &t)
            };
            let total: u64 = t.iter().map(|x| x.2).sum();
            let mut pick = rng.below(total);
            let &(start, size, _) = t
                .iter()
                .find(|x| {
                    if pick < x.2 {
                        true
                    } else {
                        pick -= x.2;
                        false
                    }
                })
                .unwrap();
            let at = start + rng.below(size as u64) as usize;
            let bytes = if rng.below(2) == 0 {
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                rng.nasty(width, CAPACITY as u64 + 1)
            } else {
                let n = 1 + rng.below(16) as usize;
                rng.bytes(n)
            };
            f.write(at / 4 * 4, &bytes);
            writes += 1;
            if writes % 64 == 0 {
                std::thread::yield_now();
            }
        }
        std::thread::sleep(Duration::from_millis(rng.below(200)));
    }
    println!("\n@@ scribbled {writes} times");
}

/// After the storm: opens the queue or gets a clean error; inspection
/// answers; if it opened, it still works within limits.
fn fresh(dir: &Path) {
    for name in ["/w", "/idle"] {
        timed(
            "inspection",
            Duration::from_secs(1),
            || match Inspector::open(name, Some(dir)) {
                Ok(i) => {
                    let info = i.info();
                    println!("\n@@ {name}: {:?}", info.map(|i| (i.health, i.problem)));
                }
                Err(e) => println!("\n@@ {name}: inspection refused: {e}"),
            },
        );
        let q = match timed("open", Duration::ZERO, || {
            OpenOptions::readwrite().dir(dir).open(name)
        }) {
            Ok(q) => q,
            Err(e) => {
                // A clean error: the file says it is damaged.
                println!("\n@@ {name}: open refused: {e}");
                continue;
            }
        };
        let mut buf = vec![0u8; MSGSIZE];
        q.set_nonblocking(true).unwrap();
        for _ in 0..CAPACITY + 2 {
            if timed("receive", Duration::ZERO, || q.recv(&mut buf)).is_err() {
                break;
            }
        }
        let _ = timed("send", Duration::ZERO, || q.send(1, b"after"));
        let _ = timed("attributes", Duration::ZERO, || q.attributes());
    }
}

fn spawn(role: &str, dir: &Path, run: Duration, seed: u64) -> Child {
    common::child("hostile_writer_child", role, dir)
        .env("RUN_MS", run.as_millis().to_string())
        .env("SCRIBBLE_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `c` (watchdog `limit`); returns what it said, or why it
/// failed.
fn verdict(mut c: Child, role: &str, limit: Duration) -> Result<String, String> {
    let st = wait_with_watchdog(&mut c, limit, role);
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let said: String = out
        .lines()
        .filter_map(|l| l.find("@@").map(|i| l[i + 2..].trim().to_string()))
        .collect::<Vec<_>>()
        .join("; ");
    eprintln!("{role}: {st}: {said}");
    if let Some(why) = crashed(&st) {
        return Err(format!("{role} {why}"));
    }
    if !st.success() {
        return Err(format!("{role} failed: {st}"));
    }
    Ok(said)
}

#[test]
fn honest_processes_survive_a_hostile_writer() {
    if common::role().is_some() {
        return;
    }
    let d = TestDir::new("hostile-writer");
    let dir = d.path();
    let mut identity = Vec::new();
    for name in ["/w", "/idle"] {
        let q = OpenOptions::readwrite()
            .capacity(CAPACITY)
            .max_msg_len(MSGSIZE)
            .mode(0o600)
            .create_new()
            .dir(dir)
            .open(name)
            .unwrap();
        identity.push((name, std::fs::read(q.path()).unwrap()[..64].to_vec()));
    }
    let secs = soak_secs();
    let run = Duration::from_secs(secs);
    let seed = std::env::var("SHMQ_SCRIBBLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("scribble seed {seed} (SHMQ_SCRIBBLE_SEED replays it), {secs} s");
    let honest: Vec<(&str, Child)> = [
        "producer",
        "producer-nonblocking",
        "consumer",
        "consumer-inspecting",
        "idle",
    ]
    .into_iter()
    .map(|r| (r, spawn(r, dir, run, seed)))
    .collect();
    // Messages flow for a moment before the scribbling starts.
    std::thread::sleep(Duration::from_millis(500));
    let scribbler = spawn(
        "scribbler",
        dir,
        run.saturating_sub(Duration::from_millis(1500)),
        seed,
    );
    let limit = run + Duration::from_secs(30);
    // Every child is waited for before any verdict is given.
    let mut results = vec![verdict(scribbler, "scribbler", limit)];
    results.extend(honest.into_iter().map(|(role, c)| verdict(c, role, limit)));
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "seed {seed}: {failures:#?}");
    let received: u64 = results
        .iter()
        .flatten()
        .filter_map(|said| {
            said.strip_prefix("received ")?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(received > 0, "no message went through at all");
    let c = spawn("fresh", dir, Duration::ZERO, seed);
    verdict(c, "fresh", Duration::from_secs(30)).unwrap();
    // With its identity block (what opening checks) put back, the
    // scribbled rest must open, and work: repaired or reported.
    for (name, id) in &identity {
        Raw::open(&dir.join(&name[1..])).unwrap().write(0, id);
    }
    let c = spawn("fresh", dir, Duration::ZERO, seed);
    let said = verdict(c, "fresh, identity restored", Duration::from_secs(30)).unwrap();
    assert!(!said.contains("refused"), "{said}");
}
