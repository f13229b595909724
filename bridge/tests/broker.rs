//! The bridge against a real RabbitMQ: a private broker started by
//! `tests/broker.sh` (installed from the Debian package if missing, bound to
//! 127.0.0.1, ports chosen free), two queue directories standing for two
//! hosts, and the bridge binary as separate processes, killed and restarted
//! at will. No mock of the broker.
//!
//! Its own harness: one broker for every case, stopped by pid at the end,
//! on failure too. `SHMQ_BRIDGE_SOAK_SECS` lengthens the soak (default 20).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shmq-bridge");
const PASS: &str = "pw-7a3e9f1c";

struct Broker {
    dir: PathBuf,
    port: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broker.sh")
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok()
}

impl Broker {
    fn start(dir: PathBuf) -> Broker {
        let base = 21000 + (std::process::id() % 4000) as u16 * 2;
        let port = (0..2000u16)
            .map(|i| base.wrapping_add(i * 2) % 20000 + 21000)
            .find(|&p| free(p) && free(p + 1) && free(p + 10000))
            .expect("no free port for the broker");
        let t = Instant::now();
        let st = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .arg(PASS)
            .status()
            .expect("run broker.sh");
        let b = Broker { dir, port };
        assert!(
            st.success(),
            "\n\n*** COULD NOT START RABBITMQ (tests/broker.sh start): the bridge's broker tests need \
             the Debian package rabbitmq-server and root to install it ***\n"
        );
        eprintln!(
            "broker on 127.0.0.1:{port}, up in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        b
    }

    fn url(&self) -> String {
        format!("amqp://bridge:{PASS}@127.0.0.1:{}/%2f", self.port)
    }

    /// kill -9 and start again on the same data.
    fn restart(&self) {
        let t = Instant::now();
        let st = Command::new("bash")
            .arg(script())
            .args(["restart"])
            .arg(&self.dir)
            .arg(self.port.to_string())
            .status()
            .expect("run broker.sh");
        assert!(st.success(), "broker restart failed");
        eprintln!("  broker restarted in {:.1} s", t.elapsed().as_secs_f64());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// A bridge process.
struct Bridge {
    child: Child,
    stderr_file: PathBuf,
}

fn bridge(url: &str, dir: &Path, args: &[&str], tag: &str, work: &Path) -> Bridge {
    let stderr_file = work.join(format!("{tag}.stderr"));
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_file)
        .unwrap();
    let child = Command::new(BIN)
        .arg("run")
        .arg("--url-env")
        .arg("BRIDGE_URL")
        .arg("--dir")
        .arg(dir)
        .arg("--report")
        .arg("0.5")
        .args(args)
        .env("BRIDGE_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("spawn shmq-bridge");
    Bridge { child, stderr_file }
}

impl Bridge {
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; the exit status and how long it took.
    fn term(mut self) -> (std::process::ExitStatus, Duration) {
        let t = Instant::now();
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        (st, t.elapsed())
    }

    fn stderr(&self) -> String {
        let mut s = String::new();
        std::fs::File::open(&self.stderr_file)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn queue(dir: &Path, name: &str, cap: usize) -> shmq::PosixMq {
    std::fs::create_dir_all(dir).unwrap();
    shmq::OpenOptions::readwrite()
        .create()
        .capacity(cap)
        .max_msg_len(256)
        .dir(dir)
        .open(name)
        .unwrap()
}

fn msg(producer: u32, seq: u64) -> String {
    format!("{producer}:{seq}")
}

fn parse(m: &[u8]) -> (u32, u64) {
    let s = std::str::from_utf8(m).unwrap();
    let (p, q) = s.split_once(':').unwrap();
    (
        p.parse().unwrap(),
        q.split(':').next().unwrap().parse().unwrap(),
    )
}

/// What a receiver saw: per (producer, priority), the sequence numbers in
/// arrival order.
#[derive(Default)]
struct Seen {
    got: HashMap<(u32, u32), Vec<u64>>,
    total: u64,
}

impl Seen {
    fn add(&mut self, prio: u32, m: &[u8]) {
        let (p, s) = parse(m);
        self.got.entry((p, prio)).or_default().push(s);
        self.total += 1;
    }

    /// (distinct messages, duplicates, late arrivals): a message seen
    /// before is a duplicate; one never seen before that arrives after a
    /// later one of its producer and priority is late. Both can only be
    /// redeliveries of messages in flight at a failure: a killed `out`
    /// bridge's pending messages go back to A's queue when a live member
    /// next looks for dead ones, possibly after its successor took later
    /// messages; a killed `in` bridge's unacknowledged deliveries go back
    /// to the broker's queue.
    fn check(&self) -> (u64, u64, u64) {
        let (mut distinct, mut dups, mut bad) = (0, 0, 0);
        for v in self.got.values() {
            let mut set = HashSet::new();
            let mut max = None;
            for &s in v {
                if !set.insert(s) {
                    dups += 1;
                    continue;
                }
                distinct += 1;
                if max.is_some_and(|m| s < m) {
                    bad += 1;
                }
                max = max.max(Some(s));
            }
        }
        (distinct, dups, bad)
    }
}

/// Distinct (producer, seq, prio) triples received.
fn distinct(seen: &Seen) -> u64 {
    seen.got
        .values()
        .map(|v| v.iter().collect::<HashSet<_>>().len() as u64)
        .sum()
}

fn drain_all(mq: &shmq::PosixMq, seen: &mut Seen, expect: u64, within: Duration) {
    let mut buf = [0u8; 256];
    let until = Instant::now() + within;
    while distinct(seen) < expect && Instant::now() < until {
        if let Ok((p, n)) = mq.recv_timeout(&mut buf, Duration::from_millis(200)) {
            seen.add(p, &buf[..n]);
        }
    }
}

// ---------------------------------------------------------------- cases

/// Host A's queue → broker → host B's queue: every message, its exact
/// priority, FIFO within a priority; a full queue on B is back-pressure.
fn end_to_end(b: &Broker, work: &Path) {
    let (da, db) = (work.join("e2e-a"), work.join("e2e-b"));
    let a = queue(&da, "/orders", 64);
    let bq = queue(&db, "/orders", 4); // small: back-pressure
    let prios = [0u32, 1, 5, 9, 100, 32767];
    let n = 600u64;
    let out = bridge(&b.url(), &da, &["--out", "/orders=e2e"], "e2e-out", work);
    let inb = bridge(
        &b.url(),
        &db,
        &["--in", "e2e=/orders", "--window", "16"],
        "e2e-in",
        work,
    );
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            let p = prios[(i % prios.len() as u64) as usize];
            a.send(p, format!("0:{i}:{p}").as_bytes()).unwrap();
        }
    });
    // B reads nothing for a while: its queue fills, the bridge must wait.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(bq.attributes().unwrap().current_messages, 4);
    let mut seen = Seen::default();
    drain_all(&bq, &mut seen, n, Duration::from_secs(60));
    sender.join().unwrap();
    let (distinct, dups, bad) = seen.check();
    assert_eq!(distinct, n, "every message arrives");
    assert_eq!(dups, 0, "no failure, no duplicate");
    assert_eq!(bad, 0, "FIFO within a priority");
    for ((_, prio), v) in &seen.got {
        for s in v {
            assert_eq!(
                prios[(*s % prios.len() as u64) as usize],
                *prio,
                "exact priority"
            );
        }
    }
    let (st_out, _) = out.term();
    let (st_in, _) = inb.term();
    assert!(st_out.success() && st_in.success());
    eprintln!("  {n} messages, 6 priorities, B's queue holding 4: all received in order");
}

/// Priorities through the broker: messages waiting at the broker come out
/// highest AMQP priority first; `--bucket-only` maps buckets back.
fn priority_buckets(b: &Broker, work: &Path) {
    let (da, db) = (work.join("pb-a"), work.join("pb-b"));
    let a = queue(&da, "/p", 64);
    let bq = queue(&db, "/p", 64);
    for (i, p) in [0u32, 3, 40, 200, 1000, 2].iter().enumerate() {
        a.send(*p, format!("0:{i}").as_bytes()).unwrap();
    }
    let map = "0,10,100,1000";
    let out = bridge(
        &b.url(),
        &da,
        &["--out", "/p=pb", "--priorities", map],
        "pb-out",
        work,
    );
    let until = Instant::now() + Duration::from_secs(20);
    while a.attributes().unwrap().current_messages > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let inb = bridge(
        &b.url(),
        &db,
        &[
            "--in",
            "pb=/p",
            "--priorities",
            map,
            "--bucket-only",
            "--window",
            "1",
        ],
        "pb-in",
        work,
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < 6 {
        let (p, _) = bq.recv_timeout(&mut buf, Duration::from_secs(20)).unwrap();
        got.push(p);
    }
    got.sort_unstable();
    assert_eq!(got, vec![0, 0, 0, 10, 100, 1000], "bucket lower bounds");
    out.term();
    inb.term();
    eprintln!("  map {map}: POSIX 0,2,3,40,200,1000 came back as {got:?}");
}

/// SIGTERM stops cleanly (exit 0, in-flight settled); the password appears
/// in no output and no status file; the status says what happened.
fn shutdown_and_status(b: &Broker, work: &Path) {
    let da = work.join("st-a");
    let a = queue(&da, "/s", 256);
    let status = work.join("status.json");
    let out = bridge(
        &b.url(),
        &da,
        &[
            "--out",
            "/s=st",
            "--status",
            status.to_str().unwrap(),
            "--json",
        ],
        "st-out",
        work,
    );
    // Messages keep coming while the bridge is told to stop.
    let a = Arc::new(a);
    let sender = {
        let a = a.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while a
                .send_timeout(1, msg(0, i).as_bytes(), Duration::from_secs(2))
                .is_ok()
            {
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let (st, took) = out.term();
    let text = std::fs::read_to_string(work.join("st-out.stderr")).unwrap();
    let sent = sender.join().unwrap();
    assert!(st.success(), "SIGTERM: clean exit, got {st}");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    let file = std::fs::read_to_string(&status).unwrap();
    assert!(
        !text.contains(PASS) && !file.contains(PASS),
        "password printed"
    );
    assert!(
        text.contains("bridge:***@127.0.0.1"),
        "redacted URL shown: {text}"
    );
    let v: serde_json::Value = serde_json::from_str(&file).unwrap();
    let br = &v["bridges"][0];
    assert_eq!(br["name"], "out /s -> st");
    let carried = br["messages"].as_u64().unwrap();
    let left = a.attributes().unwrap().current_messages as u64;
    assert!(
        carried > 0 && left > 0,
        "stopped mid-flow: {carried} {left}"
    );
    assert_eq!(
        carried + left,
        sent,
        "carried or still here, nothing in between"
    );
    let status_cmd = Command::new(BIN)
        .args(["status", "--json"])
        .arg(&status)
        .output()
        .unwrap();
    assert!(status_cmd.status.success());
    eprintln!(
        "  SIGTERM mid-flow: {sent} sent, {carried} carried, {left} left locally: exit 0 in {took:?}"
    );
}

/// A local queue that cannot be opened stops the whole process with
/// status 1, naming it, for a supervisor to see.
fn local_error_stops(b: &Broker, work: &Path) {
    let d = work.join("le");
    std::fs::create_dir_all(&d).unwrap();
    let mut br = bridge(
        &b.url(),
        &d,
        &["--out", "/missing=le", "--in", "le2=/other"],
        "le",
        work,
    );
    let t = Instant::now();
    let st = loop {
        if let Some(st) = br.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(st.code(), Some(1));
    let text = br.stderr();
    assert!(text.contains("local queue /missing"), "{text}");
    eprintln!("  missing local queue: exit 1 in {:?}", t.elapsed());
}

/// The soak: producers on A, a consumer on B, the bridges kill -9ed and the
/// broker killed and restarted at random: everything arrives, in order
/// within a priority apart from redeliveries, duplicates bounded.
fn soak(b: &Broker, work: &Path) {
    let secs: u64 = std::env::var("SHMQ_BRIDGE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (da, db) = (work.join("soak-a"), work.join("soak-b"));
    let a = Arc::new(queue(&da, "/soak", 256));
    let bq = Arc::new(queue(&db, "/soak", 256));
    let window: u64 = 32;
    let w = window.to_string();
    let start_out = || {
        bridge(
            &b.url(),
            &da,
            &["--out", "/soak=soak", "--window", &w],
            "soak-out",
            work,
        )
    };
    let start_in = || {
        bridge(
            &b.url(),
            &db,
            &["--in", "soak=/soak", "--window", &w],
            "soak-in",
            work,
        )
    };
    let producing = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..2u32)
        .map(|p| {
            let (a, producing, sent) = (a.clone(), producing.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut seq = 0u64;
                while producing.load(Relaxed) {
                    let prio = [0, 3, 7][(seq % 3) as usize];
                    a.send(prio, msg(p, seq).as_bytes()).unwrap();
                    sent.fetch_add(1, Relaxed);
                    seq += 1;
                    if seq.is_multiple_of(10) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                seq
            })
        })
        .collect();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let consuming = Arc::new(AtomicBool::new(true));
    let consumer = {
        let (bq, seen, consuming) = (bq.clone(), seen.clone(), consuming.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while consuming.load(Relaxed) {
                if let Ok((p, n)) = bq.recv_timeout(&mut buf, Duration::from_millis(100)) {
                    seen.lock().unwrap().add(p, &buf[..n]);
                }
            }
        })
    };
    let mut out = Some(start_out());
    let mut inb = Some(start_in());
    let (mut kills_out, mut kills_in, mut restarts) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut next_rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // The broker restarts halfway through a short soak, every minute in a
    // long one.
    let restart_every = Duration::from_secs(if secs <= 60 { secs / 2 } else { 60 });
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(1000 + next_rand() % 2000));
        if t0.elapsed() >= restart_every * (restarts as u32 + 1) {
            b.restart();
            restarts += 1;
            continue;
        }
        if next_rand() % 2 == 0 {
            out.take().unwrap().kill9();
            kills_out += 1;
            out = Some(start_out());
        } else {
            inb.take().unwrap().kill9();
            kills_in += 1;
            inb = Some(start_in());
        }
    }
    producing.store(false, Relaxed);
    let per_producer: Vec<u64> = producers.into_iter().map(|p| p.join().unwrap()).collect();
    let total: u64 = per_producer.iter().sum();
    let until = Instant::now() + Duration::from_secs(120);
    while distinct(&seen.lock().unwrap()) < total && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    consuming.store(false, Relaxed);
    consumer.join().unwrap();
    let seen = seen.lock().unwrap();
    let (got, dups, bad) = seen.check();
    let mut missing = BTreeMap::new();
    for (p, &n) in per_producer.iter().enumerate() {
        let have: HashSet<u64> = seen
            .got
            .iter()
            .filter(|((q, _), _)| *q == p as u32)
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        let miss = (0..n).filter(|s| !have.contains(s)).count();
        if miss > 0 {
            missing.insert(p, miss);
        }
    }
    // Messages in flight at the failures, at most: each can come twice or
    // late, or both.
    let bound = kills_out * window + kills_in * window + restarts * 2 * window;
    eprintln!(
        "  soak {secs} s: {total} sent, {got} received once, {dups} duplicates, {bad} late \
         (bound {bound} for both); bridge kills: {kills_out} out, {kills_in} in; broker \
         restarts: {restarts}"
    );
    assert!(
        missing.is_empty(),
        "lost messages per producer: {missing:?}"
    );
    assert_eq!(got, total);
    assert!(
        dups <= bound && bad <= bound,
        "duplicates {dups} or late messages {bad} above the in-flight bound {bound}"
    );
    assert!(kills_out + kills_in >= 3 && restarts >= 1);
    drop(out);
    drop(inb);
}

/// A case: it panics on failure.
type Case = fn(&Broker, &Path);

fn main() {
    // `cargo test -- --list` and filters: this harness runs all or nothing.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("bridge_against_rabbitmq: test");
        return;
    }
    let work = std::env::temp_dir().join(format!("shmq-bridge-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let broker = Broker::start(work.join("broker"));
    let cases: [(&str, Case); 5] = [
        ("end_to_end", end_to_end),
        ("priority_buckets", priority_buckets),
        ("shutdown_and_status", shutdown_and_status),
        ("local_error_stops", local_error_stops),
        ("soak", soak),
    ];
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let mut failed = Vec::new();
    for (name, case) in cases {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        eprintln!("case {name}");
        let t = Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&broker, &work)));
        eprintln!(
            "case {name}: {} in {:.1} s",
            if r.is_ok() { "ok" } else { "FAILED" },
            t.elapsed().as_secs_f64()
        );
        if r.is_err() {
            failed.push(name);
        }
    }
    drop(broker);
    if failed.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
        println!("test result: ok");
    } else {
        eprintln!("bridge stderr kept in {}", work.display());
        println!("test result: FAILED: {failed:?}");
        std::process::exit(1);
    }
}
