//! `mq_notify` across real processes.

mod common;

use common::{TestDir, child, child_dir, eventually, kill9, role, wait_ok};
use shmq::inspect::Inspector;
use shmq::{Notify, OpenOptions, PosixMq};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

const WATCHDOG: Duration = Duration::from_secs(60);
/// How long a test waits to be sure that something does *not* happen.
const QUIET: Duration = Duration::from_millis(300);

static SIG_COUNT: AtomicU32 = AtomicU32::new(0);
static SIG_CODE: AtomicI32 = AtomicI32::new(0);
static SIG_PID: AtomicI32 = AtomicI32::new(0);
static SIG_UID: AtomicU32 = AtomicU32::new(u32::MAX);
static SIG_VALUE: AtomicUsize = AtomicUsize::new(0);
static HANDLER: Mutex<()> = Mutex::new(());

extern "C" fn on_signal(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler;
    // only atomics are touched here (async-signal-safe).
    unsafe {
        SIG_CODE.store((*info).si_code, SeqCst);
        SIG_PID.store((*info).si_pid(), SeqCst);
        SIG_UID.store((*info).si_uid(), SeqCst);
        SIG_VALUE.store((*info).si_value().sival_ptr as usize, SeqCst);
    }
    SIG_COUNT.fetch_add(1, SeqCst);
}

/// Installs the recording handler for a real-time signal; the guard keeps
/// the signal tests of this binary from running at the same time.
fn install() -> (std::sync::MutexGuard<'static, ()>, i32) {
    let g = HANDLER.lock().unwrap_or_else(|e| e.into_inner());
    let signo = libc::SIGRTMIN() + 3;
    // SAFETY: a zeroed sigaction is valid; the handler only stores to
    // atomics and the signal number is a valid real-time signal.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(signo, &sa, std::ptr::null_mut()), 0);
    }
    SIG_COUNT.store(0, SeqCst);
    (g, signo)
}

fn queue(dir: &Path, name: &str) -> PosixMq {
    OpenOptions::readwrite()
        .capacity(4)
        .max_msg_len(32)
        .create_new()
        .dir(dir)
        .open(name)
        .unwrap()
}

fn send_from_child(test: &str, dir: &Path) -> u32 {
    let mut c = child(test, "sender", dir).spawn().unwrap();
    let pid = c.id();
    wait_ok(&mut c, WATCHDOG);
    pid
}

fn sender_role() {
    let q = OpenOptions::writeonly()
        .dir(child_dir())
        .open("/n")
        .unwrap();
    q.send(1, b"ping").unwrap();
}

fn drain(q: &PosixMq) {
    let mut buf = [0u8; 32];
    while q.recv_timeout(&mut buf, Duration::ZERO).is_ok() {}
}

#[test]
fn signal_carries_si_code_value_pid_and_uid() {
    if role().is_some() {
        return sender_role();
    }
    let (_g, signo) = install();
    let d = TestDir::new("nsig");
    let q = queue(d.path(), "/n");
    q.notify(Some(Notify::Signal {
        signal: signo,
        value: 0x5eed,
    }))
    .unwrap();
    let owner = Inspector::open("/n", Some(d.path()))
        .unwrap()
        .info()
        .unwrap()
        .notify
        .unwrap();
    assert_eq!(
        (owner.pid, owner.kind, owner.signo),
        (std::process::id() as i32, "signal", signo)
    );
    let pid = send_from_child("signal_carries_si_code_value_pid_and_uid", d.path());
    eventually("signal", WATCHDOG, || SIG_COUNT.load(SeqCst) == 1);
    assert_eq!(SIG_CODE.load(SeqCst), -3, "si_code is SI_MESGQ");
    assert_eq!(SIG_VALUE.load(SeqCst), 0x5eed);
    assert_eq!(SIG_PID.load(SeqCst), pid as i32, "si_pid is the sender");
    assert_eq!(SIG_UID.load(SeqCst), nix::unistd::getuid().as_raw());
    // One-shot: the registration is gone; the next message into an empty
    // queue tells nobody.
    assert!(
        Inspector::open("/n", Some(d.path()))
            .unwrap()
            .info()
            .unwrap()
            .notify
            .is_none()
    );
    drain(&q);
    send_from_child("signal_carries_si_code_value_pid_and_uid", d.path());
    std::thread::sleep(QUIET);
    assert_eq!(SIG_COUNT.load(SeqCst), 1);
}

#[test]
fn nothing_fires_when_the_queue_was_not_empty() {
    if role().is_some() {
        return sender_role();
    }
    let (_g, signo) = install();
    let d = TestDir::new("nfull");
    let q = queue(d.path(), "/n");
    q.send(1, b"already here").unwrap();
    q.notify(Some(Notify::Signal {
        signal: signo,
        value: 1,
    }))
    .unwrap();
    send_from_child("nothing_fires_when_the_queue_was_not_empty", d.path());
    std::thread::sleep(QUIET);
    assert_eq!(SIG_COUNT.load(SeqCst), 0);
    assert!(
        Inspector::open("/n", Some(d.path()))
            .unwrap()
            .info()
            .unwrap()
            .notify
            .is_some(),
        "still registered"
    );
    drain(&q);
    send_from_child("nothing_fires_when_the_queue_was_not_empty", d.path());
    eventually("signal after the queue emptied", WATCHDOG, || {
        SIG_COUNT.load(SeqCst) == 1
    });
}

#[test]
fn nothing_fires_while_another_process_is_blocked_in_receive() {
    match role().as_deref() {
        Some("sender") => return sender_role(),
        Some("receiver") => {
            let q = OpenOptions::readonly().dir(child_dir()).open("/n").unwrap();
            let mut buf = [0u8; 32];
            assert_eq!(q.recv(&mut buf).unwrap(), (1, 4));
            return;
        }
        _ => {}
    }
    let (_g, signo) = install();
    let d = TestDir::new("nblocked");
    let _q = queue(d.path(), "/n");
    _q.notify(Some(Notify::Signal {
        signal: signo,
        value: 2,
    }))
    .unwrap();
    let test = "nothing_fires_while_another_process_is_blocked_in_receive";
    let mut r = child(test, "receiver", d.path()).spawn().unwrap();
    eventually("receiver blocked", WATCHDOG, || {
        Inspector::open("/n", Some(d.path()))
            .unwrap()
            .info()
            .unwrap()
            .blocked_receivers
            == 1
    });
    send_from_child(test, d.path());
    wait_ok(&mut r, WATCHDOG);
    std::thread::sleep(QUIET);
    assert_eq!(
        SIG_COUNT.load(SeqCst),
        0,
        "the blocked receiver took it; no notification"
    );
    send_from_child(test, d.path());
    eventually("signal once nobody waits", WATCHDOG, || {
        SIG_COUNT.load(SeqCst) == 1
    });
}

#[test]
fn ebusy_for_another_process_and_for_the_owner_itself() {
    match role().as_deref() {
        Some("expect-busy") | Some("expect-free") => {
            let q = OpenOptions::readonly().dir(child_dir()).open("/n").unwrap();
            let r = q.notify(Some(Notify::Silent));
            if role().as_deref() == Some("expect-busy") {
                assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EBUSY));
                // Removing someone else's registration has no effect.
                q.notify(None).unwrap();
            } else {
                r.unwrap();
            }
            return;
        }
        _ => {}
    }
    let d = TestDir::new("nbusy");
    let q = queue(d.path(), "/n");
    q.notify(Some(Notify::Silent)).unwrap();
    assert_eq!(
        q.notify(Some(Notify::Silent)).unwrap_err().raw_os_error(),
        Some(libc::EBUSY)
    );
    let test = "ebusy_for_another_process_and_for_the_owner_itself";
    wait_ok(
        &mut child(test, "expect-busy", d.path()).spawn().unwrap(),
        WATCHDOG,
    );
    assert_eq!(
        Inspector::open("/n", Some(d.path()))
            .unwrap()
            .info()
            .unwrap()
            .notify
            .unwrap()
            .pid,
        std::process::id() as i32
    );
    q.notify(None).unwrap();
    wait_ok(
        &mut child(test, "expect-free", d.path()).spawn().unwrap(),
        WATCHDOG,
    );
    // The child exited without closing explicitly: its registration died with it.
    q.notify(Some(Notify::Silent)).unwrap();
}

#[test]
fn closing_any_descriptor_removes_the_registration() {
    if role().as_deref() == Some("register") {
        let q = OpenOptions::readonly().dir(child_dir()).open("/n").unwrap();
        q.notify(Some(Notify::Silent)).unwrap();
        return;
    }
    let d = TestDir::new("nclose");
    let q = queue(d.path(), "/n");
    let other = OpenOptions::writeonly().dir(d.path()).open("/n").unwrap();
    q.notify(Some(Notify::Silent)).unwrap();
    assert!(
        Inspector::open("/n", Some(d.path()))
            .unwrap()
            .info()
            .unwrap()
            .notify
            .is_some()
    );
    drop(other);
    assert!(
        Inspector::open("/n", Some(d.path()))
            .unwrap()
            .info()
            .unwrap()
            .notify
            .is_none(),
        "seen from the queue"
    );
    wait_ok(
        &mut child(
            "closing_any_descriptor_removes_the_registration",
            "register",
            d.path(),
        )
        .spawn()
        .unwrap(),
        WATCHDOG,
    );
}

#[test]
fn a_sigkilled_owner_does_not_block_a_new_registration() {
    if role().as_deref() == Some("owner") {
        let q = OpenOptions::readonly().dir(child_dir()).open("/n").unwrap();
        q.notify(Some(Notify::Signal {
            signal: libc::SIGRTMIN() + 4,
            value: 0,
        }))
        .unwrap();
        println!("SHMQ-REGISTERED");
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    let d = TestDir::new("nkill");
    let q = queue(d.path(), "/n");
    let mut c = child(
        "a_sigkilled_owner_does_not_block_a_new_registration",
        "owner",
        d.path(),
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    while !line.ends_with("SHMQ-REGISTERED\n") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "owner exited");
    }
    assert_eq!(
        q.notify(Some(Notify::Silent)).unwrap_err().raw_os_error(),
        Some(libc::EBUSY),
        "a live owner blocks"
    );
    kill9(&mut c);
    q.notify(Some(Notify::Silent)).unwrap();
    // And the dead one is never signalled: a send fires for the new owner
    // (SIGEV_NONE: nothing is delivered, the registration is consumed).
    q.send(1, b"x").unwrap();
    assert!(
        Inspector::open("/n", Some(d.path()))
            .unwrap()
            .info()
            .unwrap()
            .notify
            .is_none()
    );
}

/// Threads delivering a notification in this process. Counted by name: the test
/// harness runs other tests, each in a thread of its own, at the same time.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "shmq-notified")
        .count()
}

#[test]
fn thread_notification_runs_once_and_can_rearm_itself() {
    if role().is_some() {
        return sender_role();
    }
    let d = TestDir::new("nthread");
    let q = Arc::new(queue(d.path(), "/n"));
    let (tx, rx) = mpsc::channel::<u32>();
    let before = threads();
    let fired = Arc::new(AtomicU32::new(0));
    fn arm(q: &Arc<PosixMq>, tx: mpsc::Sender<u32>, fired: Arc<AtomicU32>) {
        let q2 = Arc::clone(q);
        q.notify_with(move || {
            let n = fired.fetch_add(1, SeqCst) + 1;
            // Re-arm from inside the notification, once.
            if n == 1 {
                arm(&q2, tx.clone(), Arc::clone(&fired));
            }
            tx.send(n).unwrap();
        })
        .unwrap();
    }
    arm(&q, tx, Arc::clone(&fired));
    let test = "thread_notification_runs_once_and_can_rearm_itself";
    send_from_child(test, d.path());
    assert_eq!(rx.recv_timeout(WATCHDOG).unwrap(), 1);
    drain(&q);
    send_from_child(test, d.path());
    assert_eq!(rx.recv_timeout(WATCHDOG).unwrap(), 2);
    drain(&q);
    send_from_child(test, d.path());
    assert!(
        rx.recv_timeout(QUIET).is_err(),
        "one-shot: not re-armed the second time"
    );
    assert_eq!(fired.load(SeqCst), 2);
    // Each delivery ran on a thread of its own, which is gone.
    eventually("delivery threads gone", WATCHDOG, || threads() == before);
    drain(&q);
    // A removed registration runs nothing.
    let ran = Arc::new(AtomicU32::new(0));
    let ran2 = Arc::clone(&ran);
    q.notify_with(move || {
        ran2.fetch_add(1, SeqCst);
    })
    .unwrap();
    q.notify(None).unwrap();
    send_from_child(test, d.path());
    std::thread::sleep(QUIET);
    assert_eq!(ran.load(SeqCst), 0, "removed before any message");
}

#[test]
fn a_forked_child_does_not_inherit_the_registration() {
    let d = TestDir::new("nfork");
    let q = queue(d.path(), "/n");
    q.notify(Some(Notify::Silent)).unwrap();
    // The only thread using the queue is this one, so no lock is held across
    // the fork; the child touches nothing but the queue and exits with _exit.
    // SAFETY: see above.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let busy = q.notify(Some(Notify::Silent)).map_err(|e| e.raw_os_error());
            let removed = q.notify(None).is_ok();
            drop(q);
            let code = if busy == Err(Some(libc::EBUSY)) && removed {
                0
            } else {
                1
            };
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(code) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let st = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(
                st,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "the child is not the owner"
            );
        }
    }
    let owner = Inspector::open("/n", Some(d.path()))
        .unwrap()
        .info()
        .unwrap()
        .notify
        .unwrap();
    assert_eq!(
        owner.pid,
        std::process::id() as i32,
        "the child's close and notify(None) left it alone"
    );
}
