//! Waiting: the spin, the futex sleep, sleeper accounting and wake-ups.

use super::*;

impl Queue {
    /// Wakes one sleeper on `side` if any; called after the lock is dropped
    /// with the result of [`Guard::prepare_wake`].
    #[inline]
    pub(super) fn wake(&self, side: Side, needed: bool) {
        if !needed {
            return;
        }
        self.wake_one(side);
    }

    #[cold]
    pub(super) fn wake_one(&self, side: Side) {
        let cpu = sys::current_cpu_tag();
        let line = side.line(self.region());
        if line.1.load(Relaxed) != cpu {
            line.1.store(cpu, Relaxed);
        }
        if futex::wake(&line.0, 1) == 0 {
            // Nobody was asleep although the count said so: a sleeper may
            // have died. After a few of these, recount with the kernel.
            if self.tuning.futile_wakes.fetch_add(1, Relaxed) + 1 >= FUTILE_WAKES {
                self.tuning.futile_wakes.store(0, Relaxed);
                if let Ok(g) = self.lock_briefly() {
                    self.anyone_sleeps(&g, side.cond());
                    drop(g);
                }
            }
        } else if self.tuning.futile_wakes.load(Relaxed) != 0 {
            self.tuning.futile_wakes.store(0, Relaxed);
        }
    }

    /// Spins until `side` is ready or the adaptive limit passes; adapts the
    /// limit to the outcome.
    pub(super) fn spin(&self, side: Side) -> bool {
        let t = &self.tuning;
        let r = self.region();
        // Spinning pays only while the peer runs on another CPU: one that
        // was last seen on ours cannot answer while we spin, whether or
        // not either of us is pinned. The CPU number comes from the shared
        // file: it only chooses between spinning and sleeping now, and the
        // spin stays bounded either way.
        if side.peer_on_cpu(r, sys::current_cpu_tag()) {
            return false;
        }
        let mut n = t.spin_ns.load(Relaxed);
        if n < SPIN_MIN_NS {
            if t.probe.fetch_add(1, Relaxed) % SPIN_PROBE_EVERY != 0 {
                return false;
            }
            // A peer that runs on our CPU cannot answer while we spin (a
            // peer on another CPU can, even when both threads are pinned).
            if t.peer_on_my_cpu.load(Relaxed) {
                return false;
            }
            n = SPIN_PROBE_NS;
        }
        let limit = Duration::from_nanos(u64::from(n));
        let start = Instant::now();
        loop {
            for _ in 0..64 {
                if side.ready(r) {
                    t.spin_ns
                        .store(n.saturating_mul(2).min(SPIN_MAX_NS), Relaxed);
                    return true;
                }
                std::hint::spin_loop();
            }
            if start.elapsed() >= limit {
                let half = n / 2;
                t.spin_ns
                    .store(if half < SPIN_MIN_NS { 0 } else { half }, Relaxed);
                return false;
            }
        }
    }
}

/// Which condition a caller waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// A receiver waiting for a message.
    Recv,
    /// A sender waiting for room.
    Send,
}

impl Side {
    pub(super) fn line(self, r: &Region) -> &crate::layout::FutexLine {
        let h = r.header();
        match self {
            Side::Recv => &h.not_empty,
            Side::Send => &h.not_full,
        }
    }

    pub(super) fn word(self, r: &Region) -> &AtomicU32 {
        &self.line(r).0
    }

    /// After a sleep on this side ended: whether the last waker ran on the
    /// caller's CPU (a hint, read without the lock).
    pub(super) fn woken_from_my_cpu(self, r: &Region) -> bool {
        self.peer_on_cpu(r, sys::current_cpu_tag())
    }

    /// Whether the peers of this side's waiters (the ones that make it
    /// ready: senders for `Recv`, receivers for `Send`) were last seen on
    /// the CPU tagged `cpu` (see `sys::current_cpu_tag`; 0: unknown, never
    /// a match). A hint read without the lock from the shared file: the
    /// last waker of this side's sleepers, or the last peer that began to
    /// wait itself (see [`Side::publish_cpu`]).
    pub(super) fn peer_on_cpu(self, r: &Region, cpu: u32) -> bool {
        cpu != 0 && self.line(r).1.load(Relaxed) == cpu
    }

    /// A caller about to wait on this side tells the waiters of the other
    /// side, whose peer it is, which CPU it runs on (a store only when it
    /// changed: the line is shared).
    pub(super) fn publish_cpu(self, r: &Region) {
        let cpu = sys::current_cpu_tag();
        let other = match self {
            Side::Recv => Side::Send,
            Side::Send => Side::Recv,
        };
        let tag = &other.line(r).1;
        if cpu != 0 && tag.load(Relaxed) != cpu {
            tag.store(cpu, Relaxed);
        }
    }

    /// Whether the condition holds (a hint without the lock).
    pub(super) fn ready(self, r: &Region) -> bool {
        let h = r.header();
        match self {
            Side::Recv => h.lock.curmsgs.load(Relaxed) > 0,
            Side::Send => h.lock.nfree.load(Relaxed) > 0,
        }
    }

    /// The member condition this side waits for.
    pub(super) fn cond(self) -> Cond {
        match self {
            Side::Recv => Cond::Recv,
            Side::Send => Cond::Send,
        }
    }

    /// The header's count of sleepers on this side (a hint: see
    /// [`Queue::anyone_sleeps`]).
    pub(super) fn sleepers(self, r: &Region) -> &AtomicU32 {
        let h = r.header();
        match self {
            Side::Recv => &h.sleeping_recv,
            Side::Send => &h.sleeping_send,
        }
    }
}

impl From<Cond> for Side {
    fn from(c: Cond) -> Side {
        match c {
            Cond::Recv => Side::Recv,
            Cond::Send => Side::Send,
        }
    }
}

/// The queue lock, held.
pub struct Guard<'q> {
    pub(super) q: &'q Queue,
    pub(super) held: mutex::Held,
}

impl Drop for Guard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        mutex::unlock(self.q.region(), self.held);
    }
}

impl Guard<'_> {
    /// Drops and retakes the lock around `f`, waiting for it as `wait`
    /// allows. If retaking fails, the guard no longer holds the lock, and
    /// dropping it releases nothing (the word may belong to another thread
    /// by then).
    pub(super) fn unlocked<T>(&mut self, wait: &Wait<'_>, f: impl FnOnce() -> T) -> Result<T> {
        mutex::unlock(self.q.region(), self.held);
        self.held = mutex::Held::RELEASED;
        let out = f();
        let g = self.q.lock_with(wait)?;
        self.held = g.held;
        std::mem::forget(g);
        Ok(out)
    }

    /// If someone sleeps on `side`, bumps its futex word (under the lock) and
    /// returns true: the caller wakes one after unlocking.
    #[inline]
    pub(super) fn prepare_wake(&self, side: Side) -> bool {
        let r = self.q.region();
        if side.sleepers(r).load(Relaxed) == 0 {
            return false;
        }
        side.word(r).add(1);
        true
    }
}

thread_local! {
    /// This thread's last wait ended with `ERESTART` for a cancellation
    /// check, and the caller is expected to call again.
    static RESUMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The signal mask to restore, when signals were held back from the
    /// end of such a wait until the next sleep (see [`Resuming`]).
    static HELD: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    /// The current call ends for a cancellation check.
    static ENDS_FOR_CANCEL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A C caller (which wants `EINTR` and cuts its sleeps every 50 ms to act
/// on a cancellation) sleeps with signals held back (see `sync::mutex`),
/// looks for them at the end of every sleep, and keeps them held back
/// across a return for a cancellation check and the call made again: a
/// signal that arrives at any instant ends the call with `EINTR` within
/// one sleep (50 ms), and its handler runs before the call returns. Every
/// other way out of the call lets them through. Made at the start of each
/// call with a cancellation check.
pub(super) struct Resuming(());

impl Resuming {
    pub(super) fn new() -> Resuming {
        ENDS_FOR_CANCEL.set(false);
        Resuming(())
    }

    /// Holds signals back if they are not yet; if one that arrived runs a
    /// handler that ends a call, lets it through and says so (the others
    /// are let through too, then held back again).
    fn interrupted() -> bool {
        let mut h = match HELD.take() {
            Some(old) => mutex::HeldBack::from_saved(old),
            None => {
                let mut h = mutex::HeldBack::NONE;
                h.hold();
                h
            }
        };
        if h.pending() {
            if h.release() {
                return true;
            }
            h.hold();
        }
        HELD.set(h.into_saved());
        false
    }

    /// Lets held-back signals through (their handlers run); whether one
    /// of them ends a call.
    fn release() -> bool {
        match HELD.take() {
            Some(old) => mutex::HeldBack::from_saved(old).release(),
            None => false,
        }
    }
}

impl Drop for Resuming {
    fn drop(&mut self) {
        // A call that ends for another cancellation check keeps them held.
        if !ENDS_FOR_CANCEL.replace(false) {
            Self::release();
        }
    }
}

/// A caller's state while it waits for a side.
#[derive(Default)]
pub(super) struct Waiting {
    /// Spun once already.
    spun: bool,
    /// Counted as a sleeper with the kernel (its member's lock range for
    /// the side, see `member`), from its first sleep to the end of the call.
    sleeper: bool,
    /// The kernel could not be told (no lock could be taken): sleep in
    /// short naps, since a recount will not see this caller.
    unseen: bool,
    /// Give up with `ERESTART` every [`CANCEL_POLL`] while asleep, so that
    /// a C caller can act on a pending thread cancellation and call again.
    cancel_poll: bool,
}

impl Waiting {
    pub(super) fn new(cancel_poll: bool) -> Waiting {
        // A call made again after its sleep was cut for a cancellation
        // check goes straight back to sleep: a signal that arrived while it
        // spun again would run its handler without ending the call.
        let resumed = cancel_poll && RESUMED.replace(false);
        Waiting {
            cancel_poll,
            spun: resumed,
            ..Waiting::default()
        }
    }

    /// The call is over (the lock held or not): if it slept, it is no
    /// longer a sleeper for the kernel; if it leaves without taking what a
    /// wake-up promised, it passes the wake-up on to another sleeper.
    #[inline]
    pub(super) fn leave(&mut self, q: &Queue, g: &Guard<'_>, side: Side, gave_up: bool) {
        if !self.sleeper {
            return;
        }
        self.sleeper = false;
        self.unregister(q, g, side, gave_up);
    }

    #[cold]
    fn unregister(&mut self, q: &Queue, g: &Guard<'_>, side: Side, gave_up: bool) {
        if let Ok(m) = q.member() {
            m.sleep_end(side.cond());
        }
        let r = q.region();
        if g.held != mutex::Held::RELEASED && gave_up && side.ready(r) && g.prepare_wake(side) {
            futex::wake(side.word(r), 1);
        }
    }
}

impl Queue {
    /// Called with the lock held when the caller cannot proceed. Returns with
    /// the lock held when the caller should look again, or an error
    /// (`ETIMEDOUT`, `EINTR`, `ERESTART`, or a failure to retake the lock,
    /// after which the guard holds nothing) to give up.
    pub(super) fn block(
        &self,
        g: &mut Guard<'_>,
        side: Side,
        wait: &Wait<'_>,
        w: &mut Waiting,
    ) -> Result<()> {
        let r = self.region();
        self.check_poison()?;
        if wait.deadline.is_some_and(reached) {
            return Err(Error::Os(Errno::ETIMEDOUT));
        }
        if !w.spun && self.can_spin {
            w.spun = true;
            side.publish_cpu(r);
            g.unlocked(wait, || self.spin(side))?;
            return Ok(());
        }
        // About to sleep: first make sure no dead member holds what we
        // wait for mid-copy (this asks the kernel, so not before spinning).
        if self.reap_inflight(g) {
            return Ok(());
        }
        if !w.sleeper {
            // Known to the kernel as a sleeper before the header counts us.
            w.unseen = !self.member()?.sleep_begin(side.cond());
            w.sleeper = true;
        }
        let word = side.word(r);
        let seq = word.load(Relaxed);
        let count = side.sleepers(r);
        count.add(1);
        // Poll for dead copiers while slots are in flight (and, for a
        // receiver, for dead holders while messages are pending), for a
        // cancellation if the caller asked, and for everything if a
        // recount cannot see us.
        let lk = &r.header().lock;
        let poll = (w.unseen
            || lk.ninflight.load(Relaxed) > 0
            || (side == Side::Recv && lk.npending.load(Relaxed) > 0))
            .then(|| realtime_after(INFLIGHT_POLL));
        let cancel = w.cancel_poll.then(|| realtime_after(CANCEL_POLL));
        // Nobody can wake a sleeper once the file shrank: it looks now and
        // then itself.
        let mut check = Some(realtime_after(FILE_CHECK));
        let limit = |check: &Option<libc::timespec>| -> Option<libc::timespec> {
            let mut until = wait.deadline;
            for p in [&poll, &cancel, check].into_iter().flatten() {
                until = Some(earlier(until, p));
            }
            until.copied()
        };
        // If the lock cannot be retaken within the caller's limits, the
        // call ends without uncounting itself: the count errs high, which
        // costs a wake-up call, until `anyone_sleeps` recounts.
        let hold = w.cancel_poll;
        let res = g.unlocked(wait, || {
            // A C caller sleeps with signals held back, and looks for them
            // at every end of a sleep (at most CANCEL_POLL apart): a futex
            // cannot unblock signals atomically with going to sleep, and a
            // handler that ran just before or after the sleep would leave
            // no trace.
            if hold && Resuming::interrupted() {
                return Err(WaitError::Interrupted);
            }
            loop {
                let res = futex::wait(word, seq, limit(&check).as_ref());
                if hold && Resuming::interrupted() {
                    return Err(WaitError::Interrupted);
                }
                // A look at the file that finds it whole goes back to
                // sleep without the lock: a thousand sleepers must not
                // take it a thousand times a second.
                let only_check = res == Err(WaitError::TimedOut)
                    && check.as_ref().is_some_and(reached)
                    && ![wait.deadline, poll.as_ref(), cancel.as_ref()]
                        .into_iter()
                        .flatten()
                        .any(reached);
                if only_check && self.check_file().is_ok() {
                    check = Some(realtime_after(FILE_CHECK));
                    continue;
                }
                return res;
            }
        })?;
        count.sub(1);
        if res.is_ok() {
            // Woken (or the word moved first): by a peer on our CPU?
            let mine = side.woken_from_my_cpu(r);
            let flag = &self.tuning.peer_on_my_cpu;
            if flag.load(Relaxed) != mine {
                flag.store(mine, Relaxed);
            }
        }
        match res {
            Err(WaitError::TimedOut) if wait.deadline.is_some_and(reached) => {
                Err(Error::Os(Errno::ETIMEDOUT))
            }
            Err(WaitError::TimedOut) if cancel.as_ref().is_some_and(reached) => {
                RESUMED.set(true);
                ENDS_FOR_CANCEL.set(true);
                Err(Error::Os(Errno::ERESTART))
            }
            Err(WaitError::Interrupted) => Err(Error::Os(Errno::EINTR)),
            Err(WaitError::TimedOut) if check.as_ref().is_some_and(reached) => self.check_file(),
            _ => Ok(()),
        }
    }
}
