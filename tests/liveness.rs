//! Who is alive, across real processes: a live process is never taken for
//! dead (a zombie thread-group leader, a checker out of descriptors,
//! another uid), a dead one is always found (killed asleep, killed holding
//! the lock inside a signal handler, gone by `exec` mid-copy, a `_Fork`
//! child), and a stopped one delays only those who must wait for it.
//! Every wait here has a watchdog; nothing measures speed beyond the
//! bounds the library documents (deadlines, `O_NONBLOCK`, `EINTR`).

mod common;

use common::{TestDir, append, child, child_dir, eventually, kill9, read_u32s, role, wait_ok};
use shmq::inspect::{Health, Inspector, LockState, QueueInfo};
use shmq::{OpenOptions, PosixMq};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WATCHDOG: Duration = Duration::from_secs(60);

fn info(dir: &Path, name: &str) -> QueueInfo {
    Inspector::open(name, Some(dir)).unwrap().info().unwrap()
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("not an errno: {e}"))
}

/// Reads `out` until a line ending in `marker` (the child's test harness
/// prints its own lines first); fails if the child's output ends first.
fn wait_for(out: &mut BufReader<ChildStdout>, marker: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited before printing {marker}");
        if line.trim_end().ends_with(marker) {
            return;
        }
    }
}

/// Writes `s` with one `write(2)`: usable in a forked child and in a
/// signal handler, and lands whole on a pipe.
fn raw_print(s: &[u8]) {
    // SAFETY: writes a valid buffer to standard output.
    unsafe { libc::write(1, s.as_ptr().cast(), s.len()) };
}

/// The state letter of `/proc/<pid>/stat` (R, S, T, Z …).
fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.chars().next()
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions; pid is our child.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

// ---- checksummed payloads --------------------------------------------------

const MAGIC: u32 = 0x4c49_5645;

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A message of `len` bytes (at least 24) from `who`, number `seq`: a
/// header, bytes derived from both, and a checksum of all the rest at the
/// end.
fn payload(who: u32, seq: u32, len: usize) -> Vec<u8> {
    assert!(len >= 24);
    let mut m = vec![0u8; len];
    m[..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..8].copy_from_slice(&who.to_le_bytes());
    m[8..12].copy_from_slice(&seq.to_le_bytes());
    m[12..16].copy_from_slice(&(len as u32).to_le_bytes());
    let mut x = (who.wrapping_mul(0x9e37_79b9) ^ seq) | 1;
    for b in &mut m[16..len - 8] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    let sum = fnv(&m[..len - 8]);
    m[len - 8..].copy_from_slice(&sum.to_le_bytes());
    m
}

/// `(who, seq)` of an intact message, `None` for anything torn or spoiled.
fn check(m: &[u8]) -> Option<(u32, u32)> {
    if m.len() < 24 {
        return None;
    }
    let u = |i: usize| u32::from_le_bytes(m[i..i + 4].try_into().unwrap());
    if u(0) != MAGIC || u(12) as usize != m.len() {
        return None;
    }
    let sum = u64::from_le_bytes(m[m.len() - 8..].try_into().unwrap());
    (fnv(&m[..m.len() - 8]) == sum && payload(u(4), u(8), m.len()) == m).then(|| (u(4), u(8)))
}

// ---- 1. a live process is never taken for dead -------------------------------

const ZOMBIE_THREADS: u32 = 2;
const ZOMBIE_PER_THREAD: u32 = 300;
const ZOMBIE_LEN: usize = 6000;

/// Ends the calling thread alone (not the process): the main thread's exit
/// leaves the thread-group leader a zombie while the others run.
extern "C" fn exit_this_thread(_: libc::c_int) {
    // SAFETY: SYS_exit ends only the calling thread; nothing of it is used
    // afterwards.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
}

fn zombie_leader_sender(dir: &Path) {
    let q = Arc::new(OpenOptions::writeonly().dir(dir).open("/zombie").unwrap());
    let senders: Vec<_> = (0..ZOMBIE_THREADS)
        .map(|t| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                for seq in 0..ZOMBIE_PER_THREAD {
                    if let Err(e) = q.send(1, &payload(t, seq, ZOMBIE_LEN)) {
                        eprintln!("sender {t}: {e}");
                        std::process::exit(3);
                    }
                }
            })
        })
        .collect();
    // The process ends with the last sender, whatever the main thread does.
    std::thread::spawn(move || {
        for s in senders {
            if s.join().is_err() {
                std::process::exit(4);
            }
        }
        std::process::exit(0);
    });
    // SAFETY: getpid and gettid have no preconditions.
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    if pid == tid {
        exit_this_thread(0);
    }
    // SAFETY: installs a handler for SIGUSR1 (which this process uses for
    // nothing else) and sends it to the main thread only.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            exit_this_thread as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGUSR1);
    }
    loop {
        std::thread::park();
    }
}

/// Looks at the queue until `stop` exists: attributes, and a snapshot
/// whose health must stay `Ok` (no repair, which would mean a live member
/// was taken for dead). With `emfile`, first fills the descriptor table.
fn live_checker(dir: &Path, emfile: bool) {
    let q = OpenOptions::readonly().dir(dir).open("/zombie").unwrap();
    let ins = Inspector::open("/zombie", Some(dir)).unwrap();
    ins.info().unwrap();
    q.attributes().unwrap();
    let mut hoard = Vec::new();
    if emfile {
        let lim = libc::rlimit {
            rlim_cur: 64,
            rlim_max: 64,
        };
        // SAFETY: a valid rlimit; lowering the limit is always allowed.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
        loop {
            // SAFETY: dup of standard input, kept until exit.
            let fd = unsafe { libc::dup(0) };
            if fd < 0 {
                assert_eq!(
                    std::io::Error::last_os_error().raw_os_error(),
                    Some(libc::EMFILE)
                );
                break;
            }
            hoard.push(fd);
        }
    }
    let stop = dir.join("stop");
    let mut rounds = 0u32;
    let mut busy = 0u32;
    while !stop.exists() || rounds < 10 {
        let a = q.attributes().unwrap_or_else(|e| panic!("attributes: {e}"));
        assert!(a.current_messages <= 16);
        let i = ins.info().unwrap_or_else(|e| panic!("info: {e}"));
        assert_eq!(i.health, Health::Ok, "a live process was taken for dead");
        assert_eq!(i.problem, None);
        assert!(
            !matches!(i.lock, LockState::OwnerDied { .. }),
            "{:?}",
            i.lock
        );
        busy += u32::from(i.in_flight > 0);
        rounds += 1;
    }
    if emfile {
        // SAFETY: as above.
        let fd = unsafe { libc::dup(0) };
        assert!(fd < 0, "the descriptor table stayed full throughout");
    }
    println!("checker (emfile {emfile}): {rounds} rounds, {busy} with slots in flight");
}

#[test]
fn a_zombie_leader_another_uid_and_a_checker_out_of_descriptors_are_not_taken_for_dead() {
    let test =
        "a_zombie_leader_another_uid_and_a_checker_out_of_descriptors_are_not_taken_for_dead";
    match role().as_deref() {
        Some("sender") => return zombie_leader_sender(&child_dir()),
        Some("checker") => return live_checker(&child_dir(), false),
        Some("checker-emfile") => return live_checker(&child_dir(), true),
        _ => {}
    }
    let d = TestDir::new("zombie");
    let dir = d.path();
    // SAFETY: umask only changes this process's creation mask; 0666 must
    // reach the queue unmasked for the other uid.
    let old = unsafe { libc::umask(0) };
    let q = OpenOptions::readwrite()
        .capacity(16)
        .max_msg_len(ZOMBIE_LEN)
        .mode(0o666)
        .create_new()
        .dir(dir)
        .open("/zombie");
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let q = q.unwrap();
    let other_uid = common::is_root();
    let mut sender = if other_uid {
        // The sender runs as another user (nobody), on a 0666 queue.
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(common::ROLE, "sender")
            .env(common::DIR, dir)
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    } else {
        println!("no root: the sender runs as this uid");
        child(test, "sender", dir).spawn().unwrap()
    };
    let mut checkers = [
        child(test, "checker", dir).spawn().unwrap(),
        child(test, "checker-emfile", dir).spawn().unwrap(),
    ];
    // Receive slowly at first, so that the senders are still at work (and
    // blocked on a full queue) once the leader is a zombie.
    let pid = sender.id();
    eventually("the sender's leader is a zombie", WATCHDOG, || {
        proc_state(pid) == Some('Z') || sender.try_wait().unwrap().is_some()
    });
    assert_eq!(
        sender.try_wait().unwrap(),
        None,
        "the senders run on behind the zombie leader"
    );
    assert_eq!(proc_state(pid), Some('Z'));
    let mut buf = vec![0u8; ZOMBIE_LEN];
    let mut next = vec![0u32; ZOMBIE_THREADS as usize];
    for n in 0..ZOMBIE_THREADS * ZOMBIE_PER_THREAD {
        if n % 64 == 0 {
            // Let the queue fill: senders block, with slots in flight.
            std::thread::sleep(Duration::from_millis(20));
        }
        let (prio, len) = q.recv_timeout(&mut buf, WATCHDOG).unwrap();
        assert_eq!(prio, 1);
        let (t, seq) = check(&buf[..len]).expect("an intact payload");
        assert_eq!(
            seq, next[t as usize],
            "thread {t}: in order, none lost or repeated"
        );
        next[t as usize] += 1;
    }
    wait_ok(&mut sender, WATCHDOG);
    std::fs::write(dir.join("stop"), b"").unwrap();
    for c in &mut checkers {
        wait_ok(c, WATCHDOG);
    }
    let i = info(dir, "/zombie");
    assert_eq!(i.health, Health::Ok, "no repair: nobody died mid-operation");
    assert_eq!(
        (i.current_messages, i.in_flight, i.total_received),
        (0, 0, u64::from(ZOMBIE_THREADS * ZOMBIE_PER_THREAD))
    );
}

// ---- 2. a thousand blocked receivers ---------------------------------------

const RECEIVERS: usize = 1000;

/// Forks receivers on request (one `spawn N` line on standard input each),
/// each a child that only receives one message, prints it and `_exit`s;
/// reports `P <pid>` per child, and `E <pid> <status>` as they end.
fn receiver_spawner(dir: &Path) {
    let q = OpenOptions::readonly().dir(dir).open("/many").unwrap();
    // Our lines start on a line of their own, after the harness's.
    raw_print(b"\n");
    // Reap in a thread of our own: killed children must not stay zombies
    // for long (they hold nothing, but the parent counts them).
    std::thread::spawn(|| {
        loop {
            let mut st = 0;
            // SAFETY: waits for any child; st is valid storage.
            let pid = unsafe { libc::waitpid(-1, &mut st, 0) };
            if pid > 0 {
                raw_print(format!("E {pid} {st}\n").as_bytes());
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    let mut line = String::new();
    let stdin = std::io::stdin();
    while stdin.lock().read_line(&mut line).unwrap() > 0 {
        if let Some(n) = line.trim().strip_prefix("spawn ") {
            let n: usize = n.parse().unwrap();
            for _ in 0..n {
                // SAFETY: the child only receives (the queue was opened
                // before; glibc's fork leaves malloc usable), writes one
                // line and _exits.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
                if pid == 0 {
                    let mut buf = [0u8; 16];
                    let code = match q.recv(&mut buf) {
                        Ok((_, 4)) => {
                            let m = u32::from_le_bytes(buf[..4].try_into().unwrap());
                            // SAFETY: getpid has no preconditions.
                            let me = unsafe { libc::getpid() };
                            raw_print(format!("R {me} {m}\n").as_bytes());
                            0
                        }
                        _ => 1,
                    };
                    // SAFETY: ends the child without running the parent's
                    // exit handlers.
                    unsafe { libc::_exit(code) };
                }
                raw_print(format!("P {pid}\n").as_bytes());
            }
            raw_print(b"SPAWNED\n");
        }
        line.clear();
    }
}

/// What the spawner reported.
#[derive(Default)]
struct Reports {
    spawned: Vec<u32>,
    batches: u32,
    exited: HashMap<u32, i32>,
    received: HashMap<u32, u32>,
}

fn hold_lock_role(dir: &Path, name: &str, mid_receive: bool) -> ! {
    let q = OpenOptions::readwrite().dir(dir).open(name).unwrap();
    q.__die_holding_lock(mid_receive, &|| raw_print(b"SHMQ-LOCKED\n"))
}

fn spawn_holder(test: &str, dir: &Path, role: &str) -> Child {
    let mut c = child(test, role, dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    wait_for(&mut out, "SHMQ-LOCKED");
    c
}

#[test]
fn a_thousand_blocked_receivers_are_counted_woken_and_served_once() {
    let test = "a_thousand_blocked_receivers_are_counted_woken_and_served_once";
    match role().as_deref() {
        Some("spawner") => return receiver_spawner(&child_dir()),
        Some("holder") => hold_lock_role(&child_dir(), "/many", false),
        _ => {}
    }
    let d = TestDir::new("many");
    let dir = d.path();
    let q = OpenOptions::readwrite()
        .capacity(RECEIVERS + 8)
        .max_msg_len(16)
        .create_new()
        .dir(dir)
        .open("/many")
        .unwrap();
    let mut spawner = child(test, "spawner", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cmd = spawner.stdin.take().unwrap();
    let out = spawner.stdout.take().unwrap();
    let reports = Arc::new(Mutex::new(Reports::default()));
    let r2 = Arc::clone(&reports);
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let line = line.unwrap();
            let w: Vec<&str> = line.split_whitespace().collect();
            let mut r = r2.lock().unwrap();
            match w.as_slice() {
                ["P", pid] => r.spawned.push(pid.parse().unwrap()),
                ["SPAWNED"] => r.batches += 1,
                ["E", pid, st] => {
                    r.exited.insert(pid.parse().unwrap(), st.parse().unwrap());
                }
                ["R", pid, m] => {
                    let prev = r.received.insert(pid.parse().unwrap(), m.parse().unwrap());
                    assert_eq!(prev, None, "a receiver received twice");
                }
                _ => {}
            }
        }
    });
    let batches = |n: u32| {
        eventually("the spawner forked its batch", WATCHDOG, || {
            reports.lock().unwrap().batches >= n
        })
    };
    let blocked = |n: u32, what: &str| {
        eventually(what, WATCHDOG, || info(dir, "/many").blocked_receivers == n);
        // Still so a moment later: the count is exact, not on its way.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(info(dir, "/many").blocked_receivers, n, "{what}");
    };
    let start = Instant::now();
    writeln!(cmd, "spawn {RECEIVERS}").unwrap();
    batches(1);
    blocked(RECEIVERS as u32, "all receivers blocked");
    println!("{RECEIVERS} receivers blocked after {:?}", start.elapsed());
    let live = |r: &Reports| -> Vec<u32> {
        r.spawned
            .iter()
            .copied()
            .filter(|p| !r.exited.contains_key(p))
            .collect()
    };

    // One blocked receiver killed: the kernel's count follows at once.
    let victim = live(&reports.lock().unwrap())[RECEIVERS / 2];
    signal(victim, libc::SIGKILL);
    blocked(RECEIVERS as u32 - 1, "one killed receiver uncounted");

    // A lock holder killed mid-send: a snapshot says so and changes nothing.
    let mut holder = spawn_holder(test, dir, "holder");
    kill9(&mut holder);
    let i = info(dir, "/many");
    assert!(
        matches!(i.lock, LockState::OwnerDied { .. }),
        "{:?}",
        i.lock
    );
    assert_eq!(i.blocked_receivers, RECEIVERS as u32 - 1);
    assert_eq!(i.health, Health::Ok, "a snapshot repairs nothing");

    // A new receiver repairs on its way to sleep.
    writeln!(cmd, "spawn 1").unwrap();
    batches(2);
    blocked(RECEIVERS as u32, "a new receiver blocked after a repair");
    let i = info(dir, "/many");
    assert_eq!(i.lock, LockState::Free);
    assert!(
        matches!(i.health, Health::Repaired { .. }),
        "{:?}",
        i.health
    );
    assert_eq!((i.current_messages, i.in_flight), (0, 0));

    // Ten more killed, then replaced: the count is always the truth.
    let victims: Vec<u32> = live(&reports.lock().unwrap())
        .into_iter()
        .step_by(97)
        .take(10)
        .collect();
    assert_eq!(victims.len(), 10);
    for &v in &victims {
        signal(v, libc::SIGKILL);
    }
    blocked(RECEIVERS as u32 - 10, "ten killed receivers uncounted");
    writeln!(cmd, "spawn 10").unwrap();
    batches(3);
    blocked(RECEIVERS as u32, "ten new receivers blocked");

    // A thousand sends: every live receiver woken, every message received
    // exactly once.
    for m in 0..RECEIVERS as u32 {
        q.send(1, &m.to_le_bytes()).unwrap();
    }
    eventually("every receiver served", WATCHDOG, || {
        reports.lock().unwrap().received.len() >= RECEIVERS
    });
    let killed: HashSet<u32> = victims.iter().copied().chain([victim]).collect();
    eventually("every receiver exited", WATCHDOG, || {
        let r = reports.lock().unwrap();
        r.spawned.iter().all(|p| r.exited.contains_key(p))
    });
    let r = reports.lock().unwrap();
    assert_eq!(r.spawned.len(), RECEIVERS + 11);
    for p in &r.spawned {
        let st = r.exited[p];
        if killed.contains(p) {
            assert!(libc::WIFSIGNALED(st), "victim {p} was killed");
        } else {
            assert!(
                libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                "receiver {p}: {st}"
            );
            assert!(r.received.contains_key(p), "receiver {p} got a message");
        }
    }
    let got: HashSet<u32> = r.received.values().copied().collect();
    assert_eq!(r.received.len(), RECEIVERS);
    assert_eq!(got, (0..RECEIVERS as u32).collect(), "each message once");
    drop(r);
    let i = info(dir, "/many");
    assert_eq!(
        (i.current_messages, i.blocked_receivers, i.in_flight),
        (0, 0, 0),
        "nothing stays queued or counted"
    );
    drop(cmd);
    kill9(&mut spawner);
    println!("done after {:?}", start.elapsed());
}

// ---- 3. killed in a signal handler using a second queue --------------------

static INNER: std::sync::OnceLock<PosixMq> = std::sync::OnceLock::new();

/// Runs while its thread holds the outer queue's lock (mid-receive): uses
/// the inner queue (a complete send), then takes its lock too and waits
/// there to be killed.
extern "C" fn use_inner_queue(_: libc::c_int) {
    let inner = INNER.get().expect("inner queue opened");
    if inner.send(3, b"from the handler").is_err() {
        raw_print(b"HANDLER-SEND-FAILED\n");
        return;
    }
    inner.__die_holding_lock(true, &|| raw_print(b"HANDLER-LOCKED\n"));
}

fn nested_victim(dir: &Path) -> ! {
    let outer = OpenOptions::readwrite().dir(dir).open("/outer").unwrap();
    let inner = OpenOptions::readwrite().dir(dir).open("/inner").unwrap();
    inner.send(2, b"before").unwrap();
    INNER.set(inner).unwrap();
    // SAFETY: installs the handler above for SIGUSR2, used for nothing else.
    unsafe {
        libc::signal(
            libc::SIGUSR2,
            use_inner_queue as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    outer.__die_holding_lock(true, &|| {
        raw_print(b"OUTER-LOCKED\n");
        // SAFETY: signals the calling thread; the handler runs before this
        // returns, with the outer lock held.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
        raw_print(b"HANDLER-RETURNED\n");
    })
}

/// Uses both queues of a process killed inside the handler: everything
/// sent before is there, in order, and both queues work.
fn nested_survivor(dir: &Path) {
    let outer = OpenOptions::readwrite().dir(dir).open("/outer").unwrap();
    let inner = OpenOptions::readwrite().dir(dir).open("/inner").unwrap();
    let t = Duration::from_secs(10);
    assert_eq!(outer.attributes().unwrap().current_messages, 5);
    let mut buf = [0u8; 64];
    for i in 0..5u32 {
        let (p, n) = outer.recv_timeout(&mut buf, t).unwrap();
        assert_eq!((p, &buf[..n]), (9 - i, format!("outer {i}").as_bytes()));
    }
    outer.send_timeout(1, b"after", t).unwrap();
    assert_eq!(outer.recv_timeout(&mut buf, t).unwrap(), (1, 5));
    let (p, n) = inner.recv_timeout(&mut buf, t).unwrap();
    assert_eq!((p, &buf[..n]), (3, &b"from the handler"[..]));
    let (p, n) = inner.recv_timeout(&mut buf, t).unwrap();
    assert_eq!((p, &buf[..n]), (2, &b"before"[..]));
    inner.send_timeout(1, b"after", t).unwrap();
    assert_eq!(inner.recv_timeout(&mut buf, t).unwrap(), (1, 5));
    assert_eq!(outer.attributes().unwrap().current_messages, 0);
    assert_eq!(inner.attributes().unwrap().current_messages, 0);
}

#[test]
fn killed_in_a_signal_handler_using_a_second_queue_while_holding_the_first() {
    let test = "killed_in_a_signal_handler_using_a_second_queue_while_holding_the_first";
    match role().as_deref() {
        Some("victim") => nested_victim(&child_dir()),
        Some("survivor") => return nested_survivor(&child_dir()),
        _ => {}
    }
    let d = TestDir::new("nested");
    let dir = d.path();
    let open = |name: &str| {
        OpenOptions::readwrite()
            .capacity(8)
            .max_msg_len(64)
            .create_new()
            .dir(dir)
            .open(name)
            .unwrap()
    };
    let (outer, inner) = (open("/outer"), open("/inner"));
    for i in 0..5u32 {
        outer.send(9 - i, format!("outer {i}").as_bytes()).unwrap();
    }
    for round in 0..3 {
        let mut v = child(test, "victim", dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(v.stdout.take().unwrap());
        wait_for(&mut out, "OUTER-LOCKED");
        wait_for(&mut out, "HANDLER-LOCKED");
        kill9(&mut v);
        let o = info(dir, "/outer");
        assert!(
            matches!(o.lock, LockState::OwnerDied { .. }),
            "{:?}",
            o.lock
        );
        // A third process uses both queues, within its watchdog.
        let mut s = child(test, "survivor", dir).spawn().unwrap();
        wait_ok(&mut s, WATCHDOG);
        assert!(matches!(
            info(dir, "/outer").health,
            Health::Repaired { .. }
        ));
        assert!(matches!(
            info(dir, "/inner").health,
            Health::Repaired { .. }
        ));
        // Set up the next round as the first.
        assert_eq!(
            inner.attributes().unwrap().current_messages,
            0,
            "round {round}"
        );
        for i in 0..5u32 {
            outer.send(9 - i, format!("outer {i}").as_bytes()).unwrap();
        }
    }
}

// ---- 4. a stopped lock holder delays only those who must wait --------------

/// What another process sees while the lock holder is stopped: deadlines
/// kept, `O_NONBLOCK` honoured, read-only calls answered.
fn stopped_prober(dir: &Path) {
    let q = OpenOptions::readwrite().dir(dir).open("/stopped").unwrap();
    let mut buf = [0u8; 64];
    let slack = Duration::from_millis(50);
    for _ in 0..3 {
        let t = Instant::now();
        let e = q
            .recv_timeout(&mut buf, Duration::from_millis(100))
            .unwrap_err();
        let took = t.elapsed();
        assert_eq!(errno(&e), libc::ETIMEDOUT);
        assert!(
            took >= Duration::from_millis(100) && took <= Duration::from_millis(100) + slack,
            "recv_timeout(100 ms) took {took:?}"
        );
        let t = Instant::now();
        let e = q
            .send_timeout(1, b"x", Duration::from_millis(100))
            .unwrap_err();
        let took = t.elapsed();
        assert_eq!(errno(&e), libc::ETIMEDOUT);
        assert!(
            took <= Duration::from_millis(100) + slack,
            "send_timeout took {took:?}"
        );
    }
    let nb = OpenOptions::readwrite()
        .nonblocking()
        .dir(dir)
        .open("/stopped")
        .unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let e = nb.recv(&mut buf).unwrap_err();
        let took = t.elapsed();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        assert!(
            took < Duration::from_millis(30),
            "non-blocking recv took {took:?}"
        );
        let e = nb.send(1, b"x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
    }
    // Read-only calls answer without the lock.
    let t = Instant::now();
    assert_eq!(q.attributes().unwrap().current_messages, 4);
    let i = info(dir, "/stopped");
    assert!(matches!(i.lock, LockState::Busy { .. }), "{:?}", i.lock);
    assert_eq!(i.health, Health::Ok);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    println!("PROBED");
}

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

static SIGNALS: AtomicU32 = AtomicU32::new(0);

/// A blocking receive through the `mq_*` front door (which returns EINTR)
/// waits for the stopped holder; a signal whose handler has no
/// `SA_RESTART`, sent at varied instants of the wait, must end it with
/// EINTR within 50 ms every time.
fn eintr_prober() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let q = shmq::mqueue::mq_open(
        "/stopped",
        nix::mqueue::MQ_OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
        None,
    )
    .unwrap();
    let sa = SigAction::new(
        SigHandler::Handler(count_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only increments an atomic.
    unsafe { sigaction(Signal::SIGUSR1, &sa) }.unwrap();
    let mut buf = [0u8; 64];
    for i in 0..60u64 {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() } as usize;
        let before = SIGNALS.load(Ordering::Relaxed);
        let poke = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1 + (i * 7) % 40));
            let at = Instant::now();
            // SAFETY: the receiving thread outlives this one (it joins it).
            unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR1) };
            at
        });
        let mut prio = 0;
        let r = shmq::mqueue::mq_receive(&q, &mut buf, &mut prio);
        let back = Instant::now();
        let sent = poke.join().unwrap();
        assert_eq!(r, Err(nix::errno::Errno::EINTR), "round {i}");
        assert_eq!(SIGNALS.load(Ordering::Relaxed), before + 1);
        let late = back.saturating_duration_since(sent);
        assert!(
            late <= Duration::from_millis(50),
            "round {i}: EINTR {late:?} after the signal"
        );
    }
    println!("EINTR-PROBED");
}

/// Sends and receives its own numbered messages in a loop, checking each;
/// the parent stops and continues it at random.
fn stopped_worker(dir: &Path) {
    let q = OpenOptions::readwrite().dir(dir).open("/worker").unwrap();
    let mut buf = [0u8; 64];
    let stop = dir.join("stop");
    let mut n = 0u32;
    while !stop.exists() {
        for _ in 0..256 {
            q.send(n % 32, &payload(7, n, 40)).unwrap();
            let (p, len) = q.recv(&mut buf).unwrap();
            assert_eq!((p, check(&buf[..len])), (n % 32, Some((7, n))));
            n += 1;
        }
    }
    assert_eq!(q.attributes().unwrap().current_messages, 0);
    println!("worker: {n} round trips");
}

fn mqtool_bin() -> std::path::PathBuf {
    // Tests run from target/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let mut c = Command::new(env!("CARGO"));
    c.args(["build", "-p", "mqtool"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    let st = c.current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
    assert!(st.success(), "cargo build -p mqtool failed");
    dir.join("mqtool")
}

#[test]
fn a_stopped_lock_holder_delays_only_those_who_wait_for_it() {
    let test = "a_stopped_lock_holder_delays_only_those_who_wait_for_it";
    match role().as_deref() {
        Some("holder") => hold_lock_role(&child_dir(), "/stopped", false),
        Some("prober") => return stopped_prober(&child_dir()),
        Some("eintr-prober") => return eintr_prober(),
        Some("worker") => return stopped_worker(&child_dir()),
        _ => {}
    }
    let mqtool = mqtool_bin();
    let d = TestDir::new("stopped");
    let dir = d.path();
    let q = OpenOptions::readwrite()
        .capacity(8)
        .max_msg_len(64)
        .create_new()
        .dir(dir)
        .open("/stopped")
        .unwrap();
    for i in 0..4u32 {
        q.send(i, &payload(1, i, 40)).unwrap();
    }
    // A holder stopped inside the lock (the hook's half-done send).
    let mut holder = spawn_holder(test, dir, "holder");
    signal(holder.id(), libc::SIGSTOP);
    eventually("holder stopped", WATCHDOG, || {
        proc_state(holder.id()) == Some('T')
    });
    let mut p = child(test, "prober", dir).spawn().unwrap();
    wait_ok(&mut p, WATCHDOG);
    let mut p = child(test, "eintr-prober", dir)
        .env("SHMQ_DIR", dir)
        .spawn()
        .unwrap();
    wait_ok(&mut p, WATCHDOG);
    let t = Instant::now();
    let out = Command::new(&mqtool)
        .args(["info", "/stopped", "--json"])
        .env("SHMQ_DIR", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(r#""lock":{"state":"busy""#), "{text}");
    let out = Command::new(&mqtool)
        .args(["info", "/stopped"])
        .env("SHMQ_DIR", dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lock:") && text.contains("busy"), "{text}");
    assert!(t.elapsed() < WATCHDOG);
    // Continued, it still holds the lock (the hook never lets go); killed,
    // its half-done send is undone and nothing queued is lost.
    signal(holder.id(), libc::SIGCONT);
    kill9(&mut holder);
    let mut buf = [0u8; 64];
    for i in (0..4u32).rev() {
        let (p, n) = q.recv_timeout(&mut buf, WATCHDOG).unwrap();
        assert_eq!((p, check(&buf[..n])), (i, Some((1, i))));
    }
    assert_eq!(q.attributes().unwrap().current_messages, 0);

    // A real operation caught holding the lock by SIGSTOP: the same, and
    // after SIGCONT it finishes its operation with nothing lost.
    let w = OpenOptions::readwrite()
        .capacity(4)
        .max_msg_len(64)
        .create_new()
        .dir(dir)
        .open("/worker")
        .unwrap();
    let mut worker = child(test, "worker", dir).spawn().unwrap();
    eventually("worker started", WATCHDOG, || {
        info(dir, "/worker").total_sent > 0
    });
    let mut caught = 0;
    let mut tries = 0;
    while caught < 3 {
        tries += 1;
        assert!(tries < 2000, "never caught the worker holding the lock");
        signal(worker.id(), libc::SIGSTOP);
        eventually("worker stopped", WATCHDOG, || {
            proc_state(worker.id()) == Some('T')
        });
        if matches!(info(dir, "/worker").lock, LockState::Busy { .. }) {
            caught += 1;
            let t = Instant::now();
            let e = w
                .recv_timeout(&mut buf, Duration::from_millis(100))
                .unwrap_err();
            assert_eq!(errno(&e), libc::ETIMEDOUT);
            assert!(
                t.elapsed() <= Duration::from_millis(150),
                "{:?}",
                t.elapsed()
            );
            w.set_nonblocking(true).unwrap();
            let t = Instant::now();
            assert_eq!(w.recv(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
            assert!(t.elapsed() < Duration::from_millis(30), "{:?}", t.elapsed());
            w.set_nonblocking(false).unwrap();
        }
        signal(worker.id(), libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::write(dir.join("stop"), b"").unwrap();
    wait_ok(&mut worker, WATCHDOG);
    let i = info(dir, "/worker");
    assert_eq!(i.health, Health::Ok, "a stopped holder is not dead");
    assert_eq!((i.current_messages, i.total_sent), (0, i.total_received));
    println!("caught the worker holding the lock {caught} times in {tries} stops");
}

// ---- 5. exec by a sibling thread mid-copy ----------------------------------

const BIG: usize = 4 << 20;

/// An anonymous mapping of `BIG` bytes whose first half is present and
/// whose second half is registered with a userfaultfd that nobody serves:
/// a copy through it stops at the middle, and `read` on the returned
/// descriptor returns once it does.
fn half_mapped_buffer() -> (&'static mut [u8], i32) {
    // SAFETY: a fresh anonymous private mapping, leaked for the process's
    // life (which ends in exec).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            BIG,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    // SAFETY: the mapping above, BIG bytes, used only through this slice.
    let buf = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), BIG) };
    buf[..BIG / 2].fill(0);
    const UFFD_USER_MODE_ONLY: libc::c_long = 1;
    // SAFETY: userfaultfd takes flags only.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_userfaultfd,
            libc::c_long::from(libc::O_CLOEXEC) | UFFD_USER_MODE_ONLY,
        )
    } as i32;
    assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
    // struct uffdio_api and struct uffdio_register (linux/userfaultfd.h).
    let mut api = [0xaau64, 0, 0];
    // SAFETY: UFFDIO_API with a valid uffdio_api.
    assert_eq!(unsafe { libc::ioctl(fd, 0xc018_aa3f, api.as_mut_ptr()) }, 0);
    let mut reg = [p as u64 + (BIG / 2) as u64, (BIG / 2) as u64, 1, 0];
    // SAFETY: UFFDIO_REGISTER (missing pages) of the second half.
    assert_eq!(unsafe { libc::ioctl(fd, 0xc020_aa00, reg.as_mut_ptr()) }, 0);
    (buf, fd)
}

/// Starts a thread that waits for the copy to stop mid-way, then replaces
/// the process image with this test binary in role `exec-image`.
fn exec_when_stuck(uffd: i32, test: &str) {
    let exe = std::ffi::CString::new(
        std::env::current_exe()
            .unwrap()
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    let args: Vec<std::ffi::CString> = [test, "--exact", "--nocapture", "--test-threads=1"]
        .iter()
        .map(|a| std::ffi::CString::new(*a).unwrap())
        .collect();
    let env: Vec<std::ffi::CString> = std::env::vars()
        .filter(|(k, _)| k != common::ROLE)
        .map(|(k, v)| format!("{k}={v}"))
        .chain([format!("{}=exec-image", common::ROLE)])
        .map(|s| std::ffi::CString::new(s).unwrap())
        .collect();
    std::thread::spawn(move || {
        let mut msg = [0u8; 32];
        // SAFETY: reads one uffd_msg into a buffer of its size; returns at
        // the first fault in the registered half.
        let n = unsafe { libc::read(uffd, msg.as_mut_ptr().cast(), 32) };
        assert_eq!(n, 32, "{}", std::io::Error::last_os_error());
        let mut argv: Vec<*const libc::c_char> = [exe.as_ptr()]
            .into_iter()
            .chain(args.iter().map(|a| a.as_ptr()))
            .collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        // SAFETY: NUL-terminated argument and environment arrays of valid
        // C strings, alive across the call.
        unsafe { libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        panic!("execve: {}", std::io::Error::last_os_error());
    });
}

#[test]
fn exec_by_a_sibling_thread_mid_copy_leaves_no_slot_held() {
    let test = "exec_by_a_sibling_thread_mid_copy_leaves_no_slot_held";
    match role().as_deref() {
        Some("exec-image") => {
            println!("EXECED");
            std::thread::sleep(WATCHDOG);
            return;
        }
        Some("exec-recv") => {
            let q = OpenOptions::readonly()
                .dir(child_dir())
                .open("/big")
                .unwrap();
            let (buf, uffd) = half_mapped_buffer();
            exec_when_stuck(uffd, test);
            let r = q.recv(buf);
            panic!("the receive returned: {r:?}");
        }
        Some("exec-send") => {
            let q = OpenOptions::writeonly()
                .dir(child_dir())
                .open("/big")
                .unwrap();
            let (buf, uffd) = half_mapped_buffer();
            buf[..BIG / 2].fill(0x5a);
            exec_when_stuck(uffd, test);
            let r = q.send(1, buf);
            panic!("the send returned: {r:?}");
        }
        _ => {}
    }
    let d = TestDir::new("exec");
    let dir = d.path();
    let q = OpenOptions::readwrite()
        .capacity(2)
        .max_msg_len(BIG)
        .create_new()
        .dir(dir)
        .open("/big")
        .unwrap();
    let mut buf = vec![0u8; BIG];
    let run = |role: &str| -> Child {
        let mut c = child(test, role, dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(c.stdout.take().unwrap());
        wait_for(&mut out, "EXECED");
        // The same process, a new image: alive, but no longer a member.
        assert_eq!(c.try_wait().unwrap(), None);
        c
    };
    for round in 0..2u32 {
        // A receive cut by exec mid-copy: the message goes back, whole.
        q.send(4, &payload(9, round, BIG)).unwrap();
        q.send(2, &payload(9, 100 + round, 100)).unwrap();
        let mut c = run("exec-recv");
        // The small one may come first: the big one goes back to its place
        // once a caller needs it (here, one about to sleep).
        let mut got = HashSet::new();
        for _ in 0..2 {
            let (p, n) = q.recv_timeout(&mut buf, WATCHDOG).unwrap();
            let m = check(&buf[..n]).expect("an intact message");
            assert_eq!(p, if m.1 == round { 4 } else { 2 });
            got.insert(m);
        }
        assert_eq!(got, HashSet::from([(9, round), (9, 100 + round)]));
        let i = info(dir, "/big");
        assert_eq!((i.current_messages, i.in_flight), (0, 0));
        assert!(
            matches!(i.health, Health::Repaired { .. }),
            "{:?}",
            i.health
        );
        assert!(c.try_wait().unwrap().is_none(), "the new image lived on");
        kill9(&mut c);

        // A send cut by exec mid-copy: no message, no half message, and
        // its slot is free again.
        let mut c = run("exec-send");
        assert_eq!(q.attributes().unwrap().current_messages, 0);
        let e = q
            .recv_timeout(&mut buf, Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(errno(&e), libc::ETIMEDOUT);
        let i = info(dir, "/big");
        assert_eq!((i.current_messages, i.in_flight), (0, 0));
        q.send(1, &payload(8, 0, 64)).unwrap();
        q.send(1, &payload(8, 1, 64)).unwrap();
        q.set_nonblocking(true).unwrap();
        assert_eq!(q.send(1, b"x").unwrap_err().kind(), ErrorKind::WouldBlock);
        q.set_nonblocking(false).unwrap();
        for s in 0..2 {
            let (_, n) = q.recv(&mut buf).unwrap();
            assert_eq!(check(&buf[..n]), Some((8, s)));
        }
        assert!(c.try_wait().unwrap().is_none(), "the new image lived on");
        kill9(&mut c);
    }
}

// ---- 6. a notification re-armed before its delivery ran --------------------

fn notify_rearm(dir: &Path) {
    // One CPU for every thread of this process (the delivery threads
    // inherit it), and this thread real-time on it: no delivery thread
    // runs until this one sleeps.
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    let realtime = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
        let p = libc::sched_param { sched_priority: 1 };
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) == 0
    };
    let q = OpenOptions::readwrite().dir(dir).open("/notify").unwrap();
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let mut buf = [0u8; 16];
    let rounds = 20u32;
    let mut rearmed_first = 0;
    for round in 0..rounds {
        let (a, b) = (2 * round, 2 * round + 1);
        let d = Arc::clone(&delivered);
        q.notify_with(move || d.lock().unwrap().push(a)).unwrap();
        q.send(1, b"first").unwrap();
        q.recv(&mut buf).unwrap();
        // Re-registered while the first delivery may not have run yet.
        let d = Arc::clone(&delivered);
        q.notify_with(move || d.lock().unwrap().push(b)).unwrap();
        rearmed_first += u32::from(!delivered.lock().unwrap().contains(&a));
        q.send(1, b"second").unwrap();
        q.recv(&mut buf).unwrap();
        if realtime {
            // Let the delivery threads run.
            std::thread::sleep(Duration::from_millis(1));
        }
        eventually("both deliveries", WATCHDOG, || {
            let v = delivered.lock().unwrap();
            v.contains(&a) && v.contains(&b)
        });
    }
    let mut v = delivered.lock().unwrap().clone();
    v.sort_unstable();
    assert_eq!(
        v,
        (0..2 * rounds).collect::<Vec<_>>(),
        "each delivered once"
    );
    if realtime {
        assert_eq!(
            rearmed_first, rounds,
            "re-armed before every first delivery"
        );
    }
    println!(
        "realtime {realtime}: re-armed before the delivery ran in {rearmed_first} of {rounds} rounds"
    );
}

#[test]
fn a_notification_rearmed_before_its_delivery_ran_is_delivered_twice() {
    let test = "a_notification_rearmed_before_its_delivery_ran_is_delivered_twice";
    if role().as_deref() == Some("notify") {
        return notify_rearm(&child_dir());
    }
    let d = TestDir::new("notify");
    let _q = OpenOptions::readwrite()
        .capacity(4)
        .max_msg_len(16)
        .create_new()
        .dir(d.path())
        .open("/notify")
        .unwrap();
    let mut c = child(test, "notify", d.path()).spawn().unwrap();
    wait_ok(&mut c, WATCHDOG);
}

// ---- 7. children made by _Fork and by a raw clone --------------------------

unsafe extern "C" {
    /// glibc's `_Fork` (2.34): a fork that runs no `atfork` handler.
    fn _Fork() -> libc::pid_t;
}

/// A child made without `atfork` handlers: `_Fork`, or `clone` called
/// directly (which glibc does not even know of).
fn bare_fork(raw: bool) -> libc::pid_t {
    if raw {
        // SAFETY: clone with only SIGCHLD behaves as fork; the child then
        // runs on a copy of this stack.
        unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) as libc::pid_t }
    } else {
        // SAFETY: as fork; the child only uses the queue and _exits.
        unsafe { _Fork() }
    }
}

fn wait_child(pid: libc::pid_t) -> i32 {
    let mut st = 0;
    let start = Instant::now();
    loop {
        // SAFETY: pid is our child; st is valid storage.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return st;
        }
        assert!(start.elapsed() < WATCHDOG, "child {pid} hangs");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Sends and receives `n` times, racing the other process for the lock;
/// any error (EDEADLK above all) is a failure.
fn contend(q: &PosixMq, n: u32) -> Result<(), std::io::Error> {
    let mut buf = [0u8; 64];
    for i in 0..n {
        q.send(1, &i.to_le_bytes())?;
        q.recv(&mut buf)?;
    }
    Ok(())
}

fn bare_forker(dir: &Path) {
    let q = OpenOptions::readwrite().dir(dir).open("/fork").unwrap();
    contend(&q, 10).unwrap();
    for raw in [false, true] {
        // Both sides lock, in turn and at once.
        let pid = bare_fork(raw);
        assert!(pid >= 0);
        if pid == 0 {
            let code = match contend(&q, 20_000) {
                Ok(()) => 0,
                Err(e) if e.raw_os_error() == Some(libc::EDEADLK) => 3,
                Err(_) => 4,
            };
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        contend(&q, 20_000).unwrap_or_else(|e| panic!("parent (raw clone {raw}): {e}"));
        let st = wait_child(pid);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child (raw clone {raw}): status {st}"
        );
        // The child dies holding the lock: a third process must find out.
        let pid = bare_fork(raw);
        assert!(pid >= 0);
        if pid == 0 {
            q.__die_holding_lock(true, &|| raw_print(b"\nCHILD-LOCKED\n"));
        }
        println!("\nFORKED {pid} {raw}");
        // The parent's stdout is the test's pipe; the test kills the child
        // and answers on stdin once a third process got through.
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "next");
        let st = wait_child(pid);
        assert!(libc::WIFSIGNALED(st), "status {st}");
        // And this process carries on with the queue.
        contend(&q, 100).unwrap();
    }
    println!("FORKER-DONE");
}

fn third_process(dir: &Path) {
    let q = OpenOptions::readwrite().dir(dir).open("/fork").unwrap();
    let t = Duration::from_secs(10);
    assert_eq!(q.attributes().unwrap().current_messages, 1);
    let mut buf = [0u8; 64];
    q.send_timeout(2, b"third", t).unwrap();
    assert_eq!(q.recv_timeout(&mut buf, t).unwrap(), (2, 5));
    let (p, n) = q.recv_timeout(&mut buf, t).unwrap();
    assert_eq!((p, &buf[..n]), (0, &b"keep me"[..]), "nothing lost");
    q.send(0, b"keep me").unwrap();
    assert!(matches!(
        Inspector::open("/fork", Some(dir))
            .unwrap()
            .info()
            .unwrap()
            .health,
        Health::Repaired { .. }
    ));
}

#[test]
fn children_of_fork_without_handlers_lock_and_are_found_dead() {
    let test = "children_of_fork_without_handlers_lock_and_are_found_dead";
    match role().as_deref() {
        Some("forker") => return bare_forker(&child_dir()),
        Some("third") => return third_process(&child_dir()),
        _ => {}
    }
    let d = TestDir::new("fork");
    let dir = d.path();
    let q = OpenOptions::readwrite()
        .capacity(4)
        .max_msg_len(64)
        .create_new()
        .dir(dir)
        .open("/fork")
        .unwrap();
    // Below the racing messages (priority 1): only a receive when nothing
    // else is queued takes it, and every racing receive follows a send.
    q.send(0, b"keep me").unwrap();
    let mut f = child(test, "forker", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cmd = f.stdin.take().unwrap();
    let mut out = BufReader::new(f.stdout.take().unwrap());
    for raw in [false, true] {
        // The child's line and the parent's come in either order.
        let (mut locked, mut pid) = (false, None);
        let mut line = String::new();
        while !locked || pid.is_none() {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "forker exited");
            locked |= line.trim_end().ends_with("CHILD-LOCKED");
            if let Some(p) = line.trim().strip_prefix("FORKED ") {
                pid = Some(p.split_whitespace().next().unwrap().parse::<u32>().unwrap());
            }
        }
        let pid = pid.unwrap();
        signal(pid, libc::SIGKILL);
        let i = info(dir, "/fork");
        assert!(
            matches!(i.lock, LockState::OwnerDied { .. }),
            "raw clone {raw}: {:?}",
            i.lock
        );
        let mut t = child(test, "third", dir).spawn().unwrap();
        wait_ok(&mut t, WATCHDOG);
        writeln!(cmd, "next").unwrap();
    }
    wait_for(&mut out, "FORKER-DONE");
    wait_ok(&mut f, WATCHDOG);
}

// ---- 8. receivers killed between calls, many times -------------------------

const SOAK_PRODUCERS: u32 = 2;
const SOAK_PER_PRODUCER: u32 = 5000;
const SOAK_CONSUMERS: usize = 3;
const SOAK_KILLS: u32 = 200;

fn soak_producer(dir: &Path, id: u32) {
    let q = OpenOptions::writeonly().dir(dir).open("/soak").unwrap();
    for seq in 0..SOAK_PER_PRODUCER {
        // Small ones copied under the lock, large ones outside it.
        let len = if seq % 3 == 0 {
            6000
        } else {
            64 + (seq as usize % 200)
        };
        q.send(seq % 8, &payload(id, seq, len)).unwrap();
        append(&dir.join(format!("sent-{id}")), &seq.to_le_bytes());
    }
}

/// Receives, logs, says so on stdout, and waits on stdin for leave to go on:
/// the parent kills it only there, between two receive calls.
fn soak_consumer(dir: &Path, id: u32) {
    let q = OpenOptions::readonly().dir(dir).open("/soak").unwrap();
    let mut buf = vec![0u8; 6000];
    let stdin = std::io::stdin();
    let mut line = String::new();
    raw_print(b"\n");
    loop {
        let (_, len) = q.recv(&mut buf).unwrap();
        let (p, seq) = check(&buf[..len]).expect("an intact message");
        let mut rec = [0u8; 8];
        rec[..4].copy_from_slice(&p.to_le_bytes());
        rec[4..].copy_from_slice(&seq.to_le_bytes());
        append(&dir.join(format!("recv-{id}")), &rec);
        raw_print(b"BETWEEN\n");
        line.clear();
        if stdin.lock().read_line(&mut line).unwrap() == 0 || line.trim() != "go" {
            return;
        }
    }
}

#[test]
fn receivers_killed_between_calls_lose_and_duplicate_nothing() {
    let test = "receivers_killed_between_calls_lose_and_duplicate_nothing";
    let id = || std::env::var("SHMQ_TEST_ID").unwrap().parse().unwrap();
    match role().as_deref() {
        Some("producer") => return soak_producer(&child_dir(), id()),
        Some("consumer") => return soak_consumer(&child_dir(), id()),
        _ => {}
    }
    let d = TestDir::new("soak");
    let dir = d.path().to_path_buf();
    let _q = OpenOptions::readwrite()
        .capacity(16)
        .max_msg_len(6000)
        .create_new()
        .dir(&dir)
        .open("/soak")
        .unwrap();
    let spawn_dir = dir.clone();
    let spawn = move |role: &str, id: u32| {
        child(test, role, &spawn_dir)
            .env("SHMQ_TEST_ID", id.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let start = Instant::now();
    let mut producers: Vec<Child> = (0..SOAK_PRODUCERS).map(|p| spawn("producer", p)).collect();
    let total = SOAK_PRODUCERS * SOAK_PER_PRODUCER;
    let received = Arc::new(AtomicU32::new(0));
    let kills = Arc::new(AtomicU32::new(0));
    let next_id = Arc::new(AtomicU32::new(100));
    // One thread per consumer slot: lets its consumer go on after each
    // message, or kills it there (about one message in 40) and starts
    // another, until every message was received.
    let slots: Vec<_> = (0..SOAK_CONSUMERS)
        .map(|slot| {
            let (received, kills, next_id) = (
                Arc::clone(&received),
                Arc::clone(&kills),
                Arc::clone(&next_id),
            );
            let spawn = spawn.clone();
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9u32 ^ (slot as u32 + 1);
                let mut c = spawn("consumer", next_id.fetch_add(1, Ordering::Relaxed));
                let mut out = BufReader::new(c.stdout.take().unwrap());
                let mut line = String::new();
                loop {
                    line.clear();
                    if out.read_line(&mut line).unwrap() == 0 {
                        panic!("consumer exited: {:?}", c.wait());
                    }
                    if line.trim() != "BETWEEN" {
                        continue;
                    }
                    let done = received.fetch_add(1, Ordering::Relaxed) + 1 >= total;
                    rng ^= rng << 13;
                    rng ^= rng >> 17;
                    rng ^= rng << 5;
                    if !done && rng % 40 == 0 && kills.load(Ordering::Relaxed) < SOAK_KILLS {
                        kills.fetch_add(1, Ordering::Relaxed);
                        kill9(&mut c);
                        c = spawn("consumer", next_id.fetch_add(1, Ordering::Relaxed));
                        out = BufReader::new(c.stdout.take().unwrap());
                        continue;
                    }
                    if received.load(Ordering::Relaxed) >= total {
                        break;
                    }
                    let _ = writeln!(c.stdin.as_mut().unwrap(), "go");
                }
                (c, out)
            })
        })
        .collect();
    for p in &mut producers {
        wait_ok(p, WATCHDOG);
    }
    // Every message received: each consumer still waiting in recv gets one
    // more message (not counted below), then all are told to stop.
    eventually("every message received", WATCHDOG, || {
        received.load(Ordering::Relaxed) >= total
    });
    let q = OpenOptions::writeonly().dir(&dir).open("/soak").unwrap();
    let t = Instant::now();
    while !slots.iter().all(|s| s.is_finished()) {
        assert!(t.elapsed() < WATCHDOG, "consumers did not finish");
        if q.attributes().unwrap().current_messages == 0 {
            q.send(9, &payload(999, 0, 64)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut finished: Vec<(Child, BufReader<ChildStdout>)> = Vec::new();
    for s in slots {
        finished.push(s.join().unwrap());
    }
    // A stop message nobody needed in the end.
    let drain = OpenOptions::readonly()
        .nonblocking()
        .dir(&dir)
        .open("/soak")
        .unwrap();
    let mut buf = vec![0u8; 6000];
    while let Ok((_, n)) = drain.recv(&mut buf) {
        assert_eq!(check(&buf[..n]), Some((999, 0)), "only stop messages left");
    }
    for (mut c, _) in finished {
        drop(c.stdin.take());
        wait_ok(&mut c, WATCHDOG);
    }
    // Exact accounting: every receiver that died, died between calls, so
    // whatever left the queue was logged.
    let mut sent = HashSet::new();
    for p in 0..SOAK_PRODUCERS {
        let seqs = read_u32s(&dir.join(format!("sent-{p}")));
        assert_eq!(seqs, (0..SOAK_PER_PRODUCER).collect::<Vec<_>>());
        sent.extend(seqs.into_iter().map(|s| (p, s)));
    }
    let mut got = HashSet::new();
    for c in 100..next_id.load(Ordering::Relaxed) {
        for r in read_u32s(&dir.join(format!("recv-{c}"))).chunks_exact(2) {
            if r[0] == 999 {
                continue;
            }
            assert!(got.insert((r[0], r[1])), "{r:?} received twice");
        }
    }
    let lost = sent.difference(&got).count();
    let extra = got.difference(&sent).count();
    assert_eq!((lost, extra), (0, 0), "lost, and received but never sent");
    let i = info(&dir, "/soak");
    assert_eq!(
        (i.current_messages, i.in_flight, i.blocked_receivers),
        (0, 0, 0)
    );
    assert_eq!(
        i.health,
        Health::Ok,
        "nobody died mid-operation: nothing to repair"
    );
    let k = kills.load(Ordering::Relaxed);
    assert!(k >= SOAK_KILLS / 2, "only {k} kills");
    println!(
        "soak: {} messages, {k} consumers killed between calls, {:?}",
        got.len(),
        start.elapsed()
    );
}
