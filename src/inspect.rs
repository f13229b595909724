//! Read-only views of queues, for tools such as `mqtool`: attributes,
//! per-priority counts, blocked callers, the notification owner, health, and
//! the queued messages in delivery order (which the kernel's queues cannot
//! show). [`Inspector::purge`] is the one operation here that changes a
//! queue: [`Inspector::info`] and [`Inspector::peek`] never write to it, not
//! even to repair what a dead process left (the next send or receive does),
//! and never wait long for a busy lock.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("shmq-doc-inspect-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let mq = shmq::OpenOptions::readwrite().create_new().dir(&dir).open("/jobs")?;
//! mq.send(3, b"a")?;
//! mq.send(7, b"b")?;
//! let q = shmq::inspect::Inspector::open("/jobs", Some(&dir))?;
//! assert_eq!(q.info()?.per_priority, vec![(7, 1), (3, 1)]);
//! let peeked: Vec<_> = q.peek(None)?.into_iter().map(|m| m.priority).collect();
//! assert_eq!(peeked, [7, 3]);
//! assert_eq!(mq.attributes()?.current_messages, 2); // peek took nothing
//! assert!(format!("{q:?}").contains("jobs")); // Debug shows the file
//! # shmq::remove_queue_in(&dir, "/jobs")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::engine::{self, Queue};
use crate::error::{Error, Result};
use crate::layout::VERSION;
use crate::member::Cond;
use crate::queue::{self, Locked};
use crate::sync::mutex::{self, LockError, Wait};
use nix::errno::Errno;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

/// Who is registered for notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifyOwner {
    /// Process id.
    pub pid: i32,
    /// `"none"`, `"signal"` or `"thread"`.
    pub kind: &'static str,
    /// Signal number (`SIGEV_SIGNAL`).
    pub signo: i32,
}

/// A process holding pending messages (received, not acknowledged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingHolder {
    /// Its member number (the number the lock holder is shown by, too).
    pub member: u32,
    /// Messages it holds.
    pub messages: u64,
    /// False once it died: the next receiver that looks (within 10 ms
    /// when one is waiting) returns its messages to the queue.
    pub alive: bool,
}

/// A pending message, as [`Inspector::peek_pending`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingMessage {
    /// Priority.
    pub priority: u32,
    /// Payload.
    pub data: Vec<u8>,
    /// Member number of the holder.
    pub member: u32,
}

/// What the queue has been through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Never repaired, no damage found.
    Ok,
    /// Repaired after processes died mid-operation (a crash, which shmq
    /// undoes: nothing a completed send put in was lost).
    Repaired {
        /// Number of repairs.
        repairs: u32,
    },
    /// Damage was found at some point: slots or links with contents that no
    /// crash explains, written by something other than shmq. Messages may
    /// have been lost or spoiled.
    Damaged {
        /// Number of repairs.
        repairs: u32,
        /// Damaged slots or links found.
        damage: u32,
    },
}

impl Health {
    /// `"ok"`, `"repaired"` or `"damaged"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Repaired { .. } => "repaired",
            Health::Damaged { .. } => "damaged",
        }
    }
}

/// The queue lock, as an inspection found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockState {
    /// Free, or briefly held: the snapshot was taken under it.
    Free,
    /// Held for longer than the inspection waited (by a stopped or busy
    /// process): the snapshot was read without it and may be inconsistent.
    Busy {
        /// The holder's member number.
        member: u32,
    },
    /// Its holder died: the next send or receive repairs the queue.
    OwnerDied {
        /// The dead holder's member number.
        member: u32,
    },
}

/// A snapshot of a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    /// Queue name, `/...`.
    pub name: String,
    /// Path of the queue file.
    pub path: PathBuf,
    /// Size of the file in bytes.
    pub file_size: u64,
    /// Layout version `(major, minor)`.
    pub version: (u32, u32),
    /// Capacity in messages (`mq_maxmsg`).
    pub capacity: u64,
    /// Largest message (`mq_msgsize`).
    pub max_msg_len: u64,
    /// Messages queued now (`mq_curmsgs`).
    pub current_messages: u64,
    /// Messages received but not acknowledged yet (see
    /// [`PosixMq::recv_pending`](crate::PosixMq::recv_pending)): not
    /// counted in `current_messages`, not receivable, but filling their
    /// slots.
    pub pending: u64,
    /// Who holds the pending messages, most messages first.
    pub pending_holders: Vec<PendingHolder>,
    /// Permission bits of the queue.
    pub mode: u32,
    /// Owner of the queue file.
    pub uid: u32,
    /// Group of the queue file.
    pub gid: u32,
    /// `(priority, count)` for every priority that has messages, highest
    /// first.
    pub per_priority: Vec<(u32, u64)>,
    /// Receivers asleep in a receive (callers of live processes).
    pub blocked_receivers: u32,
    /// Senders asleep in a send (callers of live processes).
    pub blocked_senders: u32,
    /// Slots being copied outside the lock right now.
    pub in_flight: u32,
    /// Other processes using the queue now (live members).
    pub processes: u32,
    /// The notification registration, if any.
    pub notify: Option<NotifyOwner>,
    /// Messages sent since creation.
    pub total_sent: u64,
    /// Messages received since creation.
    pub total_received: u64,
    /// Repair history.
    pub health: Health,
    /// The lock when the snapshot was taken.
    pub lock: LockState,
    /// What is wrong with the lists right now, if anything (they will be
    /// rebuilt by the next send or receive).
    pub problem: Option<String>,
}

/// A message seen by [`Inspector::peek`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Priority.
    pub priority: u32,
    /// Payload.
    pub data: Vec<u8>,
}

/// How long an inspection waits for a busy lock before it reads without it.
const LOOK_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// How long [`Inspector::purge`] waits for a busy lock before it gives up.
pub const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// An open queue, for looking inside.
pub struct Inspector {
    q: Queue,
}

/// Shows the queue file's path; a snapshot needs [`Inspector::info`].
impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl Inspector {
    /// Opens queue `name` (a `'/'` is prepended if missing) in `dir` (default:
    /// `SHMQ_DIR`, else `/dev/shm/shmq`).
    ///
    /// # Errors
    /// As `mq_open` (ENOENT, EACCES, EINVAL, ENAMETOOLONG …), and
    /// [`Error::NotAQueue`], [`Error::Incompatible`], [`Error::Corrupted`]
    /// for a file that is not a usable queue.
    pub fn open<N: AsRef<[u8]> + ?Sized>(name: &N, dir: Option<&Path>) -> Result<Inspector> {
        let name = name.as_ref();
        let mut full = Vec::with_capacity(name.len() + 1);
        if name.first() != Some(&b'/') {
            full.push(b'/');
        }
        full.extend_from_slice(name);
        Ok(Inspector {
            q: engine::open_for_inspection(&full, dir)?,
        })
    }

    /// Path of the queue file.
    pub fn path(&self) -> &Path {
        self.q.path()
    }

    /// The lock for a read-only look: never taken over from a dead owner,
    /// never waited for long.
    fn look(&self) -> std::result::Result<crate::engine::Guard<'_>, LockError> {
        let deadline = crate::engine::realtime_after(LOOK_WAIT);
        let w = Wait {
            deadline: Some(&deadline),
            take_over: false,
            ..Wait::FOREVER
        };
        match self.q.lock_with(&w) {
            Ok(g) => Ok(g),
            Err(Error::Os(Errno::EOWNERDEAD)) => Err(LockError::OwnerDead),
            Err(Error::Os(Errno::ETIMEDOUT)) => Err(LockError::TimedOut),
            Err(_) => Err(LockError::WouldBlock),
        }
    }

    /// A snapshot of the queue's state. Taken under the lock when it can be
    /// had within a moment; otherwise (a stopped holder, a dead one) read
    /// without it, and [`QueueInfo::lock`] says so. Changes nothing in the
    /// queue.
    ///
    /// # Errors
    /// Only for a queue that cannot be opened; what is wrong inside is in
    /// the result.
    pub fn info(&self) -> Result<QueueInfo> {
        let q = &self.q;
        let r = q.region();
        let h = r.header();
        let holder = mutex::owner_of(mutex::peek(r)).0;
        let (g, lock) = match self.look() {
            Ok(g) => (Some(g), LockState::Free),
            Err(LockError::OwnerDead) => (None, LockState::OwnerDied { member: holder }),
            Err(_) => (None, LockState::Busy { member: holder }),
        };
        let mut per_priority: Vec<(u32, u64)> = Vec::new();
        let walked = queue::for_each(r, |_, prio, _| {
            match per_priority.last_mut() {
                Some((p, n)) if *p == prio => *n += 1,
                _ => per_priority.push((prio, 1)),
            }
            true
        });
        let problem = walked.err().map(|c| c.0.to_string());
        if problem.is_some() {
            per_priority = queue::count_by_priority(r);
        }
        let m = q.member()?;
        // The kernel's count when it can give one, the header's hint
        // otherwise.
        let sleeping = |c: Cond, hint: &std::sync::atomic::AtomicU32| {
            m.sleeping(c).unwrap_or(hint.load(Relaxed))
        };
        let repairs = h.repairs.load(Relaxed);
        let damage = h.damage.load(Relaxed);
        let info = QueueInfo {
            name: String::from_utf8_lossy(q.name()).into_owned(),
            path: q.path().to_path_buf(),
            file_size: q.geometry().file_size as u64,
            version: (
                h.version.load(Relaxed) >> 16,
                h.version.load(Relaxed) & 0xffff,
            ),
            capacity: u64::from(q.geometry().maxmsg),
            max_msg_len: q.geometry().msgsize as u64,
            current_messages: h.lock.curmsgs.load(Relaxed),
            pending: u64::from(h.lock.npending.load(Relaxed)),
            pending_holders: holders(r, m),
            mode: q.mode(),
            uid: q.file_info().uid,
            gid: q.file_info().gid,
            per_priority,
            blocked_receivers: sleeping(Cond::Recv, &h.sleeping_recv),
            blocked_senders: sleeping(Cond::Send, &h.sleeping_send),
            in_flight: h.lock.ninflight.load(Relaxed),
            processes: m.others(usize::MAX).len() as u32,
            notify: crate::notify::owner(q),
            total_sent: h.sent.b.load(Relaxed),
            total_received: h.received.a.load(Relaxed),
            health: match (repairs, damage) {
                (0, 0) => Health::Ok,
                (repairs, 0) => Health::Repaired { repairs },
                (repairs, damage) => Health::Damaged { repairs, damage },
            },
            lock,
            problem,
        };
        drop(g);
        q.check_poison()?;
        Ok(info)
    }

    /// The queued messages in delivery order (highest priority first, oldest
    /// first within a priority), at most `limit` of them, without removing
    /// anything or changing anything.
    ///
    /// # Errors
    /// `EAGAIN` when the lock is held by a stopped or busy process,
    /// `EOWNERDEAD` when its holder died (the next send or receive repairs
    /// the queue), [`Error::Corrupted`] when the lists cannot be walked.
    pub fn peek(&self, limit: Option<usize>) -> Result<Vec<Message>> {
        let q = &self.q;
        let r = q.region();
        let limit = limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let g = self.look().map_err(|e| match e {
            LockError::OwnerDead => Error::Os(Errno::EOWNERDEAD),
            _ => Error::Os(Errno::EAGAIN),
        })?;
        if limit > 0 {
            queue::for_each(r, |idx, prio, len| {
                let mut data = vec![0; len];
                r.read_payload(idx, &mut data);
                out.push(Message {
                    priority: prio,
                    data,
                });
                out.len() < limit
            })
            .map_err(|c| Error::Corrupted(c.0.into()))?;
        }
        drop(g);
        q.check_poison()?;
        Ok(out)
    }

    /// The pending messages (received, not acknowledged), at most `limit`
    /// of them, in slot order, with their holders; nothing is changed.
    ///
    /// # Errors
    /// As [`peek`](Inspector::peek).
    pub fn peek_pending(&self, limit: Option<usize>) -> Result<Vec<PendingMessage>> {
        let q = &self.q;
        let r = q.region();
        let limit = limit.unwrap_or(usize::MAX);
        let g = self.look().map_err(|e| match e {
            LockError::OwnerDead => Error::Os(Errno::EOWNERDEAD),
            _ => Error::Os(Errno::EAGAIN),
        })?;
        let mut out = Vec::new();
        for_each_pending(r, |idx, member, prio, len| {
            if out.len() >= limit {
                return false;
            }
            let mut data = vec![0; len];
            r.read_payload(idx, &mut data);
            out.push(PendingMessage {
                priority: prio,
                data,
                member,
            });
            true
        });
        drop(g);
        q.check_poison()?;
        Ok(out)
    }

    /// Drops every queued message and wakes blocked senders; returns how
    /// many were dropped. Needs read permission on the queue, like receiving.
    ///
    /// # Errors
    /// `EACCES` without read permission; `EAGAIN` when the lock stays held
    /// for [`PURGE_WAIT`] (by a stopped process, or by a word that names a
    /// live process which does not hold it); [`Error::Corrupted`].
    pub fn purge(&self) -> Result<u64> {
        let q = &self.q;
        if !engine::permitted_on(q, true, false) {
            return Err(Error::Os(Errno::EACCES));
        }
        let r = q.region();
        let h = r.header();
        let deadline = crate::engine::realtime_after(PURGE_WAIT);
        let w = Wait {
            deadline: Some(&deadline),
            ..Wait::FOREVER
        };
        let g = q.lock_with(&w).map_err(|e| match e {
            Error::Os(Errno::ETIMEDOUT) => Error::Os(Errno::EAGAIN),
            e => e,
        })?;
        let mut n = 0;
        loop {
            match queue::front(r) {
                Ok(Some((idx, prio, _))) => {
                    queue::unlink_front(r, idx, prio)
                        .and_then(|()| queue::release(r, idx))
                        .map_err(|c| Error::Corrupted(c.0.into()))?;
                    h.received.a.add(1);
                    n += 1;
                }
                Ok(None) => break,
                Err(c) => q.repair_now(&g, c)?,
            }
        }
        let sleepers = h.sleeping_send.load(Relaxed) > 0;
        if sleepers {
            h.not_full.0.add(1);
        }
        drop(g);
        if sleepers {
            crate::sync::futex::wake(&h.not_full.0, i32::MAX);
        }
        q.check_poison()?;
        Ok(n)
    }
}

/// An entry of [`list`]: a queue, or a file that looks like a damaged one.
#[derive(Debug)]
pub struct ListEntry {
    /// Queue name, `/...`, with any byte that is not UTF-8 replaced by
    /// U+FFFD (see `name_bytes`).
    pub name: String,
    /// Queue name as it is on disk, `/...`: names are bytes, not
    /// necessarily UTF-8.
    pub name_bytes: Vec<u8>,
    /// The snapshot, or why it could not be taken (a corrupted queue, a
    /// queue of another version, permission denied …).
    pub info: Result<QueueInfo>,
}

/// Every queue in `dir` (default: `SHMQ_DIR`, else `/dev/shm/shmq`), sorted
/// by name. Files that are not queues at all (no shmq magic number) are left
/// out; queues that cannot be read are listed with their error. The
/// directory is checked as for opening a queue ([`crate::name`]) and every
/// file is opened relative to it, never through a symbolic link and never
/// waiting on a FIFO.
///
/// # Errors
/// [`Error::Dir`] when the directory is missing or not trusted; the errno
/// when it cannot be read.
pub fn list(dir: Option<&Path>) -> Result<Vec<ListEntry>> {
    let dir = crate::name::QueueDir::open(dir, false)?;
    let entries = crate::sys::read_dir_at(dir.fd())?;
    let mut out = Vec::new();
    for (fname, is_file) in entries {
        // Unknown types are opened like files: the open itself refuses
        // links, FIFOs and directories without following or blocking.
        if is_file == Some(false)
            || crate::name::file_name(&[b"/", fname.as_bytes()].concat()).is_err()
        {
            continue;
        }
        let mut name = b"/".to_vec();
        name.extend_from_slice(fname.as_bytes());
        let info = engine::open_for_inspection_in(&dir, &name)
            .map(|q| Inspector { q })
            .and_then(|i| i.info());
        if let Err(Error::NotAQueue(_)) = info {
            continue;
        }
        out.push(ListEntry {
            name: String::from_utf8_lossy(&name).into_owned(),
            name_bytes: name,
            info,
        });
    }
    out.sort_by(|a, b| a.name_bytes.cmp(&b.name_bytes));
    Ok(out)
}

/// The directory queues live in for this process (see [`crate::name`]),
/// checked; the default one is created if missing.
///
/// # Errors
/// [`Error::Dir`] when it is missing (the default one: cannot be made),
/// relative or not trusted.
pub fn queue_dir(dir: Option<&Path>) -> Result<PathBuf> {
    crate::name::queue_dir(dir)
}

/// This library's layout version, `(major, minor)`.
pub fn layout_version() -> (u32, u32) {
    (VERSION >> 16, VERSION & 0xffff)
}

/// Visits the pending slots, `(slot, holder, prio, len)`, until `f`
/// returns false; every field read is bounded.
fn for_each_pending(r: &crate::layout::Region, mut f: impl FnMut(u32, u32, u32, usize) -> bool) {
    let g = r.geometry();
    for i in 0..g.maxmsg {
        let Some(s) = r.slot(i) else { break };
        if s.state.load(Relaxed) != crate::layout::SLOT_PENDING {
            continue;
        }
        let prio = s.prio.load(Relaxed);
        let len = s.len.load(Relaxed).min(g.msgsize as u64) as usize;
        if !f(i, s.owner.load(Relaxed), prio, len) {
            return;
        }
    }
}

/// The holders of pending messages, most messages first.
fn holders(r: &crate::layout::Region, m: &crate::member::Member) -> Vec<PendingHolder> {
    let mut counts: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    if r.header().lock.npending.load(Relaxed) != 0 {
        for_each_pending(r, |_, member, _, _| {
            *counts.entry(member).or_default() += 1;
            // Bounded: a file that names many holders is damaged.
            counts.len() < 1024
        });
    }
    let mut out: Vec<_> = counts
        .into_iter()
        .map(|(member, messages)| PendingHolder {
            member,
            messages,
            alive: m.alive(member),
        })
        .collect();
    out.sort_by_key(|h| std::cmp::Reverse(h.messages));
    out
}
