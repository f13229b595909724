//! Queue files that shrink under the processes using them (truncated, or
//! holed on a full file system): the kernel answers with `SIGBUS`, and an
//! honest participant must survive it with `EBADMSG`, never die or hang.

mod common;

use common::{TestDir, child, child_dir, eventually, is_root, role, wait_ok};
use nix::errno::Errno;
use shmq::{Error, OpenOptions, PosixMq};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

const WATCHDOG: Duration = Duration::from_secs(20);
/// Environment variable naming the queue for a child.
const QUEUE: &str = "SHMQ_TEST_QUEUE";
/// Environment variable naming the queue's directory for a child, when it
/// is not the test's directory.
const QUEUE_DIR: &str = "SHMQ_TEST_QUEUE_DIR";

/// Whether `e` is the error of a damaged queue: `EBADMSG`, described.
fn is_damage(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .is_some_and(|e| e.errno() == Errno::EBADMSG)
}

fn make(dir: &Path, name: &str, capacity: usize, len: usize) -> (PosixMq, PathBuf) {
    let q = OpenOptions::readwrite()
        .capacity(capacity)
        .max_msg_len(len)
        .create_new()
        .dir(dir)
        .open(name)
        .unwrap();
    let p = q.path().to_path_buf();
    (q, p)
}

fn marker(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!("marker-{what}"))
}

/// Child: loops on send+receive in one thread and on getattr in three others
/// until each gets an error, which must be `EBADMSG`; every later call must
/// fail the same way, and opening the queue again must refuse it.
fn looper(dir: &Path, name: &str) {
    let q = OpenOptions::readwrite().dir(dir).open(name).unwrap();
    let len = q.attributes().unwrap().max_msg_len;
    let rounds = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let q = &q;
        let rounds = &rounds;
        // Threads that fault at once: one handles it, the others wait.
        for _ in 0..3 {
            s.spawn(move || {
                loop {
                    match q.attributes() {
                        Ok(_) => {}
                        Err(e) => {
                            assert!(is_damage(&e), "getattr: {e}");
                            return;
                        }
                    }
                    rounds.fetch_add(1, Relaxed);
                }
            });
        }
        let msg = vec![0x5a; len];
        let mut buf = vec![0; len];
        let mut n = 0u64;
        let err = loop {
            if let Err(e) = q.send(1, &msg) {
                break e;
            }
            match q.recv(&mut buf) {
                Ok((1, l)) if l == len && buf == msg => {}
                Ok(other) => panic!("a spoiled message handed out: {other:?}"),
                Err(e) => break e,
            }
            n += 1;
            if n == 200 {
                std::fs::write(marker(dir, name.trim_start_matches('/')), b"").unwrap();
            }
        };
        assert!(is_damage(&err), "send/receive: {err}");
        eprintln!("looper {name}: EBADMSG after {n} pairs: {err}");
    });
    // Damaged for good in this process.
    let mut buf = vec![0; len];
    assert!(is_damage(&q.send(1, b"x").unwrap_err()));
    assert!(is_damage(&q.recv(&mut buf).unwrap_err()));
    assert!(is_damage(&q.attributes().unwrap_err()));
    // And a fresh open says so.
    let e = OpenOptions::readwrite().dir(dir).open(name).unwrap_err();
    assert!(is_damage(&e), "reopen: {e}");
    // Alive, with the queue still open, while the others carry on: what
    // it held of the shared file (the lock, most likely) must not hold
    // them up.
    let tag = name.trim_start_matches('/');
    std::fs::write(marker(dir, &format!("{tag}-done")), b"").unwrap();
    eventually("leave", WATCHDOG, || {
        marker(dir, &format!("{tag}-leave")).exists()
    });
    drop(q);
}

#[test]
fn truncation_under_busy_processes_gives_ebadmsg() {
    if role().as_deref() == Some("looper") {
        return looper(&child_dir(), &std::env::var(QUEUE).unwrap());
    }
    let d = TestDir::new("sigbus-loop");
    for (i, how) in ["page", "zero", "half"].into_iter().enumerate() {
        let name = format!("/loop{i}");
        let (q, path) = make(d.path(), &name, 16, 1024);
        let size = std::fs::metadata(&path).unwrap().len();
        let mut kid = child(
            "truncation_under_busy_processes_gives_ebadmsg",
            "looper",
            d.path(),
        )
        .env(QUEUE, &name)
        .spawn()
        .unwrap();
        eventually("the looper runs", WATCHDOG, || {
            marker(d.path(), &name[1..]).exists()
        });
        let to = match how {
            "page" => 4096,
            "zero" => 0,
            _ => size / 2,
        };
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(to)
            .unwrap();
        eventually("the looper is done", WATCHDOG, || {
            marker(d.path(), &format!("{}-done", &name[1..])).exists()
        });
        // This process too, while the looper lives on: its mapping faults at
        // the next touch of a lost page (a slot, here), even if the looper
        // was holding the lock when it found the damage.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| tx.send(q.send(1, b"x")).unwrap());
            let r = rx.recv_timeout(WATCHDOG);
            std::fs::write(marker(d.path(), &format!("{}-leave", &name[1..])), b"").unwrap();
            let e = r.expect("a send after the damage hangs").unwrap_err();
            assert!(is_damage(&e), "{how}: {e}");
        });
        wait_ok(&mut kid, WATCHDOG);
        let e = OpenOptions::readwrite()
            .dir(d.path())
            .open(&name)
            .unwrap_err();
        assert!(is_damage(&e), "{how}: {e}");
        // Listed as damaged, or (too short for a header) not at all; never
        // grown back.
        for entry in shmq::inspect::list(Some(d.path())).unwrap() {
            if entry.name == name {
                assert!(matches!(entry.info, Err(Error::Corrupted(_))), "{how}");
            }
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), to, "{how}");
    }
}

/// Child: a receive blocked on an empty queue, with nobody left to wake it
/// once the file is truncated.
fn blocked(dir: &Path, name: &str) {
    let q = OpenOptions::readwrite().dir(dir).open(name).unwrap();
    let mut buf = vec![0; q.attributes().unwrap().max_msg_len];
    std::fs::write(marker(dir, "blocked"), b"").unwrap();
    let e = q.recv(&mut buf).unwrap_err();
    assert!(is_damage(&e), "blocked receive: {e}");
}

#[test]
fn a_blocked_receiver_of_a_truncated_queue_gets_ebadmsg() {
    if role().as_deref() == Some("blocked") {
        return blocked(&child_dir(), &std::env::var(QUEUE).unwrap());
    }
    let d = TestDir::new("sigbus-blocked");
    let (_q, path) = make(d.path(), "/blocked", 4, 64);
    let mut kid = child(
        "a_blocked_receiver_of_a_truncated_queue_gets_ebadmsg",
        "blocked",
        d.path(),
    )
    .env(QUEUE, "/blocked")
    .spawn()
    .unwrap();
    eventually("the receiver blocks", WATCHDOG, || {
        marker(d.path(), "blocked").exists()
    });
    std::thread::sleep(Duration::from_millis(100));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    wait_ok(&mut kid, WATCHDOG);
}

/// Writes `len` and the matching file size into a copy of a queue header,
/// making a file that claims `maxmsg` slots of 64 bytes.
fn craft_sparse(path: &Path, maxmsg: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut stride = [0u8; 4];
    f.read_exact_at(&mut stride, 20).unwrap();
    let stride = u64::from(u32::from_le_bytes(stride));
    let mut header = [0u8; 4];
    f.read_exact_at(&mut header, 16).unwrap();
    let header = u64::from(u32::from_le_bytes(header));
    let size = header + maxmsg * stride;
    f.write_all_at(&maxmsg.to_le_bytes(), 24).unwrap();
    f.write_all_at(&size.to_le_bytes(), 40).unwrap();
    f.set_len(size).unwrap();
    size
}

#[test]
fn a_crafted_sparse_queue_is_refused_and_never_filled() {
    let d = TestDir::new("sigbus-sparse");
    let (q, path) = make(d.path(), "/sparse", 4, 64);
    drop(q);
    // 98 MB that claim to be a queue, with only the header allocated.
    let size = craft_sparse(&path, 765_000);
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!(md.len(), size);
    let allocated = md.blocks() * 512;
    assert!(allocated < 1 << 20, "{allocated}");
    let e = OpenOptions::readwrite()
        .dir(d.path())
        .open("/sparse")
        .unwrap_err();
    assert!(is_damage(&e), "{e}");
    assert!(e.to_string().contains("sparse"), "{e}");
    assert!(matches!(
        shmq::inspect::Inspector::open("/sparse", Some(d.path())),
        Err(Error::Corrupted(_))
    ));
    let l = shmq::inspect::list(Some(d.path())).unwrap();
    assert!(matches!(l[0].info, Err(Error::Corrupted(_))));
    // Looking filled nothing in.
    assert_eq!(std::fs::metadata(&path).unwrap().blocks() * 512, allocated);
}

fn punch(path: &Path, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    // SAFETY: plain syscall on a descriptor we own.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            from as i64,
            len as i64,
        )
    };
    assert_eq!(r, 0, "punch: {}", std::io::Error::last_os_error());
}

#[test]
fn a_holed_queue_is_refused_at_open_and_survived_by_its_users() {
    let d = TestDir::new("sigbus-holes");
    let (q, path) = make(d.path(), "/holes", 2048, 1024);
    let size = std::fs::metadata(&path).unwrap().len();
    let header = 35 * 4096;
    punch(&path, header, size - header);
    // Opening refuses the holed file ...
    let e = OpenOptions::readwrite()
        .dir(d.path())
        .open("/holes")
        .unwrap_err();
    assert!(is_damage(&e) && e.to_string().contains("sparse"), "{e}");
    // ... and a process that had it open goes on (there is room to fill the
    // holes here) or fails cleanly.
    let mut buf = [0u8; 1024];
    for _ in 0..3000 {
        match q.send(2, &[7; 1024]).and_then(|()| q.recv(&mut buf)) {
            Ok((2, 1024)) => {}
            Ok(other) => panic!("{other:?}"),
            Err(e) => {
                assert!(is_damage(&e), "{e}");
                break;
            }
        }
    }
}

/// Child: fills the queue in `qdir` and empties it, over and over
/// (touching every slot), until a call fails; it must fail with `EBADMSG`.
/// Its marker (and its output) go to `dir`, which is not the full one.
fn cycler(dir: &Path, qdir: &Path, name: &str) {
    let q = OpenOptions::readwrite()
        .nonblocking()
        .dir(qdir)
        .open(name)
        .unwrap();
    let len = q.attributes().unwrap().max_msg_len;
    let msg = vec![3u8; len];
    let mut buf = vec![0; len];
    let mut rounds = 0u64;
    let err = 'outer: loop {
        loop {
            match q.send(1, &msg) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => break 'outer e,
            }
        }
        loop {
            match q.recv(&mut buf) {
                Ok((1, l)) if l == len && buf == msg => {}
                Ok(other) => panic!("a spoiled message handed out: {other:?}"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => break 'outer e,
            }
        }
        rounds += 1;
        if rounds == 20 {
            std::fs::write(marker(dir, "cycler"), b"").unwrap();
        }
    };
    assert!(is_damage(&err), "{err}");
    eprintln!("cycler: EBADMSG after {rounds} rounds: {err}");
}

/// Fills the file system of `dir` with a file of its own; returns its path.
fn fill(dir: &Path, tag: &str) -> PathBuf {
    use std::io::Write;
    let p = dir.join(format!("filler-{tag}"));
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![1u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    p
}

#[test]
fn holes_punched_on_a_full_tmpfs_leave_the_writer_alive() {
    if role().as_deref() == Some("cycler") {
        let qdir = PathBuf::from(std::env::var(QUEUE_DIR).unwrap());
        return cycler(&child_dir(), &qdir, &std::env::var(QUEUE).unwrap());
    }
    if !is_root() {
        eprintln!(
            "SKIPPED holes_punched_on_a_full_tmpfs_leave_the_writer_alive: needs root to mount a small tmpfs"
        );
        return;
    }
    let d = TestDir::new("sigbus-full");
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED holes_punched_on_a_full_tmpfs_leave_the_writer_alive: mount -t tmpfs is not permitted here"
        );
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    let (_q, path) = make(&mnt, "/full", 256, 2048);
    let size = std::fs::metadata(&path).unwrap().len();
    let _first = fill(&mnt, "first");
    let mut kid = child(
        "holes_punched_on_a_full_tmpfs_leave_the_writer_alive",
        "cycler",
        d.path(),
    )
    .env(QUEUE, "/full")
    .env(QUEUE_DIR, &mnt)
    .spawn()
    .unwrap();
    eventually("the cycler runs", WATCHDOG, || {
        marker(d.path(), "cycler").exists()
    });
    // Holes over the slots, and the freed room taken at once, with the
    // cycler stopped so that it cannot fill them back first.
    let pid = nix::unistd::Pid::from_raw(kid.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Stopped for sure, not just signalled.
    let st = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WUNTRACED)).unwrap();
    assert!(
        matches!(st, nix::sys::wait::WaitStatus::Stopped(..)),
        "{st:?}"
    );
    let header = 35 * 4096;
    punch(&path, header, size - header);
    let _second = fill(&mnt, "second");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_ok(&mut kid, WATCHDOG);
}

/// A handler of the program's own for faults outside shmq's mappings: it
/// counts them and maps a zero page over the address.
static FOREIGN_FAULTS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn own_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t; mmap is async-signal-safe
    // and replaces only the page of our own test mapping that faulted.
    unsafe {
        let page = ((*info).si_addr() as usize) & !4095;
        libc::mmap(
            page as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
    }
    FOREIGN_FAULTS.fetch_add(1, Relaxed);
}

/// Maps a file of two pages, truncates it and reads the second page: a
/// `SIGBUS` outside every queue.
fn foreign_fault(dir: &Path) -> u8 {
    use std::os::fd::AsRawFd;
    let p = dir.join("foreign");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.set_len(8192).unwrap();
    // SAFETY: a fresh shared mapping of our own file, read only below.
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(m, libc::MAP_FAILED);
    f.set_len(0).unwrap();
    // SAFETY: inside the mapping; the access faults, which is the point.
    unsafe { std::ptr::read_volatile((m as *const u8).add(4096)) }
}

#[test]
fn faults_outside_queues_reach_the_handler_installed_before() {
    match role().as_deref() {
        Some("own") => {
            let dir = child_dir();
            // SAFETY: installing a handler of this test program, as a program
            // would, before it opens its first queue.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = own_handler as extern "C" fn(_, _, _) as libc::sighandler_t;
                sa.sa_flags = libc::SA_SIGINFO;
                libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
            }
            let (q, path) = make(&dir, "/chain", 4, 64);
            assert_eq!(foreign_fault(&dir), 0);
            assert_eq!(FOREIGN_FAULTS.load(Relaxed), 1);
            // A fault in the queue is shmq's alone.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(0)
                .unwrap();
            assert!(is_damage(&q.attributes().unwrap_err()));
            assert_eq!(FOREIGN_FAULTS.load(Relaxed), 1);
        }
        Some("default") => {
            let dir = child_dir();
            // SAFETY: restores the default action.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
            let _q = make(&dir, "/chain", 4, 64);
            foreign_fault(&dir);
            unreachable!("the foreign fault must kill");
        }
        Some("sent") => {
            // A SIGBUS sent by a process, with the default action before
            // shmq's: it kills, as it would have.
            let dir = child_dir();
            // SAFETY: restores the default action.
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
            let _q = make(&dir, "/chain", 4, 64);
            nix::sys::signal::raise(nix::sys::signal::Signal::SIGBUS).unwrap();
            unreachable!("the sent signal must kill");
        }
        Some("std") => {
            // The Rust runtime's own handler (for stack overflows) was there
            // first: it restores the default for a fault it does not own.
            let dir = child_dir();
            let _q = make(&dir, "/chain", 4, 64);
            foreign_fault(&dir);
            unreachable!("the foreign fault must kill");
        }
        Some(_) => unreachable!(),
        None => {
            let d = TestDir::new("sigbus-chain");
            let test = "faults_outside_queues_reach_the_handler_installed_before";
            let mut own = child(test, "own", d.path()).spawn().unwrap();
            wait_ok(&mut own, WATCHDOG);
            let _ = std::fs::remove_file(d.path().join("chain"));
            for r in ["default", "std", "sent"] {
                let st = child(test, r, d.path())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert_eq!(st.signal(), Some(libc::SIGBUS), "{r}: {st}");
                let _ = std::fs::remove_file(d.path().join("chain"));
            }
        }
    }
}

#[test]
fn a_truncated_queue_leaves_the_other_queues_of_the_process_alone() {
    let d = TestDir::new("sigbus-two");
    let (a, path) = make(d.path(), "/a", 4, 64);
    let (b, _) = make(d.path(), "/b", 4, 64);
    let a2 = OpenOptions::readwrite().dir(d.path()).open("/a").unwrap();
    a.send(1, b"before").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut buf = [0u8; 64];
    // The first lost page touched is the lock word's, by the lock's
    // compare-and-swap (and again by the handler, which looks whether this
    // process holds the lock): neither may hang or kill.
    assert!(is_damage(&a.recv(&mut buf).unwrap_err()));
    // A second mapping of the same file is damaged at its own first touch.
    assert!(is_damage(&a2.send(1, b"x").unwrap_err()));
    for i in 0..100u8 {
        b.send(u32::from(i % 7), &[i; 64]).unwrap();
        let (p, n) = b.recv(&mut buf).unwrap();
        assert_eq!((p, n, buf[0]), (u32::from(i % 7), 64, i));
    }
    drop(a);
    drop(a2);
    // The registry entries are free again, and new queues are protected.
    let (c, path) = make(d.path(), "/c", 4, 64);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    assert!(is_damage(&c.send(1, b"y").unwrap_err()));
    assert!(b.attributes().is_ok());
}
