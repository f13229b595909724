use super::*;
use crate::layout::{Geometry, Mapping};
use std::sync::atomic::AtomicBool;

/// A formatted queue file, already unlinked, mapped.
fn shared_lock(tag: &str) -> Mapping {
    let path = std::env::temp_dir().join(format!("shmq-mutex-{tag}-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let geo = Geometry::new(1, 8).unwrap();
    file.set_len(geo.file_size as u64).unwrap();
    Mapping::format(&file, geo, 0o600).unwrap()
}

const ME: u32 = 1;
const CHILD: u32 = 2;

/// Nobody else is known dead: owners named by the word are alive.
fn all_alive(_: u32, _: u32) -> bool {
    true
}

fn lock_as(r: &Region, id: u32, alive: &dyn Fn(u32, u32) -> bool) -> (Acquired, Held) {
    lock(r, id, 0, &Wait::FOREVER, alive).unwrap()
}

fn take(r: &Region) -> (Acquired, Held) {
    lock_as(r, ME, &all_alive)
}

/// Runs `f` in a forked child (async-signal-safe work only: the lock paths
/// make syscalls and touch atomics) that `_exit`s with its result; returns
/// its pid.
fn spawn_child(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child only runs `f` and `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child without running the parent's cleanup.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Waits for `pid`; its exit code, or `None` if a signal killed it.
fn reap(pid: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    // SAFETY: pid is our child; status is valid storage.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

/// Polls until another thread or process sleeps on the lock.
fn until_someone_sleeps(r: &Region) {
    let start = Instant::now();
    while r.header().lock.sleepers.load(Relaxed) == 0
        || futex_word(r).load(Relaxed) & FUTEX_WAITERS == 0
    {
        assert!(start.elapsed() < Duration::from_secs(30), "nobody slept");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn takes_the_fast_path_and_releases() {
    let m = shared_lock("fast");
    let r = m.region();
    let (a, held) = take(r);
    assert_eq!(a, Acquired::Clean);
    let (id, tid) = owner_of(peek(r));
    assert_eq!((id, tid), (ME, live::tid()));
    unlock(r, held);
    assert_eq!(peek(r), 0);
    let (_, again) = take(r);
    unlock(r, again);
}

#[test]
fn a_dead_owner_process_is_taken_over_after_its_number_dies() {
    let m = shared_lock("deadproc");
    let r = m.region();
    let dead = AtomicBool::new(false);
    let child = spawn_child(|| {
        let (a, _held) = lock_as(r, CHILD, &all_alive);
        i32::from(a == Acquired::Clean)
    });
    assert_eq!(reap(child), Some(1));
    dead.store(true, Relaxed);
    // The child's thread exited with the process: the kernel marked the
    // word (robust list), or the owner check finds the number dead.
    let alive = |id: u32, _| !(id == CHILD && dead.load(Relaxed));
    let (a, held) = lock_as(r, ME, &alive);
    assert_eq!(a, Acquired::OwnerDied);
    unlock(r, held);
    assert_eq!(take(r).0, Acquired::Clean);
}

#[test]
fn a_scribbled_word_naming_nobody_costs_milliseconds_not_a_hang() {
    let m = shared_lock("scribble");
    let r = m.region();
    for v in [12345u64, 0xdead_0000_0000_0000 | 77, 1 << 32] {
        word(r).store(v, Relaxed);
        let alive = |id: u32, tid: u32| id == ME && tid != 0;
        let t = Instant::now();
        let (a, held) = lock_as(r, ME, &alive);
        assert_eq!(a, Acquired::OwnerDied, "word {v:#x}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        unlock(r, held);
        assert_eq!(peek(r), 0);
    }
}

#[test]
fn a_thread_that_exits_holding_the_lock_is_marked_by_the_kernel() {
    let m = shared_lock("thread");
    let r = m.region();
    // Joined explicitly: pthread_join returns once the thread is gone (a
    // scope's end only waits for its closure to return).
    std::thread::scope(|s| {
        s.spawn(|| {
            let (a, _held) = take(r);
            assert_eq!(a, Acquired::Clean);
        })
        .join()
        .unwrap();
    });
    assert_ne!(futex_word(r).load(Relaxed) & FUTEX_OWNER_DIED, 0);
    // Even with its process (this one) alive, the next locker repairs.
    let (a, held) = take(r);
    assert_eq!(a, Acquired::OwnerDied);
    unlock(r, held);
}

#[test]
fn a_nested_lock_leaves_the_outer_registration_alone() {
    let outer = shared_lock("outer");
    let inner = shared_lock("inner");
    let (a, b) = (outer.region(), inner.region());
    std::thread::scope(|s| {
        s.spawn(|| {
            let (_, ho) = take(a);
            let (_, hi) = take(b);
            unlock(b, hi);
            let (_, _hi) = take(b);
            // Exits holding both: the outer one is marked by the kernel.
            let _ = ho;
        })
        .join()
        .unwrap();
    });
    assert_ne!(futex_word(a).load(Relaxed) & FUTEX_OWNER_DIED, 0);
    // The inner one had no registration: it is found by the owner check
    // (here the thread is gone, which the check for our own number sees).
    let alive = |id: u32, tid: u32| id == ME && live::thread_alive(tid);
    assert_eq!(lock_as(a, ME, &alive).0, Acquired::OwnerDied);
    assert_eq!(lock_as(b, ME, &alive).0, Acquired::OwnerDied);
}

#[test]
fn sleepers_are_woken_and_every_critical_section_is_exclusive() {
    let m = shared_lock("contend");
    let r = m.region();
    let counter = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20_000 {
                    let (_, held) = take(r);
                    // A non-atomic increment: lost updates show a hole.
                    let v = counter.load(Relaxed);
                    std::hint::spin_loop();
                    counter.store(v + 1, Relaxed);
                    unlock(r, held);
                }
            });
        }
    });
    assert_eq!(counter.load(Relaxed), 80_000);
    assert_eq!(peek(r), 0);
}

#[test]
fn a_sleeper_in_another_process_gets_the_lock_once_released() {
    let m = shared_lock("sleeper");
    let r = m.region();
    let (_, held) = take(r);
    let child = spawn_child(|| {
        let (a, held) = lock_as(r, CHILD, &all_alive);
        unlock(r, held);
        i32::from(a == Acquired::Clean)
    });
    until_someone_sleeps(r);
    // Long enough for the child's naps to reach the barrier.
    std::thread::sleep(Duration::from_millis(50));
    unlock(r, held);
    assert_eq!(reap(child), Some(1));
    assert_eq!(r.header().lock.sleepers.load(Relaxed), 0);
    assert_eq!(peek(r), 0);
}

#[test]
fn the_count_of_a_sleeper_killed_asleep_is_dropped() {
    let m = shared_lock("killed");
    let r = m.region();
    let (_, held) = take(r);
    let child = spawn_child(|| {
        let (_, held) = lock_as(r, CHILD, &all_alive);
        unlock(r, held);
        0
    });
    until_someone_sleeps(r);
    // SAFETY: child is our child process.
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    assert_eq!(reap(child), None);
    unlock(r, held);
    assert_eq!(
        r.header().lock.sleepers.load(Relaxed),
        1,
        "a killed sleeper cannot uncount itself"
    );
    let mut rounds = 0;
    while r.header().lock.sleepers.load(Relaxed) != 0 {
        rounds += 1;
        assert!(rounds <= FUTILE_WAKES, "the stale count was never dropped");
        let (_, held) = take(r);
        unlock(r, held);
    }
}

#[test]
fn releasing_what_is_no_longer_held_leaves_the_word_alone() {
    let m = shared_lock("released");
    let r = m.region();
    let (_, held) = take(r);
    let owned = peek(r);
    unlock(r, Held::RELEASED);
    assert_eq!(peek(r), owned);
    unlock(r, held);
    assert_eq!(peek(r), 0);
}

#[test]
fn a_word_naming_this_thread_is_refused_only_while_it_holds_it() {
    let m = shared_lock("self");
    let r = m.region();
    // Taken again while held (a signal handler of the holding thread):
    // refused, not a deadlock.
    let (_, held) = take(r);
    assert_eq!(
        lock(r, ME, 0, &Wait::FOREVER, &all_alive).unwrap_err(),
        LockError::Deadlock
    );
    unlock(r, held);
    // Written by someone else while this thread does not hold it: damage,
    // taken over.
    word(r).store((u64::from(ME) << 32) | u64::from(live::tid()), Relaxed);
    let (a, held) = take(r);
    assert_eq!(a, Acquired::OwnerDied);
    unlock(r, held);
}

/// Holds `r`'s lock in another thread (alive, as a stopped holder is)
/// while `f` runs.
fn while_held(r: &Region, f: impl FnOnce()) {
    let release = AtomicBool::new(false);
    std::thread::scope(|s| {
        let t = s.spawn(|| {
            let (_, held) = lock_as(r, CHILD, &all_alive);
            while !release.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            unlock(r, held);
        });
        while peek(r) == 0 {
            std::thread::yield_now();
        }
        f();
        release.store(true, Relaxed);
        t.join().unwrap();
    });
}

#[test]
fn a_busy_lock_ends_a_wait_at_its_deadline_or_for_nonblocking_callers() {
    let m = shared_lock("deadline");
    let r = m.region();
    while_held(r, || {
        let deadline = crate::engine::realtime_after(Duration::from_millis(60));
        let t = Instant::now();
        let w = Wait {
            deadline: Some(&deadline),
            ..Wait::FOREVER
        };
        assert_eq!(
            lock(r, ME, 0, &w, &all_alive).unwrap_err(),
            LockError::TimedOut
        );
        let e = t.elapsed();
        assert!(
            e >= Duration::from_millis(55) && e < Duration::from_millis(110),
            "{e:?}"
        );

        let t = Instant::now();
        let w = Wait {
            nonblock: true,
            ..Wait::FOREVER
        };
        assert_eq!(
            lock(r, ME, 0, &w, &all_alive).unwrap_err(),
            LockError::WouldBlock
        );
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());

        let t = Instant::now();
        let w = Wait {
            cancel_poll: true,
            ..Wait::FOREVER
        };
        assert_eq!(
            lock(r, ME, 0, &w, &all_alive).unwrap_err(),
            LockError::Restart
        );
        let e = t.elapsed();
        assert!(e >= CANCEL_POLL && e < CANCEL_POLL * 2, "{e:?}");
    });
    assert_eq!(peek(r), 0);
}

extern "C" fn ignore(_: libc::c_int) {}

#[test]
fn a_signal_handler_ends_an_interruptible_wait() {
    let m = shared_lock("eintr");
    let r = m.region();
    // SAFETY: installs a handler that does nothing, without SA_RESTART.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = ignore as *const () as usize;
        libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
    }
    while_held(r, || {
        // SAFETY: pthread_self is this thread.
        let me = unsafe { libc::pthread_self() } as usize;
        let t = Instant::now();
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                // Again and again: one that lands between two naps is not
                // seen, as a signal just before a system call is not.
                while !done.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(30));
                    // SAFETY: the waiting thread is alive until `done`.
                    unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR2) };
                }
            });
            let w = Wait {
                interruptible: true,
                ..Wait::FOREVER
            };
            assert_eq!(
                lock(r, ME, 0, &w, &all_alive).unwrap_err(),
                LockError::Interrupted
            );
            done.store(true, Relaxed);
        });
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    });
}
