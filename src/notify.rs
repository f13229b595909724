//! `mq_notify`: one registered process per queue, told when a message lands
//! in an empty queue that no receiver is waiting on.
//!
//! The registration lives in the queue header (pid, start time, kind, signal,
//! value, token). A sender that publishes into an empty queue with nobody
//! blocked in a receive decides, under the lock, to fire; it removes the
//! registration (one-shot) and, after unlocking:
//! - `SIGEV_SIGNAL`: queues the signal to the owner with `si_code =
//!   SI_MESGQ`, its own pid and uid, and the registered value;
//! - `SIGEV_THREAD`: bumps the header's event futex; a helper thread in the
//!   owner process, started at registration and waiting on that word, sees
//!   its token fired and runs the delivery (the function in a new thread);
//! - `SIGEV_NONE`: nothing.
//!
//! A registration whose owner is dead (pid gone, zombie, or reused with
//! another start time) counts as absent. Removing it (`notify(None)` by the
//! owner, the owner closing any descriptor of the queue, firing) bumps the
//! event word too, so a helper thread never outlives its registration.

use crate::engine::{Description, Guard, Queue};
use crate::error::{Error, Result};
use crate::layout::{NotifyReg, Region};
use crate::queue::{self, Locked};
use crate::sync::futex;
use crate::sys::{self, proc};
use nix::errno::Errno;
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// What to do when the queue becomes non-empty (the `sigevent` of
/// `mq_notify`).
pub enum Notification {
    /// `SIGEV_NONE`: register, deliver nothing.
    None,
    /// `SIGEV_SIGNAL`: queue `signo` with `si_code = SI_MESGQ` and `value`.
    Signal {
        /// Signal number (0 to 64).
        signo: i32,
        /// `sigev_value`, as an integer.
        value: u64,
    },
    /// `SIGEV_THREAD`: run `deliver` on the helper thread of this process;
    /// it starts the thread that runs the user's function.
    Thread {
        /// The delivery, run once.
        deliver: Box<dyn FnOnce() + Send + 'static>,
    },
}

fn kind_of(n: &Notification) -> u32 {
    (match n {
        Notification::None => libc::SIGEV_NONE,
        Notification::Signal { .. } => libc::SIGEV_SIGNAL,
        Notification::Thread { .. } => libc::SIGEV_THREAD,
    }) as u32
}

/// Whether the registration in `n` belongs to a live process.
fn live_owner(n: &NotifyReg) -> Option<i32> {
    let pid = n.pid.load(Relaxed);
    (pid != 0 && proc::alive(pid, n.start.load(Relaxed))).then_some(pid)
}

/// Clears the registration (lock held) and wakes a helper thread.
fn clear(n: &NotifyReg) {
    n.pid.store(0, Relaxed);
    n.token.store(0, Relaxed);
    n.event.add(1);
}

/// The registration, if its owner is alive.
pub(crate) fn owner(r: &Region) -> Option<crate::inspect::NotifyOwner> {
    let n = &r.header().notify;
    let pid = live_owner(n)?;
    let kind = match n.kind.load(Relaxed) as i32 {
        libc::SIGEV_SIGNAL => "signal",
        libc::SIGEV_THREAD => "thread",
        _ => "none",
    };
    Some(crate::inspect::NotifyOwner {
        pid,
        kind,
        signo: n.signo.load(Relaxed) as i32,
    })
}

/// `mq_notify(mqdes, notification)` on an open description.
pub(crate) fn register(desc: &Arc<Description>, how: Option<Notification>) -> Result<()> {
    let q = desc.queue();
    let r = q.region();
    let n = &r.header().notify;
    let (me, start) = proc::me();
    if let Some(Notification::Signal { signo, .. }) = &how {
        if !(0..=64).contains(signo) {
            return Err(Error::Os(Errno::EINVAL));
        }
    }
    let g = q.lock()?;
    let owner = live_owner(n);
    let Some(how) = how else {
        // Removal: only the owner's counts (Linux ignores anyone else).
        if owner == Some(me) {
            clear(n);
            let event = &n.event;
            drop(g);
            futex::wake(event, i32::MAX);
        }
        return Ok(());
    };
    if owner.is_some() {
        return Err(Error::Os(Errno::EBUSY));
    }
    let mut token = n.next_token.load(Relaxed).wrapping_add(1);
    if token == 0 {
        token = 1;
    }
    n.next_token.store(token, Relaxed);
    n.kind.store(kind_of(&how), Relaxed);
    n.start.store(start, Relaxed);
    n.signo.store(0, Relaxed);
    n.value.store(0, Relaxed);
    match &how {
        Notification::Signal { signo, value } => {
            n.signo.store(*signo as u32, Relaxed);
            n.value.store(*value, Relaxed);
        }
        Notification::None | Notification::Thread { .. } => {}
    }
    n.token.store(token, Relaxed);
    n.pid.store(me, Release);
    drop(g);
    if let Notification::Thread { deliver } = how {
        let desc = Arc::clone(desc);
        let spawned = std::thread::Builder::new()
            .name("shmq-notify".into())
            .spawn(move || helper(&desc, token, deliver));
        if spawned.is_err() {
            // No helper: undo the registration rather than promise nothing.
            let g = q.lock()?;
            if n.token.load(Relaxed) == token {
                clear(n);
            }
            drop(g);
            return Err(Error::Os(Errno::EAGAIN));
        }
    }
    Ok(())
}

/// The helper thread of a `SIGEV_THREAD` registration: waits until its
/// registration fires (run the delivery) or is removed (just exit).
fn helper(desc: &Description, token: u32, deliver: Box<dyn FnOnce() + Send>) {
    let n = &desc.queue().region().header().notify;
    let me = proc::me().0;
    loop {
        let ev = n.event.load(Acquire);
        if n.fired_token.load(Acquire) == token {
            deliver();
            return;
        }
        if n.token.load(Acquire) != token || n.pid.load(Acquire) != me {
            return;
        }
        let _ = futex::wait(&n.event, ev, None);
    }
}

/// A notification decided under the lock, sent after it is released.
pub struct Pending {
    kind: i32,
    pid: i32,
    signo: i32,
    value: u64,
}

/// Under the lock, right after a message landed in an empty queue: whether a
/// registration must fire now. If so it is removed (one-shot).
#[inline]
pub(crate) fn should_fire(g: &Guard<'_>, q: &Queue) -> Option<Pending> {
    if q.region().header().notify.pid.load(Relaxed) == 0 {
        return None;
    }
    registered_fires(g, q)
}

#[cold]
fn registered_fires(_g: &Guard<'_>, q: &Queue) -> Option<Pending> {
    let r = q.region();
    let h = r.header();
    let n = &h.notify;
    if h.waiting_recv.load(Relaxed) > 0 {
        // Receivers are blocked, unless the count is left over from dead
        // processes: recount before deciding.
        queue::recount_waiters(r, &mut proc::alive);
        if h.waiting_recv.load(Relaxed) > 0 {
            return None;
        }
    }
    let Some(pid) = live_owner(n) else {
        clear(n);
        return None;
    };
    let p = Pending {
        kind: n.kind.load(Relaxed) as i32,
        pid,
        signo: n.signo.load(Relaxed) as i32,
        value: n.value.load(Relaxed),
    };
    n.fired_token.store(n.token.load(Relaxed), Relaxed);
    n.fired.add(1);
    clear(n);
    Some(p)
}

/// Sends a notification decided by [`should_fire`] (lock released).
pub(crate) fn fire(q: &Queue, p: Pending) {
    match p.kind {
        libc::SIGEV_SIGNAL if p.signo != 0 => {
            // The owner may be another user's process: like a failed
            // kill(2), nothing more can be done.
            let _ = sys::queue_mesgq_signal(p.pid, p.signo, p.value);
        }
        libc::SIGEV_THREAD => {
            futex::wake(&q.region().header().notify.event, i32::MAX);
        }
        _ => {}
    }
}

/// Called when this process closes a descriptor of the queue: removes its
/// registration, as closing any descriptor of the queue does on Linux.
pub(crate) fn on_close(q: &Queue) {
    let n = &q.region().header().notify;
    let (me, start) = proc::me();
    if n.pid.load(Relaxed) != me || n.start.load(Relaxed) != start {
        return;
    }
    if let Ok(g) = q.lock() {
        if n.pid.load(Relaxed) == me && n.start.load(Relaxed) == start {
            clear(n);
        }
        drop(g);
        futex::wake(&n.event, i32::MAX);
    }
}
