//! Members: the processes that use a queue, each known in the file by a
//! number whose liveness the kernel keeps.
//!
//! A process becomes a member of a queue when it first maps it: it draws a
//! number from the header ([`Header::next_member`](crate::layout::Header))
//! and takes an exclusive lock on byte `LIVE + number` of the queue file
//! through a description of its own (see [`crate::sys::live`]). Whatever the
//! file says a member did (owns the lock, copies a slot, holds a message
//! unacknowledged, sleeps, registered for notification) is undone only once
//! the kernel says that byte is no longer locked: the member is gone, by
//! exit, by any signal, or by `exec`. Unknown means alive.
//!
//! Numbers are drawn in sequence and never reused while their byte is
//! locked, so a record left by a dead member cannot be taken for a new
//! one's. All queues of one process that map the same file share one
//! member; a forked child becomes a member of its own at its first call.
//!
//! A member also keeps, per condition, as many bytes locked as it has
//! threads asleep on it (`SLEEP + number × PER_MEMBER`, onwards): the
//! kernel then knows exactly how many threads of live members sleep, which
//! the header's sleeper counts (hints that a death leaves too high) are
//! set back to at a recount.

use crate::error::{Error, Result};
use crate::sys::live::{self, ForkLock, LiveFd};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Weak};

/// Byte offsets of the lock ranges in a queue file: far past its end (a
/// queue file is at most 2^63 bytes, but these ranges only need to exist,
/// not to hold data).
const LIVE: u64 = 1 << 60;
/// Per condition (receivers, senders): the sleepers' ranges.
const SLEEP: [u64; 2] = [2 << 60, 3 << 60];
/// Width of the `LIVE` range: one byte per member number.
const SPAN: u64 = 1 << 32;
/// Bytes of a `SLEEP` range per member number: at most this many threads
/// of one member are known to the kernel as sleepers (more are counted as
/// this many, and sleep in short naps).
const PER_MEMBER: u64 = 1 << 20;

/// Record locks naming each member's process (see [`Member::record`]):
/// member `n` holds byte `RECORD + n × 2^32 + ns`, `ns` its pid namespace.
const RECORD: u64 = 4 << 60;
/// Members from this number on keep no record (their range would pass the
/// largest file offset).
const RECORDED: u32 = 1 << 28;

/// How many numbers a new member tries before giving up.
const DRAWS: u32 = 4096;

/// One process's membership of one queue file.
#[derive(Debug)]
pub struct Member {
    fd: LiveFd,
    id: u32,
    incarnation: u64,
    /// This process's pid namespace (see [`live::pid_namespace`]).
    pid_ns: Option<u32>,
    sleeping: [SleepLock; 2],
}

/// Whether this member's threads sleep on a condition, kept in step with
/// the member's lock byte for it.
#[derive(Debug, Default)]
struct SleepLock {
    /// Threads of this member asleep (or about to sleep) on the condition.
    count: AtomicU32,
    /// How many bytes are locked.
    held: AtomicU32,
    /// The last lock call failed: the kernel undercounts this member.
    failed: AtomicBool,
    /// Thread id of the thread bringing `held` in line with `count`, 0:
    /// none.
    busy: AtomicU32,
}

/// Takes this process's record lock on a queue file again when dropped
/// (see [`Member::records_lost`]): a field after a descriptor of the file,
/// or a local declared before one (its file set once known).
#[derive(Debug, Default)]
pub struct Relock(Option<(u64, u64)>);

impl Relock {
    /// For the file with this `(device, inode)`.
    pub fn new(key: (u64, u64)) -> Relock {
        Relock(Some(key))
    }

    /// For the file with this `(device, inode)`, from now on.
    pub fn set(&mut self, key: (u64, u64)) {
        self.0 = Some(key);
    }
}

impl Drop for Relock {
    fn drop(&mut self) {
        if let Some(key) = self.0 {
            Member::records_lost(key);
        }
    }
}

/// A [`Member::records_lost`] gave up on the registry (held by a join in
/// progress): the join takes every record again before it lets go.
static RECORDS_UNSURE: AtomicBool = AtomicBool::new(false);

/// Which condition: receivers waiting for a message, senders for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// Not empty.
    Recv = 0,
    /// Not full.
    Send = 1,
}

/// This process's members, by the (device, inode) of their queue file.
type Registry = Vec<((u64, u64), Weak<Member>)>;

static REGISTRY: ForkLock<Registry> = ForkLock::resetting(Vec::new(), Vec::new);

impl Member {
    /// This process's member for the queue file open as `file`, joining if
    /// needed: `next` is the header's source of numbers; `reopen` gives a
    /// new description of the same file when `/proc/self/fd` cannot.
    pub fn join(
        file: &File,
        next: &AtomicU32,
        reopen: &dyn Fn() -> Result<File>,
    ) -> Result<Arc<Member>> {
        let st = crate::sys::fstat_ids(file.as_raw_fd())?;
        let key = (st.0, st.1);
        let inc = live::incarnation();
        let mut reg = REGISTRY.lock();
        reg.retain(|(_, w)| w.strong_count() > 0);
        if let Some(m) = reg
            .iter()
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, w)| w.upgrade())
            .find(|m| m.incarnation == inc)
        {
            return Ok(m);
        }
        let own = match crate::sys::reopen_self(file) {
            Ok(f) => f,
            Err(_) => {
                let f = reopen()?;
                if crate::sys::fstat_ids(f.as_raw_fd())? != st {
                    return Err(Error::Os(Errno::ESTALE));
                }
                f
            }
        };
        let fd = LiveFd::new(OwnedFd::from(own));
        let mut id = 0;
        for _ in 0..DRAWS {
            let n = next.fetch_add(1, Relaxed).wrapping_add(1);
            if n != 0 && live::try_lock(fd.raw(), LIVE + u64::from(n)).map_err(Error::Os)? {
                id = n;
                break;
            }
        }
        if id == 0 {
            return Err(Error::Os(Errno::EAGAIN));
        }
        let m = Arc::new(Member {
            fd,
            id,
            incarnation: inc,
            pid_ns: live::pid_namespace(),
            sleeping: Default::default(),
        });
        m.record();
        reg.push((key, Arc::downgrade(&m)));
        if RECORDS_UNSURE.swap(false, Relaxed) {
            for m in reg.iter().filter_map(|(_, w)| w.upgrade()) {
                if m.incarnation == inc {
                    m.record();
                }
            }
        }
        Ok(m)
    }

    /// The process may have lost its record lock on the queue file
    /// `(device, inode)` (it closed a descriptor of it): takes it again for
    /// this incarnation's member of that file, if any.
    pub fn records_lost(key: (u64, u64)) {
        let inc = live::incarnation();
        // Not `lock`: a close in a signal handler that interrupted a join
        // must not wait for it. A join in another thread is waited for
        // briefly; past that, the join takes every record again itself.
        let mut reg = None;
        for _ in 0..1000 {
            reg = REGISTRY.try_lock();
            if reg.is_some() {
                break;
            }
            std::thread::yield_now();
        }
        let Some(reg) = reg else {
            RECORDS_UNSURE.store(true, Relaxed);
            return;
        };
        for (k, w) in reg.iter() {
            if *k == key {
                if let Some(m) = w.upgrade().filter(|m| m.incarnation == inc) {
                    m.record();
                }
            }
        }
    }

    /// This member's number.
    #[inline]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Whether member `id` is alive. Only the kernel's "nobody holds that
    /// byte" counts as dead; 0 is no member.
    pub fn alive(&self, id: u32) -> bool {
        if id == 0 {
            return false;
        }
        if id == self.id {
            return true;
        }
        !matches!(
            live::conflict(self.fd.raw(), LIVE + u64::from(id), 1),
            Ok(None)
        )
    }

    /// Whether thread `tid` of member `id` may still be running: a thread of
    /// this process is asked for directly; another member's thread is gone
    /// with its process, or when the kernel says the member's process,
    /// which shares this one's pid namespace, has no such thread (a word or
    /// slot naming a thread that never existed, see
    /// [`record`](Self::record)). Otherwise it lives as long as its member does (a
    /// thread that dies alone holding the lock is caught by the robust
    /// futex protocol, and mid-copy by its own process).
    pub fn thread_alive(&self, id: u32, tid: u32) -> bool {
        if tid == 0 || id == 0 {
            return false;
        }
        if id == self.id {
            return live::thread_alive(tid);
        }
        self.alive(id) && !self.not_a_thread_of(id, tid)
    }

    /// Leaves a record lock that names this process, and its pid namespace,
    /// to the other members: a word naming one of this member's threads
    /// can then be checked against the kernel's threads of this process.
    /// Taken at join, and again whenever the process may have lost it (a
    /// record lock goes with *any* close of a descriptor of the file by the
    /// process: see [`records_lost`](Self::records_lost)). Without one, other members cannot
    /// tell this member's threads apart and wait for the member itself.
    fn record(&self) {
        if let Some(ns) = self.pid_ns {
            if self.id < RECORDED {
                let at = RECORD + (u64::from(self.id) << 32) + u64::from(ns);
                let _ = live::record_lock(self.fd.raw(), at);
            }
        }
    }

    /// Whether member `id`'s record shows a process of this pid namespace
    /// that has no thread `tid`. Unknown (no record, another namespace) is
    /// false. Only the one byte that a member of this namespace records is
    /// asked about: a lock elsewhere in the member's range changes nothing.
    /// A lock there that no honest member takes (a description's lock, or
    /// a process this namespace cannot see, which cannot be of it) was put
    /// there to hide the member's record: the file is forged, and the
    /// thread is taken for gone, as a word naming no member would be.
    fn not_a_thread_of(&self, id: u32, tid: u32) -> bool {
        let Some(ns) = self.pid_ns else { return false };
        if id >= RECORDED {
            return false;
        }
        let at = RECORD + (u64::from(id) << 32) + u64::from(ns);
        match live::record_holder(self.fd.raw(), at, 1) {
            Ok(Some((_, pid))) if pid <= 0 => true,
            Ok(Some((_, pid))) => live::not_a_thread_of(pid, tid),
            _ => false,
        }
    }

    /// Counts a thread of this member as asleep on `c` (its byte is locked
    /// before anyone can see the thread counted in the header). False when
    /// the kernel could not be told: the caller must not sleep long.
    pub fn sleep_begin(&self, c: Cond) -> bool {
        let s = &self.sleeping[c as usize];
        let n = s.count.fetch_add(1, Relaxed) + 1;
        if u64::from(n) >= PER_MEMBER {
            return false;
        }
        // Another thread of ours may be bringing the range in line: the
        // caller must not be counted in the header before the kernel knows
        // it (a recount in between would undercount), so wait for that
        // thread, briefly. A signal handler that interrupted that very
        // thread cannot wait for it: it naps instead.
        let me = live::tid();
        for _ in 0..1000 {
            self.sync_sleep(c);
            if s.failed.load(Relaxed) {
                return false;
            }
            let want = s.count.load(Relaxed).min((PER_MEMBER - 1) as u32);
            if s.held.load(Acquire) >= want {
                return true;
            }
            if s.busy.load(Acquire) == me {
                return false;
            }
            std::thread::yield_now();
        }
        false
    }

    /// Uncounts a thread counted by [`sleep_begin`](Self::sleep_begin).
    pub fn sleep_end(&self, c: Cond) {
        let s = &self.sleeping[c as usize];
        let _ = s.count.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        self.sync_sleep(c);
    }

    /// Threads of this member asleep on `c`.
    pub fn sleepers(&self, c: Cond) -> u32 {
        self.sleeping[c as usize].count.load(Relaxed)
    }

    /// Brings the locked bytes for `c` in line with the count. A thread
    /// that finds another one doing it leaves it to that one, which looks
    /// again before it finishes; a signal handler that interrupted the
    /// thread doing it returns at once (the interrupted thread looks again
    /// too).
    fn sync_sleep(&self, c: Cond) {
        let s = &self.sleeping[c as usize];
        let me = live::tid();
        let base = SLEEP[c as usize] + u64::from(self.id) * PER_MEMBER;
        loop {
            if s.busy.compare_exchange(0, me, Acquire, Relaxed).is_err() {
                return;
            }
            let want = s.count.load(Relaxed).min((PER_MEMBER - 1) as u32);
            let held = s.held.load(Relaxed);
            if want > held {
                // Our own number's range: nobody else can hold it, so only
                // a lack of kernel memory fails here.
                let ok = live::try_lock_range(self.fd.raw(), base, u64::from(want));
                if ok == Ok(true) {
                    s.held.store(want, Release);
                    s.failed.store(false, Relaxed);
                } else {
                    s.failed.store(true, Relaxed);
                }
            } else if want < held {
                live::unlock_range(
                    self.fd.raw(),
                    base + u64::from(want),
                    u64::from(held - want),
                );
                s.held.store(want, Release);
            }
            s.busy.store(0, Release);
            let want = s.count.load(Relaxed).min((PER_MEMBER - 1) as u32);
            if want == s.held.load(Relaxed) || s.failed.load(Relaxed) {
                return;
            }
        }
    }

    /// Threads of live members asleep on `c`, this member's included, as
    /// the kernel knows them; `None` when it cannot say.
    pub fn sleeping(&self, c: Cond) -> Option<u32> {
        let base = SLEEP[c as usize];
        let others: u64 = self
            .locks(base, base + SPAN * PER_MEMBER, usize::MAX)?
            .iter()
            .map(|l| l.1)
            .sum();
        let n = others + u64::from(self.sleepers(c));
        Some(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// The numbers of the other live members, at most `max` of them.
    pub fn others(&self, max: usize) -> Vec<u32> {
        self.scan(LIVE, max)
    }

    fn scan(&self, base: u64, max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        for (start, len) in self.locks(base, base + SPAN, max).unwrap_or_default() {
            for b in start..start.saturating_add(len) {
                if out.len() >= max {
                    break;
                }
                out.push((b - base) as u32);
            }
        }
        out.sort_unstable();
        out
    }

    /// The locks of other descriptions within `lo .. hi`, clipped to it, at
    /// most `max` of them; `None` when the kernel cannot say.
    fn locks(&self, lo: u64, hi: u64, max: usize) -> Option<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut todo = vec![(lo, hi)];
        while let Some((lo, hi)) = todo.pop() {
            if lo >= hi || out.len() >= max {
                continue;
            }
            let Some((start, len)) = live::conflict(self.fd.raw(), lo, hi - lo).ok()? else {
                continue;
            };
            let end = if len == 0 {
                hi
            } else {
                start.saturating_add(len).min(hi)
            };
            let start = start.max(lo);
            if start >= end {
                // Not within what was asked: the kernel's answer is not
                // understood, so it cannot say.
                return None;
            }
            out.push((start, end - start));
            todo.push((lo, start));
            todo.push((end, hi));
        }
        Some(out)
    }
}
