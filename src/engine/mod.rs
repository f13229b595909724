//! The engine under both front doors: opening and creating queue files,
//! open descriptions, send and receive with blocking, spinning, timeouts,
//! wake-ups and crash repair.
//!
//! # Protocol
//! - All shared state changes under the queue lock (`sync::mutex`). Who
//!   takes it from an owner that died rebuilds the queue from the slot
//!   states ([`queue::rebuild`]).
//! - Every process that uses a queue is a member of it (`member`): a number
//!   whose liveness the kernel keeps. Records in the file name members,
//!   never pids.
//! - Payloads up to [`INLINE_MAX`] bytes are copied under the lock (one lock
//!   round trip per operation). Larger ones are copied outside it: the slot is
//!   reserved under the lock and marked `WRITING`/`READING` with the member
//!   and thread copying, copied without the lock, and published or freed under
//!   the lock. If the copier dies mid-copy, the next process that needs the
//!   slot (a caller about to sleep, a sleeper every 10 ms, `getattr`, a
//!   repair) finds it dead and rolls the slot back: a half-written message is
//!   dropped (its send never returned), a half-read one goes back to its
//!   place in the queue.
//! - A caller that must wait first spins for a bounded, adaptive time (only
//!   with more than one usable CPU), then sleeps on a futex word. Wakers make
//!   a `FUTEX_WAKE` only when someone sleeps.

use crate::error::{Error, Result};
use crate::layout::{
    Geometry, GeometryError, HeaderError, MapError, Mapping, NPRIO, Region, SLOT_READING,
    SLOT_WRITING, STATE_READY, VERSION,
};
use crate::member::{Cond, Member, Relock};
use crate::queue::{self, Corrupt, Locked};
use crate::sync::futex::{self, WaitError};
use crate::sync::mutex::{self, Acquired, LockError, Wait};
use crate::sys::{self, FileInfo, SharedFlags, live::PerIncarnation};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::Release};
use std::time::{Duration, Instant};

/// Payloads up to this size are copied while holding the lock.
pub const INLINE_MAX: usize = 2048;
/// Default capacity when no attributes are given (Linux's default).
pub const DEFAULT_MAXMSG: i64 = 10;
/// Default message size when no attributes are given (Linux's default).
pub const DEFAULT_MSGSIZE: i64 = 8192;

/// Adaptive spin before sleeping: the length doubles after a spin that
/// ended with the condition true and halves after one that did not, down to
/// nothing, then a probe every [`SPIN_PROBE_EVERY`] waits. There is no spin
/// at all while the peer was last seen on the caller's CPU (it cannot
/// answer while we spin), nor on a machine with one CPU online. The longest
/// spin outlasts a cross-CPU futex wake-up (25-30 µs on the development VM)
/// by a wide margin.
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
/// How often a sleeper with nothing else to watch looks whether the queue
/// file shrank under it (see `sys::sigbus`): nobody can wake it once it
/// has.
const FILE_CHECK: Duration = Duration::from_secs(1);
/// How often a sleeper of the C API returns to look for a pending thread
/// cancellation (`pthread_cancel`), when it asked to. Longer than the lock
/// wait's poll (`mutex::CANCEL_POLL`): a sleeper that returns is not
/// counted as a blocked receiver until it sleeps again.
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
    /// `(device, inode)` of the file.
    key: (u64, u64),
    /// A descriptor of the file, to join again as a forked child.
    file: File,
    /// This process's membership (see `member`), per incarnation.
    member: PerIncarnation<Member>,
    /// The machine has more than one CPU online, so a spin can pay. Not
    /// the opener's affinity: a process pinned to one CPU (under `taskset`,
    /// or pinned after opening) has peers on other CPUs. Whether a given
    /// wait spins depends on where the peer ran last (see `Queue::spin`).
    can_spin: bool,
    /// Changed by waiters: kept off the line of the fields every operation
    /// reads, which threads sharing this handle read all the time.
    tuning: Tuning,
    /// Closing `file` dropped this process's record locks on the file.
    _relock: Relock,
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
    /// When this process last looked for pending messages of dead members
    /// (see `Queue::dead_holder`).
    pending_scan: AtomicU64,
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
    /// Closing `fd` dropped this process's record locks on the file.
    _relock: Relock,
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

/// The error for a queue whose file shrank under this process.
#[cold]
#[inline(never)]
pub(crate) fn shrunk() -> Error {
    Error::Corrupted(
        "the queue file shrank under this process (truncated, or a hole that could not be \
         filled); open it again"
            .into(),
    )
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

pub(crate) fn realtime_after(d: Duration) -> libc::timespec {
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
    /// The shared region.
    pub fn region(&self) -> &Region {
        self.map.region()
    }

    /// The validated geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// `Err` once the queue file shrank under this process (see
    /// [`Region::poisoned`]): every call on the queue then fails with
    /// `EBADMSG` until the queue is opened again.
    #[inline(always)]
    pub fn check_poison(&self) -> Result<()> {
        if self.region().poisoned() {
            return Err(shrunk());
        }
        Ok(())
    }

    /// Whether the file still has all of its size; if not, the queue is
    /// damaged for this process from now on, as if a lost page had been
    /// touched.
    pub(super) fn check_file(&self) -> Result<()> {
        self.check_poison()?;
        match sys::fstat(self.file.as_raw_fd()) {
            Ok(fi) if fi.size < self.geo.file_size as u64 => {
                self.map.poison();
                Err(shrunk())
            }
            _ => Ok(()),
        }
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

    /// `(device, inode)` of the queue file.
    pub fn key(&self) -> Result<(u64, u64)> {
        Ok(self.key)
    }

    /// This process's membership of the queue, joining (again, in a forked
    /// child) if needed.
    #[inline]
    pub fn member(&self) -> Result<&Member> {
        match self.member.get() {
            Some(m) => Ok(m),
            None => self.join(),
        }
    }

    #[cold]
    fn join(&self) -> Result<&Member> {
        let h = self.region().header();
        // Without /proc: the file by its name, in the directory checked
        // again; `Member::join` makes sure it is the same file.
        let reopen = || -> Result<File> {
            let (Some(dir), Some(fname)) = (self.path.parent(), self.path.file_name()) else {
                return Err(Error::Os(Errno::ENOENT));
            };
            let dir = crate::name::QueueDir::open(Some(dir), false)?;
            Ok(sys::open_existing(dir.fd(), fname)?)
        };
        let m = Member::join(&self.file, &h.next_member, &reopen)?;
        self.map.set_member(m.id());
        Ok(self.member.set(m))
    }

    /// Whether member `id` is alive (see [`Member::alive`]); unknown is
    /// alive.
    pub fn member_alive(&self, id: u32) -> bool {
        self.member().map_or(true, |m| m.alive(id))
    }

    /// Who may still run, for a repair: a member (`tid` `None`) or one of
    /// its threads.
    fn alive_fn(m: &Member) -> impl FnMut(u32, Option<u32>) -> bool + '_ {
        move |owner, tid| match tid {
            None => m.alive(owner),
            Some(t) => m.thread_alive(owner, t),
        }
    }

    /// The spin on a busy lock: it is held for tens of nanoseconds, so a
    /// little spinning pays, unless spinning does not pay here at all, or
    /// the peer was last seen on this CPU.
    #[inline]
    fn lock_spin(&self) -> u32 {
        if self.can_spin && !self.tuning.peer_on_my_cpu.load(Relaxed) {
            self.tuning.spin_ns.load(Relaxed).min(LOCK_SPIN_NS)
        } else {
            0
        }
    }

    /// Takes the queue lock, waiting as long as it takes (a stopped holder
    /// delays this caller until it continues), and repairs the queue if its
    /// last owner died.
    #[inline(always)]
    pub fn lock(&self) -> Result<Guard<'_>> {
        self.lock_with(&Wait::FOREVER)
    }

    /// [`lock`](Self::lock), giving up after a few milliseconds on a busy
    /// lock (`EAGAIN`).
    pub fn lock_briefly(&self) -> Result<Guard<'_>> {
        self.lock_with(&Wait {
            nonblock: true,
            ..Wait::FOREVER
        })
    }

    /// Takes the queue lock, waiting as `wait` allows; repairs the queue if
    /// its last owner died.
    #[inline(always)]
    pub fn lock_with(&self, wait: &Wait<'_>) -> Result<Guard<'_>> {
        self.lock_lazily(|| *wait)
    }

    /// [`lock_with`](Self::lock_with), with the `Wait` made only if the
    /// lock is busy. The incarnation is read once, for this process's
    /// membership and for the thread's own cache (a forked child must use
    /// neither of its parent's).
    #[inline(always)]
    pub(super) fn lock_lazily<'w>(&self, wait: impl FnOnce() -> Wait<'w>) -> Result<Guard<'_>> {
        let inc = sys::live::incarnation();
        // The slow paths give back only the held lock (and a boxed error):
        // small enough for registers, so the fast path's guard is not
        // merged with theirs through the stack.
        let held = match self.member.get_in(inc) {
            Some(m) => match mutex::try_lock(self.region(), m.id(), inc) {
                Ok(held) => held,
                Err(busy) => self.lock_busy(m, busy, &wait()).map_err(|e| *e)?,
            },
            None => self.lock_joining(&wait()).map_err(|e| *e)?,
        };
        Ok(Guard { q: self, held })
    }

    /// [`lock_with`](Self::lock_with) in a process that is no member yet
    /// (a forked child): joins first.
    #[cold]
    #[inline(never)]
    fn lock_joining(&self, wait: &Wait<'_>) -> std::result::Result<mutex::Held, Box<Error>> {
        let m = self.member()?;
        let alive = |id: u32, tid: u32| m.thread_alive(id, tid);
        let res = mutex::lock(self.region(), m.id(), self.lock_spin(), wait, &alive);
        self.locked(m, res)
    }

    /// The rest of [`lock_with`](Self::lock_with) when the first attempt
    /// found the lock busy.
    #[cold]
    #[inline(never)]
    fn lock_busy(
        &self,
        m: &Member,
        busy: mutex::Busy,
        wait: &Wait<'_>,
    ) -> std::result::Result<mutex::Held, Box<Error>> {
        let alive = |id: u32, tid: u32| m.thread_alive(id, tid);
        let res = mutex::lock_busy(self.region(), busy, self.lock_spin(), wait, &alive);
        self.locked(m, res)
    }

    fn locked(
        &self,
        m: &Member,
        res: std::result::Result<(Acquired, mutex::Held), LockError>,
    ) -> std::result::Result<mutex::Held, Box<Error>> {
        match res {
            Ok((Acquired::Clean, held)) => Ok(held),
            Ok((Acquired::OwnerDied, held)) => self.recover(m, held),
            Err(e) => Err(Box::new(lock_error(e))),
        }
    }

    /// The lock's last owner died: repairs the queue.
    #[cold]
    fn recover(
        &self,
        m: &Member,
        held: mutex::Held,
    ) -> std::result::Result<mutex::Held, Box<Error>> {
        // Released if the repair cannot start.
        let g = Guard { q: self, held };
        self.check_poison()?;
        queue::rebuild(self.region(), &mut Self::alive_fn(m));
        let held = g.held;
        std::mem::forget(g);
        Ok(held)
    }

    /// Under the lock: rolls back slots held mid-copy by dead members, and
    /// messages held unacknowledged by dead members. Returns whether
    /// anything was repaired.
    pub fn reap_inflight(&self, _g: &Guard<'_>) -> bool {
        let r = self.region();
        let h = r.header();
        let inflight = h.lock.ninflight.load(Relaxed) != 0;
        let pending = h.lock.npending.load(Relaxed) != 0;
        if !(inflight || pending) || r.poisoned() {
            return false;
        }
        let Ok(m) = self.member() else { return false };
        let dead = inflight
            && match queue::inflight(r) {
                Ok(list) => list
                    .iter()
                    .any(|&(_, _, owner, tid)| !m.thread_alive(owner, tid)),
                Err(_) => true,
            };
        let dead = dead || (pending && self.dead_holder(m));
        if dead {
            queue::rebuild(r, &mut Self::alive_fn(m));
        }
        dead
    }

    /// Under the lock: repairs after an inconsistency, failing after a few
    /// attempts in a row (the file is being damaged faster than repaired).
    fn repair(&self, _g: &Guard<'_>, c: Corrupt, attempts: &mut u32) -> Result<()> {
        self.check_poison()?;
        *attempts += 1;
        if *attempts > 3 {
            return Err(Error::Corrupted(c.0.into()));
        }
        let m = self.member()?;
        queue::rebuild(self.region(), &mut Self::alive_fn(m));
        Ok(())
    }

    /// Under the lock: rebuilds the queue after `c` was found (one attempt).
    pub fn repair_now(&self, g: &Guard<'_>, c: Corrupt) -> Result<()> {
        self.repair(g, c, &mut 0)
    }

    /// Under the lock: whether anyone may be asleep on `c`. The header's
    /// count is a hint that a sleeper killed asleep leaves too high; when
    /// it says yes, the kernel is asked (each member holds one lock byte
    /// per sleeping thread, see `member`), and the count is set to its
    /// answer.
    pub(crate) fn anyone_sleeps(&self, _g: &Guard<'_>, c: Cond) -> bool {
        let counter = Side::from(c).sleepers(self.region());
        if counter.load(Relaxed) == 0 {
            return false;
        }
        let Ok(m) = self.member() else { return true };
        match m.sleeping(c) {
            Some(n) => {
                counter.store(n, Relaxed);
                n > 0
            }
            None => true,
        }
    }
}

/// The error for a lock that was not taken.
pub(crate) fn lock_error(e: LockError) -> Error {
    Error::Os(match e {
        LockError::WouldBlock => Errno::EAGAIN,
        LockError::TimedOut => Errno::ETIMEDOUT,
        LockError::Interrupted => Errno::EINTR,
        LockError::Restart => Errno::ERESTART,
        LockError::Deadlock => Errno::EDEADLK,
        LockError::OwnerDead => Errno::EOWNERDEAD,
    })
}

impl Drop for Handle {
    fn drop(&mut self) {
        crate::notify::on_close(&self.desc.queue);
    }
}

mod open;
mod pending;
mod transfer;
mod wait;

pub(crate) use open::open_for_inspection_in;
pub use open::{open_for_inspection, permitted_on, unlink};
pub use pending::Held;
pub use transfer::Stage;
pub use wait::{Guard, Side};
