//! The engine under both front doors: opening and creating queue files,
//! open descriptions, send and receive with blocking, spinning, timeouts,
//! wake-ups and crash repair.
//!
//! # Protocol
//! - All shared state changes under the robust mutex. Who takes it with
//!   `EOWNERDEAD` rebuilds the queue from the slot states ([`queue::rebuild`]).
//! - Payloads up to [`INLINE_MAX`] bytes are copied under the lock (one lock
//!   round trip per operation). Larger ones are copied outside it: the slot is
//!   reserved under the lock and marked `WRITING`/`READING` with the owner's
//!   pid and start time, copied without the lock, and published or freed under
//!   the lock. If the owner dies mid-copy, the next process that needs the
//!   slot (a blocked caller, `getattr`, a repair) finds the owner dead and
//!   rolls the slot back: a half-written message is dropped (its send never
//!   returned), a half-read one goes back to its place in the queue.
//! - A caller that must wait first spins for a bounded, adaptive time (only
//!   with more than one usable CPU), then sleeps on a futex word. Wakers make
//!   a `FUTEX_WAKE` only when someone sleeps.

use crate::error::{Error, Result};
use crate::layout::{
    Geometry, GeometryError, HeaderError, MapError, Mapping, NPRIO, Region, SLOT_READING,
    SLOT_WRITING, STATE_READY, VERSION, WaiterEntry,
};
use crate::queue::{self, Corrupt, Locked};
use crate::sync::futex::{self, WaitError};
use crate::sync::mutex::{self, Acquired};
use crate::sys::{self, FileInfo, SharedFlags, proc};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed, Ordering::Release};
use std::time::{Duration, Instant};

/// Payloads up to this size are copied while holding the lock.
pub const INLINE_MAX: usize = 2048;
/// Default capacity when no attributes are given (Linux's default).
pub const DEFAULT_MAXMSG: i64 = 10;
/// Default message size when no attributes are given (Linux's default).
pub const DEFAULT_MSGSIZE: i64 = 8192;

/// Adaptive spin before sleeping: the length doubles after a spin that
/// ended with the condition true and halves after one that did not, down to
/// nothing. Where spinning cannot succeed (the peer shares the CPU), it
/// stops, except a probe every [`SPIN_PROBE_EVERY`] waits while the thread
/// may run on more than one CPU. The longest spin outlasts a cross-CPU
/// futex wake-up (25-30 µs on the development VM) by a wide margin.
const SPIN_MAX_NS: u32 = 100_000;
/// Below this, a spin is not worth starting.
const SPIN_MIN_NS: u32 = 500;
/// Length of a probing spin: the longest, because a peer that sleeps too
/// takes a whole futex wake-up to answer, and a shorter probe could never
/// see two sleeping peers back to spinning.
const SPIN_PROBE_NS: u32 = SPIN_MAX_NS;
/// Waits between probes while spinning is off.
const SPIN_PROBE_EVERY: u32 = 32;
/// Longest spin on a contended lock (see `mutex::lock_spinning`).
const LOCK_SPIN_NS: u32 = 5_000;
/// How often a sleeper looks for dead processes holding slots mid-copy.
const INFLIGHT_POLL: Duration = Duration::from_millis(10);
/// How often a sleeper of the C API returns to look for a pending thread
/// cancellation (`pthread_cancel`), when it asked to.
const CANCEL_POLL: Duration = Duration::from_millis(50);
/// Consecutive futile wakes after which the sleeper counts are re-checked.
const FUTILE_WAKES: u32 = 16;

/// The flag bit of an open description: non-blocking.
pub const FLAG_NONBLOCK: u32 = 1;

/// What `mq_open` was asked for.
#[derive(Clone, Debug)]
pub struct OpenRequest<'a> {
    /// Queue name, `/...`.
    pub name: &'a [u8],
    /// Directory override.
    pub dir: Option<&'a Path>,
    /// `O_RDONLY`, `O_WRONLY`, `O_RDWR` or 3 (the access mode bits).
    pub access: i32,
    /// `O_CREAT`.
    pub create: bool,
    /// `O_EXCL`.
    pub exclusive: bool,
    /// `O_NONBLOCK`.
    pub nonblock: bool,
    /// Permission bits for a new queue.
    pub mode: u32,
    /// `(mq_maxmsg, mq_msgsize)` for a new queue; `None` for the defaults.
    pub attr: Option<(i64, i64)>,
}

/// One mapped queue.
pub struct Queue {
    map: Mapping,
    geo: Geometry,
    path: PathBuf,
    name: Vec<u8>,
    file_info: FileInfo,
    can_spin: bool,
    /// Changed by waiters: kept off the line of the fields every operation
    /// reads, which threads sharing this handle read all the time.
    tuning: Tuning,
}

/// Per-process adaptive state of a queue, on a cache line of its own.
#[repr(align(64))]
struct Tuning {
    spin_ns: AtomicU32,
    futile_wakes: AtomicU32,
    probe: AtomicU32,
    /// Priority of the last message received here: the next receive checks
    /// it against the bitmap before walking it (see `queue::highest_from`).
    last_prio: AtomicU32,
    /// The last sleep here was ended by a caller on the sleeper's own CPU:
    /// the peer shares it, so a probing spin cannot succeed.
    peer_on_my_cpu: AtomicBool,
}

/// An open queue description: what `mq_open` creates and `dup`/`fork` share.
pub struct Description {
    queue: Queue,
    flags: SharedFlags,
    read: bool,
    write: bool,
}

/// A descriptor: a file descriptor of the queue file plus the shared
/// description. Cloning ([`Handle::try_clone`]) is `dup`.
pub struct Handle {
    fd: OwnedFd,
    desc: Arc<Description>,
}

/// `mq_attr`, as numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    /// `O_NONBLOCK` or 0.
    pub flags: i64,
    /// Capacity.
    pub maxmsg: i64,
    /// Largest message.
    pub msgsize: i64,
    /// Messages queued now.
    pub curmsgs: i64,
}

fn corrupted(e: HeaderError) -> Error {
    match e {
        HeaderError::NotAQueue(why) => Error::NotAQueue(why.to_string()),
        HeaderError::Version { found } => Error::Incompatible {
            found,
            expected: VERSION,
        },
        HeaderError::Corrupted(why) => Error::Corrupted(why),
        HeaderError::Poisoned => {
            Error::Corrupted("the queue was poisoned by a failed repair".into())
        }
    }
}

/// Widens permission bits so that whoever has read or write access to the
/// queue can open the file read-write (every participant writes the
/// mapping). The requested access is enforced against the header's mode.
fn widen(mode: u32) -> u32 {
    (0..3).fold(0, |acc, class| {
        let bits = (mode >> (class * 3)) & 7;
        acc | (if bits & 6 != 0 { 6 } else { 0 }) << (class * 3)
    })
}

/// Whether the caller may open a queue of `mode` (owned per `fi`) for the
/// given access, by the rules of the kernel's permission check.
fn permitted(mode: u32, fi: &FileInfo, read: bool, write: bool) -> bool {
    let (uid, gid, groups) = sys::credentials();
    if uid == 0 {
        return true;
    }
    let bits = if uid == fi.uid {
        mode >> 6
    } else if gid == fi.gid || groups.contains(&fi.gid) {
        mode >> 3
    } else {
        mode
    } & 7;
    (!read || bits & 4 != 0) && (!write || bits & 2 != 0)
}

/// Checks an absolute timeout the way Linux does (always, before anything
/// else): `EINVAL` for a negative second or a nanosecond field outside
/// `0..1_000_000_000`.
pub fn check_timespec(ts: &libc::timespec) -> Result<()> {
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return Err(Error::Os(Errno::EINVAL));
    }
    Ok(())
}

fn reached(deadline: &libc::timespec) -> bool {
    let now = sys::realtime_now();
    (now.tv_sec, now.tv_nsec) >= (deadline.tv_sec, deadline.tv_nsec)
}

fn realtime_after(d: Duration) -> libc::timespec {
    let now = sys::realtime_now();
    let nsec = now.tv_nsec as u64 + u64::from(d.subsec_nanos());
    libc::timespec {
        tv_sec: now
            .tv_sec
            .saturating_add(d.as_secs() as i64 + (nsec / 1_000_000_000) as i64),
        tv_nsec: (nsec % 1_000_000_000) as _,
    }
}

fn earlier<'a>(a: Option<&'a libc::timespec>, b: &'a libc::timespec) -> &'a libc::timespec {
    match a {
        Some(a) if (a.tv_sec, a.tv_nsec) < (b.tv_sec, b.tv_nsec) => a,
        _ => b,
    }
}

impl Queue {
    fn open_file(file: &File, path: PathBuf, name: &[u8]) -> Result<Queue> {
        let fi = sys::fstat(file.as_raw_fd())?;
        if fi.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::NotAQueue("not a regular file".into()));
        }
        let len = usize::try_from(fi.size).map_err(|_| Error::Os(Errno::EOVERFLOW))?;
        if len < crate::layout::HEADER_SIZE {
            use std::os::unix::fs::FileExt;
            let mut magic = [0u8; 8];
            let ours = file.read_exact_at(&mut magic, 0).is_ok()
                && u64::from_le_bytes(magic) == crate::layout::MAGIC;
            return Err(if ours {
                Error::Corrupted(format!(
                    "truncated to {len} bytes (the header alone is {})",
                    crate::layout::HEADER_SIZE
                ))
            } else {
                Error::NotAQueue("file is smaller than a queue header".into())
            });
        }
        let map = Mapping::open(file, len).map_err(|e| match e {
            MapError::Os(e) => Error::Os(e),
            MapError::Header(h) => corrupted(h),
        })?;
        Ok(Queue::new(map, path, name, fi))
    }

    fn new(map: Mapping, path: PathBuf, name: &[u8], file_info: FileInfo) -> Queue {
        // Here rather than at the first lock: in a process that already has
        // several threads, registering waits for the kernel (10-20 ms).
        mutex::register_process();
        let geo = map.region().geometry();
        Queue {
            map,
            geo,
            path,
            name: name.to_vec(),
            file_info,
            can_spin: sys::usable_cpus() > 1,
            tuning: Tuning {
                spin_ns: AtomicU32::new(SPIN_MAX_NS / 2),
                probe: AtomicU32::new(0),
                futile_wakes: AtomicU32::new(0),
                last_prio: AtomicU32::new(u32::MAX),
                peer_on_my_cpu: AtomicBool::new(false),
            },
        }
    }

    /// The shared region.
    pub fn region(&self) -> &Region {
        self.map.region()
    }

    /// The validated geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Path of the queue file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The queue's name, `/...`.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// `fstat` of the file when it was opened.
    pub fn file_info(&self) -> FileInfo {
        self.file_info
    }

    /// Takes the queue lock, repairing the queue if its last owner died.
    #[inline(always)]
    pub fn lock(&self) -> Result<Guard<'_>> {
        let r = self.region();
        // The lock is held for tens of nanoseconds: spin a little on it,
        // unless spinning does not pay here (then the wait spin is off too).
        let spin = || {
            if self.can_spin {
                self.tuning.spin_ns.load(Relaxed).min(LOCK_SPIN_NS)
            } else {
                0
            }
        };
        match mutex::lock_spinning(r, spin) {
            Ok((Acquired::Clean, held)) => Ok(Guard { q: self, held }),
            Ok((Acquired::OwnerDied, held)) => Ok(self.recover(held)),
            Err(e) => Err(Error::Os(Errno::from_raw(e))),
        }
    }

    /// The lock's last owner died: repairs the queue, then marks the lock
    /// consistent.
    #[cold]
    fn recover(&self, held: mutex::Held) -> Guard<'_> {
        let r = self.region();
        queue::rebuild(r, &mut proc::alive);
        mutex::make_consistent(r, held);
        Guard { q: self, held }
    }

    /// Under the lock: rolls back slots held mid-copy by dead processes.
    /// Returns whether anything was repaired.
    pub fn reap_inflight(&self, _g: &Guard<'_>) -> bool {
        let r = self.region();
        if r.header().lock.ninflight.load(Relaxed) == 0 {
            return false;
        }
        let dead = match queue::inflight(r) {
            Ok(list) => list
                .iter()
                .any(|&(_, _, pid, start)| !proc::alive(pid, start)),
            Err(_) => true,
        };
        if dead {
            queue::rebuild(r, &mut proc::alive);
        }
        dead
    }

    /// Under the lock: repairs after an inconsistency, failing after a few
    /// attempts in a row (the file is being damaged faster than repaired).
    fn repair(&self, _g: &Guard<'_>, c: Corrupt, attempts: &mut u32) -> Result<()> {
        *attempts += 1;
        if *attempts > 3 {
            return Err(Error::Corrupted(c.0.into()));
        }
        queue::rebuild(self.region(), &mut proc::alive);
        Ok(())
    }

    /// Wakes one sleeper on `side` if any; called after the lock is dropped
    /// with the result of [`Guard::prepare_wake`].
    #[inline]
    fn wake(&self, side: Side, needed: bool) {
        if !needed {
            return;
        }
        self.wake_one(side);
    }

    #[cold]
    fn wake_one(&self, side: Side) {
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
    fn spin(&self, side: Side) -> bool {
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
    fn line(self, r: &Region) -> &crate::layout::FutexLine {
        let h = r.header();
        match self {
            Side::Recv => &h.not_empty,
            Side::Send => &h.not_full,
        }
    }

    fn word(self, r: &Region) -> &AtomicU32 {
        &self.line(r).0
    }

    /// After a sleep on this side ended: whether the last waker ran on the
    /// caller's CPU (a hint, read without the lock).
    fn woken_from_my_cpu(self, r: &Region) -> bool {
        let waker = self.line(r).1.load(Relaxed);
        waker != 0 && sys::current_cpu_tag() == waker
    }

    /// Whether the condition holds (a hint without the lock).
    fn ready(self, r: &Region) -> bool {
        let h = r.header();
        match self {
            Side::Recv => h.lock.curmsgs.load(Relaxed) > 0,
            Side::Send => h.lock.nfree.load(Relaxed) > 0,
        }
    }

    fn counters(self, r: &Region) -> (&AtomicU32, &AtomicU32) {
        let h = r.header();
        match self {
            Side::Recv => (&h.waiting_recv, &h.sleeping_recv),
            Side::Send => (&h.waiting_send, &h.sleeping_send),
        }
    }

    fn entry_counters(self, w: &WaiterEntry) -> (&AtomicU32, &AtomicU32) {
        match self {
            Side::Recv => (&w.recv, &w.recv_sleeping),
            Side::Send => (&w.send, &w.send_sleeping),
        }
    }
}

/// The queue lock, held.
pub struct Guard<'q> {
    q: &'q Queue,
    held: mutex::Held,
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
    fn unlocked<T>(&mut self, f: impl FnOnce() -> T) -> Result<T> {
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
    fn prepare_wake(&self, side: Side) -> bool {
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
struct Waiting {
    registered: bool,
    entry: Option<usize>,
    spun: bool,
    /// Give up with `ERESTART` every [`CANCEL_POLL`] while asleep, so that
    /// a C caller can act on a pending thread cancellation and call again.
    cancel_poll: bool,
}

impl Waiting {
    fn entry<'r>(&self, r: &'r Region) -> Option<&'r WaiterEntry> {
        self.entry.map(|i| &r.header().waiters[i])
    }

    fn register(&mut self, r: &Region, side: Side) {
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
    fn leave(&mut self, g: &Guard<'_>, side: Side, gave_up: bool) {
        if !self.registered {
            return;
        }
        self.unregister(g, side, gave_up);
    }

    #[cold]
    fn unregister(&mut self, g: &Guard<'_>, side: Side, gave_up: bool) {
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
    fn block(
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

impl Description {
    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Whether this description is non-blocking.
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

    /// `mq_getattr`. Takes the lock, so the count is consistent (and
    /// repaired first if a process died mid-operation).
    pub fn attr(&self) -> Result<Attr> {
        let q = &self.queue;
        let g = q.lock()?;
        q.reap_inflight(&g);
        let curmsgs = q.region().header().lock.curmsgs.load(Relaxed);
        drop(g);
        Ok(Attr {
            flags: if self.nonblocking() {
                libc::O_NONBLOCK as i64
            } else {
                0
            },
            maxmsg: i64::from(q.geo.maxmsg),
            msgsize: q.geo.msgsize as i64,
            curmsgs: curmsgs as i64,
        })
    }

    /// Under the lock: calls `take` until it yields something, waiting for
    /// `side` (or failing with `EAGAIN` when non-blocking) while it yields
    /// nothing, and repairing the queue when it finds an inconsistency.
    /// The callers try `take` once themselves first: this is the slow path.
    #[inline(never)]
    fn acquire<'q, T>(
        &'q self,
        g: &mut Guard<'q>,
        side: Side,
        deadline: Option<&libc::timespec>,
        cancel_poll: bool,
        attempts: &mut u32,
        mut take: impl FnMut(&Region) -> queue::QResult<Option<T>>,
    ) -> Result<T> {
        let q = &self.queue;
        let mut w = Waiting {
            cancel_poll,
            ..Waiting::default()
        };
        let out = loop {
            let res = match take(q.region()) {
                Ok(Some(v)) => break Ok(v),
                Ok(None) if self.nonblocking() => Err(Error::Os(Errno::EAGAIN)),
                Ok(None) => q.block(g, side, deadline, &mut w),
                Err(c) => q.repair(g, c, attempts),
            };
            if let Err(e) = res {
                break Err(e);
            }
        };
        w.leave(g, side, out.is_err());
        out
    }

    /// `mq_timedsend`; `deadline` is absolute `CLOCK_REALTIME`, `None` blocks
    /// without limit (subject to `O_NONBLOCK`).
    #[inline]
    pub fn send(&self, prio: u32, msg: &[u8], deadline: Option<&libc::timespec>) -> Result<()> {
        self.send_with(prio, msg, deadline, false)
    }

    /// [`send`](Description::send); with `cancel_poll`, a sleep is cut
    /// every 50 ms with `ERESTART` (see the C API's cancellation points).
    #[inline]
    pub fn send_with(
        &self,
        prio: u32,
        msg: &[u8],
        deadline: Option<&libc::timespec>,
        cancel_poll: bool,
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
        let r = q.region();
        let h = r.header();
        let mut g = q.lock()?;
        let mut attempts = 0;
        let idx = match queue::alloc(r) {
            Ok(Some(idx)) => idx,
            _ => self.acquire(
                &mut g,
                Side::Send,
                deadline,
                cancel_poll,
                &mut attempts,
                queue::alloc,
            )?,
        };
        if msg.len() <= INLINE_MAX {
            r.write_payload(idx, msg);
        } else {
            let (pid, start) = proc::me();
            queue::begin_inflight(r, idx, SLOT_WRITING, pid, start)
                .map_err(|c| Error::Corrupted(c.0.into()))?;
            g.unlocked(|| r.write_payload(idx, msg))?;
            if let Err(c) = queue::end_inflight(r, idx, SLOT_WRITING, pid) {
                q.repair(&g, c, &mut attempts)?;
                queue::end_inflight(r, idx, SLOT_WRITING, pid)
                    .map_err(|c| Error::Corrupted(c.0.into()))?;
            }
        }
        let was_empty = h.lock.curmsgs.load(Relaxed) == 0;
        if let Err(c) = queue::enqueue(r, idx, prio, msg.len()) {
            q.repair(&g, c, &mut attempts)?;
            return Err(Error::Corrupted(c.0.into()));
        }
        h.sent.b.add(1);
        let wake = g.prepare_wake(Side::Recv);
        let notify = if was_empty {
            crate::notify::should_fire(&g, q)
        } else {
            None
        };
        drop(g);
        q.wake(Side::Recv, wake);
        if let Some(n) = notify {
            crate::notify::fire(q, n);
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
        self.receive_with(buf, deadline, false)
    }

    /// [`receive`](Description::receive); `cancel_poll` as for
    /// [`send_with`](Description::send_with).
    #[inline]
    pub fn receive_with(
        &self,
        buf: &mut [u8],
        deadline: Option<&libc::timespec>,
        cancel_poll: bool,
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
        let r = q.region();
        let h = r.header();
        let mut g = q.lock()?;
        let mut attempts = 0;
        let last = &q.tuning.last_prio;
        let guess = last.load(Relaxed);
        let (idx, prio, len) = match queue::pop_front(r, guess) {
            Ok(Some(found)) => found,
            _ => self.acquire(
                &mut g,
                Side::Recv,
                deadline,
                cancel_poll,
                &mut attempts,
                |r| queue::pop_front(r, guess),
            )?,
        };
        if prio != guess {
            last.store(prio, Relaxed);
        }
        if len <= INLINE_MAX {
            r.read_payload(idx, &mut buf[..len]);
            if let Err(c) = queue::release(r, idx) {
                q.repair(&g, c, &mut attempts)?;
                return Err(Error::Corrupted(c.0.into()));
            }
        } else {
            let (pid, start) = proc::me();
            let res = queue::begin_inflight(r, idx, SLOT_READING, pid, start);
            if let Err(c) = res {
                q.repair(&g, c, &mut attempts)?;
                return Err(Error::Corrupted(c.0.into()));
            }
            g.unlocked(|| r.read_payload(idx, &mut buf[..len]))?;
            if let Err(c) = queue::end_inflight(r, idx, SLOT_READING, pid) {
                q.repair(&g, c, &mut attempts)?;
                queue::end_inflight(r, idx, SLOT_READING, pid)
                    .map_err(|c| Error::Corrupted(c.0.into()))?;
            }
            queue::release(r, idx).map_err(|c| Error::Corrupted(c.0.into()))?;
        }
        h.received.a.add(1);
        let wake = g.prepare_wake(Side::Send);
        drop(g);
        q.wake(Side::Send, wake);
        Ok((len, prio))
    }
}

impl Handle {
    /// `mq_open`.
    pub fn open(req: &OpenRequest<'_>) -> Result<Handle> {
        let fname = crate::name::file_name(req.name)?;
        let dir = crate::name::queue_dir(req.dir)?;
        let path = dir.join(fname);
        let (read, write) = match req.access & libc::O_ACCMODE {
            libc::O_RDONLY => (true, false),
            libc::O_WRONLY => (false, true),
            libc::O_RDWR => (true, true),
            _ => (false, false),
        };
        loop {
            match sys::open_existing(&dir, fname) {
                Ok(file) => {
                    if req.create && req.exclusive {
                        return Err(Error::Os(Errno::EEXIST));
                    }
                    if req.access & libc::O_ACCMODE == libc::O_ACCMODE {
                        return Err(Error::Os(Errno::EINVAL));
                    }
                    let q = Queue::open_file(&file, path, req.name)?;
                    let mode = q.region().header().mode.load(Relaxed);
                    if !permitted(mode, &q.file_info, read, write) {
                        return Err(Error::Os(Errno::EACCES));
                    }
                    return Handle::finish(file, q, read, write, req.nonblock);
                }
                Err(Errno::ENOENT) if req.create => match Self::create(req, &dir, fname, &path)? {
                    Some((file, q)) => return Handle::finish(file, q, read, write, req.nonblock),
                    None => continue, // another process created it first
                },
                Err(Errno::ELOOP) | Err(Errno::ENXIO) | Err(Errno::EISDIR) => {
                    return Err(Error::NotAQueue("not a regular file".into()));
                }
                Err(e) => return Err(Error::Os(e)),
            }
        }
    }

    fn create(
        req: &OpenRequest<'_>,
        dir: &Path,
        fname: &std::ffi::OsStr,
        path: &Path,
    ) -> Result<Option<(File, Queue)>> {
        let (maxmsg, msgsize) = req.attr.unwrap_or((DEFAULT_MAXMSG, DEFAULT_MSGSIZE));
        let geo = Geometry::new(maxmsg, msgsize).map_err(|e| match e {
            GeometryError::NotPositive => Error::Os(Errno::EINVAL),
            GeometryError::Overflow => Error::Os(Errno::EOVERFLOW),
        })?;
        let (file, tmp) = sys::create_unnamed(dir, req.mode & 0o777)?;
        let cleanup = |tmp: &Option<PathBuf>| {
            if let Some(t) = tmp {
                let _ = sys::unlink(t);
            }
        };
        let built = (|| -> Result<Queue> {
            let fi = sys::fstat(file.as_raw_fd())?;
            let mode = fi.mode & 0o777; // requested mode minus umask
            sys::fchmod(&file, widen(mode))?;
            sys::reserve(&file, geo.file_size as u64).map_err(|e| match e {
                Errno::EFBIG => Error::Os(Errno::ENOSPC),
                e => Error::Os(e),
            })?;
            let map = Mapping::format(&file, geo, mode).map_err(Error::Os)?;
            // Publish: the state word last, then the name.
            map.region().header().state.store(STATE_READY, Release);
            let fi = sys::fstat(file.as_raw_fd())?;
            Ok(Queue::new(map, path.to_path_buf(), req.name, fi))
        })();
        let q = match built {
            Ok(q) => q,
            Err(e) => {
                cleanup(&tmp);
                return Err(e);
            }
        };
        let linked = sys::link_into_place(&file, tmp.as_deref(), dir, fname);
        cleanup(&tmp);
        match linked {
            Ok(()) => Ok(Some((file, q))),
            Err(Errno::EEXIST) if req.exclusive => Err(Error::Os(Errno::EEXIST)),
            Err(Errno::EEXIST) => Ok(None),
            Err(e) => Err(Error::Os(e)),
        }
    }

    fn finish(file: File, q: Queue, read: bool, write: bool, nonblock: bool) -> Result<Handle> {
        let flags = SharedFlags::new(if nonblock { FLAG_NONBLOCK } else { 0 })?;
        Ok(Handle {
            fd: file.into(),
            desc: Arc::new(Description {
                queue: q,
                flags,
                read,
                write,
            }),
        })
    }

    /// The open description.
    pub fn desc(&self) -> &Description {
        &self.desc
    }

    /// `mq_notify` on this descriptor.
    pub fn notify(&self, how: Option<crate::notify::Notification>) -> Result<()> {
        crate::notify::register(&self.desc, how)
    }

    /// `dup`: a new descriptor sharing this one's open description.
    pub fn try_clone(&self) -> Result<Handle> {
        Ok(Handle {
            fd: sys::dup_cloexec(self.fd.as_raw_fd())?,
            desc: self.desc.clone(),
        })
    }

    /// A handle owning `fd` (a duplicate of this handle's descriptor) and
    /// sharing this handle's open description.
    pub fn with_fd(&self, fd: OwnedFd) -> Handle {
        Handle {
            fd,
            desc: self.desc.clone(),
        }
    }

    /// The file descriptor of the queue file held by this handle.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Borrows the descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
                if let Ok(Some(idx)) = queue::alloc(r) {
                    let half = vec![0xee; q.geo.msgsize / 2];
                    r.write_payload(idx, &half);
                    r.slot(idx).expect("valid").prio.store(1, Relaxed);
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

impl Drop for Handle {
    fn drop(&mut self) {
        crate::notify::on_close(&self.desc.queue);
    }
}

/// Whether the caller may use queue `q` for the given access, by its mode.
pub fn permitted_on(q: &Queue, read: bool, write: bool) -> bool {
    permitted(
        q.region().header().mode.load(Relaxed),
        &q.file_info,
        read,
        write,
    )
}

/// `mq_unlink`: removes the name now; open handles keep working and the
/// storage goes when the last one closes.
pub fn unlink(name: &[u8], dir: Option<&Path>) -> Result<()> {
    let fname = crate::name::file_name(name)?;
    let dir = crate::name::queue_dir(dir)?;
    match sys::unlink(&dir.join(fname)) {
        Ok(()) => Ok(()),
        // A sticky directory refuses with EPERM; mq_unlink says EACCES.
        Err(Errno::EPERM) => Err(Error::Os(Errno::EACCES)),
        Err(Errno::EISDIR) => Err(Error::NotAQueue("a directory".into())),
        Err(e) => Err(Error::Os(e)),
    }
}

/// Opens a queue file for inspection only (no access check beyond the
/// file's own permissions, no descriptor flags).
pub fn open_for_inspection(name: &[u8], dir: Option<&Path>) -> Result<Queue> {
    let fname = crate::name::file_name(name)?;
    let dir = crate::name::queue_dir(dir)?;
    let file = sys::open_existing(&dir, fname).map_err(|e| match e {
        Errno::ELOOP | Errno::ENXIO | Errno::EISDIR => {
            Error::NotAQueue("not a regular file".into())
        }
        e => Error::Os(e),
    })?;
    Queue::open_file(&file, dir.join(fname), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widened_modes() {
        assert_eq!(widen(0o600), 0o600);
        assert_eq!(widen(0o640), 0o660);
        assert_eq!(widen(0o604), 0o606);
        assert_eq!(widen(0o200), 0o600);
        assert_eq!(widen(0o000), 0o000);
        assert_eq!(widen(0o421), 0o660);
    }

    #[test]
    fn timespec_rules() {
        let ts = |s, n| libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        };
        assert!(check_timespec(&ts(0, 0)).is_ok());
        assert!(check_timespec(&ts(i64::MAX, 999_999_999)).is_ok());
        assert_eq!(
            check_timespec(&ts(0, 1_000_000_000)),
            Err(Error::Os(Errno::EINVAL))
        );
        assert_eq!(check_timespec(&ts(0, -1)), Err(Error::Os(Errno::EINVAL)));
        assert_eq!(check_timespec(&ts(-1, 0)), Err(Error::Os(Errno::EINVAL)));
    }
}
