//! Waiting: the spin, the futex sleep, waiter registration and wake-ups.

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
            // have died. After a few of these, recount from the table.
            if self.tuning.futile_wakes.fetch_add(1, Relaxed) + 1 >= FUTILE_WAKES {
                self.tuning.futile_wakes.store(0, Relaxed);
                if let Ok(g) = self.lock() {
                    queue::recount_waiters(self.region(), &mut proc::alive);
                    drop(g);
                }
            }
        } else {
            self.tuning.futile_wakes.store(0, Relaxed);
        }
    }

    /// Spins until `side` is ready or the adaptive limit passes; adapts the
    /// limit to the outcome.
    pub(super) fn spin(&self, side: Side) -> bool {
        let t = &self.tuning;
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
        let r = self.region();
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
        let waker = self.line(r).1.load(Relaxed);
        waker != 0 && sys::current_cpu_tag() == waker
    }

    /// Whether the condition holds (a hint without the lock).
    pub(super) fn ready(self, r: &Region) -> bool {
        let h = r.header();
        match self {
            Side::Recv => h.lock.curmsgs.load(Relaxed) > 0,
            Side::Send => h.lock.nfree.load(Relaxed) > 0,
        }
    }

    pub(super) fn counters(self, r: &Region) -> (&AtomicU32, &AtomicU32) {
        let h = r.header();
        match self {
            Side::Recv => (&h.waiting_recv, &h.sleeping_recv),
            Side::Send => (&h.waiting_send, &h.sleeping_send),
        }
    }

    pub(super) fn entry_counters(self, w: &WaiterEntry) -> (&AtomicU32, &AtomicU32) {
        match self {
            Side::Recv => (&w.recv, &w.recv_sleeping),
            Side::Send => (&w.send, &w.send_sleeping),
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
    /// Drops and retakes the lock around `f`. If retaking fails, the guard
    /// no longer holds the lock, and dropping it releases nothing (the word
    /// may belong to another thread by then).
    pub(super) fn unlocked<T>(&mut self, f: impl FnOnce() -> T) -> Result<T> {
        mutex::unlock(self.q.region(), self.held);
        self.held = mutex::Held::RELEASED;
        let out = f();
        let g = self.q.lock()?;
        self.held = g.held;
        std::mem::forget(g);
        Ok(out)
    }

    /// If someone sleeps on `side`, bumps its futex word (under the lock) and
    /// returns true: the caller wakes one after unlocking.
    #[inline]
    pub(super) fn prepare_wake(&self, side: Side) -> bool {
        let r = self.q.region();
        if side.counters(r).1.load(Relaxed) == 0 {
            return false;
        }
        side.word(r).add(1);
        true
    }
}

/// A caller's registration as a blocked sender or receiver.
#[derive(Default)]
pub(super) struct Waiting {
    registered: bool,
    entry: Option<usize>,
    spun: bool,
    /// Give up with `ERESTART` every [`CANCEL_POLL`] while asleep, so that
    /// a C caller can act on a pending thread cancellation and call again.
    cancel_poll: bool,
}

impl Waiting {
    pub(super) fn new(cancel_poll: bool) -> Waiting {
        Waiting {
            cancel_poll,
            ..Waiting::default()
        }
    }

    pub(super) fn entry<'r>(&self, r: &'r Region) -> Option<&'r WaiterEntry> {
        self.entry.map(|i| &r.header().waiters[i])
    }

    pub(super) fn register(&mut self, r: &Region, side: Side) {
        if self.registered {
            return;
        }
        self.registered = true;
        let (pid, start) = proc::me();
        let h = r.header();
        match queue::waiter_entry(r, pid, start) {
            Some(w) => {
                let idx = h.waiters.iter().position(|x| std::ptr::eq(x, w));
                self.entry = idx;
                side.entry_counters(w).0.add(1);
            }
            None => {
                h.untracked_waits.add(1);
            }
        }
        side.counters(r).0.add(1);
    }

    /// Unregisters; if the caller leaves without taking what a wake-up
    /// promised, passes the wake-up on to another sleeper.
    #[inline]
    pub(super) fn leave(&mut self, g: &Guard<'_>, side: Side, gave_up: bool) {
        if !self.registered {
            return;
        }
        self.unregister(g, side, gave_up);
    }

    #[cold]
    pub(super) fn unregister(&mut self, g: &Guard<'_>, side: Side, gave_up: bool) {
        self.registered = false;
        let r = g.q.region();
        if let Some(w) = self.entry(r) {
            side.entry_counters(w).0.sub(1);
            queue::waiter_entry_release(w);
        }
        side.counters(r).0.sub(1);
        if gave_up && side.ready(r) && g.prepare_wake(side) {
            futex::wake(side.word(r), 1);
        }
    }
}

impl Queue {
    /// Called with the lock held when the caller cannot proceed. Returns with
    /// the lock held when the caller should look again, or an error
    /// (`ETIMEDOUT`, `EINTR`) to give up.
    pub(super) fn block(
        &self,
        g: &mut Guard<'_>,
        side: Side,
        deadline: Option<&libc::timespec>,
        w: &mut Waiting,
    ) -> Result<()> {
        let r = self.region();
        if deadline.is_some_and(reached) {
            return Err(Error::Os(Errno::ETIMEDOUT));
        }
        w.register(r, side);
        if !w.spun && self.can_spin {
            w.spun = true;
            g.unlocked(|| self.spin(side))?;
            return Ok(());
        }
        // About to sleep: first make sure no dead process holds what we
        // wait for mid-copy (this reads /proc, so not before spinning).
        if self.reap_inflight(g) {
            return Ok(());
        }
        let word = side.word(r);
        let seq = word.load(Relaxed);
        let entry = w.entry(r);
        if let Some(e) = entry {
            side.entry_counters(e).1.add(1);
        }
        side.counters(r).1.add(1);
        // Poll for dead copiers while slots are in flight, and for a
        // cancellation if the caller asked.
        let poll =
            (r.header().lock.ninflight.load(Relaxed) > 0).then(|| realtime_after(INFLIGHT_POLL));
        let cancel = w.cancel_poll.then(|| realtime_after(CANCEL_POLL));
        let mut until = deadline;
        for p in [&poll, &cancel].into_iter().flatten() {
            until = Some(earlier(until, p));
        }
        let res = g.unlocked(|| futex::wait(word, seq, until))?;
        if res.is_ok() {
            // Woken (or the word moved first): by a peer on our CPU?
            let mine = side.woken_from_my_cpu(r);
            let flag = &self.tuning.peer_on_my_cpu;
            if flag.load(Relaxed) != mine {
                flag.store(mine, Relaxed);
            }
        }
        if let Some(e) = entry {
            side.entry_counters(e).1.sub(1);
        }
        side.counters(r).1.sub(1);
        match res {
            Err(WaitError::TimedOut) if deadline.is_some_and(reached) => {
                Err(Error::Os(Errno::ETIMEDOUT))
            }
            Err(WaitError::TimedOut) if cancel.as_ref().is_some_and(reached) => {
                Err(Error::Os(Errno::ERESTART))
            }
            Err(WaitError::Interrupted) => Err(Error::Os(Errno::EINTR)),
            _ => Ok(()),
        }
    }
}
