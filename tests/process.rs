//! Semantics across real processes, and the errno table of the man pages.

mod common;

use common::{TestDir, child, child_dir, eventually, role, wait_ok};
use nix::sys::stat::Mode;
use shmq::inspect::Inspector;
use shmq::{OpenOptions, PosixMq};
use std::io::ErrorKind;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

const WATCHDOG: Duration = Duration::from_secs(60);

fn open(dir: &Path, name: &str, cap: usize, len: usize) -> PosixMq {
    OpenOptions::readwrite()
        .capacity(cap)
        .max_msg_len(len)
        .create_new()
        .dir(dir)
        .open(name)
        .unwrap()
}

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or_else(|| panic!("not an errno: {e}"))
}

fn blocked(dir: &Path, name: &str) -> (u32, u32) {
    let i = Inspector::open(name, Some(dir)).unwrap().info().unwrap();
    (i.blocked_receivers, i.blocked_senders)
}

#[test]
fn open_errors_follow_linux() {
    let d = TestDir::new("open");
    let dir = d.path();
    let o = |n: &[u8], f: &mut OpenOptions| {
        f.dir(dir)
            .open_c(&std::ffi::CString::new(n).unwrap())
            .map(drop)
    };
    assert_eq!(
        errno(o(b"noslash", OpenOptions::readwrite().create()).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno(o(b"/", OpenOptions::readwrite().create()).unwrap_err()),
        libc::ENOENT
    );
    assert_eq!(
        errno(o(b"/a/b", OpenOptions::readwrite().create()).unwrap_err()),
        libc::EACCES
    );
    assert_eq!(
        errno(o(b"/..", OpenOptions::readwrite().create()).unwrap_err()),
        libc::EACCES
    );
    let long = format!("/{}", "n".repeat(255));
    o(long.as_bytes(), OpenOptions::readwrite().create_new()).unwrap();
    let too_long = format!("/{}", "n".repeat(256));
    assert_eq!(
        errno(o(too_long.as_bytes(), OpenOptions::readwrite().create()).unwrap_err()),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(o(b"/missing", &mut OpenOptions::readwrite()).unwrap_err()),
        libc::ENOENT
    );
    // attr: only at creation, EINVAL for <= 0, EOVERFLOW for sizes that overflow.
    assert_eq!(
        errno(o(b"/a", OpenOptions::readwrite().create().capacity(5)).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno(o(b"/a", OpenOptions::readwrite().create().max_msg_len(5)).unwrap_err()),
        libc::EINVAL
    );
    let huge = OpenOptions::readwrite()
        .create()
        .capacity(1 << 40)
        .max_msg_len(1 << 40)
        .dir(dir)
        .open("/a");
    assert_eq!(errno(huge.unwrap_err()), libc::EOVERFLOW);
    // NULL attr: Linux's defaults.
    let q = OpenOptions::readwrite()
        .create_new()
        .dir(dir)
        .open("/defaults")
        .unwrap();
    let a = q.attributes().unwrap();
    assert_eq!(
        (a.capacity, a.max_msg_len, a.current_messages, a.nonblocking),
        (10, 8192, 0, false)
    );
    // O_EXCL, and attr ignored when the queue exists.
    assert_eq!(
        errno(
            OpenOptions::readwrite()
                .create_new()
                .dir(dir)
                .open("/defaults")
                .unwrap_err()
        ),
        libc::EEXIST
    );
    let again = OpenOptions::readwrite()
        .create()
        .capacity(3)
        .max_msg_len(3)
        .dir(dir)
        .open("/defaults")
        .unwrap();
    assert_eq!(again.attributes().unwrap().capacity, 10);
}

#[test]
fn nix_front_door_errno_table() {
    use shmq::mqueue::*;
    let d = TestDir::new("nix");
    // SAFETY: this test binary's other tests never read SHMQ_DIR concurrently
    // with a change: each test uses explicit directories except this one, and
    // it sets the variable to the same value it reads.
    unsafe { std::env::set_var("SHMQ_DIR", d.path()) };
    let rw = MQ_OFlag::O_RDWR | MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL;
    let attr = MqAttr::new(0, 2, 16, 0);
    let mq = mq_open("/t", rw, Mode::S_IRUSR | Mode::S_IWUSR, Some(&attr)).unwrap();
    let ro = mq_open("/t", MQ_OFlag::O_RDONLY, Mode::empty(), None).unwrap();
    let wo = mq_open("/t", MQ_OFlag::O_WRONLY, Mode::empty(), None).unwrap();
    // Access mode 3: EINVAL for an existing queue; creating works (as on
    // Linux) and gives a descriptor that can neither send nor receive.
    assert_eq!(
        mq_open(
            "/t",
            MQ_OFlag::O_WRONLY | MQ_OFlag::O_RDWR,
            Mode::empty(),
            None
        )
        .unwrap_err(),
        Errno::EINVAL
    );
    let m3 = mq_open(
        "/m3",
        MQ_OFlag::O_CREAT | MQ_OFlag::O_WRONLY | MQ_OFlag::O_RDWR,
        Mode::S_IRWXU,
        None,
    )
    .unwrap();
    assert_eq!(mq_send(&m3, b"x", 0), Err(Errno::EBADF));
    assert_eq!(mq_receive(&m3, &mut [0; 8192], &mut 0), Err(Errno::EBADF));
    mq_unlink("/m3").unwrap();
    // Priority checked first, then the access mode, then the size.
    assert_eq!(mq_send(&ro, &[0; 100], 32768), Err(Errno::EINVAL));
    assert_eq!(mq_send(&ro, &[0; 100], 1), Err(Errno::EBADF));
    assert_eq!(mq_send(&mq, &[0; 17], 1), Err(Errno::EMSGSIZE));
    let mut buf = [0u8; 16];
    let mut prio = 0;
    assert_eq!(mq_receive(&wo, &mut [0; 4], &mut prio), Err(Errno::EBADF));
    assert_eq!(
        mq_receive(&mq, &mut [0; 15], &mut prio),
        Err(Errno::EMSGSIZE)
    );
    // Zero-length messages, priority 32767.
    mq_send(&wo, b"", 32767).unwrap();
    mq_send(&wo, b"0123456789abcdef", 0).unwrap();
    assert_eq!(mq_getattr(&mq).unwrap().curmsgs(), 2);
    // Full: a past deadline fails only because the call would block.
    let past = TimeSpec::new(0, 0);
    assert_eq!(mq_timedsend(&mq, b"x", 1, &past), Err(Errno::ETIMEDOUT));
    assert_eq!(
        mq_timedsend(&mq, b"x", 1, &TimeSpec::new(0, 1_000_000_000)),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        mq_timedsend(&mq, b"x", 1, &TimeSpec::new(-1, 0)),
        Err(Errno::EINVAL)
    );
    mq_set_nonblock(&mq).unwrap();
    assert_eq!(mq_send(&mq, b"x", 1), Err(Errno::EAGAIN));
    // A huge deadline does not overflow: data is there, so it returns at once.
    let huge = TimeSpec::new(i64::MAX, 999_999_999);
    assert_eq!(mq_timedreceive(&ro, &mut buf, &mut prio, &huge), Ok(0));
    assert_eq!(prio, 32767);
    assert_eq!(mq_timedreceive(&ro, &mut buf, &mut prio, &past), Ok(16));
    assert_eq!((&buf[..], prio), (&b"0123456789abcdef"[..], 0));
    // Empty: EAGAIN on the non-blocking description, ETIMEDOUT with a deadline.
    assert_eq!(mq_receive(&mq, &mut buf, &mut prio), Err(Errno::EAGAIN));
    assert_eq!(
        mq_timedreceive(&ro, &mut buf, &mut prio, &past),
        Err(Errno::ETIMEDOUT)
    );
    // A past deadline succeeds when the queue is not full.
    mq_timedsend(&wo, b"p", 3, &past).unwrap();
    // setattr: only O_NONBLOCK; other bits EINVAL; returns the old value.
    let old = mq_setattr(&mq, &MqAttr::new(0, 99, 99, 99)).unwrap();
    assert_eq!(old.flags(), libc::O_NONBLOCK as i64);
    assert_eq!(mq_getattr(&mq).unwrap().maxmsg(), 2);
    assert_eq!(
        mq_setattr(
            &mq,
            &MqAttr::new(libc::O_RDWR as i64 | libc::O_NONBLOCK as i64, 0, 0, 0)
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        mq_getattr(&ro).unwrap().flags(),
        0,
        "descriptors have their own flags"
    );
    // Unlink while open.
    mq_unlink("/t").unwrap();
    assert_eq!(mq_unlink("/t"), Err(Errno::ENOENT));
    assert_eq!(
        mq_open("/t", MQ_OFlag::O_RDWR, Mode::empty(), None).unwrap_err(),
        Errno::ENOENT
    );
    assert_eq!(mq_receive(&ro, &mut buf, &mut prio), Ok(1));
    let fresh = mq_open("/t", rw, Mode::S_IRWXU, None).unwrap();
    assert_eq!(mq_getattr(&fresh).unwrap().curmsgs(), 0);
    assert_eq!(mq_getattr(&fresh).unwrap().maxmsg(), 10);
    mq_send(&wo, b"old", 1).unwrap();
    assert_eq!(
        mq_getattr(&fresh).unwrap().curmsgs(),
        0,
        "the old queue is another queue"
    );
    for q in [mq, ro, wo, fresh] {
        mq_close(q).unwrap();
    }
    mq_unlink("/t").unwrap();
    assert_eq!(mq_unlink("noslash"), Err(Errno::EINVAL));
    assert_eq!(mq_unlink("/"), Err(Errno::ENOENT));
}

#[test]
fn priorities_zero_to_32767_fifo_within() {
    let d = TestDir::new("prio");
    let q = open(d.path(), "/p", 64, 8);
    let sends = [
        (0u32, 1u8),
        (32767, 2),
        (5, 3),
        (0, 4),
        (32767, 5),
        (5, 6),
        (1000, 7),
    ];
    for (p, m) in sends {
        q.send(p, &[m]).unwrap();
    }
    assert_eq!(errno(q.send(32768, b"x").unwrap_err()), libc::EINVAL);
    q.set_nonblocking(true).unwrap();
    let got: Vec<(u32, Vec<u8>)> = q.iter().collect();
    let want: Vec<(u32, Vec<u8>)> = [
        (32767, 2),
        (32767, 5),
        (1000, 7),
        (5, 3),
        (5, 6),
        (0, 1),
        (0, 4),
    ]
    .iter()
    .map(|&(p, m)| (p, vec![m]))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn blocking_receive_is_woken_by_another_process() {
    if role().as_deref() == Some("receiver") {
        let q = OpenOptions::readonly().dir(child_dir()).open("/w").unwrap();
        let mut buf = [0u8; 64];
        let (prio, len) = q.recv(&mut buf).unwrap();
        assert_eq!((prio, &buf[..len]), (9, &b"wake up"[..]));
        return;
    }
    let d = TestDir::new("wake");
    let q = open(d.path(), "/w", 4, 64);
    let mut c = child(
        "blocking_receive_is_woken_by_another_process",
        "receiver",
        d.path(),
    )
    .spawn()
    .unwrap();
    eventually("receiver blocked", WATCHDOG, || {
        blocked(d.path(), "/w").0 == 1
    });
    q.send(9, b"wake up").unwrap();
    wait_ok(&mut c, WATCHDOG);
    assert_eq!(blocked(d.path(), "/w"), (0, 0));
    assert_eq!(q.attributes().unwrap().current_messages, 0);
}

#[test]
fn blocking_send_is_woken_by_a_receive_in_another_process() {
    if role().as_deref() == Some("sender") {
        let q = OpenOptions::writeonly()
            .dir(child_dir())
            .open("/s")
            .unwrap();
        q.send(1, b"first").unwrap();
        q.send(2, b"second").unwrap(); // blocks: capacity 1
        return;
    }
    let d = TestDir::new("sendwake");
    let q = open(d.path(), "/s", 1, 16);
    let mut c = child(
        "blocking_send_is_woken_by_a_receive_in_another_process",
        "sender",
        d.path(),
    )
    .spawn()
    .unwrap();
    eventually("sender blocked", WATCHDOG, || {
        blocked(d.path(), "/s").1 == 1
    });
    let mut buf = [0u8; 16];
    assert_eq!(q.recv(&mut buf).unwrap(), (1, 5));
    wait_ok(&mut c, WATCHDOG);
    let (prio, len) = q.recv(&mut buf).unwrap();
    assert_eq!((prio, &buf[..len]), (2, &b"second"[..]));
}

#[test]
fn timed_calls_time_out_only_when_they_would_block() {
    let d = TestDir::new("timed");
    let q = open(d.path(), "/t", 1, 8);
    let mut buf = [0u8; 8];
    let t = Instant::now();
    let e = q
        .recv_timeout(&mut buf, Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(
        t.elapsed() >= Duration::from_millis(50),
        "returned before the deadline"
    );
    q.send_deadline(1, b"a", SystemTime::UNIX_EPOCH).unwrap();
    let t = Instant::now();
    let e = q
        .send_timeout(1, b"b", Duration::from_millis(30))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TimedOut);
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert_eq!(
        q.recv_deadline(&mut buf, SystemTime::UNIX_EPOCH).unwrap(),
        (1, 1)
    );
    assert_eq!(
        q.send_timeout(1, b"b", Duration::MAX).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    // Non-blocking: the timeout has no effect.
    q.set_nonblocking(true).unwrap();
    assert_eq!(
        q.recv_timeout(&mut buf, Duration::from_secs(10))
            .unwrap_err()
            .kind(),
        ErrorKind::WouldBlock
    );
}

#[test]
fn timed_receive_across_processes_gets_the_message_before_its_deadline() {
    if role().as_deref() == Some("sender") {
        let q = OpenOptions::writeonly()
            .dir(child_dir())
            .open("/t")
            .unwrap();
        q.send(3, b"in time").unwrap();
        return;
    }
    let d = TestDir::new("timedx");
    let q = open(d.path(), "/t", 2, 16);
    let mut c = child(
        "timed_receive_across_processes_gets_the_message_before_its_deadline",
        "sender",
        d.path(),
    )
    .spawn()
    .unwrap();
    let mut buf = [0u8; 16];
    let (prio, len) = q.recv_timeout(&mut buf, WATCHDOG).unwrap();
    assert_eq!((prio, &buf[..len]), (3, &b"in time"[..]));
    wait_ok(&mut c, WATCHDOG);
}

const PRODUCERS: u32 = 4;
const CONSUMERS: u32 = 4;
const PER_PRODUCER: u32 = 25_000;

#[test]
fn many_producers_and_consumers_lose_nothing() {
    match role().as_deref() {
        Some("producer") => {
            let id: u32 = std::env::var("SHMQ_TEST_ID").unwrap().parse().unwrap();
            let q = OpenOptions::writeonly()
                .dir(child_dir())
                .open("/m")
                .unwrap();
            for seq in 0..PER_PRODUCER {
                let prio = 1 + (seq % 5);
                let mut msg = [0u8; 12];
                msg[..4].copy_from_slice(&id.to_le_bytes());
                msg[4..8].copy_from_slice(&seq.to_le_bytes());
                msg[8..].copy_from_slice(&prio.to_le_bytes());
                q.send(prio, &msg).unwrap();
            }
            return;
        }
        Some("consumer") => {
            let id: u32 = std::env::var("SHMQ_TEST_ID").unwrap().parse().unwrap();
            let q = OpenOptions::readonly().dir(child_dir()).open("/m").unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 12];
            loop {
                let (prio, len) = q.recv(&mut buf).unwrap();
                if prio == 0 {
                    break;
                }
                assert_eq!(len, 12);
                assert_eq!(
                    u32::from_le_bytes(buf[8..12].try_into().unwrap()),
                    prio,
                    "priority travels with the message"
                );
                out.extend_from_slice(&buf);
            }
            std::fs::write(child_dir().join(format!("consumer-{id}.log")), out).unwrap();
            return;
        }
        _ => {}
    }
    let d = TestDir::new("many");
    let q = open(d.path(), "/m", 64, 12);
    let test = "many_producers_and_consumers_lose_nothing";
    let mut consumers: Vec<_> = (0..CONSUMERS)
        .map(|i| {
            child(test, "consumer", d.path())
                .env("SHMQ_TEST_ID", i.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut producers: Vec<_> = (0..PRODUCERS)
        .map(|i| {
            child(test, "producer", d.path())
                .env("SHMQ_TEST_ID", i.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for p in &mut producers {
        wait_ok(p, Duration::from_secs(300));
    }
    // Priority 0 is below every data message: a consumer that takes a stop
    // message has seen the queue without data.
    for _ in 0..CONSUMERS {
        q.send(0, b"stop").unwrap();
    }
    for c in &mut consumers {
        wait_ok(c, Duration::from_secs(300));
    }
    let mut seen = vec![vec![false; PER_PRODUCER as usize]; PRODUCERS as usize];
    let mut total = 0;
    for i in 0..CONSUMERS {
        let log = std::fs::read(d.path().join(format!("consumer-{i}.log"))).unwrap();
        // Within one consumer, one producer's messages of one priority come in
        // the order they were sent.
        let mut last = std::collections::HashMap::new();
        for rec in log.chunks(12) {
            let p = u32::from_le_bytes(rec[..4].try_into().unwrap());
            let seq = u32::from_le_bytes(rec[4..8].try_into().unwrap());
            let prio = u32::from_le_bytes(rec[8..12].try_into().unwrap());
            assert!(
                !seen[p as usize][seq as usize],
                "message {p}/{seq} delivered twice"
            );
            seen[p as usize][seq as usize] = true;
            if let Some(prev) = last.insert((p, prio), seq) {
                assert!(prev < seq, "producer {p} prio {prio}: {seq} after {prev}");
            }
            total += 1;
        }
    }
    assert_eq!(total, PRODUCERS * PER_PRODUCER, "messages lost");
    assert_eq!(q.attributes().unwrap().current_messages, 0);
}

#[test]
fn nonblocking_mode_is_shared_with_a_forked_child() {
    let d = TestDir::new("fork");
    let q = open(d.path(), "/f", 2, 8);
    let clone = q.try_clone().unwrap();
    assert!(!q.is_nonblocking().unwrap());
    // SAFETY: the child only stores to an atomic in a shared page and calls
    // _exit, both async-signal-safe.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let _ = q.set_nonblocking(true);
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
    assert!(
        q.is_nonblocking().unwrap(),
        "the child's change is visible to the parent"
    );
    assert!(
        clone.is_nonblocking().unwrap(),
        "try_clone shares the description"
    );
    let mut buf = [0u8; 8];
    assert_eq!(q.recv(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
    let other = OpenOptions::readwrite().dir(d.path()).open("/f").unwrap();
    assert!(
        !other.is_nonblocking().unwrap(),
        "a new open is a new description"
    );
    assert!(q.is_cloexec().unwrap());
    assert_eq!(
        q.set_cloexec(false).unwrap_err().kind(),
        ErrorKind::Unsupported
    );
}

#[test]
fn a_forked_child_can_use_the_inherited_descriptor() {
    let d = TestDir::new("forkuse");
    let q = open(d.path(), "/f", 2, 8);
    // The child runs the engine, which is not async-signal-safe; do it from a
    // single-threaded re-exec instead of fork to respect that rule, and here
    // only check the inherited mapping through an atomic-only call.
    // SAFETY: the child only reads atomics in the inherited mapping and
    // calls _exit.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let ok = q.is_nonblocking().map(|nb| !nb).unwrap_or(false);
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(st, nix::sys::wait::WaitStatus::Exited(child, 0));
        }
    }
}

#[test]
fn unlink_while_open_keeps_handles_working() {
    if role().as_deref() == Some("holder") {
        let q = OpenOptions::readwrite()
            .dir(child_dir())
            .open("/u")
            .unwrap();
        let mut buf = [0u8; 8];
        // Wait for the parent's message, sent after the unlink.
        let (_, len) = q.recv_timeout(&mut buf, WATCHDOG).unwrap();
        assert_eq!(&buf[..len], b"after");
        q.send(1, b"reply").unwrap();
        return;
    }
    let d = TestDir::new("unlink");
    let q = open(d.path(), "/u", 4, 8);
    let mut c = child(
        "unlink_while_open_keeps_handles_working",
        "holder",
        d.path(),
    )
    .spawn()
    .unwrap();
    eventually("holder blocked", WATCHDOG, || {
        blocked(d.path(), "/u").0 == 1
    });
    shmq::remove_queue_in(d.path(), "/u").unwrap();
    assert_eq!(
        OpenOptions::readwrite()
            .dir(d.path())
            .open("/u")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    q.send(1, b"after").unwrap();
    wait_ok(&mut c, WATCHDOG);
    let mut buf = [0u8; 8];
    let (_, len) = q.recv(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"reply");
    let fresh = open(d.path(), "/u", 4, 8);
    assert_eq!(fresh.attributes().unwrap().current_messages, 0);
}

#[test]
fn no_kernel_limits() {
    let d = TestDir::new("limits");
    let q = open(d.path(), "/big", 100_000, 64);
    for i in 0..100_000u32 {
        q.send(i % 32768, &i.to_le_bytes()).unwrap();
    }
    assert_eq!(q.attributes().unwrap().current_messages, 100_000);
    q.set_nonblocking(true).unwrap();
    assert_eq!(q.send(0, b"x").unwrap_err().kind(), ErrorKind::WouldBlock);
    let wide = open(d.path(), "/wide", 2, 4 << 20);
    let big = vec![0xa5u8; 4 << 20];
    wide.send(1, &big).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    assert_eq!(wide.recv(&mut buf).unwrap(), (1, 4 << 20));
    assert!(buf == big);
}

#[test]
fn queue_files_do_not_collide_with_shm_open_objects() {
    let name = format!("/shmq-collide-{}", std::process::id());
    let cname = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: valid C string; the descriptor is closed below.
    let fd = unsafe {
        libc::shm_open(
            cname.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o600,
        )
    };
    assert!(fd >= 0, "shm_open: {}", std::io::Error::last_os_error());
    // The default directory (no override, SHMQ_DIR unset in this process unless
    // another test set it; use the builder to pin the default explicitly).
    let q = OpenOptions::readwrite()
        .create_new()
        .dir(shmq::name::DEFAULT_DIR)
        .open(&name)
        .unwrap();
    q.send(1, b"x").unwrap();
    // SAFETY: fd is ours; the name is the one we created.
    unsafe {
        libc::close(fd);
        assert_eq!(libc::shm_unlink(cname.as_ptr()), 0);
    }
    assert_eq!(
        q.attributes().unwrap().current_messages,
        1,
        "the queue survived shm_unlink of the same name"
    );
    shmq::remove_queue_in(shmq::name::DEFAULT_DIR, &name).unwrap();
}

#[test]
fn shmq_dir_environment_variable_is_honoured() {
    if role().as_deref() == Some("env") {
        // No builder option: the child finds the queue through SHMQ_DIR.
        let q = OpenOptions::writeonly().open("/e").unwrap();
        q.send(4, b"via env").unwrap();
        return;
    }
    let d = TestDir::new("env");
    let q = open(d.path(), "/e", 2, 16);
    let mut c = child("shmq_dir_environment_variable_is_honoured", "env", d.path())
        .env("SHMQ_DIR", d.path())
        .spawn()
        .unwrap();
    wait_ok(&mut c, WATCHDOG);
    let mut buf = [0u8; 16];
    assert_eq!(q.recv(&mut buf).unwrap(), (4, 7));
}

#[test]
fn permissions_are_enforced_for_a_non_root_user() {
    if role().as_deref() == Some("nobody") {
        let dir = child_dir();
        assert_ne!(nix::unistd::geteuid().as_raw(), 0);
        let e = |r: std::io::Result<PosixMq>| r.unwrap_err().raw_os_error();
        assert_eq!(
            e(OpenOptions::readonly().dir(&dir).open("/private")),
            Some(libc::EACCES)
        );
        OpenOptions::readonly().dir(&dir).open("/readable").unwrap();
        assert_eq!(
            e(OpenOptions::writeonly().dir(&dir).open("/readable")),
            Some(libc::EACCES)
        );
        assert_eq!(
            e(OpenOptions::readwrite().dir(&dir).open("/readable")),
            Some(libc::EACCES)
        );
        let w = OpenOptions::writeonly()
            .dir(&dir)
            .open("/writable")
            .unwrap();
        w.send(1, b"from nobody").unwrap();
        assert_eq!(
            e(OpenOptions::readonly().dir(&dir).open("/writable")),
            Some(libc::EACCES)
        );
        // A queue of its own, in the shared directory.
        let own = OpenOptions::readwrite()
            .mode(0o600)
            .create_new()
            .dir(&dir)
            .open("/own")
            .unwrap();
        own.send(1, b"mine").unwrap();
        // Not the owner of the root queue: cannot remove it.
        assert_eq!(
            shmq::remove_queue_in(&dir, "/private")
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EACCES)
        );
        return;
    }
    if !common::is_root() {
        eprintln!(
            "SKIPPED permissions_are_enforced_for_a_non_root_user: needs root to switch to uid 65534"
        );
        return;
    }
    let d = TestDir::new("perm");
    let mk = |name: &str, mode: u32| {
        OpenOptions::readwrite()
            .mode(mode)
            .create_new()
            .dir(d.path())
            .open(name)
            .unwrap()
    };
    let old = nix::sys::stat::umask(Mode::empty());
    let _private = mk("/private", 0o600);
    let _readable = mk("/readable", 0o644);
    let writable = mk("/writable", 0o622);
    nix::sys::stat::umask(old);
    use std::os::unix::process::CommandExt;
    let mut c = child(
        "permissions_are_enforced_for_a_non_root_user",
        "nobody",
        d.path(),
    )
    .uid(65534)
    .gid(65534)
    .spawn()
    .unwrap();
    wait_ok(&mut c, WATCHDOG);
    let mut buf = [0u8; 8192];
    let (_, len) = writable.recv(&mut buf).unwrap();
    assert_eq!(&buf[..len], b"from nobody");
    // umask: the queue's mode is the requested mode minus the umask.
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
    let masked = OpenOptions::readwrite()
        .mode(0o666)
        .create_new()
        .dir(d.path())
        .open("/masked");
    nix::sys::stat::umask(old);
    let info = Inspector::open("/masked", Some(d.path()))
        .unwrap()
        .info()
        .unwrap();
    assert_eq!(info.mode, 0o600);
    drop(masked);
}

#[test]
fn a_full_tmpfs_fails_at_create_with_enospc() {
    if !common::is_root() {
        eprintln!(
            "SKIPPED a_full_tmpfs_fails_at_create_with_enospc: needs root to mount a small tmpfs"
        );
        return;
    }
    let d = TestDir::new("enospc");
    let mnt = d.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "SKIPPED a_full_tmpfs_fails_at_create_with_enospc: mount -t tmpfs is not permitted here"
        );
        return;
    }
    let big = OpenOptions::readwrite()
        .capacity(64)
        .max_msg_len(64 << 10)
        .create_new()
        .dir(&mnt)
        .open("/big");
    let small = OpenOptions::readwrite()
        .capacity(4)
        .max_msg_len(64)
        .create_new()
        .dir(&mnt)
        .open("/small");
    let files: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let small_ok = small.is_ok();
    drop(small);
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert_eq!(big.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    assert!(small_ok, "a queue that fits is still created");
    assert_eq!(
        files,
        vec![std::ffi::OsString::from("small")],
        "a failed create leaves nothing behind"
    );
}
