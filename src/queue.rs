//! The priority-queue algorithm over a [`Region`]: slot lists, the priority
//! bitmap and repair. No syscalls and no locking here: every function expects
//! the caller to hold the queue lock (or to own the region exclusively).
//!
//! - Each priority has a circular singly linked list of slots; the header
//!   keeps only its tail, whose `next` is the head. Append and pop-head are
//!   O(1) and need one `u32` per priority.
//! - A three-level bitmap (1 word, 8 words, 512 words) finds the highest
//!   non-empty priority with three leading-zero counts, whatever the spread.
//! - Free slots form a singly linked list; slots being copied outside the lock
//!   form the in-flight list.
//! - Slot states are the truth. Every list, bitmap bit and counter can be
//!   rebuilt from them by [`rebuild`], which is how a queue is repaired after a
//!   process died holding the lock, or when an inconsistency is detected.
//!
//! Every index read from the region is validated before use; a bad one yields
//! [`Corrupt`], never an out-of-bounds access.

use crate::layout::{
    Header, NIL, NPRIO, Region, SLOT_FREE, SLOT_PENDING, SLOT_QUEUED, SLOT_READING, SLOT_WRITING,
    SlotHeader, SlotRef,
};
use std::sync::atomic::Ordering::{Relaxed, Release};

/// Read-modify-write of a shared counter by the lock holder: a plain load and
/// store (no locked instruction), since every writer holds the lock.
pub trait Locked<T> {
    /// `self += d` (wrapping).
    fn add(&self, d: T);
    /// `self -= d`, saturating at zero.
    fn sub(&self, d: T);
    /// `self |= bits`.
    fn or(&self, bits: T);
    /// `self &= bits`; returns the new value.
    fn and(&self, bits: T) -> T;
}

macro_rules! locked_impl {
    ($a:ty, $t:ty) => {
        impl Locked<$t> for $a {
            #[inline]
            fn add(&self, d: $t) {
                self.store(self.load(Relaxed).wrapping_add(d), Relaxed);
            }
            #[inline]
            fn sub(&self, d: $t) {
                self.store(self.load(Relaxed).saturating_sub(d), Relaxed);
            }
            // `or` and `and` store only on a change: a store of the same
            // value would still take the cache line away from other CPUs.
            #[inline]
            fn or(&self, bits: $t) {
                let v = self.load(Relaxed);
                if v | bits != v {
                    self.store(v | bits, Relaxed);
                }
            }
            #[inline]
            fn and(&self, bits: $t) -> $t {
                let v = self.load(Relaxed);
                if v & bits != v {
                    self.store(v & bits, Relaxed);
                }
                v & bits
            }
        }
    };
}
locked_impl!(std::sync::atomic::AtomicU32, u32);
locked_impl!(std::sync::atomic::AtomicU64, u64);

/// An inconsistency found in the shared structures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt(pub &'static str);

/// Result of the queue algorithm.
pub type QResult<T> = Result<T, Corrupt>;

#[inline]
fn slot(r: &Region, idx: u32) -> QResult<&SlotHeader> {
    r.slot(idx).ok_or(Corrupt("slot index out of range"))
}

#[inline(always)]
fn slot_ref(r: &Region, idx: u32) -> QResult<SlotRef<'_>> {
    r.slot_ref(idx).ok_or(Corrupt("slot index out of range"))
}

/// Takes a slot off the free list; `None` when there is none.
#[inline]
pub fn alloc(r: &Region) -> QResult<Option<SlotRef<'_>>> {
    let h = r.header();
    let head = h.lock.free_head.load(Relaxed);
    if head == NIL {
        return Ok(None);
    }
    let s = slot_ref(r, head.wrapping_sub(1))?;
    if s.state.load(Relaxed) != SLOT_FREE {
        return Err(Corrupt("free list holds a busy slot"));
    }
    let next = s.next.load(Relaxed);
    if next != NIL && next > r.geometry().maxmsg {
        return Err(Corrupt("free list link out of range"));
    }
    h.lock.free_head.store(next, Relaxed);
    h.lock.nfree.sub(1);
    Ok(Some(s))
}

/// Puts slot `idx` back on the free list and marks it free.
#[inline]
pub fn release(r: &Region, idx: u32) -> QResult<()> {
    release_slot(r, slot_ref(r, idx)?);
    Ok(())
}

/// [`release`] for a slot checked already.
#[inline]
pub fn release_slot(r: &Region, s: SlotRef<'_>) {
    let h = r.header();
    s.state.store(SLOT_FREE, Release);
    s.next.store(h.lock.free_head.load(Relaxed), Relaxed);
    h.lock.free_head.store(s.idx() + 1, Relaxed);
    h.lock.nfree.add(1);
}

#[inline]
fn bitmap_set(h: &Header, prio: usize) {
    let leaf = &h.bitmap_leaf[prio / 64];
    let was = leaf.load(Relaxed);
    leaf.or(1 << (prio % 64));
    // The upper levels already say "something below" unless the leaf word
    // was empty.
    if was == 0 {
        h.bitmap_mid[prio / 4096].or(1 << ((prio / 64) % 64));
        h.bitmap_top.or(1 << (prio / 4096));
    }
}

#[inline]
fn bitmap_clear(h: &Header, prio: usize) {
    if h.bitmap_leaf[prio / 64].and(!(1 << (prio % 64))) == 0
        && h.bitmap_mid[prio / 4096].and(!(1 << ((prio / 64) % 64))) == 0
    {
        h.bitmap_top.and(!(1 << (prio / 4096)));
    }
}

/// Under the lock, when `prio`'s list has just become empty: leaves its
/// bitmap bit set, so that the next message of the same priority finds the
/// bitmap as it needs it (a send and a receive in turn then write no bitmap
/// word, and no bitmap line moves between CPUs), and clears the bit left set
/// before, unless its priority has messages again. At most one bit is stale
/// at a time; `Header::received.b` names it (`prio + 1`, 0: none).
#[inline]
fn retire(h: &Header, prio: u32) {
    let named = u64::from(prio) + 1;
    let stale = h.received.b.load(Relaxed);
    if stale == named {
        return;
    }
    if stale != 0 {
        clear_if_empty(h, stale - 1);
    }
    h.received.b.store(named, Relaxed);
}

/// Clears the bit of priority `p` if its list is empty; a value out of range
/// (a damaged file) is ignored.
fn clear_if_empty(h: &Header, p: u64) {
    if p < NPRIO as u64 && h.tails[p as usize].load(Relaxed) == NIL {
        bitmap_clear(h, p as usize);
    }
}

/// The highest priority with messages (trying `guess` first, see
/// [`highest_from`]), or `None` when the queue is empty. If the bitmap leads
/// to the one stale bit (see [`retire`]), that bit is cleared and the walk
/// done again.
#[inline]
fn top_prio(r: &Region, guess: u32) -> QResult<Option<u32>> {
    let h = r.header();
    if h.lock.curmsgs.load(Relaxed) == 0 {
        return Ok(None);
    }
    let mut prio = highest_from(r, guess)?;
    for retry in [true, false] {
        let Some(p) = prio else {
            return Err(Corrupt("messages counted but no priority has any"));
        };
        if h.tails[p as usize].load(Relaxed) != NIL {
            return Ok(Some(p));
        }
        if !retry || h.received.b.load(Relaxed) != u64::from(p) + 1 {
            break;
        }
        bitmap_clear(h, p as usize);
        h.received.b.store(0, Relaxed);
        prio = highest(r)?;
    }
    Err(Corrupt("bitmap bit set for an empty priority"))
}

/// The highest priority whose bitmap bit is set, or `None` when none is.
/// The bit may be the stale one (see [`retire`]).
#[inline]
pub fn highest(r: &Region) -> QResult<Option<u32>> {
    let h = r.header();
    let top = h.bitmap_top.load(Relaxed);
    if top == 0 {
        return Ok(None);
    }
    let t = 63 - top.leading_zeros() as usize;
    let mid = h
        .bitmap_mid
        .get(t)
        .ok_or(Corrupt("bitmap top out of range"))?
        .load(Relaxed);
    if mid == 0 {
        return Err(Corrupt("bitmap levels disagree"));
    }
    let m = t * 64 + 63 - mid.leading_zeros() as usize;
    let leaf = h.bitmap_leaf[m].load(Relaxed);
    if leaf == 0 {
        return Err(Corrupt("bitmap levels disagree"));
    }
    Ok(Some((m * 64 + 63 - leaf.leading_zeros() as usize) as u32))
}

/// [`highest`], trying `guess` first: it is checked against the three bitmap
/// levels with independent loads (no chain of bit scans), and if it is the
/// highest priority with messages the walk is skipped. Any `guess` is safe.
#[inline]
pub fn highest_from(r: &Region, guess: u32) -> QResult<Option<u32>> {
    let p = guess as usize;
    if p < NPRIO {
        let h = r.header();
        let top = h.bitmap_top.load(Relaxed) >> (p / 4096);
        let mid = h.bitmap_mid[p / 4096].load(Relaxed) >> ((p / 64) % 64);
        let leaf = h.bitmap_leaf[p / 64].load(Relaxed) >> (p % 64);
        // Each level has the guess's bit set and nothing above it.
        if top == 1 && mid == 1 && leaf == 1 {
            return Ok(Some(guess));
        }
    }
    highest(r)
}

/// Appends the message in slot `idx` (payload already written) at the tail of
/// priority `prio` with the next sequence number, and counts it. The slot's
/// state becomes `QUEUED`.
#[inline]
pub fn enqueue(r: &Region, s: SlotRef<'_>, prio: u32, len: usize) -> QResult<()> {
    let h = r.header();
    let seq = h.sent.a.load(Relaxed);
    link(r, s, prio, len as u64, seq, None)?;
    h.sent.a.add(1);
    Ok(())
}

/// Links slot `idx` into `prio`'s list as a message of `len` bytes and
/// sequence number `seq`, and counts it: at the tail when `after` is
/// `None`, else right after slot `after` (or at the head for `Some(NIL)`,
/// i.e. `after` holds `index + 1`).
#[inline]
fn link(
    r: &Region,
    s: SlotRef<'_>,
    prio: u32,
    len: u64,
    seq: u64,
    after: Option<u32>,
) -> QResult<()> {
    let h = r.header();
    let p = prio as usize;
    let tail_word = h.tails.get(p).ok_or(Corrupt("priority out of range"))?;
    let idx = s.idx();
    let tail = tail_word.load(Relaxed);
    // Check every slot this touches before changing anything.
    let t = if tail == NIL {
        None
    } else {
        Some(slot(r, tail - 1)?)
    };
    let prev = match (after, t) {
        (None, Some(t)) => Some((tail - 1, t)),
        (Some(NIL), Some(t)) => Some((tail - 1, t)),
        (Some(a), Some(_)) => Some((a - 1, slot(r, a - 1)?)),
        (_, None) => None,
    };
    s.prio.store(prio, Relaxed);
    s.len.store(len, Relaxed);
    s.seq.store(seq, Relaxed);
    s.owner.store(0, Relaxed);
    match prev {
        None => s.next.store(idx, Relaxed),
        Some((_, p)) => {
            s.next.store(p.next.load(Relaxed), Relaxed);
            p.next.store(idx, Relaxed);
        }
    }
    // The state flips last among the slot's own fields: a repair that finds
    // QUEUED can trust prio, len and seq.
    s.state.store(SLOT_QUEUED, Release);
    // The new slot is the tail when appended, or inserted after the tail.
    if after.is_none()
        || tail == NIL
        || prev.is_some_and(|(i, _)| i == tail - 1 && after != Some(NIL))
    {
        tail_word.store(idx + 1, Relaxed);
    }
    if tail == NIL {
        bitmap_set(h, p);
    }
    h.lock.curmsgs.add(1);
    Ok(())
}

/// Puts the message in slot `idx` (taken off its list earlier, its
/// priority, length and sequence number intact) back in its place: ahead
/// of every message of its priority with a higher sequence number, that
/// is, one sent after it. The walk is as long as the run of older messages
/// put back before it, usually none.
pub fn requeue(r: &Region, idx: u32) -> QResult<()> {
    let h = r.header();
    let s = slot_ref(r, idx)?;
    let (prio, len, seq) = (
        s.prio.load(Relaxed),
        s.len.load(Relaxed),
        s.seq.load(Relaxed),
    );
    if prio as usize >= NPRIO || len > r.geometry().msgsize as u64 {
        return Err(Corrupt("message to put back is impossible"));
    }
    let tail = h.tails[prio as usize].load(Relaxed);
    if tail == NIL {
        return link(r, s, prio, len, seq, None);
    }
    // Find the last slot whose seq is below ours, walking from the head.
    let mut after = NIL;
    let mut cur = slot(r, tail - 1)?.next.load(Relaxed);
    for _ in 0..=r.geometry().maxmsg {
        let c = slot(r, cur)?;
        if c.seq.load(Relaxed) > seq {
            break;
        }
        after = cur + 1;
        if cur == tail - 1 {
            // Older than nothing in the list: the new tail.
            return link(r, s, prio, len, seq, None);
        }
        cur = c.next.load(Relaxed);
    }
    link(r, s, prio, len, seq, Some(after))
}

/// Head of the highest non-empty priority: `(slot, prio, len)`, not removed.
#[inline]
pub fn front(r: &Region) -> QResult<Option<(u32, u32, usize)>> {
    let Some(prio) = top_prio(r, u32::MAX)? else {
        return Ok(None);
    };
    // Read again: another process may have emptied it since (NIL wraps to
    // an index out of range).
    let tail = r.header().tails[prio as usize].load(Relaxed);
    let head = slot(r, tail.wrapping_sub(1))?.next.load(Relaxed);
    let len = queued_head(r, slot(r, head)?, prio)?;
    Ok(Some((head, prio, len)))
}

/// Checks that `s`, the head of `prio`'s list, holds a message queued there;
/// returns its length.
#[inline]
fn queued_head(r: &Region, s: &SlotHeader, prio: u32) -> QResult<usize> {
    if s.state.load(Relaxed) != SLOT_QUEUED || s.prio.load(Relaxed) != prio {
        return Err(Corrupt(
            "priority list holds a slot that is not queued there",
        ));
    }
    let len = s.len.load(Relaxed);
    if len > r.geometry().msgsize as u64 {
        return Err(Corrupt("message longer than the queue allows"));
    }
    Ok(len as usize)
}

/// [`front`] and [`unlink_front`] in one: takes the head of the highest
/// non-empty priority off its list and uncounts it; `(slot, prio, len)`. The
/// slot stays `QUEUED` (a repair puts it back on its list) until the caller
/// frees it or marks it being read. `guess`: the priority the caller expects
/// (see [`highest_from`]).
#[inline]
pub fn pop_front(r: &Region, guess: u32) -> QResult<Option<(SlotRef<'_>, u32, usize)>> {
    let Some(prio) = top_prio(r, guess)? else {
        return Ok(None);
    };
    let h = r.header();
    let tail_word = &h.tails[prio as usize];
    // Read again: another process may have emptied it since (NIL wraps to
    // an index out of range).
    let tail = tail_word.load(Relaxed);
    let t = slot(r, tail.wrapping_sub(1))?;
    let idx = t.next.load(Relaxed);
    let s = slot_ref(r, idx)?;
    let len = queued_head(r, &s, prio)?;
    if tail - 1 == idx {
        tail_word.store(NIL, Relaxed);
        retire(h, prio);
    } else {
        let next = s.next.load(Relaxed);
        slot(r, next)?;
        t.next.store(next, Relaxed);
        // The new head is what the next receive reads: start fetching it.
        r.prefetch(next);
    }
    h.lock.curmsgs.sub(1);
    Ok(Some((s, prio, len)))
}

/// Unlinks `idx`, which [`front`] just returned for `prio`, and uncounts it.
/// The slot's state is left for the caller to set.
#[inline]
pub fn unlink_front(r: &Region, idx: u32, prio: u32) -> QResult<()> {
    let h = r.header();
    let tail_word = &h.tails[prio as usize];
    let tail = tail_word.load(Relaxed);
    if tail == NIL {
        return Err(Corrupt("priority list vanished"));
    }
    let t = slot(r, tail - 1)?;
    if t.next.load(Relaxed) != idx {
        return Err(Corrupt("priority list head moved"));
    }
    if tail - 1 == idx {
        tail_word.store(NIL, Relaxed);
        bitmap_clear(h, prio as usize);
    } else {
        let next = slot(r, idx)?.next.load(Relaxed);
        slot(r, next)?;
        t.next.store(next, Relaxed);
        // The new head is what the next receive reads: start fetching it.
        r.prefetch(next);
    }
    h.lock.curmsgs.sub(1);
    Ok(())
}

/// Marks `idx` as being copied by thread `tid` of member `owner` in `state`
/// and puts it on the in-flight list.
pub fn begin_inflight(r: &Region, idx: u32, state: u32, owner: u32, tid: u32) -> QResult<()> {
    let h = r.header();
    let s = slot(r, idx)?;
    s.owner.store(owner, Relaxed);
    s.owner_tid.store(tid, Relaxed);
    s.next.store(h.inflight_head.load(Relaxed), Relaxed);
    s.state.store(state, Release);
    h.inflight_head.store(idx + 1, Relaxed);
    h.lock.ninflight.add(1);
    Ok(())
}

/// Takes `idx` off the in-flight list; checks it is still `owner`'s in
/// `state`.
pub fn end_inflight(r: &Region, idx: u32, state: u32, owner: u32) -> QResult<()> {
    let h = r.header();
    let s = slot(r, idx)?;
    if s.state.load(Relaxed) != state || s.owner.load(Relaxed) != owner {
        return Err(Corrupt("in-flight slot changed hands"));
    }
    let mut link = &h.inflight_head;
    let mut steps = 0u32;
    loop {
        let cur = link.load(Relaxed);
        if cur == NIL || steps > r.geometry().maxmsg {
            return Err(Corrupt("in-flight slot missing from its list"));
        }
        let c = slot(r, cur - 1)?;
        if cur - 1 == idx {
            link.store(c.next.load(Relaxed), Relaxed);
            h.lock.ninflight.sub(1);
            return Ok(());
        }
        link = &c.next;
        steps += 1;
    }
}

/// The in-flight slots: `(index, state, owner, owner's thread)`.
pub fn inflight(r: &Region) -> QResult<Vec<(u32, u32, u32, u32)>> {
    let mut out = Vec::new();
    let mut cur = r.header().inflight_head.load(Relaxed);
    while cur != NIL {
        if out.len() > r.geometry().maxmsg as usize {
            return Err(Corrupt("in-flight list loops"));
        }
        let s = slot(r, cur - 1)?;
        out.push((
            cur - 1,
            s.state.load(Relaxed),
            s.owner.load(Relaxed),
            s.owner_tid.load(Relaxed),
        ));
        cur = s.next.load(Relaxed);
    }
    Ok(out)
}

/// Marks `idx`, just taken off its list by a receive, as held
/// unacknowledged by member `owner`, and counts it.
pub fn hold(r: &Region, idx: u32, owner: u32) -> QResult<()> {
    let s = slot(r, idx)?;
    s.owner.store(owner, Relaxed);
    s.owner_tid.store(0, Relaxed);
    s.state.store(SLOT_PENDING, Release);
    r.header().lock.npending.add(1);
    Ok(())
}

/// Ends the hold of member `owner` on `idx`: checks it, and uncounts it.
/// The caller then frees the slot (acknowledged) or puts the message back
/// ([`requeue`]).
pub fn unhold(r: &Region, idx: u32, owner: u32) -> QResult<()> {
    let s = slot(r, idx)?;
    if s.state.load(Relaxed) != SLOT_PENDING || s.owner.load(Relaxed) != owner {
        return Err(Corrupt("unacknowledged message changed hands"));
    }
    r.header().lock.npending.sub(1);
    Ok(())
}

/// Visits the queued messages in delivery order, `(slot, prio, len)`, until
/// `f` returns false.
pub fn for_each(r: &Region, mut f: impl FnMut(u32, u32, usize) -> bool) -> QResult<()> {
    let h = r.header();
    // The count is read from the file: a walk bounded by it alone would not
    // end on a list that loops, so no more than the slots there are.
    let total = h
        .lock
        .curmsgs
        .load(Relaxed)
        .min(u64::from(r.geometry().maxmsg));
    let mut seen = 0u64;
    for prio in (0..NPRIO).rev() {
        if h.bitmap_leaf[prio / 64].load(Relaxed) & (1 << (prio % 64)) == 0 {
            continue;
        }
        let tail = h.tails[prio].load(Relaxed);
        if tail == NIL {
            if h.received.b.load(Relaxed) == prio as u64 + 1 {
                continue;
            }
            return Err(Corrupt("bitmap bit set for an empty priority"));
        }
        let mut cur = slot(r, tail - 1)?.next.load(Relaxed);
        loop {
            let s = slot(r, cur)?;
            seen += 1;
            if seen > total || s.state.load(Relaxed) != SLOT_QUEUED {
                return Err(Corrupt("priority list is inconsistent"));
            }
            let len = s.len.load(Relaxed).min(r.geometry().msgsize as u64) as usize;
            if !f(cur, prio as u32, len) {
                return Ok(());
            }
            if cur == tail - 1 {
                break;
            }
            cur = s.next.load(Relaxed);
        }
    }
    Ok(())
}

/// Messages per priority, highest first, from the slot states alone (for a
/// look at a queue whose lists are damaged).
pub fn count_by_priority(r: &Region) -> Vec<(u32, u64)> {
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..r.geometry().maxmsg {
        let Some(s) = r.slot(i) else { break };
        let prio = s.prio.load(Relaxed);
        if s.state.load(Relaxed) == SLOT_QUEUED && (prio as usize) < NPRIO {
            *counts.entry(prio).or_insert(0u64) += 1;
        }
    }
    counts.into_iter().rev().collect()
}

/// What [`rebuild`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// Messages on the lists afterwards.
    pub queued: u64,
    /// Half-written messages of dead senders, dropped.
    pub dropped_writes: u32,
    /// Messages of dead receivers (mid-copy or unacknowledged), put back in
    /// the queue.
    pub restored_reads: u32,
    /// Slots still being copied by live members.
    pub live_inflight: u32,
    /// Messages held unacknowledged by live members.
    pub live_pending: u32,
    /// Slots or links with impossible contents (damage, not a crash).
    pub damaged: u32,
}

/// Rebuilds every derived structure from the slot states.
///
/// `alive(owner, tid)` tells whether a member still runs (`tid` `None`) or
/// whether thread `tid` of it may still run: a dead sender's half-written
/// slot is freed (its send never returned), a dead receiver's message goes
/// back to its place in the queue (its receive never returned, or its
/// message was never acknowledged). Slots with impossible contents are
/// freed and counted as damage.
///
/// It never fails and never panics, whatever the file holds, even while
/// another process scribbles over it: what cannot be linked is dropped and
/// counted. Sequence numbers only move forward: a repair cut short by a
/// death leaves the next one in order.
pub fn rebuild(r: &Region, alive: &mut dyn FnMut(u32, Option<u32>) -> bool) -> RepairReport {
    let h = r.header();
    let g = r.geometry();
    let mut rep = RepairReport::default();
    let mut queued: Vec<(u32, u64, u32)> = Vec::new();
    let mut free: Vec<u32> = Vec::new();
    let mut inflight: Vec<u32> = Vec::new();
    let mut pending = 0u32;
    let mut max_seq = 0u64;
    for i in 0..g.maxmsg {
        let Some(s) = r.slot(i) else { break };
        let prio = s.prio.load(Relaxed);
        let len = s.len.load(Relaxed);
        let seq = s.seq.load(Relaxed);
        let valid_msg = (prio as usize) < NPRIO && len <= g.msgsize as u64;
        let owner = s.owner.load(Relaxed);
        match s.state.load(Relaxed) {
            SLOT_FREE => free.push(i),
            SLOT_QUEUED if valid_msg => queued.push((prio, seq, i)),
            SLOT_PENDING if valid_msg => {
                if alive(owner, None) {
                    pending += 1;
                    max_seq = max_seq.max(seq);
                } else {
                    rep.restored_reads += 1;
                    queued.push((prio, seq, i));
                }
            }
            st @ (SLOT_WRITING | SLOT_READING) => {
                if alive(owner, Some(s.owner_tid.load(Relaxed))) {
                    inflight.push(i);
                    if st == SLOT_READING {
                        max_seq = max_seq.max(seq);
                    }
                } else if st == SLOT_WRITING {
                    rep.dropped_writes += 1;
                    free.push(i);
                } else if valid_msg {
                    rep.restored_reads += 1;
                    queued.push((prio, seq, i));
                } else {
                    rep.damaged += 1;
                    free.push(i);
                }
            }
            _ => {
                rep.damaged += 1;
                free.push(i);
            }
        }
    }
    if r.poisoned() {
        // The file shrank under us: what was read is zeros, and writing
        // the lists back would only fill private pages with them.
        return rep;
    }
    for t in &h.tails {
        t.store(NIL, Relaxed);
    }
    for w in &h.bitmap_leaf {
        w.store(0, Relaxed);
    }
    for w in &h.bitmap_mid {
        w.store(0, Relaxed);
    }
    h.bitmap_top.store(0, Relaxed);
    h.received.b.store(0, Relaxed);
    h.lock.curmsgs.store(0, Relaxed);
    h.lock.npending.store(pending, Relaxed);

    // Free list, in index order.
    h.lock.free_head.store(NIL, Relaxed);
    h.lock.nfree.store(0, Relaxed);
    for &i in free.iter().rev() {
        if let Some(s) = r.slot(i) {
            s.owner.store(0, Relaxed);
        }
        let _ = release(r, i);
    }

    // In-flight list.
    h.inflight_head.store(NIL, Relaxed);
    h.lock.ninflight.store(0, Relaxed);
    for &i in &inflight {
        if let Some(s) = r.slot(i) {
            s.next.store(h.inflight_head.load(Relaxed), Relaxed);
            h.inflight_head.store(i + 1, Relaxed);
            h.lock.ninflight.add(1);
        }
    }
    rep.live_inflight = inflight.len() as u32;
    rep.live_pending = pending;

    // Queued messages: re-appended in (prio, seq) order, keeping their seq.
    queued.sort_unstable_by_key(|&(p, seq, _)| (p, seq));
    for &(prio, seq, i) in &queued {
        max_seq = max_seq.max(seq);
        let len = r.slot(i).map_or(0, |s| s.len.load(Relaxed));
        if slot_ref(r, i)
            .and_then(|s| link(r, s, prio, len, seq, None))
            .is_ok()
        {
            rep.queued += 1;
        } else {
            // Another process scribbled on what was just rebuilt.
            rep.damaged += 1;
        }
    }
    if h.sent.a.load(Relaxed) <= max_seq {
        h.sent.a.store(max_seq.saturating_add(1), Relaxed);
    }
    h.repairs.add(1);
    h.damage.add(rep.damaged);
    rep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Geometry, HeapRegion};
    use std::collections::{BTreeMap, VecDeque};

    fn region(maxmsg: i64, msgsize: i64) -> HeapRegion {
        HeapRegion::new(Geometry::new(maxmsg, msgsize).unwrap())
    }

    fn send(r: &Region, prio: u32, msg: &[u8]) -> bool {
        let Some(s) = alloc(r).unwrap() else {
            return false;
        };
        s.write(msg);
        enqueue(r, s, prio, msg.len()).unwrap();
        true
    }

    /// A receive as the engine does it, with no idea of the priority.
    fn recv(r: &Region) -> Option<(u32, Vec<u8>)> {
        recv_guessing(r, u32::MAX)
    }

    /// A receive as the engine does it; any guess must give the same result.
    fn recv_guessing(r: &Region, guess: u32) -> Option<(u32, Vec<u8>)> {
        let (s, prio, len) = pop_front(r, guess).unwrap()?;
        let mut v = vec![0; len];
        s.read(&mut v);
        release_slot(r, s);
        Some((prio, v))
    }

    /// A receive that looks at the head before taking it (as the inspector does).
    fn recv_peeking(r: &Region) -> Option<(u32, Vec<u8>)> {
        let (i, prio, len) = front(r).unwrap()?;
        let mut v = vec![0; len];
        r.read_payload(i, &mut v);
        unlink_front(r, i, prio).unwrap();
        release(r, i).unwrap();
        Some((prio, v))
    }

    #[test]
    fn priority_then_fifo() {
        let hr = region(8, 16);
        let r = hr.region();
        for (p, m) in [
            (1, "a"),
            (5, "b"),
            (1, "c"),
            (32767, "d"),
            (0, "e"),
            (5, "f"),
        ] {
            assert!(send(r, p, m.as_bytes()));
        }
        let got: Vec<_> = std::iter::from_fn(|| recv(r))
            .map(|(p, m)| (p, String::from_utf8(m).unwrap()))
            .collect();
        let want = [
            (32767, "d"),
            (5, "b"),
            (5, "f"),
            (1, "a"),
            (1, "c"),
            (0, "e"),
        ];
        assert_eq!(got, want.map(|(p, m)| (p, m.to_string())));
        assert_eq!(r.header().lock.curmsgs.load(Relaxed), 0);
        assert_eq!(r.header().lock.nfree.load(Relaxed), 8);
    }

    #[test]
    fn full_and_empty() {
        let hr = region(3, 4);
        let r = hr.region();
        assert!(recv(r).is_none());
        assert!(send(r, 0, b"1") && send(r, 0, b"2") && send(r, 0, b"3"));
        assert!(!send(r, 0, b"4"));
        assert_eq!(recv(r).unwrap().1, b"1");
        assert!(send(r, 0, b"4"));
    }

    #[test]
    fn rebuild_restores_dead_reader_and_drops_dead_writer() {
        let hr = region(6, 8);
        let r = hr.region();
        for (p, m) in [(3u32, b"x1"), (3, b"x2"), (7, b"y1")] {
            assert!(send(r, p, m));
        }
        // A receiver takes the head of priority 7 and dies mid-copy.
        let (i, prio, _) = front(r).unwrap().unwrap();
        unlink_front(r, i, prio).unwrap();
        begin_inflight(r, i, SLOT_READING, 4242, 1).unwrap();
        // A sender reserves a slot and dies mid-copy.
        let w = alloc(r).unwrap().unwrap().idx();
        begin_inflight(r, w, SLOT_WRITING, 4343, 1).unwrap();
        // A live sender is mid-copy too.
        let l = alloc(r).unwrap().unwrap().idx();
        begin_inflight(r, l, SLOT_WRITING, 1, 1).unwrap();
        assert_eq!(r.header().lock.curmsgs.load(Relaxed), 2);
        let rep = rebuild(r, &mut |owner, _| owner == 1);
        assert_eq!(rep.restored_reads, 1);
        assert_eq!(rep.dropped_writes, 1);
        assert_eq!(rep.live_inflight, 1);
        assert_eq!(rep.queued, 3);
        assert_eq!(inflight(r).unwrap().len(), 1);
        let got: Vec<_> = std::iter::from_fn(|| recv(r)).collect();
        assert_eq!(
            got,
            vec![
                (7, b"y1".to_vec()),
                (3, b"x1".to_vec()),
                (3, b"x2".to_vec())
            ]
        );
        // Free slots: 6 total - 1 live in flight.
        assert_eq!(r.header().lock.nfree.load(Relaxed), 5);
    }

    #[test]
    fn garbage_indices_are_reported_not_followed() {
        let hr = region(4, 8);
        let r = hr.region();
        assert!(send(r, 2, b"m"));
        r.header().tails[2].store(99, Relaxed);
        assert!(front(r).is_err());
        r.header().lock.free_head.store(1000, Relaxed);
        assert!(alloc(r).is_err());
        r.header().bitmap_top.store(1 << 63, Relaxed);
        assert!(highest(r).is_err());
        let rep = rebuild(r, &mut |_, _| false);
        assert_eq!(rep.queued, 1);
        assert_eq!(recv(r).unwrap(), (2, b"m".to_vec()));
    }

    #[test]
    fn a_looping_list_ends_the_walk_whatever_the_count_says() {
        let hr = region(4, 8);
        let r = hr.region();
        assert!(send(r, 2, b"a") && send(r, 2, b"b"));
        // The head links to itself; the count is as large as it gets.
        let tail = r.header().tails[2].load(Relaxed) - 1;
        let head = r.slot(tail).unwrap().next.load(Relaxed);
        r.slot(head).unwrap().next.store(head, Relaxed);
        r.header().lock.curmsgs.store(u64::MAX, Relaxed);
        let mut visits = 0;
        let res = for_each(r, |_, _, _| {
            visits += 1;
            true
        });
        assert!(res.is_err());
        assert!(visits <= 4, "{visits} visits of 4 slots");
    }

    #[test]
    fn an_emptied_priority_keeps_its_bit_until_another_empties() {
        let hr = region(4, 8);
        let r = hr.region();
        let h = r.header();
        let bit = |p: u32| h.bitmap_leaf[0].load(Relaxed) & (1 << p) != 0;
        assert!(send(r, 7, b"a"));
        assert_eq!(recv(r).unwrap(), (7, b"a".to_vec()));
        assert!(bit(7), "left set for the next message of priority 7");
        assert_eq!(h.received.b.load(Relaxed), 8);
        assert_eq!(recv(r), None);
        // A lower priority is still found: the walk drops the stale bit.
        assert!(send(r, 3, b"b"));
        assert_eq!(recv(r).unwrap(), (3, b"b".to_vec()));
        assert!(!bit(7));
        assert_eq!(h.received.b.load(Relaxed), 4);
        // Emptying another priority clears the bit left before.
        assert!(send(r, 5, b"c"));
        assert_eq!(recv(r).unwrap(), (5, b"c".to_vec()));
        assert!(!bit(3) && bit(5));
        // A stale priority that has messages again keeps its bit.
        assert!(send(r, 5, b"d"));
        assert!(send(r, 6, b"e"));
        assert_eq!(recv(r).unwrap(), (6, b"e".to_vec()));
        assert!(bit(5));
        assert_eq!(h.received.b.load(Relaxed), 7);
        assert_eq!(recv(r).unwrap(), (5, b"d".to_vec()));
        assert_eq!(h.bitmap_leaf[0].load(Relaxed), 1 << 5);
        // A repair leaves the bitmap exact.
        rebuild(r, &mut |_, _| false);
        assert_eq!(h.bitmap_top.load(Relaxed), 0);
        assert_eq!(h.received.b.load(Relaxed), 0);
    }

    #[test]
    fn cost_does_not_depend_on_priority_spread() {
        // Every priority in use at once: the bitmap still finds the order.
        let hr = region(NPRIO as i64, 4);
        let r = hr.region();
        for p in 0..NPRIO as u32 {
            assert!(send(r, p, &p.to_le_bytes()));
        }
        for p in (0..NPRIO as u32).rev() {
            assert_eq!(recv(r).unwrap(), (p, p.to_le_bytes().to_vec()));
        }
    }

    #[test]
    fn a_message_put_back_takes_its_place_again() {
        let hr = region(8, 8);
        let r = hr.region();
        for m in [b"a", b"b", b"c", b"d"] {
            assert!(send(r, 5, m));
        }
        // Three receivers take a, b and c and hold them; then b, a and c
        // come back in that order, and d was sent after all of them.
        let taken: Vec<_> = (0..3)
            .map(|_| pop_front(r, 5).unwrap().unwrap().0.idx())
            .collect();
        for &i in &taken {
            hold(r, i, 9).unwrap();
        }
        assert_eq!(r.header().lock.npending.load(Relaxed), 3);
        for i in [taken[1], taken[0], taken[2]] {
            unhold(r, i, 9).unwrap();
            requeue(r, i).unwrap();
        }
        assert!(send(r, 5, b"e"));
        let got: Vec<_> = std::iter::from_fn(|| recv(r)).map(|(_, m)| m).collect();
        assert_eq!(got, [b"a", b"b", b"c", b"d", b"e"].map(|m| m.to_vec()));
        assert_eq!(r.header().lock.npending.load(Relaxed), 0);
    }

    #[test]
    fn rebuild_keeps_a_live_holder_s_messages_and_returns_a_dead_one_s() {
        let hr = region(6, 8);
        let r = hr.region();
        for m in [b"1", b"2", b"3"] {
            assert!(send(r, 1, m));
        }
        let a = pop_front(r, 1).unwrap().unwrap().0.idx();
        hold(r, a, 7).unwrap();
        let b = pop_front(r, 1).unwrap().unwrap().0.idx();
        hold(r, b, 8).unwrap();
        let rep = rebuild(r, &mut |owner, _| owner == 7);
        assert_eq!(
            (rep.live_pending, rep.restored_reads, rep.queued),
            (1, 1, 2)
        );
        assert_eq!(r.header().lock.npending.load(Relaxed), 1);
        assert_eq!(recv(r).unwrap().1, b"2");
        assert_eq!(recv(r).unwrap().1, b"3");
        assert_eq!(r.header().lock.nfree.load(Relaxed), 5);
    }

    #[test]
    fn rebuild_never_moves_the_sequence_back() {
        let hr = region(4, 8);
        let r = hr.region();
        assert!(send(r, 1, b"x"));
        assert!(send(r, 1, b"y"));
        let before = r.header().sent.a.load(Relaxed);
        r.header().sent.a.store(0, Relaxed); // a repair cut short, or a scribble
        rebuild(r, &mut |_, _| false);
        assert!(r.header().sent.a.load(Relaxed) >= before);
        assert!(send(r, 1, b"z"));
        let got: Vec<_> = std::iter::from_fn(|| recv(r)).map(|(_, m)| m).collect();
        assert_eq!(got, [b"x", b"y", b"z"].map(|m| m.to_vec()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        #[test]
        fn matches_model(ops in proptest::collection::vec((0u8..6, 0u32..6, 0usize..9), 1..300)) {
            let mut hr = region(5, 8);
            let mut model: BTreeMap<u32, VecDeque<Vec<u8>>> = BTreeMap::new();
            let mut n = 0u32;
            for (op, prio, len) in ops {
                let count: usize = model.values().map(VecDeque::len).sum();
                match op {
                    0 | 1 => {
                        // Priorities spread over the whole range; a send on
                        // a full queue must be refused.
                        let prio = prio * 6553;
                        n += 1;
                        let mut msg = n.to_le_bytes().to_vec();
                        msg.resize(len.min(8), 0xab);
                        let ok = send(hr.region(), prio, &msg);
                        proptest::prop_assert_eq!(ok, count < 5);
                        if ok {
                            model.entry(prio).or_default().push_back(msg);
                        }
                    }
                    2 | 5 => {
                        // A receive on an empty queue must find nothing.
                        let want = model.iter_mut().next_back().map(|(p, q)| (*p, q.pop_front().unwrap()));
                        model.retain(|_, q| !q.is_empty());
                        // The engine guesses the last priority it saw:
                        // right, lower or higher than the real one.
                        let got = if op == 2 { recv_guessing(hr.region(), prio * 6553) } else { recv_peeking(hr.region()) };
                        proptest::prop_assert_eq!(got, want);
                    }
                    3 => {
                        // Reopen: another mapping of the same bytes.
                        hr.reopen().unwrap();
                    }
                    _ => {
                        // A repair must preserve everything.
                        rebuild(hr.region(), &mut |_, _| false);
                    }
                }
                let count: usize = model.values().map(VecDeque::len).sum();
                let h = hr.region().header();
                proptest::prop_assert_eq!(h.lock.curmsgs.load(Relaxed), count as u64);
                // The lists and the bitmap (one stale bit allowed) hold the
                // model's messages in delivery order.
                let mut seen = Vec::new();
                for_each(hr.region(), |_, p, len| { seen.push((p, len)); true }).unwrap();
                let want: Vec<_> = model.iter().rev().flat_map(|(p, q)| q.iter().map(move |m| (*p, m.len()))).collect();
                proptest::prop_assert_eq!(seen, want);
                proptest::prop_assert_eq!(h.lock.nfree.load(Relaxed), 5 - count as u64);
            }
        }
    }

    /// The model of a queue with pending messages: per priority, the
    /// queued messages as `(send order, bytes)`, oldest first.
    type Model = BTreeMap<u32, VecDeque<(u32, Vec<u8>)>>;

    /// Puts a returned message back in the model where the engine must:
    /// ahead of every message of its priority sent after it.
    fn model_put_back(model: &mut Model, prio: u32, n: u32, msg: Vec<u8>) {
        let q = model.entry(prio).or_default();
        let at = q.iter().position(|(m, _)| *m > n).unwrap_or(q.len());
        q.insert(at, (n, msg));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Sends, plain and pending receives, acks, nacks, reopens and
        /// repairs in which one of two holders has died, against the model.
        #[test]
        fn matches_model_with_pending(ops in proptest::collection::vec((0u8..10, 0u32..6, 0usize..9), 1..300)) {
            let mut hr = region(5, 8);
            let mut model: Model = BTreeMap::new();
            // (slot, holder, prio, send order, bytes)
            let mut pending: Vec<(u32, u32, u32, u32, Vec<u8>)> = Vec::new();
            let mut n = 0u32;
            for (op, prio, len) in ops {
                let queued: usize = model.values().map(VecDeque::len).sum();
                let r = hr.region();
                match op {
                    0..=2 => {
                        let prio = prio * 6553;
                        n += 1;
                        let mut msg = n.to_le_bytes().to_vec();
                        msg.resize(len.min(8), 0xab);
                        // Pending messages fill their slots.
                        let ok = send(r, prio, &msg);
                        proptest::prop_assert_eq!(ok, queued + pending.len() < 5);
                        if ok {
                            model.entry(prio).or_default().push_back((n, msg));
                        }
                    }
                    3 => {
                        let want = model.iter_mut().next_back().map(|(p, q)| (*p, q.pop_front().unwrap().1));
                        model.retain(|_, q| !q.is_empty());
                        proptest::prop_assert_eq!(recv(r), want);
                    }
                    4 | 5 => {
                        // A pending receive by holder 1 or 2.
                        let holder = 1 + u32::from(op == 5);
                        let want = model.iter_mut().next_back().map(|(p, q)| (*p, q.pop_front().unwrap()));
                        model.retain(|_, q| !q.is_empty());
                        let got = pop_front(r, prio * 6553).unwrap().map(|(s, p, l)| (s.idx(), p, l));
                        proptest::prop_assert_eq!(got.is_some(), want.is_some());
                        if let (Some((i, p, l)), Some((wp, (wn, wm)))) = (got, want) {
                            hold(r, i, holder).unwrap();
                            let mut v = vec![0; l];
                            r.read_payload(i, &mut v);
                            proptest::prop_assert_eq!((p, &v), (wp, &wm));
                            pending.push((i, holder, p, wn, wm));
                        }
                    }
                    6 | 7 if !pending.is_empty() => {
                        // Acknowledge (6) or return (7) one of them.
                        let (i, holder, p, pn, pm) = pending.remove(len % pending.len());
                        // Only its holder may end a hold.
                        proptest::prop_assert!(unhold(r, i, holder ^ 3).is_err());
                        unhold(r, i, holder).unwrap();
                        if op == 6 {
                            release(r, i).unwrap();
                        } else {
                            requeue(r, i).unwrap();
                            model_put_back(&mut model, p, pn, pm);
                        }
                    }
                    8 => hr.reopen().unwrap(),
                    _ => {
                        // Holder 2 died: a repair returns what it held and
                        // keeps holder 1's.
                        let rep = rebuild(r, &mut |owner, _| owner == 1);
                        let dead: Vec<_> = pending.iter().filter(|x| x.1 == 2).cloned().collect();
                        proptest::prop_assert_eq!(rep.restored_reads as usize, dead.len());
                        pending.retain(|x| x.1 == 1);
                        for (_, _, p, pn, pm) in dead {
                            model_put_back(&mut model, p, pn, pm);
                        }
                    }
                }
                let queued: usize = model.values().map(VecDeque::len).sum();
                let h = hr.region().header();
                proptest::prop_assert_eq!(h.lock.curmsgs.load(Relaxed), queued as u64);
                proptest::prop_assert_eq!(h.lock.npending.load(Relaxed) as usize, pending.len());
                proptest::prop_assert_eq!(h.lock.nfree.load(Relaxed) as usize, 5 - queued - pending.len());
                let mut seen = Vec::new();
                for_each(hr.region(), |i, p, len| {
                    let mut v = vec![0; len];
                    hr.region().read_payload(i, &mut v);
                    seen.push((p, v));
                    true
                }).unwrap();
                let want: Vec<_> = model.iter().rev().flat_map(|(p, q)| q.iter().map(move |(_, m)| (*p, m.clone()))).collect();
                proptest::prop_assert_eq!(seen, want);
            }
        }
    }
}
