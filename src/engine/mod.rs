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
}

impl Drop for Handle {
    fn drop(&mut self) {
        crate::notify::on_close(&self.desc.queue);
    }
}

mod open;
mod transfer;
mod wait;

pub use open::{open_for_inspection, permitted_on, unlink};
pub use transfer::Stage;
pub use wait::{Guard, Side};
