//! Send, receive and getattr on an open description.

use super::wait::Waiting;
use super::*;

impl Description {
    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Whether this description is non-blocking.
    #[inline]
    pub fn nonblocking(&self) -> bool {
        self.flags.word().load(Relaxed) & FLAG_NONBLOCK != 0
    }

    /// Sets or clears non-blocking mode; returns the old flags.
    pub fn set_nonblocking(&self, on: bool) -> bool {
        let old = if on {
            self.flags.word().fetch_or(FLAG_NONBLOCK, Relaxed)
        } else {
            self.flags.word().fetch_and(!FLAG_NONBLOCK, Relaxed)
        };
        old & FLAG_NONBLOCK != 0
    }

    /// `mq_getattr`. Never waits for long: it takes the lock if it can
    /// within a few milliseconds (and then repairs what dead members left
    /// mid-copy first), else it reads the count without the lock (a
    /// stopped lock holder must not stop a read-only call).
    pub fn attr(&self) -> Result<Attr> {
        let q = &self.queue;
        let curmsgs = match q.lock_briefly() {
            Ok(g) => {
                q.reap_inflight(&g);
                let n = q.region().header().lock.curmsgs.load(Relaxed);
                drop(g);
                n
            }
            Err(Error::Os(Errno::EAGAIN)) => q.region().header().lock.curmsgs.load(Relaxed),
            Err(e) => return Err(e),
        };
        q.check_poison()?;
        Ok(Attr {
            flags: if self.nonblocking() {
                libc::O_NONBLOCK as i64
            } else {
                0
            },
            maxmsg: i64::from(q.geo.maxmsg),
            msgsize: q.geo.msgsize as i64,
            curmsgs: curmsgs.min(u64::from(q.geo.maxmsg)) as i64,
        })
    }

    /// How a send or receive may wait, for the lock and for its condition.
    #[inline]
    fn wait<'a>(&self, deadline: Option<&'a libc::timespec>, cancel_poll: bool) -> Wait<'a> {
        Wait {
            deadline,
            nonblock: self.nonblocking(),
            interruptible: true,
            cancel_poll,
            take_over: true,
        }
    }

    /// Under the lock: calls `take` until it yields something, waiting for
    /// `side` (or failing with `EAGAIN` when non-blocking) while it yields
    /// nothing, and repairing the queue when it finds an inconsistency.
    /// The callers try `take` once themselves first: this is the slow path.
    /// On an error the guard may hold nothing (see `Guard::unlocked`).
    #[inline(never)]
    pub(super) fn acquire<'q, T>(
        &'q self,
        g: &mut Guard<'q>,
        side: Side,
        wait: &Wait<'_>,
        attempts: &mut u32,
        mut take: impl FnMut(&'q Region) -> queue::QResult<Option<T>>,
    ) -> Result<T> {
        let q = &self.queue;
        let mut w = Waiting::new(wait.cancel_poll);
        let mut reaped = false;
        let out = loop {
            if let Err(e) = q.check_poison() {
                break Err(e);
            }
            let res = match take(q.region()) {
                Ok(Some(v)) => break Ok(v),
                // Before giving up, once: what dead members left mid-copy
                // or pending may be there to take.
                Ok(None) if wait.nonblock && !reaped && side == Side::Recv => {
                    reaped = true;
                    if q.reap_inflight(g) {
                        continue;
                    }
                    Err(Error::Os(Errno::EAGAIN))
                }
                Ok(None) if wait.nonblock => Err(Error::Os(Errno::EAGAIN)),
                Ok(None) => q.block(g, side, wait, &mut w),
                Err(c) => q.repair(g, c, attempts),
            };
            if let Err(e) = res {
                break Err(e);
            }
        };
        w.leave(q, g, side, out.is_err());
        out
    }

    /// `mq_timedsend`; `deadline` is absolute `CLOCK_REALTIME`, `None` blocks
    /// without limit (subject to `O_NONBLOCK`).
    #[inline]
    pub fn send(&self, prio: u32, msg: &[u8], deadline: Option<&libc::timespec>) -> Result<()> {
        self.send_polling::<false>(prio, msg, deadline)
    }

    /// [`send`](Description::send); with `cancel_poll`, a wait is cut
    /// every 50 ms with `ERESTART` (see the C API's cancellation points).
    #[inline]
    pub fn send_with(
        &self,
        prio: u32,
        msg: &[u8],
        deadline: Option<&libc::timespec>,
        cancel_poll: bool,
    ) -> Result<()> {
        if cancel_poll {
            self.send_polling::<true>(prio, msg, deadline)
        } else {
            self.send_polling::<false>(prio, msg, deadline)
        }
    }

    /// [`send_with`](Description::send_with), `cancel_poll` known at
    /// compile time: a caller that never polls carries no trace of it.
    #[inline]
    fn send_polling<const CANCEL_POLL: bool>(
        &self,
        prio: u32,
        msg: &[u8],
        deadline: Option<&libc::timespec>,
    ) -> Result<()> {
        if let Some(d) = deadline {
            check_timespec(d)?;
        }
        if prio as usize >= NPRIO {
            return Err(Error::Os(Errno::EINVAL));
        }
        if !self.write {
            return Err(Error::Os(Errno::EBADF));
        }
        let q = &self.queue;
        if msg.len() > q.geo.msgsize {
            return Err(Error::Os(Errno::EMSGSIZE));
        }
        // Only in the instance that polls: a value of an Option here stays
        // on the stack, and is tested, even where it is always None.
        if CANCEL_POLL {
            let _resuming = super::wait::Resuming::new();
            self.send_checked(prio, msg, deadline, true)
        } else {
            self.send_checked(prio, msg, deadline, false)
        }
    }

    /// The rest of [`send_polling`](Description::send_polling), once the
    /// arguments passed.
    #[inline(always)]
    fn send_checked(
        &self,
        prio: u32,
        msg: &[u8],
        deadline: Option<&libc::timespec>,
        cancel_poll: bool,
    ) -> Result<()> {
        let q = &self.queue;
        let r = q.region();
        let h = r.header();
        let mut g = q.lock_lazily(|| self.wait(deadline, cancel_poll))?;
        let mut attempts = 0;
        let slot = match queue::alloc(r) {
            Ok(Some(slot)) => slot,
            _ => {
                let wait = self.wait(deadline, cancel_poll);
                self.acquire(&mut g, Side::Send, &wait, &mut attempts, queue::alloc)?
            }
        };
        if msg.len() <= INLINE_MAX {
            slot.write(msg);
        } else {
            self.copy_outside(
                &mut g,
                slot.idx(),
                SLOT_WRITING,
                &mut attempts,
                deadline,
                move || slot.write(msg),
            )?;
        }
        let was_empty = h.lock.curmsgs.load(Relaxed) == 0;
        if let Err(c) = queue::enqueue(r, slot, prio, msg.len()) {
            q.repair(&g, c, &mut attempts)?;
            return Err(Error::Corrupted(c.0.into()));
        }
        h.sent.b.add(1);
        let wake = g.prepare_wake(Side::Recv);
        if was_empty && crate::notify::may_fire(q) {
            return self.send_end_notifying(g, wake);
        }
        drop(g);
        q.wake(Side::Recv, wake);
        if r.poisoned() {
            // The file shrank meanwhile and took the message with it.
            return Err(super::shrunk());
        }
        Ok(())
    }

    /// The end of a send that made the queue non-empty while someone is
    /// registered for notification (see `notify`).
    #[cold]
    #[inline(never)]
    fn send_end_notifying(&self, g: Guard<'_>, wake: bool) -> Result<()> {
        let q = &self.queue;
        let notify = crate::notify::should_fire(&g, q);
        drop(g);
        q.wake(Side::Recv, wake);
        if let Some(n) = notify {
            crate::notify::fire(n);
        }
        if q.region().poisoned() {
            // As in `send_checked`.
            return Err(super::shrunk());
        }
        Ok(())
    }

    /// Copies a payload into or out of slot `idx` without the lock: marks
    /// the slot in flight (`state`, this member and thread), runs `copy`
    /// unlocked, and takes the lock back (the slot is this caller's to
    /// finish), then takes the slot off the in-flight list.
    ///
    /// The lock is waited for until the caller's deadline, and no longer:
    /// a lock word that names a live member which does not hold it (written
    /// by someone who bypasses the library) cannot be told from a slow
    /// holder. If the deadline passes first, the slot is given up: its
    /// thread is cleared, so the next caller that looks for dead copiers
    /// rolls it back as it would a dead one's (a write dropped, a read put
    /// back in its place), and the call fails with `ETIMEDOUT`.
    fn copy_outside(
        &self,
        g: &mut Guard<'_>,
        idx: u32,
        state: u32,
        attempts: &mut u32,
        deadline: Option<&libc::timespec>,
        copy: impl FnOnce(),
    ) -> Result<()> {
        let q = &self.queue;
        let r = q.region();
        let me = q.member()?.id();
        if let Err(c) = queue::begin_inflight(r, idx, state, me, sys::live::tid()) {
            q.repair(g, c, attempts)?;
            return Err(Error::Corrupted(c.0.into()));
        }
        let retake = Wait {
            deadline,
            ..Wait::FOREVER
        };
        if let Err(e) = g.unlocked(&retake, copy) {
            if let Some(s) = r.slot(idx) {
                s.owner_tid.store(0, Release);
            }
            return Err(e);
        }
        if let Err(c) = queue::end_inflight(r, idx, state, me) {
            // Someone rebuilt the lists meanwhile (the slot is still ours:
            // we live), or damaged them.
            q.repair(g, c, attempts)?;
            queue::end_inflight(r, idx, state, me).map_err(|c| Error::Corrupted(c.0.into()))?;
        }
        Ok(())
    }

    /// `mq_timedreceive`: fills `buf`, returns `(len, prio)`.
    #[inline]
    pub fn receive(
        &self,
        buf: &mut [u8],
        deadline: Option<&libc::timespec>,
    ) -> Result<(usize, u32)> {
        self.receive_polling::<false>(buf, deadline)
    }

    /// [`receive`](Description::receive); `cancel_poll` as for
    /// [`send_with`](Description::send_with).
    ///
    /// The message leaves the queue when its slot is freed, under the lock,
    /// right before the lock is released: a receiver killed after that
    /// instant (while it wakes a sender, or before its caller sees the
    /// message) has consumed it. Use a receive with acknowledgement for
    /// at-least-once delivery.
    #[inline]
    pub fn receive_with(
        &self,
        buf: &mut [u8],
        deadline: Option<&libc::timespec>,
        cancel_poll: bool,
    ) -> Result<(usize, u32)> {
        if cancel_poll {
            self.receive_polling::<true>(buf, deadline)
        } else {
            self.receive_polling::<false>(buf, deadline)
        }
    }

    /// [`receive_with`](Description::receive_with), `cancel_poll` known at
    /// compile time (see [`send_polling`](Description::send_polling)).
    #[inline]
    fn receive_polling<const CANCEL_POLL: bool>(
        &self,
        buf: &mut [u8],
        deadline: Option<&libc::timespec>,
    ) -> Result<(usize, u32)> {
        if let Some(d) = deadline {
            check_timespec(d)?;
        }
        if !self.read {
            return Err(Error::Os(Errno::EBADF));
        }
        let q = &self.queue;
        if buf.len() < q.geo.msgsize {
            return Err(Error::Os(Errno::EMSGSIZE));
        }
        // As in `send_polling`.
        if CANCEL_POLL {
            let _resuming = super::wait::Resuming::new();
            self.receive_checked(buf, deadline, true)
        } else {
            self.receive_checked(buf, deadline, false)
        }
    }

    /// The rest of [`receive_polling`](Description::receive_polling), once
    /// the arguments passed.
    #[inline(always)]
    fn receive_checked(
        &self,
        buf: &mut [u8],
        deadline: Option<&libc::timespec>,
        cancel_poll: bool,
    ) -> Result<(usize, u32)> {
        let q = &self.queue;
        let r = q.region();
        let h = r.header();
        let mut g = q.lock_lazily(|| self.wait(deadline, cancel_poll))?;
        let mut attempts = 0;
        let last = &q.tuning.last_prio;
        let guess = last.load(Relaxed);
        let (slot, prio, len) = match queue::pop_front(r, guess) {
            Ok(Some(found)) => found,
            _ => {
                let wait = self.wait(deadline, cancel_poll);
                self.acquire(&mut g, Side::Recv, &wait, &mut attempts, |r| {
                    queue::pop_front(r, guess)
                })?
            }
        };
        if prio != guess {
            last.store(prio, Relaxed);
        }
        if len <= INLINE_MAX {
            slot.read(&mut buf[..len]);
        } else {
            self.copy_outside(
                &mut g,
                slot.idx(),
                SLOT_READING,
                &mut attempts,
                deadline,
                move || slot.read(&mut buf[..len]),
            )?;
        }
        queue::release_slot(r, slot);
        h.received.a.add(1);
        let wake = g.prepare_wake(Side::Send);
        drop(g);
        q.wake(Side::Send, wake);
        if r.poisoned() {
            // Read from the zero pages that stand in for a lost part of the
            // file: no message.
            return Err(super::shrunk());
        }
        Ok((len, prio))
    }
}

/// Where [`Description::die_holding_lock`] stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A send that took a slot off the free list and half wrote it.
    MidSend,
    /// A receive that unlinked the head message but has not freed it.
    MidReceive,
}

impl Description {
    /// Crash-test hook: takes the lock, performs the first half of a send or
    /// receive, then sleeps holding the lock until the process is killed.
    pub fn die_holding_lock(&self, stage: Stage, on_locked: &dyn Fn()) -> ! {
        let q = &self.queue;
        let r = q.region();
        let g = q.lock().expect("lock");
        match stage {
            Stage::MidSend => {
                if let Ok(Some(slot)) = queue::alloc(r) {
                    let half = vec![0xee; q.geo.msgsize / 2];
                    slot.write(&half);
                    slot.prio.store(1, Relaxed);
                }
            }
            Stage::MidReceive => {
                if let Ok(Some((idx, prio, _))) = queue::front(r) {
                    let _ = queue::unlink_front(r, idx, prio);
                }
            }
        }
        std::mem::forget(g);
        on_locked();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
