//! The `posixmq` 1.0 front door: [`PosixMq`], [`OpenOptions`],
//! [`Attributes`], [`remove_queue`] … with the same signatures, so switching
//! is a change of one `use` line. Errors are `io::Error`s whose
//! `raw_os_error()` is the errno Linux gives for the same call; blocking calls
//! retry `EINTR`, as `posixmq` does.

use crate::engine::{self, Handle, OpenRequest};
use crate::error::Error;
use crate::notify::Notification;
use crate::sys::live::ForkLock;
use std::ffi::CStr;
use std::fmt::{self, Debug, Formatter};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Directories given to [`OpenOptions::dir`], interned so that
/// `OpenOptions` stays `Copy` as in `posixmq`.
static DIRS: ForkLock<Vec<PathBuf>> = ForkLock::keeping(Vec::new());

fn intern_dir(dir: &Path) -> u32 {
    let mut dirs = DIRS.lock();
    if let Some(i) = dirs.iter().position(|d| d == dir) {
        return i as u32;
    }
    dirs.push(dir.to_path_buf());
    (dirs.len() - 1) as u32
}

fn interned_dir(id: u32) -> PathBuf {
    DIRS.lock()[id as usize].clone()
}

/// Flags and parameters which control how a [`PosixMq`] message queue is
/// opened or created.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    flags: libc::c_int,
    mode: u32,
    capacity: usize,
    max_msg_len: usize,
    dir: Option<u32>,
}

impl Debug for OpenOptions {
    fn fmt(&self, fmtr: &mut Formatter<'_>) -> fmt::Result {
        let acc = self.flags & libc::O_ACCMODE;
        fmtr.debug_struct("OpenOptions")
            .field("read", &(acc == libc::O_RDWR || acc == libc::O_RDONLY))
            .field("write", &(acc == libc::O_RDWR || acc == libc::O_WRONLY))
            .field("create", &(self.flags & libc::O_CREAT != 0))
            .field("open", &(self.flags & libc::O_EXCL == 0))
            .field("mode", &format_args!("{:03o}", self.mode))
            .field("capacity", &self.capacity)
            .field("max_msg_len", &self.max_msg_len)
            .field("nonblocking", &(self.flags & libc::O_NONBLOCK != 0))
            .field("dir", &self.dir.map(interned_dir))
            .finish()
    }
}

impl OpenOptions {
    fn new(flags: libc::c_int) -> Self {
        OpenOptions {
            flags,
            mode: 0o600,
            capacity: 0,
            max_msg_len: 0,
            dir: None,
        }
    }

    /// Open message queue for receiving only.
    pub fn readonly() -> Self {
        OpenOptions::new(libc::O_RDONLY)
    }

    /// Open message queue for sending only.
    pub fn writeonly() -> Self {
        OpenOptions::new(libc::O_WRONLY)
    }

    /// Open message queue both for sending and receiving.
    pub fn readwrite() -> Self {
        OpenOptions::new(libc::O_RDWR)
    }

    /// Set permissions to create the queue with (default `0o600`); the
    /// process's umask clears bits, unknown bits are ignored.
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    /// Set the maximum size of each message. If this and the capacity are
    /// both zero (not set), the queue gets 10 messages of 8192 bytes.
    pub fn max_msg_len(&mut self, max_msg_len: usize) -> &mut Self {
        self.max_msg_len = max_msg_len;
        self
    }

    /// Set the maximum number of messages in the queue. No kernel limit
    /// applies: only memory bounds it.
    pub fn capacity(&mut self, capacity: usize) -> &mut Self {
        self.capacity = capacity;
        self
    }

    /// Create message queue if it doesn't exist.
    pub fn create(&mut self) -> &mut Self {
        self.flags |= libc::O_CREAT;
        self.flags &= !libc::O_EXCL;
        self
    }

    /// Create a new queue, failing if the queue already exists.
    pub fn create_new(&mut self) -> &mut Self {
        self.flags |= libc::O_CREAT | libc::O_EXCL;
        self
    }

    /// Require the queue to already exist, failing if it doesn't.
    pub fn existing(&mut self) -> &mut Self {
        self.flags &= !(libc::O_CREAT | libc::O_EXCL);
        self
    }

    /// Open the message queue in non-blocking mode.
    pub fn nonblocking(&mut self) -> &mut Self {
        self.flags |= libc::O_NONBLOCK;
        self
    }

    /// The directory that holds the queue files (default: `SHMQ_DIR`, else
    /// `/dev/shm/shmq`). All processes using a queue must agree on it. It
    /// must be an absolute path that nobody but root and the caller could
    /// have prepared (see [`crate::name`]); with [`create`](Self::create) a
    /// missing one is made, mode `0700`.
    pub fn dir<P: AsRef<Path>>(&mut self, dir: P) -> &mut Self {
        self.dir = Some(intern_dir(dir.as_ref()));
        self
    }

    /// Open a queue with the specified options. A `'/'` is prepended to the
    /// name if missing.
    ///
    /// # Errors
    /// - Queue doesn't exist, or the name is just "/" (ENOENT) => `NotFound`
    /// - Queue already exists (EEXIST) => `AlreadyExists`
    /// - Not permitted to open in this mode, or more than one '/' (EACCES) =>
    ///   `PermissionDenied`
    /// - Invalid capacities, or access mode 3 on an existing queue (EINVAL)
    ///   => `InvalidInput`
    /// - Capacities overflow (EOVERFLOW), no room on the file system (ENOSPC)
    /// - Name contains '\0' => `InvalidInput`; longer than 255 (ENAMETOOLONG)
    /// - The file is not a shmq queue or is damaged => `InvalidData`
    /// - The queue directory is missing (`NotFound`), relative
    ///   (`InvalidInput`) or not trusted (`PermissionDenied`): an
    ///   [`Error::Dir`] that says which and why; its
    ///   [`errno`](Error::errno) is ENOENT, EINVAL or EACCES
    pub fn open<N: AsRef<[u8]> + ?Sized>(&self, name: &N) -> Result<PosixMq, io::Error> {
        let name = with_slash(name.as_ref())?;
        self.open_bytes(&name)
    }

    /// Open a queue with the specified options without touching `name`: it
    /// must start with '/'.
    ///
    /// # Errors
    /// As [`OpenOptions::open`], and EINVAL for a name without a leading '/'.
    pub fn open_c(&self, name: &CStr) -> Result<PosixMq, io::Error> {
        self.open_bytes(name.to_bytes())
    }

    fn open_bytes(&self, name: &[u8]) -> Result<PosixMq, io::Error> {
        let dir = self.dir.map(interned_dir);
        let attr = (self.capacity != 0 || self.max_msg_len != 0)
            .then_some((saturate(self.capacity), saturate(self.max_msg_len)));
        let req = OpenRequest {
            name,
            dir: dir.as_deref(),
            access: self.flags & libc::O_ACCMODE,
            create: self.flags & libc::O_CREAT != 0,
            exclusive: self.flags & libc::O_EXCL != 0,
            nonblock: self.flags & libc::O_NONBLOCK != 0,
            mode: self.mode,
            attr,
        };
        Ok(PosixMq {
            h: Handle::open(&req)?,
        })
    }
}

/// A size for the engine: values beyond `i64::MAX` stay huge (and fail with
/// EOVERFLOW) instead of wrapping to negative (EINVAL).
fn saturate(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn with_slash(name: &[u8]) -> Result<Vec<u8>, io::Error> {
    if name.contains(&0) {
        return Err(io::Error::new(ErrorKind::InvalidInput, "contains nul byte"));
    }
    let mut v = Vec::with_capacity(name.len() + 1);
    if name.first() != Some(&b'/') {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    Ok(v)
}

/// Delete a message queue. A `'/'` is prepended to the name if missing.
/// Processes that have it open will still be able to use it.
///
/// # Errors
/// ENOENT (`NotFound`), EACCES (`PermissionDenied`), ENAMETOOLONG, and
/// `InvalidInput` for a name containing '\0'; an [`Error::Dir`] for a
/// queue directory that is missing, relative or not trusted.
pub fn remove_queue<N: AsRef<[u8]> + ?Sized>(name: &N) -> Result<(), io::Error> {
    Ok(engine::unlink(&with_slash(name.as_ref())?, None)?)
}

/// Delete a message queue without touching `name` (which must start with '/').
///
/// # Errors
/// As [`remove_queue`], and EINVAL for a name without a leading '/'.
pub fn remove_queue_c(name: &CStr) -> Result<(), io::Error> {
    Ok(engine::unlink(name.to_bytes(), None)?)
}

/// Delete a message queue in the directory `dir` (see [`OpenOptions::dir`]).
///
/// # Errors
/// As [`remove_queue`].
pub fn remove_queue_in<P: AsRef<Path>, N: AsRef<[u8]> + ?Sized>(
    dir: P,
    name: &N,
) -> Result<(), io::Error> {
    Ok(engine::unlink(
        &with_slash(name.as_ref())?,
        Some(dir.as_ref()),
    )?)
}

/// How [`PosixMq::notify`] tells the registered process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// `SIGEV_NONE`: register without delivering anything (other processes
    /// get EBUSY meanwhile).
    Silent,
    /// `SIGEV_SIGNAL`: queue `signal` with `si_code == SI_MESGQ`, the
    /// sender's pid and uid, and `value` in `si_value`.
    Signal {
        /// Signal number.
        signal: i32,
        /// Delivered in `si_value`.
        value: usize,
    },
}

/// Information about the capacities and state of a message queue, from
/// [`PosixMq::attributes`].
#[derive(Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Attributes {
    /// The maximum size of messages that can be stored in the queue.
    pub max_msg_len: usize,
    /// The maximum number of messages in the queue.
    pub capacity: usize,
    /// The number of messages currently in the queue.
    pub current_messages: usize,
    /// Whether the descriptor was in nonblocking mode.
    pub nonblocking: bool,
}

impl Debug for Attributes {
    fn fmt(&self, fmtr: &mut Formatter<'_>) -> fmt::Result {
        fmtr.debug_struct("Attributes")
            .field("max_msg_len", &self.max_msg_len)
            .field("capacity", &self.capacity)
            .field("current_messages", &self.current_messages)
            .field("nonblocking", &self.nonblocking)
            .finish()
    }
}

/// Converts a `SystemTime` to a `timespec`; `Err` with a saturated value when
/// it is not representable.
pub(crate) fn deadline_to_realtime(deadline: SystemTime) -> Result<libc::timespec, libc::timespec> {
    let ts = |s: i64, n: i64| libc::timespec {
        tv_sec: s,
        tv_nsec: n as _,
    };
    match deadline.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) if d.as_secs() > i64::MAX as u64 => Err(ts(i64::MAX, 0)),
        Ok(d) => Ok(ts(d.as_secs() as i64, i64::from(d.subsec_nanos()))),
        Err(e) => {
            let before = e.duration();
            if before > Duration::new(i64::MAX as u64 + 1, 0) {
                Err(ts(i64::MIN + 1, 0))
            } else if before.subsec_nanos() == 0 {
                Ok(ts(-(before.as_secs() as i64), 0))
            } else {
                Ok(ts(
                    -(before.as_secs() as i64) - 1,
                    1_000_000_000 - i64::from(before.subsec_nanos()),
                ))
            }
        }
    }
}

fn timeout_to_realtime(timeout: Duration) -> Result<libc::timespec, io::Error> {
    let now = deadline_to_realtime(SystemTime::now())
        .map_err(|_| io::Error::other("system time is not representable"))?;
    let nsec = now.tv_nsec + i64::from(timeout.subsec_nanos());
    i64::try_from(timeout.as_secs())
        .ok()
        .and_then(|s| now.tv_sec.checked_add(s))
        .and_then(|s| s.checked_add(nsec / 1_000_000_000))
        .map(|s| libc::timespec {
            tv_sec: s,
            tv_nsec: (nsec % 1_000_000_000) as _,
        })
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidInput, "timeout is too long"))
}

fn bad_deadline() -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, "deadline is not representable")
}

#[inline]
fn retry<T>(mut f: impl FnMut() -> Result<T, Error>) -> Result<T, io::Error> {
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(Error::Os(nix::errno::Errno::EINTR)) => continue,
            Err(e) => return Err(io_error(e)),
        }
    }
}

#[cold]
fn io_error(e: Error) -> io::Error {
    e.into()
}

/// A descriptor for an open message queue in shared memory.
///
/// Dropping it closes the descriptor. `PosixMq` is `Send + Sync`: one
/// descriptor may be used from many threads at once.
pub struct PosixMq {
    h: Handle,
}

impl PosixMq {
    /// Open an existing message queue in read-write mode.
    ///
    /// # Errors
    /// See [`OpenOptions::open`].
    pub fn open<N: AsRef<[u8]> + ?Sized>(name: &N) -> Result<Self, io::Error> {
        OpenOptions::readwrite().open(name)
    }

    /// Open a message queue in read-write mode, creating it if it doesn't
    /// exist.
    ///
    /// # Errors
    /// See [`OpenOptions::open`].
    pub fn create<N: AsRef<[u8]> + ?Sized>(name: &N) -> Result<Self, io::Error> {
        OpenOptions::readwrite().create().open(name)
    }

    /// Add a message to the queue, waiting for room unless non-blocking.
    ///
    /// # Errors
    /// - Queue is full and non-blocking (EAGAIN) => `WouldBlock`
    /// - Message is too big for the queue (EMSGSIZE)
    /// - Priority is 32768 or more (EINVAL) => `InvalidInput`
    /// - Queue is opened read-only (EBADF)
    #[inline]
    pub fn send(&self, priority: u32, msg: &[u8]) -> Result<(), io::Error> {
        retry(|| self.h.desc().send(priority, msg, None))
    }

    /// Take the oldest message with the highest priority, waiting for one
    /// unless non-blocking. Returns `(priority, length)`.
    ///
    /// # Errors
    /// - Queue is empty and non-blocking (EAGAIN) => `WouldBlock`
    /// - The buffer is smaller than the queue's message size (EMSGSIZE)
    /// - Queue is opened write-only (EBADF)
    #[inline]
    pub fn recv(&self, msgbuf: &mut [u8]) -> Result<(u32, usize), io::Error> {
        retry(|| self.h.desc().receive(msgbuf, None)).map(|(len, prio)| (prio, len))
    }

    /// An iterator that calls [`recv`](PosixMq::recv) with a buffer of the
    /// right size; it ends at `WouldBlock` (non-blocking mode) and is
    /// infinite otherwise.
    pub fn iter(&self) -> Iter<'_> {
        self.into_iter()
    }

    /// [`send`](PosixMq::send), giving up with `TimedOut` after `timeout`.
    ///
    /// # Errors
    /// As `send`, plus ETIMEDOUT => `TimedOut`, and `InvalidInput` for a
    /// timeout too long to represent.
    pub fn send_timeout(
        &self,
        priority: u32,
        msg: &[u8],
        timeout: Duration,
    ) -> Result<(), io::Error> {
        let d = timeout_to_realtime(timeout)?;
        retry(|| self.h.desc().send(priority, msg, Some(&d)))
    }

    /// [`send`](PosixMq::send), giving up with `TimedOut` at `deadline`.
    ///
    /// # Errors
    /// As `send_timeout`.
    pub fn send_deadline(
        &self,
        priority: u32,
        msg: &[u8],
        deadline: SystemTime,
    ) -> Result<(), io::Error> {
        let d = deadline_to_realtime(deadline).map_err(|_| bad_deadline())?;
        retry(|| self.h.desc().send(priority, msg, Some(&d)))
    }

    /// [`recv`](PosixMq::recv), giving up with `TimedOut` after `timeout`.
    ///
    /// # Errors
    /// As `recv`, plus ETIMEDOUT => `TimedOut`, and `InvalidInput` for a
    /// timeout too long to represent.
    pub fn recv_timeout(
        &self,
        msgbuf: &mut [u8],
        timeout: Duration,
    ) -> Result<(u32, usize), io::Error> {
        let d = timeout_to_realtime(timeout)?;
        retry(|| self.h.desc().receive(msgbuf, Some(&d))).map(|(len, prio)| (prio, len))
    }

    /// [`recv`](PosixMq::recv), giving up with `TimedOut` at `deadline`.
    ///
    /// # Errors
    /// As `recv_timeout`.
    pub fn recv_deadline(
        &self,
        msgbuf: &mut [u8],
        deadline: SystemTime,
    ) -> Result<(u32, usize), io::Error> {
        let d = deadline_to_realtime(deadline).map_err(|_| bad_deadline())?;
        retry(|| self.h.desc().receive(msgbuf, Some(&d))).map(|(len, prio)| (prio, len))
    }

    /// Capacities and state of the queue.
    ///
    /// # Errors
    /// Only if the queue lock is unrecoverable.
    pub fn attributes(&self) -> Result<Attributes, io::Error> {
        let a = self.h.desc().attr()?;
        Ok(Attributes {
            max_msg_len: a.msgsize as usize,
            capacity: a.maxmsg as usize,
            current_messages: a.curmsgs as usize,
            nonblocking: a.flags != 0,
        })
    }

    /// Whether this descriptor is in non-blocking mode.
    ///
    /// # Errors
    /// Never, in practice; the signature matches `posixmq`.
    pub fn is_nonblocking(&self) -> Result<bool, io::Error> {
        Ok(self.h.desc().nonblocking())
    }

    /// Enable or disable non-blocking mode. The mode belongs to the open
    /// description: clones made by [`try_clone`](PosixMq::try_clone) and
    /// copies in forked children see the change.
    ///
    /// # Errors
    /// Never, in practice; the signature matches `posixmq`.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), io::Error> {
        self.h.desc().set_nonblocking(nonblocking);
        Ok(())
    }

    /// A new descriptor for the same open queue (like `dup`): it shares
    /// non-blocking mode with this one.
    ///
    /// # Errors
    /// EMFILE when out of file descriptors.
    pub fn try_clone(&self) -> Result<Self, io::Error> {
        Ok(PosixMq {
            h: self.h.try_clone()?,
        })
    }

    /// Whether the descriptor is closed on `exec`: always true, since the
    /// queue lives in this process's mappings, which `exec` discards.
    ///
    /// # Errors
    /// Never.
    pub fn is_cloexec(&self) -> Result<bool, io::Error> {
        Ok(true)
    }

    /// Only `true` is possible: a shmq descriptor cannot survive `exec`
    /// (the mapping does not); `false` fails with `Unsupported`.
    ///
    /// # Errors
    /// `Unsupported` for `false`.
    pub fn set_cloexec(&self, cloexec: bool) -> Result<(), io::Error> {
        if cloexec {
            Ok(())
        } else {
            Err(io::Error::new(
                ErrorKind::Unsupported,
                "a shmq descriptor cannot stay open across exec",
            ))
        }
    }

    /// `mq_notify`: asks to be told when a message arrives in the empty
    /// queue while no receiver is waiting; `None` removes this process's
    /// registration. One process per queue may be registered; the
    /// registration ends after one notification, on `notify(None)`, and when
    /// this process closes any descriptor of the queue.
    ///
    /// # Errors
    /// EBUSY if a live process (this one included) is already registered;
    /// EINVAL for a signal number outside 0..=64.
    pub fn notify(&self, how: Option<Notify>) -> Result<(), io::Error> {
        let how = how.map(|n| match n {
            Notify::Silent => Notification::None,
            Notify::Signal { signal, value } => Notification::Signal {
                signo: signal,
                value: value as u64,
            },
        });
        Ok(self.h.notify(how)?)
    }

    /// `mq_notify` with `SIGEV_THREAD`, the Rust way: when a message arrives
    /// in the empty queue (and no receiver waits), `f` runs once in a new
    /// thread of this process. Re-arming from inside `f` works.
    ///
    /// # Errors
    /// As [`notify`](PosixMq::notify).
    pub fn notify_with<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<(), io::Error> {
        let deliver = Box::new(move || {
            let _ = std::thread::Builder::new()
                .name("shmq-notified".into())
                .spawn(f);
        });
        Ok(self.h.notify(Some(Notification::Thread { deliver }))?)
    }

    /// The path of the queue file.
    pub fn path(&self) -> &Path {
        self.h.desc().queue().path()
    }
}

impl PosixMq {
    /// Receive with acknowledgement: takes the oldest message with the
    /// highest priority into `msgbuf` like [`recv`](PosixMq::recv), waiting
    /// for one unless non-blocking, but leaves it *pending*: invisible to
    /// other receivers and still filling its slot until the returned
    /// [`Pending`] is acknowledged ([`Pending::ack`]: the message leaves
    /// the queue) or returned ([`Pending::nack`], or dropping it: the
    /// message goes back ahead of every message of its priority sent after
    /// it, and is delivered again). If this process ends (killed, `exec`,
    /// any way) while it holds pending messages, they go back to the queue
    /// as if returned.
    ///
    /// A process may hold many pending messages at once, from any of its
    /// threads. [`attributes`](PosixMq::attributes)' `current_messages`
    /// counts only receivable messages; a send finds the queue full while
    /// pending messages fill it.
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("shmq-doc-pending-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// let mq = shmq::OpenOptions::readwrite().capacity(4).max_msg_len(64).create_new()
    /// #   .dir(&dir)
    ///     .open("/work")?;
    /// mq.send(1, b"job")?;
    /// let mut buf = [0; 64];
    /// let p = mq.recv_pending(&mut buf)?;
    /// assert_eq!(&buf[..p.len()], b"job");
    /// drop(p); // not acknowledged: back in the queue
    /// let p = mq.recv_pending(&mut buf)?;
    /// p.ack()?; // gone for good
    /// assert_eq!(mq.attributes()?.current_messages, 0);
    /// # shmq::remove_queue_in(&dir, "/work")?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`recv`](PosixMq::recv).
    #[inline]
    pub fn recv_pending(&self, msgbuf: &mut [u8]) -> Result<Pending<'_>, io::Error> {
        self.pending_until(msgbuf, None)
    }

    /// [`recv_pending`](PosixMq::recv_pending), giving up with `TimedOut`
    /// after `timeout`.
    ///
    /// # Errors
    /// As [`recv_timeout`](PosixMq::recv_timeout).
    pub fn recv_pending_timeout(
        &self,
        msgbuf: &mut [u8],
        timeout: Duration,
    ) -> Result<Pending<'_>, io::Error> {
        let d = timeout_to_realtime(timeout)?;
        self.pending_until(msgbuf, Some(&d))
    }

    /// [`recv_pending`](PosixMq::recv_pending), giving up with `TimedOut`
    /// at `deadline`.
    ///
    /// # Errors
    /// As [`recv_deadline`](PosixMq::recv_deadline).
    pub fn recv_pending_deadline(
        &self,
        msgbuf: &mut [u8],
        deadline: SystemTime,
    ) -> Result<Pending<'_>, io::Error> {
        let d = deadline_to_realtime(deadline).map_err(|_| bad_deadline())?;
        self.pending_until(msgbuf, Some(&d))
    }

    #[inline]
    fn pending_until(
        &self,
        msgbuf: &mut [u8],
        d: Option<&libc::timespec>,
    ) -> Result<Pending<'_>, io::Error> {
        let desc = self.h.desc();
        let held = retry(|| desc.receive_pending_with(msgbuf, d, false))?;
        Ok(Pending {
            desc,
            held: Some(held),
        })
    }
}

/// A message received with [`PosixMq::recv_pending`] and not yet
/// acknowledged. It belongs to the queue it came from (it borrows the
/// descriptor) and to this process: dropping it returns the message, like
/// [`nack`](Pending::nack).
#[must_use = "dropping a pending message returns it to the queue"]
pub struct Pending<'q> {
    desc: &'q engine::Description,
    held: Option<engine::Held>,
}

impl<'q> Pending<'q> {
    pub(crate) fn new(desc: &'q engine::Description, held: engine::Held) -> Pending<'q> {
        Pending {
            desc,
            held: Some(held),
        }
    }

    /// The message's priority.
    pub fn priority(&self) -> u32 {
        self.held.as_ref().map_or(0, |h| h.prio)
    }

    /// The message's length: it is in `msgbuf[..len]`.
    #[allow(clippy::len_without_is_empty, reason = "the length of a message")]
    pub fn len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.len)
    }

    /// Acknowledges the message: it leaves the queue for good, and its slot
    /// is free for a sender.
    ///
    /// # Errors
    /// `InvalidData` (a [`crate::Error::Corrupted`] inside, errno
    /// `EBADMSG`) if this process does not hold the message any more (the
    /// queue file was damaged and repaired meanwhile, or the call comes
    /// from a forked child, which holds nothing), or the queue was damaged.
    #[inline]
    pub fn ack(mut self) -> Result<(), io::Error> {
        match self.held.take() {
            Some(h) => Ok(self.desc.ack(h)?),
            None => Ok(()),
        }
    }

    /// Returns the message to the queue, ahead of every message of its
    /// priority sent after it; it will be delivered again. Into an empty
    /// queue, it notifies like a send (see [`PosixMq::notify`]).
    ///
    /// # Errors
    /// As [`ack`](Pending::ack).
    pub fn nack(mut self) -> Result<(), io::Error> {
        match self.held.take() {
            Some(h) => Ok(self.desc.nack(h)?),
            None => Ok(()),
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            // Nothing to tell: a message this process no longer holds is
            // someone else's.
            let _ = self.desc.nack(h);
        }
    }
}

impl Debug for Pending<'_> {
    fn fmt(&self, fmtr: &mut Formatter<'_>) -> fmt::Result {
        fmtr.debug_struct("Pending")
            .field("priority", &self.priority())
            .field("len", &self.len())
            .finish()
    }
}

#[doc(hidden)]
impl PosixMq {
    /// Crash-test hook, not part of the API: takes the queue lock, does the
    /// first half of a send (`mid_receive == false`) or a receive, calls
    /// `on_locked`, and sleeps holding the lock until the process is killed.
    pub fn __die_holding_lock(&self, mid_receive: bool, on_locked: &dyn Fn()) -> ! {
        let stage = if mid_receive {
            engine::Stage::MidReceive
        } else {
            engine::Stage::MidSend
        };
        self.h.desc().die_holding_lock(stage, on_locked)
    }
}

impl Debug for PosixMq {
    fn fmt(&self, fmtr: &mut Formatter<'_>) -> fmt::Result {
        fmtr.debug_struct("PosixMq")
            .field(
                "name",
                &String::from_utf8_lossy(self.h.desc().queue().name()),
            )
            .field("fd", &self.h.raw_fd())
            .finish()
    }
}

/// An iterator that receives from a borrowed [`PosixMq`].
///
/// # Panics
/// `next()` panics on errors other than `WouldBlock`, as `posixmq`'s does.
#[derive(Clone)]
pub struct Iter<'a> {
    mq: &'a PosixMq,
    max_msg_len: usize,
}

impl Iterator for Iter<'_> {
    type Item = (u32, Vec<u8>);
    fn next(&mut self) -> Option<(u32, Vec<u8>)> {
        let mut buf = vec![0; self.max_msg_len];
        match self.mq.recv(&mut buf) {
            Err(ref e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) => panic!("Cannot receive from posix message queue: {e}"),
            Ok((priority, len)) => {
                buf.truncate(len);
                Some((priority, buf))
            }
        }
    }
}

/// An iterator that receives from an owned [`PosixMq`].
///
/// # Panics
/// As [`Iter`].
pub struct IntoIter {
    mq: PosixMq,
    max_msg_len: usize,
}

impl Iterator for IntoIter {
    type Item = (u32, Vec<u8>);
    fn next(&mut self) -> Option<(u32, Vec<u8>)> {
        Iter {
            mq: &self.mq,
            max_msg_len: self.max_msg_len,
        }
        .next()
    }
}

impl<'a> IntoIterator for &'a PosixMq {
    type Item = (u32, Vec<u8>);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        Iter {
            mq: self,
            max_msg_len: self.h.desc().queue().geometry().msgsize,
        }
    }
}

impl IntoIterator for PosixMq {
    type Item = (u32, Vec<u8>);
    type IntoIter = IntoIter;
    fn into_iter(self) -> IntoIter {
        let max_msg_len = self.h.desc().queue().geometry().msgsize;
        IntoIter {
            mq: self,
            max_msg_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_convert_like_posixmq() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(5, 7);
        let ts = deadline_to_realtime(t).unwrap();
        assert_eq!((ts.tv_sec, ts.tv_nsec), (5, 7));
        let t = SystemTime::UNIX_EPOCH - Duration::new(1, 250_000_000);
        let ts = deadline_to_realtime(t).unwrap();
        assert_eq!((ts.tv_sec, ts.tv_nsec), (-2, 750_000_000));
        assert_eq!(
            timeout_to_realtime(Duration::MAX).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn names_get_a_slash() {
        assert_eq!(with_slash(b"q").unwrap(), b"/q");
        assert_eq!(with_slash(b"/q").unwrap(), b"/q");
        assert_eq!(with_slash(b"").unwrap(), b"/");
        assert_eq!(
            with_slash(b"a\0").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn posixmq_is_send_sync() {
        assert_send_sync::<PosixMq>();
    }
}
