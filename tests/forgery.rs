//! Forged header fields: a participant that writes the queue file directly
//! (as anyone who may open it can) and puts in it whatever would make an
//! honest process act on its behalf. It may spoil messages; it must not
//! get a signal sent, gain access, or make anyone hang or crash.
//!
//! (a) A forged `mq_notify` registration naming a process to kill, a signal
//!     and a doorbell: a sender only rings a doorbell, and the owner of a
//!     real doorbell ignores a ring it did not register for.
//! (b) A rewritten mode field: access comes from the file's mode bits,
//!     which only the file's owner can change.
//! (c) A scribbled lock word: an owner that is not alive (a member that is
//!     gone, or a thread that its live member's process does not have) is
//!     taken over within milliseconds; one that names a live thread of a
//!     live member cannot be told from a real holder, and then every call
//!     that has a limit keeps it.

mod common;
mod hostile_support;

use common::TestDir;
use hostile_support::{Raw, crashed, off, require_nobody, wait_with_watchdog};
use shmq::inspect::{Health, Inspector, LockState};
use shmq::{OpenOptions, PosixMq};
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_TEST: &str = "forgery_child";
const WATCHDOG: Duration = Duration::from_secs(30);

/// Every test in this file creates queues with exactly the modes it asks
/// for: no umask (set the same way by all of them, so running them in
/// parallel is harmless).
fn no_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
}

fn create(dir: &Path, name: &str, mode: u32) -> PosixMq {
    OpenOptions::readwrite()
        .mode(mode)
        .capacity(4)
        .max_msg_len(64)
        .create_new()
        .dir(dir)
        .open(name)
        .unwrap()
}

fn file_mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Runs `op` on a thread of its own and fails if it does not return within
/// `limit` (the thread is left behind: the test has failed anyway).
fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    op: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let t = Instant::now();
        let v = op();
        let _ = tx.send((v, t.elapsed()));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: did not return within {limit:?}"))
}

/// A child of this test binary playing `role`, as uid 65534, with piped
/// stdin (it waits for EOF before leaving) and stdout (it says "ready").
fn spawn_nobody(role: &str, dir: &Path, env: &[(&str, String)]) -> Child {
    let mut c = require_nobody(role);
    c.args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(common::ROLE, role)
        .env(common::DIR, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Reads the child's output until it says "ready" or gives its verdict;
/// returns what it said.
fn await_line(child: &mut Child) -> String {
    let out = child.stdout.as_mut().unwrap();
    let mut r = BufReader::new(out);
    let mut line = String::new();
    let mut all = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            let st = child.wait().unwrap();
            panic!("the child left without a word: {st}; it said: {all}");
        }
        all.push_str(&line);
        // The harness's own words may share the line: the child's start
        // with "@@".
        if let Some(i) = line.find("@@") {
            return line[i + 2..].trim().to_string();
        }
    }
}

fn finish(mut child: Child, what: &str) {
    drop(child.stdin.take());
    let st = wait_with_watchdog(&mut child, WATCHDOG, what);
    assert!(crashed(&st).is_none(), "{what}: {}", crashed(&st).unwrap());
    assert!(st.success(), "{what}: child failed: {st}");
}

/// The roles played by children of this binary.
#[test]
fn forgery_child() {
    let Some(role) = common::role() else { return };
    let dir = common::child_dir();
    match role.as_str() {
        "forge-notify" => forge_notify(&dir),
        "forge-mode" => forge_mode(&dir),
        "member" => {
            let name = std::env::var("FORGE_NAME").unwrap();
            let _q = OpenOptions::readonly().dir(&dir).open(&name).unwrap();
            // A second opening and an inspection, closed again: closing a
            // descriptor of the file drops the process's record locks on
            // it, which the library takes again.
            drop(OpenOptions::readonly().dir(&dir).open(&name).unwrap());
            drop(Inspector::open(&name, Some(&dir)).unwrap());
            println!("@@ready");
            std::io::stdout().flush().unwrap();
            let _ = std::io::stdin().lines().count();
        }
        "squat" => {
            // Takes a lock (a description's, or the process's) on a range
            // of the queue file, and keeps it until stdin closes.
            let path = std::env::var("FORGE_PATH").unwrap();
            let start: u64 = std::env::var("SQUAT_START").unwrap().parse().unwrap();
            let len: u64 = std::env::var("SQUAT_LEN").unwrap().parse().unwrap();
            let ofd = std::env::var("SQUAT_OFD").is_ok();
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            // SAFETY: flock is plain data; zero is valid for every field.
            let mut l: libc::flock = unsafe { std::mem::zeroed() };
            l.l_type = libc::F_WRLCK as _;
            l.l_whence = libc::SEEK_SET as _;
            l.l_start = start as _;
            l.l_len = len as _;
            let cmd = if ofd {
                libc::F_OFD_SETLK
            } else {
                libc::F_SETLK
            };
            // SAFETY: a valid descriptor and flock.
            let r = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), cmd, &l) };
            assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
            println!("@@ready");
            std::io::stdout().flush().unwrap();
            let _ = std::io::stdin().lines().count();
        }
        r => panic!("unknown role {r}"),
    }
}

// ---------------------------------------------------------------------
// (a) Notification forgery.

/// Child: writes a forged registration into the queue `FORGE_NAME`, says
/// "ready", and stays (a live member, if it joined) until its stdin closes.
fn forge_notify(dir: &Path) {
    let name = std::env::var("FORGE_NAME").unwrap();
    let path = dir.join(&name[1..]);
    let raw = match Raw::open(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            println!("@@verdict: EACCES");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let victim: i32 = var("FORGE_VICTIM").parse().unwrap();
    let owner = match var("FORGE_OWNER").as_str() {
        // A member nobody holds.
        "dead" => 0x7fff_fff0,
        // The forger itself, a live member (it may read the queue).
        "self" => {
            let q = OpenOptions::readonly().dir(dir).open(&name).unwrap();
            std::mem::forget(q);
            raw.u32(off::NEXT_MEMBER).load(Relaxed)
        }
        n => n.parse().unwrap(),
    };
    let (bell, token) = match std::env::var("FORGE_BELL_FROM") {
        // The doorbell and token of a real registration on another queue,
        // copied across.
        Ok(other) => {
            let o = Raw::open(&dir.join(&other[1..])).unwrap();
            (
                o.u64(off::NOTIFY_BELL).load(Relaxed),
                o.u64(off::NOTIFY_TOKEN).load(Relaxed),
            )
        }
        Err(_) => (0x5eed_f00d_dead_beef, 0x1234_5678_9abc_def1),
    };
    raw.u32(off::NOTIFY_PID).store(victim as u32, Relaxed);
    raw.u32(off::NOTIFY_KIND)
        .store(libc::SIGEV_SIGNAL as u32, Relaxed);
    raw.u32(off::NOTIFY_SIGNO)
        .store(libc::SIGKILL as u32, Relaxed);
    raw.u64(off::NOTIFY_TOKEN).store(token, Relaxed);
    raw.u64(off::NOTIFY_BELL).store(bell, Relaxed);
    raw.u32(off::NOTIFY_OWNER).store(owner, Relaxed);
    println!("@@ready");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().lines().count();
}

/// Whether the file mode lets "others" open the file read-write (the
/// kernel's rule, which is all a process bypassing the library meets).
fn others_may_write_file(p: &Path) -> bool {
    file_mode(p) & 0o006 == 0o006
}

#[test]
fn forged_notification_signals_nobody() {
    no_umask();
    let d = TestDir::new("forge-notify");
    let dir = d.path();
    let mut victim = std::process::Command::new("sleep")
        .arg("300")
        .spawn()
        .unwrap();
    let vpid = victim.id().to_string();
    // A real registration of this process on another queue, readable by
    // others: its doorbell and token are there for the forger to copy.
    let other = create(dir, "/other", 0o644);
    let (tx, rx) = mpsc::channel();
    other
        .notify_with(move || {
            let _ = tx.send(());
        })
        .unwrap();

    for mode in [0o600, 0o644, 0o666] {
        let name = format!("/n{mode:o}");
        let q = create(dir, &name, mode);
        let path = q.path().to_path_buf();
        let raw = Raw::open(&path).unwrap();
        // This process created the queue: it is member 1.
        assert_eq!(raw.u32(off::NEXT_MEMBER).load(Relaxed), 1);
        let writable = others_may_write_file(&path);
        eprintln!(
            "queue mode {mode:o}: file mode {:o}, others {} open it read-write",
            file_mode(&path),
            if writable { "may" } else { "may not" }
        );
        let variants: [(&str, Option<&str>); 5] = [
            ("1", None),              // this process (the sender) as owner
            ("self", None),           // the forger, alive
            ("dead", None),           // nobody
            ("self", Some("/other")), // this process's real doorbell and token
            ("1", Some("/other")),
        ];
        for (owner, bell_from) in variants {
            let what = format!("{name}, owner {owner}, bell from {bell_from:?}");
            let mut env = vec![
                ("FORGE_NAME", name.clone()),
                ("FORGE_VICTIM", vpid.clone()),
                ("FORGE_OWNER", owner.to_string()),
            ];
            if let Some(b) = bell_from {
                env.push(("FORGE_BELL_FROM", b.to_string()));
            }
            let mut c = spawn_nobody("forge-notify", dir, &env);
            let line = await_line(&mut c);
            if !writable {
                // The fix at the door: the forger cannot even write.
                assert_eq!(line, "verdict: EACCES", "{what}");
                finish(c, &what);
                break;
            }
            assert_eq!(line, "ready", "{what}");
            // The queue is empty: this send fires whatever is registered.
            let t = Instant::now();
            q.send(1, b"hello").unwrap();
            q.send_timeout(2, b"again", Duration::from_millis(500))
                .unwrap();
            assert!(t.elapsed() < Duration::from_secs(1), "{what}: slow send");
            std::thread::sleep(Duration::from_millis(150));
            assert!(
                victim.try_wait().unwrap().is_none(),
                "{what}: the process named in the forged registration died"
            );
            assert!(
                rx.try_recv().is_err(),
                "{what}: another queue's notification fired"
            );
            let mut buf = [0u8; 64];
            assert_eq!(q.recv(&mut buf).unwrap(), (2, 5));
            assert_eq!(q.recv(&mut buf).unwrap(), (1, 5));
            let info = Inspector::open(&name, Some(dir)).unwrap().info().unwrap();
            // Fired (to a doorbell that ignored it) or dropped: gone.
            assert!(info.notify.is_none(), "{what}: {info:?}");
            finish(c, &what);
        }
    }
    // The real registration is intact, and fires for a real reason.
    let info = Inspector::open("/other", Some(dir))
        .unwrap()
        .info()
        .unwrap();
    assert!(info.notify.is_some(), "the real registration was lost");
    other.send(0, b"real").unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the real notification fired");
    assert!(victim.try_wait().unwrap().is_none());
    let _ = victim.kill();
    let _ = victim.wait();
}

// ---------------------------------------------------------------------
// (b) Mode forgery.

fn errno_of(r: std::io::Result<PosixMq>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Child: a reader or a writer-only of queues owned by root rewrites the
/// header's mode field and tries every way to more access.
fn forge_mode(dir: &Path) {
    let open = |o: &mut OpenOptions, name: &str| o.dir(dir).open(name);
    let eacces = Some(libc::EACCES);
    // May read "/ro", not write it.
    let r = open(&mut OpenOptions::readonly(), "/ro").unwrap();
    assert_eq!(errno_of(open(&mut OpenOptions::writeonly(), "/ro")), eacces);
    assert_eq!(errno_of(open(&mut OpenOptions::readwrite(), "/ro")), eacces);
    let raw = Raw::open(&dir.join("ro")).expect("the file mode lets readers map it");
    raw.u32(off::MODE).store(0o666, Relaxed);
    let f = std::fs::File::open(dir.join("ro")).unwrap();
    let chmod = nix::sys::stat::fchmod(&f, nix::sys::stat::Mode::from_bits_truncate(0o7777));
    assert_eq!(chmod, Err(nix::errno::Errno::EPERM), "not the owner");
    assert_eq!(errno_of(open(&mut OpenOptions::writeonly(), "/ro")), eacces);
    assert_eq!(errno_of(open(&mut OpenOptions::readwrite(), "/ro")), eacces);
    assert_eq!(
        r.send(1, b"x").unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    let i = Inspector::open("/ro", Some(dir)).unwrap();
    assert_eq!(
        i.info().unwrap().mode,
        0o644,
        "the mode shown is the file's"
    );

    // May write "/wo", not read it: not even by purging it.
    let w = open(&mut OpenOptions::writeonly(), "/wo").unwrap();
    assert_eq!(errno_of(open(&mut OpenOptions::readonly(), "/wo")), eacces);
    let raw = Raw::open(&dir.join("wo")).unwrap();
    raw.u32(off::MODE).store(0o666, Relaxed);
    assert_eq!(errno_of(open(&mut OpenOptions::readonly(), "/wo")), eacces);
    assert_eq!(errno_of(open(&mut OpenOptions::readwrite(), "/wo")), eacces);
    let mut buf = [0u8; 64];
    assert_eq!(
        w.recv(&mut buf).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    let i = Inspector::open("/wo", Some(dir)).unwrap();
    let purge = i.purge();
    assert!(
        matches!(&purge, Err(shmq::Error::Os(e)) if *e == nix::errno::Errno::EACCES),
        "purge by a writer-only after rewriting the header's mode: {purge:?}"
    );

    // No access to "/none" at all: not through the library, not directly.
    assert_eq!(
        errno_of(open(&mut OpenOptions::readonly(), "/none")),
        eacces
    );
    assert_eq!(
        Raw::open(&dir.join("none")).err().map(|e| e.kind()),
        Some(ErrorKind::PermissionDenied)
    );
    assert!(Inspector::open("/none", Some(dir)).is_err());
    println!("@@verdict: done");
}

#[test]
fn forged_mode_grants_no_access() {
    no_umask();
    let d = TestDir::new("forge-mode");
    let dir = d.path();
    let ro = create(dir, "/ro", 0o644);
    let wo = create(dir, "/wo", 0o622);
    let none = create(dir, "/none", 0o600);
    for q in [&ro, &wo, &none] {
        q.send(3, b"root's").unwrap();
    }
    let mut c = spawn_nobody("forge-mode", dir, &[]);
    assert_eq!(await_line(&mut c), "verdict: done");
    finish(c, "forge-mode");
    // What the forger could not get: a message of the write-only queue.
    assert_eq!(wo.attributes().unwrap().current_messages, 1);
    for (name, mode) in [("/ro", 0o644), ("/wo", 0o622), ("/none", 0o600)] {
        let i = Inspector::open(name, Some(dir)).unwrap();
        assert_eq!(i.info().unwrap().mode, mode, "{name}");
    }
    drop((ro, none));
}

// ---------------------------------------------------------------------
// (c) Lock-word scribbles.

struct Fixture {
    _d: TestDir,
    dir: PathBuf,
    q: Arc<PosixMq>,
    raw: Raw,
}

fn fixture(tag: &str) -> Fixture {
    let d = TestDir::new(tag);
    let dir = d.path().to_path_buf();
    let q = Arc::new(create(&dir, "/lock", 0o600));
    let raw = Raw::open(q.path()).unwrap();
    assert_eq!(raw.u32(off::NEXT_MEMBER).load(Relaxed), 1, "member 1");
    Fixture { _d: d, dir, q, raw }
}

/// A thread id that no thread has (above any `pid_max`, below the futex
/// word's thread-id mask).
const NO_SUCH_TID: u32 = 0x3fff_fff0;
/// A member number nobody holds.
const NO_SUCH_MEMBER: u32 = 0x7fff_0001;

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() as u32 }
}

#[test]
fn lock_word_naming_no_live_owner_is_taken_over() {
    let f = fixture("lock-dead");
    let limit = Duration::from_secs(1);
    // Another process that uses the queue: member 2, alive throughout.
    let c = common::child(CHILD_TEST, "member", &f.dir)
        .env("FORGE_NAME", "/lock")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = c;
    assert_eq!(await_line(&mut c), "ready");
    assert_eq!(f.raw.u32(off::NEXT_MEMBER).load(Relaxed), 2);
    // (owner, tid) scribbles; `None` for the tid: the calling thread's own.
    let scribbles: [(&str, u32, Option<u32>); 7] = [
        (
            "another live process, a thread that it does not have",
            2,
            Some(NO_SUCH_TID),
        ),
        ("a member nobody holds", NO_SUCH_MEMBER, Some(12345)),
        ("a member nobody holds, no thread", NO_SUCH_MEMBER, Some(0)),
        ("no member, a thread", 0, Some(12345)),
        (
            "this process, a thread that does not exist",
            1,
            Some(NO_SUCH_TID),
        ),
        ("this process, the calling thread", 1, None),
        (
            "the kernel's owner-died bit",
            NO_SUCH_MEMBER,
            Some(0x4000_0000 | 77),
        ),
    ];
    type Op = fn(&PosixMq, &Path) -> Result<(), String>;
    let ops: [(&str, Op); 8] = [
        ("blocking send", |q, _| {
            q.send(5, b"m").map_err(|e| e.to_string())
        }),
        ("blocking receive", |q, _| {
            q.send(5, b"m").map_err(|e| e.to_string())?;
            let mut b = [0u8; 64];
            q.recv(&mut b).map(drop).map_err(|e| e.to_string())
        }),
        ("timed send", |q, _| {
            q.send_timeout(5, b"m", Duration::from_secs(5))
                .map_err(|e| e.to_string())
        }),
        ("timed receive", |q, _| {
            q.send(5, b"m").map_err(|e| e.to_string())?;
            let mut b = [0u8; 64];
            q.recv_timeout(&mut b, Duration::from_secs(5))
                .map(drop)
                .map_err(|e| e.to_string())
        }),
        ("attributes", |q, _| {
            q.attributes().map(drop).map_err(|e| e.to_string())
        }),
        ("non-blocking send", |q, _| {
            q.set_nonblocking(true).unwrap();
            let r = q.send(5, b"m").map_err(|e| e.to_string());
            q.set_nonblocking(false).unwrap();
            r
        }),
        ("inspection", |_, dir| {
            let i = Inspector::open("/lock", Some(dir)).map_err(|e| e.to_string())?;
            let info = i.info().map_err(|e| e.to_string())?;
            match info.lock {
                // Inspection never takes over: it reports.
                LockState::OwnerDied { .. } | LockState::Free => Ok(()),
                l => Err(format!("lock reported as {l:?}")),
            }
        }),
        ("peek", |_, dir| {
            let i = Inspector::open("/lock", Some(dir)).map_err(|e| e.to_string())?;
            match i.peek(None) {
                Ok(_) => Ok(()),
                Err(shmq::Error::Os(nix::errno::Errno::EOWNERDEAD)) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }),
    ];
    for (what, owner, tid) in scribbles {
        for (op_name, op) in ops {
            let q = f.q.clone();
            let dir = f.dir.clone();
            let raw = Raw::open(q.path()).unwrap();
            let (r, took) = within(&format!("{op_name} after {what}"), limit * 5, move || {
                raw.set_lock_owner(owner, tid.unwrap_or_else(gettid));
                op(&q, &dir)
            });
            assert!(
                r.is_ok(),
                "{op_name} after a lock word naming {what}: {r:?}"
            );
            assert!(
                took < limit,
                "{op_name} after a lock word naming {what}: took {took:?}"
            );
            // Inspection leaves the word as it found it; the next caller
            // takes it over.
            let (r, took) = within("clean-up receive", limit * 5, {
                let q = f.q.clone();
                move || {
                    q.set_nonblocking(true).unwrap();
                    let mut b = [0u8; 64];
                    while q.recv(&mut b).is_ok() {}
                    q.set_nonblocking(false).unwrap();
                    q.attributes().map(|a| a.current_messages)
                }
            });
            assert_eq!(r.unwrap(), 0);
            assert!(took < limit, "clean-up took {took:?}");
            assert_eq!(f.raw.lock_word(), 0, "the lock is free again");
        }
    }
    finish(c, "member");
    let info = Inspector::open("/lock", Some(&f.dir))
        .unwrap()
        .info()
        .unwrap();
    assert!(
        matches!(
            info.health,
            Health::Repaired { .. } | Health::Damaged { .. }
        ),
        "{info:?}"
    );
}

fn timed_err(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// A word naming a live member (another process, or another thread of
/// this one) that does not hold the lock cannot be told from a real
/// holder that is slow: every call with a limit keeps it, calls without
/// one wait for that member (or thread) to go, and then go on.
#[test]
fn lock_word_naming_a_live_member_is_waited_for_within_limits() {
    let f = fixture("lock-live");
    // Another process that uses the queue: member 2.
    let mut c = common::child(CHILD_TEST, "member", &f.dir)
        .env("FORGE_NAME", "/lock")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(await_line(&mut c), "ready");
    assert_eq!(f.raw.u32(off::NEXT_MEMBER).load(Relaxed), 2);
    f.q.send(1, b"queued").unwrap();

    let bounded = |f: &Fixture, holder: u32| {
        let q = &f.q;
        let t = Instant::now();
        let r = q.send_timeout(1, b"m", Duration::from_millis(300));
        let took = t.elapsed();
        assert_eq!(timed_err(r), Some(libc::ETIMEDOUT));
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1300),
            "timed send took {took:?}"
        );
        let mut b = [0u8; 64];
        let t = Instant::now();
        let r = q.recv_timeout(&mut b, Duration::from_millis(300));
        assert_eq!(timed_err(r), Some(libc::ETIMEDOUT));
        assert!(t.elapsed() < Duration::from_millis(1300));
        q.set_nonblocking(true).unwrap();
        let t = Instant::now();
        assert_eq!(
            timed_err(q.send(1, b"m")),
            Some(libc::EAGAIN),
            "non-blocking send"
        );
        assert_eq!(timed_err(q.recv(&mut b)), Some(libc::EAGAIN));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        q.set_nonblocking(false).unwrap();
        let t = Instant::now();
        assert_eq!(q.attributes().unwrap().current_messages, 1);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let i = Inspector::open("/lock", Some(&f.dir)).unwrap();
        let info = i.info().unwrap();
        assert_eq!(info.lock, LockState::Busy { member: holder });
        assert!(matches!(i.peek(None), Err(shmq::Error::Os(e)) if e == nix::errno::Errno::EAGAIN));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        let t = Instant::now();
        let r = i.purge();
        assert!(
            matches!(r, Err(shmq::Error::Os(nix::errno::Errno::EAGAIN))),
            "{r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "purge took {:?}",
            t.elapsed()
        );
    };

    // 1. Another live process's number and the id of its main thread.
    f.raw.set_lock_owner(2, c.id());
    bounded(&f, 2);
    // A call without a limit waits for that member...
    let (tx, rx) = mpsc::channel();
    let q = f.q.clone();
    std::thread::spawn(move || {
        let _ = tx.send(q.send(1, b"blocking"));
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a blocking send went past a lock word naming a live member"
    );
    // ... and goes on once it is gone.
    finish(c, "member");
    rx.recv_timeout(Duration::from_secs(2))
        .expect("the blocking send returned after the member left")
        .unwrap();

    // 2. This process's number and the id of another live thread of it.
    let (tid_tx, tid_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        tid_tx.send(gettid()).unwrap();
        let _ = stop_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    f.raw.set_lock_owner(1, tid);
    bounded_own(&f);
    let (tx, rx) = mpsc::channel();
    let q = f.q.clone();
    std::thread::spawn(move || {
        let _ = tx.send(q.send(1, b"blocking"));
    });
    assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
    stop_tx.send(()).unwrap();
    t.join().unwrap();
    rx.recv_timeout(Duration::from_secs(2))
        .expect("the blocking send returned after the thread exited")
        .unwrap();
    assert_eq!(f.q.attributes().unwrap().current_messages, 3);
}

/// As `bounded` above, for a word naming this process itself.
fn bounded_own(f: &Fixture) {
    let q = &f.q;
    let t = Instant::now();
    let r = q.send_timeout(1, b"m", Duration::from_millis(300));
    assert_eq!(timed_err(r), Some(libc::ETIMEDOUT));
    assert!(t.elapsed() < Duration::from_millis(1300));
    q.set_nonblocking(true).unwrap();
    let t = Instant::now();
    assert_eq!(timed_err(q.send(1, b"m")), Some(libc::EAGAIN));
    assert!(t.elapsed() < Duration::from_millis(500));
    q.set_nonblocking(false).unwrap();
    let t = Instant::now();
    q.attributes().unwrap();
    let info = Inspector::open("/lock", Some(&f.dir))
        .unwrap()
        .info()
        .unwrap();
    assert_eq!(info.lock, LockState::Busy { member: 1 });
    assert!(t.elapsed() < Duration::from_secs(1));
}

/// A call that copies a long message outside the lock must take the lock
/// back to finish; a lock word forged meanwhile naming a live thread of a
/// live member makes that wait as long as the thread lives. A timed call still ends at its
/// deadline, and what it had started is rolled back: the write dropped,
/// the read put back.
#[test]
fn a_copy_outside_the_lock_keeps_the_deadline() {
    const BIG: usize = 16 << 20;
    let d = TestDir::new("lock-copy");
    let dir = d.path().to_path_buf();
    let q = Arc::new(
        OpenOptions::readwrite()
            .mode(0o600)
            .capacity(2)
            .max_msg_len(BIG)
            .create_new()
            .dir(&dir)
            .open("/lock")
            .unwrap(),
    );
    let mut c = common::child(CHILD_TEST, "member", &dir)
        .env("FORGE_NAME", "/lock")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(await_line(&mut c), "ready");
    let live = Raw::open(q.path())
        .unwrap()
        .u32(off::NEXT_MEMBER)
        .load(Relaxed);
    assert_eq!(live, 2);
    // Forges the word as soon as a copy outside the lock starts and the
    // lock is free.
    // The word names member 2's main thread: a live thread of a live
    // member, which cannot be told from a real holder.
    let holder = c.id();
    let forge_during_copy = |path: PathBuf| {
        std::thread::spawn(move || {
            let raw = Raw::open(&path).unwrap();
            let forged = (2u64 << 32) | u64::from(holder);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if raw.u32(off::NINFLIGHT).load(Relaxed) != 0
                    && raw
                        .u64(off::LOCK_WORD)
                        .compare_exchange(0, forged, Relaxed, Relaxed)
                        .is_ok()
                {
                    return true;
                }
                std::hint::spin_loop();
            }
            false
        })
    };
    let big = vec![0xa5u8; BIG];
    let mut buf = vec![0u8; BIG];
    let limit = Duration::from_millis(300);
    let mut sent = 0;
    let mut hits = 0;
    for attempt in 0..5 {
        // A send: its slot is reserved, filled outside the lock, and then
        // the lock seems held by member 2.
        let forger = forge_during_copy(q.path().to_path_buf());
        let (qc, bc) = (q.clone(), big.clone());
        let (r, took) = within("a timed send", Duration::from_secs(5), move || {
            qc.send_timeout(1, &bc, limit)
        });
        let forged = forger.join().unwrap();
        if !forged {
            // The copy was over before the forger saw it: try again.
            assert!(r.is_ok(), "{r:?}");
            sent += 1;
            continue;
        }
        assert!(
            took < limit + Duration::from_secs(1),
            "attempt {attempt}: a timed send took {took:?} with a forged lock word"
        );
        assert_eq!(timed_err(r), Some(libc::ETIMEDOUT), "attempt {attempt}");
        // Free the lock (as the holder's death would) and check the
        // unfinished send left nothing behind.
        Raw::open(q.path())
            .unwrap()
            .u64(off::LOCK_WORD)
            .store(0, Relaxed);
        assert_eq!(q.attributes().unwrap().current_messages, sent);
        hits += 1;
        break;
    }
    // A receive of a long message, the same way.
    q.set_nonblocking(true).unwrap();
    while q.recv(&mut buf).is_ok() {}
    q.set_nonblocking(false).unwrap();
    q.send(7, &big).unwrap();
    for attempt in 0..5 {
        let forger = forge_during_copy(q.path().to_path_buf());
        let qc = q.clone();
        let (r, took) = within("a timed receive", Duration::from_secs(5), move || {
            let mut buf = vec![0u8; BIG];
            qc.recv_timeout(&mut buf, limit).map(drop)
        });
        if !forger.join().unwrap() {
            assert!(r.is_ok(), "{r:?}");
            q.send(7, &big).unwrap();
            continue;
        }
        assert!(
            took < limit + Duration::from_secs(1),
            "attempt {attempt}: a timed receive took {took:?} with a forged lock word"
        );
        assert_eq!(timed_err(r), Some(libc::ETIMEDOUT), "attempt {attempt}");
        Raw::open(q.path())
            .unwrap()
            .u64(off::LOCK_WORD)
            .store(0, Relaxed);
        // The message it did not deliver is back in the queue.
        assert_eq!(q.attributes().unwrap().current_messages, 1);
        let (p, n) = q.recv_timeout(&mut buf, Duration::from_secs(2)).unwrap();
        assert_eq!((p, n), (7, BIG));
        hits += 1;
        break;
    }
    assert_eq!(hits, 2, "the forger never caught a copy in five tries");
    // Both slots are usable again.
    q.set_nonblocking(true).unwrap();
    q.send(1, b"one").unwrap();
    q.send(1, b"two").unwrap();
    finish(c, "member");
}

/// `cmd` run in a new pid namespace (`unshare --pid --fork`), with its
/// environment and standard streams.
fn in_new_pid_namespace(cmd: &std::process::Command) -> std::process::Command {
    let ok = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "needs `unshare --pid --fork` (root and util-linux); run the test suite as root"
    );
    let mut c = std::process::Command::new("unshare");
    c.args(["--pid", "--fork", "--kill-child"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// A member in another pid namespace numbers its threads its own way: a
/// word naming it with one of its own thread ids (here 1, its main thread)
/// is a live holder, and must not be taken over because that number is no
/// thread of its process in this namespace. (A word naming it with a
/// thread it does not have cannot be checked from here either: see the
/// README's known limits.)
#[test]
fn a_holder_in_another_pid_namespace_is_waited_for() {
    let f = fixture("lock-pidns");
    let mut c = in_new_pid_namespace(&common::child(CHILD_TEST, "member", &f.dir))
        .env("FORGE_NAME", "/lock")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(await_line(&mut c), "ready");
    assert_eq!(f.raw.u32(off::NEXT_MEMBER).load(Relaxed), 2);
    for tid in [1, NO_SUCH_TID] {
        f.raw.set_lock_owner(2, tid);
        let t = Instant::now();
        let r = f.q.send_timeout(1, b"m", Duration::from_millis(300));
        let took = t.elapsed();
        assert_eq!(timed_err(r), Some(libc::ETIMEDOUT), "tid {tid}");
        assert!(took < Duration::from_millis(1300), "tid {tid}: {took:?}");
        // Still naming that holder (a waiter may have set the waiters bit).
        assert_eq!(
            f.raw.lock_word() & !0x8000_0000,
            (2u64 << 32) | u64::from(tid)
        );
    }
    f.raw.set_lock_owner(0, 0);
    f.q.send(1, b"after").unwrap();
    finish(c, "member");
}

/// The range where member 2 of a process in this pid namespace records
/// itself (see `member.rs`): its first byte, and the byte it locks.
fn record_of_member_2() -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
    let base = (4u64 << 60) + (2u64 << 32);
    (base, base + ns)
}

/// A process that takes a lock where member 2 records itself, before it
/// joins (so that its record fails) or around its byte, does not bring
/// back the wait for a thread that member 2 does not have: a lock there
/// that no honest member would take is forgery, and a record that names
/// another process names a process without that thread.
#[test]
fn a_squatted_record_does_not_hide_a_missing_thread() {
    let (base, at) = record_of_member_2();
    let cases: [(&str, u64, u64, bool); 4] = [
        (
            "a description's lock over the whole range",
            base,
            1 << 32,
            true,
        ),
        (
            "a process's lock over the whole range",
            base,
            1 << 32,
            false,
        ),
        ("a process's lock on the very byte", at, 1, false),
        ("a description's lock below the byte", base, at - base, true),
    ];
    for (i, (what, start, len, ofd)) in cases.into_iter().enumerate() {
        let f = fixture(&format!("lock-squat-{i}"));
        let mut cmd = common::child(CHILD_TEST, "squat", &f.dir);
        cmd.env("FORGE_PATH", f.q.path())
            .env("SQUAT_START", start.to_string())
            .env("SQUAT_LEN", len.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if ofd {
            cmd.env("SQUAT_OFD", "1");
        }
        let mut squat = cmd.spawn().unwrap();
        assert_eq!(await_line(&mut squat), "ready", "{what}");
        let mut m = common::child(CHILD_TEST, "member", &f.dir)
            .env("FORGE_NAME", "/lock")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        assert_eq!(await_line(&mut m), "ready", "{what}");
        assert_eq!(f.raw.u32(off::NEXT_MEMBER).load(Relaxed), 2, "{what}");
        f.raw.set_lock_owner(2, NO_SUCH_TID);
        let q = f.q.clone();
        let (r, took) = within(what, Duration::from_secs(10), move || {
            q.send_timeout(1, b"m", Duration::from_secs(5))
                .map_err(|e| e.to_string())
        });
        assert!(r.is_ok(), "{what}: {r:?}");
        assert!(took < Duration::from_secs(1), "{what}: took {took:?}");
        finish(m, "member");
        finish(squat, "squat");
    }
}
