//! Receive with acknowledgement: a message handed out *pending* stays in
//! its slot, held by the receiving member, until the holder acknowledges
//! it (the slot is freed) or returns it (the message goes back to its
//! place in the queue). A holder that dies returns its messages: the next
//! caller that looks for dead members (a receiver about to sleep, a
//! sleeper every 10 ms while messages are pending, `getattr`, a repair)
//! puts them back.
//!
//! A pending message is not counted in `curmsgs` (it cannot be received)
//! and its slot is not free (a send sees the queue full while pending
//! messages fill it).

use super::wait::{Resuming, Side};
use super::*;
use crate::layout::SLOT_PENDING;

/// A message held unacknowledged by this process: where it is and who it
/// is, to check that the slot still holds it when it is acknowledged or
/// returned.
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    idx: u32,
    seq: u64,
    member: u32,
    /// The queue file's `(device, inode)`: a hold is ended on its own
    /// queue only.
    queue: (u64, u64),
    /// Priority of the message.
    pub prio: u32,
    /// Length of the message.
    pub len: usize,
}

impl Description {
    /// A receive that leaves the message pending: fills `buf` like
    /// [`receive_with`](Description::receive_with) and returns the hold,
    /// which [`ack`](Description::ack) or [`nack`](Description::nack) must
    /// end (or this process's exit, which returns the message).
    #[inline]
    pub fn receive_pending_with(
        &self,
        buf: &mut [u8],
        deadline: Option<&libc::timespec>,
        cancel_poll: bool,
    ) -> Result<Held> {
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
        let r = q.region();
        let me = q.member()?.id();
        let wait = Wait {
            deadline,
            nonblock: self.nonblocking(),
            interruptible: true,
            cancel_poll,
            take_over: true,
        };
        let _resuming = cancel_poll.then(Resuming::new);
        let mut g = q.lock_with(&wait)?;
        let mut attempts = 0;
        let last = &q.tuning.last_prio;
        let guess = last.load(Relaxed);
        let (slot, prio, len) = match queue::pop_front(r, guess) {
            Ok(Some(found)) => found,
            _ => self.acquire(&mut g, Side::Recv, &wait, &mut attempts, |r| {
                queue::pop_front(r, guess)
            })?,
        };
        if prio != guess {
            last.store(prio, Relaxed);
        }
        let idx = slot.idx();
        if let Err(c) = queue::hold(r, idx, me) {
            q.repair(&g, c, &mut attempts)?;
            return Err(Error::Corrupted(c.0.into()));
        }
        let seq = slot.header().seq.load(Relaxed);
        drop(g);
        // The slot is this member's until it says otherwise: no lock needed
        // to copy it out, whatever its size.
        slot.read(&mut buf[..len]);
        if r.poisoned() {
            return Err(super::shrunk());
        }
        Ok(Held {
            idx,
            seq,
            member: me,
            queue: q.key,
            prio,
            len,
        })
    }

    /// Checks, under the lock, that `held` is still this member's pending
    /// message, and ends the hold.
    #[inline]
    fn unhold(&self, held: &Held) -> Result<()> {
        let q = &self.queue;
        let r = q.region();
        let me = q.member()?.id();
        let ours = me == held.member
            && held.queue == q.key
            && r.slot(held.idx).is_some_and(|s| {
                s.state.load(Relaxed) == SLOT_PENDING && s.seq.load(Relaxed) == held.seq
            });
        if !ours {
            return Err(not_held());
        }
        queue::unhold(r, held.idx, me).map_err(|_| not_held())
    }

    /// Acknowledges a pending message: it leaves the queue, and its slot is
    /// free for a sender.
    #[inline]
    pub fn ack(&self, held: Held) -> Result<()> {
        let q = &self.queue;
        let r = q.region();
        let h = r.header();
        let g = q.lock()?;
        q.check_poison()?;
        self.unhold(&held)?;
        if let Err(c) = queue::release(r, held.idx) {
            q.repair_now(&g, c)?;
        }
        h.received.a.add(1);
        let wake = g.prepare_wake(Side::Send);
        drop(g);
        q.wake(Side::Send, wake);
        Ok(())
    }

    /// Returns a pending message to the queue, ahead of every message of
    /// its priority sent after it; it is delivered again. A message that
    /// lands in an empty queue notifies as a sent one would.
    pub fn nack(&self, held: Held) -> Result<()> {
        let q = &self.queue;
        let r = q.region();
        let h = r.header();
        let g = q.lock()?;
        q.check_poison()?;
        self.unhold(&held)?;
        let was_empty = h.lock.curmsgs.load(Relaxed) == 0;
        if let Err(c) = queue::requeue(r, held.idx) {
            // A repair links every queued slot in its place: mark this one
            // queued and let it.
            if let Some(s) = r.slot(held.idx) {
                s.state.store(crate::layout::SLOT_QUEUED, Release);
            }
            q.repair_now(&g, c)?;
        }
        let wake = g.prepare_wake(Side::Recv);
        let notify = if was_empty {
            crate::notify::should_fire(&g, q)
        } else {
            None
        };
        drop(g);
        q.wake(Side::Recv, wake);
        if let Some(n) = notify {
            crate::notify::fire(n);
        }
        Ok(())
    }
}

/// The error for an acknowledgement of a message this process does not
/// hold (any more): it was returned by a repair that found the file
/// damaged, the call comes from a forked child, which holds nothing, or
/// it names another queue.
fn not_held() -> Error {
    Error::Corrupted("the message is not held by this process".into())
}

impl Queue {
    /// Under the lock, at most once per [`INFLIGHT_POLL`] in this process:
    /// whether a dead member holds a pending message. A walk over the slots
    /// (the pending ones are on no list), asking the kernel once per
    /// holder.
    pub(super) fn dead_holder(&self, m: &Member) -> bool {
        let r = self.region();
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        // Milliseconds since this process first looked, plus one (0: never).
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.tuning.pending_scan.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < INFLIGHT_POLL.as_millis() as u64 {
            return false;
        }
        self.tuning.pending_scan.store(now, Relaxed);
        let mut left = r.header().lock.npending.load(Relaxed);
        let mut seen: Vec<u32> = Vec::new();
        for i in 0..r.geometry().maxmsg {
            if left == 0 {
                break;
            }
            let Some(s) = r.slot(i) else { break };
            if s.state.load(Relaxed) != SLOT_PENDING {
                continue;
            }
            left -= 1;
            let owner = s.owner.load(Relaxed);
            if seen.contains(&owner) {
                continue;
            }
            if !m.alive(owner) {
                return true;
            }
            if seen.len() < 64 {
                seen.push(owner);
            }
        }
        false
    }
}
