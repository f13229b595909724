//! `mq_notify`: one registered process per queue, told when a message lands
//! in an empty queue that no receiver is waiting on.
//!
//! The registration in the queue header names only a member (see
//! [`crate::member`]) and its doorbell (see [`crate::sys::bell`]); what to
//! do when rung stays in the registered process: the signal and value of a
//! `SIGEV_SIGNAL`, the function of a `SIGEV_THREAD`, each under a random
//! token. A sender that publishes into an empty queue with nobody asleep in
//! a receive decides, under the lock, to fire: it removes the registration
//! (one-shot) and, after unlocking, rings the doorbell with the queue's
//! identity and the token. Nothing else: the registered process's doorbell
//! thread checks the ring against its own registrations and then raises the
//! signal on its own process (`si_code = SI_MESGQ`, the sender's pid and uid
//! as the kernel gave them on the socket) or starts the function's thread.
//! So a process that can write the queue file cannot make a sender signal
//! anyone, and every `SIGEV_THREAD` registration is delivered on its own
//! token: one that fires before the previous one was delivered loses
//! nothing.
//!
//! A registration whose member is gone counts as absent. Removing it
//! (`notify(None)` by the owner, the owner closing any descriptor of the
//! queue, firing) forgets the local action too.

use crate::engine::{Description, Guard, Queue};
use crate::error::{Error, Result};
use crate::layout::{NotifyReg, Region};
use crate::member::Cond;
use crate::queue::Locked;
use crate::sys::live::{ForkGuard, ForkLock};
use crate::sys::{self, bell};
use nix::errno::Errno;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

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
    /// `SIGEV_THREAD`: run `deliver` (it starts the thread that runs the
    /// user's function).
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

/// The ring kind of a notification.
const RING_NOTIFY: u32 = 1;

/// What this process does when one of its registrations fires, by token.
struct Action {
    queue: (u64, u64),
    what: Notification,
}

/// A child made by a fork starts with none: registrations are not
/// inherited.
static ACTIONS: ForkLock<Vec<(u64, Action)>> = ForkLock::resetting(Vec::new(), Vec::new);

fn actions() -> ForkGuard<'static, Vec<(u64, Action)>> {
    ACTIONS.lock()
}

/// Runs on the doorbell thread for every ring.
fn rung(r: bell::Ring) {
    let _ = act(r, actions());
}

/// Acts on ring `r` with the table of actions held; gives the table back
/// when the ring is not for one of them.
fn act(r: bell::Ring, mut a: ForkGuard<'static, Vec<(u64, Action)>>) -> bool {
    if r.kind != RING_NOTIFY {
        return false;
    }
    let [dev, ino, token] = r.words;
    let Some(i) = a
        .iter()
        .position(|(t, act)| *t == token && act.queue == (dev, ino))
    else {
        return false;
    };
    let action = a.swap_remove(i).1;
    drop(a);
    match action.what {
        Notification::Signal { signo, value } if signo != 0 => {
            let _ = sys::queue_mesgq_signal(signo, value, r.pid, r.uid);
        }
        Notification::Thread { deliver } => deliver(),
        _ => {}
    }
    true
}

fn forget(token: u64) {
    actions().retain(|(t, _)| *t != token);
}

/// Whether the registration in `n` belongs to a live member.
fn live_owner(q: &Queue, n: &NotifyReg) -> Option<u32> {
    let owner = n.owner.load(Relaxed);
    (owner != 0 && q.member_alive(owner)).then_some(owner)
}

/// Clears the registration (lock held).
fn clear(n: &NotifyReg) {
    n.owner.store(0, Relaxed);
    n.token.store(0, Relaxed);
    n.bell.store(0, Relaxed);
}

/// The registration, if its owner is alive.
pub(crate) fn owner(q: &Queue) -> Option<crate::inspect::NotifyOwner> {
    let n = &q.region().header().notify;
    live_owner(q, n)?;
    let kind = match n.kind.load(Relaxed) as i32 {
        libc::SIGEV_SIGNAL => "signal",
        libc::SIGEV_THREAD => "thread",
        _ => "none",
    };
    Some(crate::inspect::NotifyOwner {
        pid: n.pid.load(Relaxed),
        kind,
        signo: n.signo.load(Relaxed) as i32,
    })
}

/// `mq_notify(mqdes, notification)` on an open description.
pub(crate) fn register(desc: &Arc<Description>, how: Option<Notification>) -> Result<()> {
    let q = desc.queue();
    let r = q.region();
    let n = &r.header().notify;
    if let Some(Notification::Signal { signo, .. }) = &how {
        if !(0..=64).contains(signo) {
            return Err(Error::Os(Errno::EINVAL));
        }
    }
    let me = q.member()?.id();
    let key = q.key()?;
    // The doorbell exists before the registration names it.
    let bell = match &how {
        Some(Notification::Signal { signo, .. }) if *signo != 0 => bell::mine(rung)?,
        Some(Notification::Thread { .. }) => bell::mine(rung)?,
        _ => 0,
    };
    let g = q.lock()?;
    let owner = live_owner(q, n);
    let Some(how) = how else {
        // Removal: only the owner's counts (Linux ignores anyone else).
        if owner == Some(me) {
            let token = n.token.load(Relaxed);
            clear(n);
            drop(g);
            forget(token);
        }
        return Ok(());
    };
    if owner.is_some() {
        return Err(Error::Os(Errno::EBUSY));
    }
    let token = crate::sys::random_u64() | 1;
    n.kind.store(kind_of(&how), Relaxed);
    n.signo.store(
        match &how {
            Notification::Signal { signo, .. } => *signo as u32,
            _ => 0,
        },
        Relaxed,
    );
    n.pid.store(std::process::id() as i32, Relaxed);
    n.token.store(token, Relaxed);
    n.bell.store(bell, Relaxed);
    actions().push((
        token,
        Action {
            queue: key,
            what: how,
        },
    ));
    n.owner.store(me, Relaxed);
    drop(g);
    Ok(())
}

/// A notification decided under the lock, sent after it is released.
pub struct Pending {
    bell: u64,
    token: u64,
    queue: (u64, u64),
}

/// Under the lock: whether anyone is registered, that is, whether
/// [`should_fire`] may say yes.
#[inline]
pub(crate) fn may_fire(q: &Queue) -> bool {
    q.region().header().notify.owner.load(Relaxed) != 0
}

/// Under the lock, right after a message landed in an empty queue: whether a
/// registration must fire now. If so it is removed (one-shot).
#[inline]
pub(crate) fn should_fire(g: &Guard<'_>, q: &Queue) -> Option<Pending> {
    if !may_fire(q) {
        return None;
    }
    registered_fires(g, q)
}

#[cold]
fn registered_fires(g: &Guard<'_>, q: &Queue) -> Option<Pending> {
    let r: &Region = q.region();
    let n = &r.header().notify;
    if q.anyone_sleeps(g, Cond::Recv) {
        return None;
    }
    if live_owner(q, n).is_none() {
        clear(n);
        return None;
    }
    let p = Pending {
        bell: n.bell.load(Relaxed),
        token: n.token.load(Relaxed),
        queue: q.key().ok()?,
    };
    n.fired.add(1);
    clear(n);
    Some(p)
}

/// Sends a notification decided by [`should_fire`] (lock released): rings
/// the owner's doorbell, nothing more.
pub(crate) fn fire(p: Pending) {
    if p.bell == 0 {
        return;
    }
    let words = [p.queue.0, p.queue.1, p.token];
    if bell::own() == Some(p.bell) {
        // The registered process is this one: act before the send returns,
        // as the kernel queues the signal before `mq_send` returns. Unless
        // the table is busy (this may be a signal handler that interrupted
        // its holder): then the doorbell thread acts, a moment later.
        if let Some(a) = ACTIONS.try_lock() {
            let ring = bell::Ring {
                kind: RING_NOTIFY,
                words,
                pid: std::process::id() as i32,
                uid: nix::unistd::getuid().as_raw(),
            };
            act(ring, a);
            return;
        }
    }
    bell::ring(p.bell, RING_NOTIFY, words);
}

/// Called when this process closes a descriptor of the queue: removes its
/// registration, as closing any descriptor of the queue does on Linux.
pub(crate) fn on_close(q: &Queue) {
    let n = &q.region().header().notify;
    let Ok(me) = q.member().map(|m| m.id()) else {
        return;
    };
    if n.owner.load(Relaxed) != me {
        return;
    }
    if let Ok(g) = q.lock_briefly() {
        if n.owner.load(Relaxed) == me {
            let token = n.token.load(Relaxed);
            clear(n);
            drop(g);
            forget(token);
        }
    }
}
