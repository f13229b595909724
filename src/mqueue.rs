//! The `nix::mqueue`-shaped front door: `mq_open`, `mq_send`, … with nix's
//! own types (`MQ_OFlag`, `Mode`, `MqAttr`, `TimeSpec`, `Errno`), so code
//! written against `nix::mqueue` ports by changing its `use` lines.
//!
//! Unlike the [`PosixMq`](crate::PosixMq) front door, blocking calls return
//! `EINTR` when a signal handler interrupts them, as the C functions do.
//!
//! Every type in these signatures is re-exported here ([`MQ_OFlag`],
//! [`MqAttr`], [`Mode`], [`TimeSpec`], [`SigEvent`], [`Errno`] …), so a
//! program needs no `nix` dependency of its own.
//!
//! ```
//! use shmq::mqueue::*;
//! # let dir = tempfile_dir();
//! # fn tempfile_dir() -> std::path::PathBuf {
//! #     let d = std::env::temp_dir().join(format!("shmq-doc-{}", std::process::id()));
//! #     std::fs::create_dir_all(&d).unwrap(); d }
//! # unsafe { std::env::set_var("SHMQ_DIR", &dir) };
//! let attr = MqAttr::new(0, 4, 64, 0);
//! let mq = mq_open("/doc-example", MQ_OFlag::O_CREAT | MQ_OFlag::O_RDWR,
//!                  Mode::S_IRUSR | Mode::S_IWUSR, Some(&attr))?;
//! mq_send(&mq, b"hello", 7)?;
//! let mut buf = [0u8; 64];
//! let mut prio = 0;
//! let n = mq_receive(&mq, &mut buf, &mut prio)?;
//! assert_eq!((&buf[..n], prio), (&b"hello"[..], 7));
//! mq_close(mq)?;
//! mq_unlink("/doc-example")?;
//! # Ok::<(), Errno>(())
//! ```

use crate::engine::{Handle, OpenRequest};
use crate::notify::Notification;
use nix::NixPath;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

pub use nix::errno::Errno;
pub use nix::mqueue::{MQ_OFlag, MqAttr, mq_attr_member_t};
pub use nix::sys::signal::{SigEvent, SigevNotify, Signal};
pub use nix::sys::stat::Mode;
pub use nix::sys::time::{TimeSpec, TimeValLike};

/// Result type of this module: the error is the errno.
pub type Result<T> = nix::Result<T>;

/// An open queue descriptor. Not `Clone`, like nix's, to prevent
/// use-after-close; [`MqdT::try_clone`] makes a second descriptor sharing
/// the open description.
#[derive(Debug)]
pub struct MqdT(pub(crate) Handle);

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqdT").field("fd", &self.raw_fd()).finish()
    }
}

impl MqdT {
    /// `dup`: another descriptor of the same open description (shared
    /// `O_NONBLOCK`).
    ///
    /// # Errors
    /// `EMFILE` when out of file descriptors.
    pub fn try_clone(&self) -> Result<MqdT> {
        Ok(MqdT(self.0.try_clone()?))
    }
}

impl MqdT {
    /// A descriptor for `fd`, a duplicate (`dup`, `F_DUPFD`) of this one's
    /// file descriptor made outside this library: it shares this open
    /// description. For the C API, which meets such duplicates.
    #[doc(hidden)]
    pub fn __adopt_duplicate(&self, fd: std::os::fd::OwnedFd) -> MqdT {
        MqdT(self.0.with_fd(fd))
    }
}

/// The descriptor is a real file descriptor: the queue file's, close-on-exec.
/// It identifies the queue but is not pollable for messages.
impl AsFd for MqdT {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.fd()
    }
}

/// See [`AsFd`].
impl AsRawFd for MqdT {
    fn as_raw_fd(&self) -> RawFd {
        self.0.raw_fd()
    }
}

fn errno<T>(r: crate::Result<T>) -> Result<T> {
    r.map_err(|e| e.errno())
}

/// `mq_open(name, oflag, mode, attr)`—Opens or creates a message queue.
///
/// `attr` matters only when the queue is created; `None` gives 10 messages
/// of 8192 bytes. `O_CLOEXEC` is implied.
///
/// # Errors
/// `EACCES`, `EEXIST`, `EINVAL` (bad attr, bad name, access mode 3 on an
/// existing queue), `EMFILE`, `ENAMETOOLONG`, `ENFILE`, `ENOENT`, `ENOMEM`,
/// `ENOSPC`, `EOVERFLOW`; `EBADMSG`/`EPROTO` for a file that is not a
/// usable queue; for the queue directory (`SHMQ_DIR`, else
/// `/dev/shm/shmq`, see [`crate::name`]): `ENOENT` when missing, `EINVAL`
/// when relative, `ENOTDIR`, and `EACCES` when not trusted.
pub fn mq_open<P>(name: &P, oflag: MQ_OFlag, mode: Mode, attr: Option<&MqAttr>) -> Result<MqdT>
where
    P: ?Sized + NixPath,
{
    let bits = oflag.bits();
    name.with_nix_path(|cstr| {
        let req = OpenRequest {
            name: cstr.to_bytes(),
            dir: None,
            access: bits & libc::O_ACCMODE,
            create: bits & libc::O_CREAT != 0,
            exclusive: bits & libc::O_EXCL != 0,
            nonblock: bits & libc::O_NONBLOCK != 0,
            mode: mode.bits(),
            attr: attr.map(|a| (a.maxmsg(), a.msgsize())),
        };
        errno(Handle::open(&req)).map(MqdT)
    })?
}

/// `mq_unlink(name)`—Removes a message queue's name; open descriptors keep
/// working and the memory goes with the last one.
///
/// # Errors
/// `EACCES`, `ENAMETOOLONG`, `ENOENT`, `EINVAL`.
pub fn mq_unlink<P>(name: &P) -> Result<()>
where
    P: ?Sized + NixPath,
{
    name.with_nix_path(|cstr| errno(crate::engine::unlink(cstr.to_bytes(), None)))?
}

/// `mq_close(mqdes)`—Closes a descriptor (and removes this process's
/// notification registration on the queue, if any).
///
/// # Errors
/// None in practice.
pub fn mq_close(mqdes: MqdT) -> Result<()> {
    drop(mqdes);
    Ok(())
}

/// `mq_receive(mqdes, msg, len, prio)`—Removes the oldest message of the
/// highest priority; returns its length and stores its priority.
///
/// # Errors
/// `EAGAIN`, `EBADF`, `EINTR`, `EMSGSIZE`; `EBADMSG` once the queue is
/// damaged (its file shrank under this process, see the README).
pub fn mq_receive(mqdes: &MqdT, message: &mut [u8], msg_prio: &mut u32) -> Result<usize> {
    let (len, prio) = errno(mqdes.0.desc().receive(message, None))?;
    *msg_prio = prio;
    Ok(len)
}

/// `mq_timedreceive(mqdes, msg, len, prio, abstime)`—As [`mq_receive`],
/// failing with `ETIMEDOUT` if no message arrives by `abstime`
/// (`CLOCK_REALTIME`).
///
/// # Errors
/// As [`mq_receive`], plus `ETIMEDOUT` and `EINVAL` (bad `abstime`).
pub fn mq_timedreceive(
    mqdes: &MqdT,
    message: &mut [u8],
    msg_prio: &mut u32,
    abstime: &TimeSpec,
) -> Result<usize> {
    let (len, prio) = errno(mqdes.0.desc().receive(message, Some(abstime.as_ref())))?;
    *msg_prio = prio;
    Ok(len)
}

/// `mq_send(mqdes, msg, len, prio)`—Adds a message.
///
/// # Errors
/// `EAGAIN`, `EBADF`, `EINTR`, `EINVAL` (priority ≥ 32768), `EMSGSIZE`;
/// `EBADMSG` once the queue is damaged.
pub fn mq_send(mqdes: &MqdT, message: &[u8], msq_prio: u32) -> Result<()> {
    errno(mqdes.0.desc().send(msq_prio, message, None))
}

/// `mq_timedsend(mqdes, msg, len, prio, abstime)`—As [`mq_send`], failing
/// with `ETIMEDOUT` if there is no room by `abstime` (`CLOCK_REALTIME`).
///
/// # Errors
/// As [`mq_send`], plus `ETIMEDOUT` and `EINVAL` (bad `abstime`).
pub fn mq_timedsend(mqdes: &MqdT, message: &[u8], msq_prio: u32, abstime: &TimeSpec) -> Result<()> {
    errno(
        mqdes
            .0
            .desc()
            .send(msq_prio, message, Some(abstime.as_ref())),
    )
}

/// `mq_notify(mqdes, sevp)`—Registers this process to be told when a
/// message arrives in the empty queue while no receiver waits; `None`
/// removes the registration (a no-op for a process that is not the owner).
/// Supports `SIGEV_NONE` and `SIGEV_SIGNAL`; for `SIGEV_THREAD` use
/// [`mq_notify_thread`].
///
/// # Errors
/// `EBUSY` when a live process, this one included, is registered; `EINVAL`
/// for another `sigev_notify` or a bad signal number.
pub fn mq_notify(mqdes: &MqdT, notification: Option<&SigEvent>) -> Result<()> {
    let how = match notification.map(SigEvent::sigevent) {
        None => None,
        Some(ev) => Some(match ev.sigev_notify {
            libc::SIGEV_NONE => Notification::None,
            libc::SIGEV_SIGNAL => Notification::Signal {
                signo: ev.sigev_signo,
                value: ev.sigev_value.sival_ptr as usize as u64,
            },
            _ => return Err(Errno::EINVAL),
        }),
    };
    errno(mqdes.0.notify(how))
}

/// `mq_notify` with `SIGEV_THREAD`: `f` runs once, in a new thread, when a
/// message arrives in the empty queue while no receiver waits.
///
/// # Errors
/// As [`mq_notify`].
pub fn mq_notify_thread<F: FnOnce() + Send + 'static>(mqdes: &MqdT, f: F) -> Result<()> {
    let deliver = Box::new(move || {
        let _ = std::thread::Builder::new()
            .name("shmq-notified".into())
            .spawn(f);
    });
    errno(mqdes.0.notify(Some(Notification::Thread { deliver })))
}

/// `mq_notify` with `SIGEV_THREAD` for foreign callers that start their own
/// thread (with their own attributes): `deliver` runs once on the helper
/// thread that waited for the event.
///
/// # Errors
/// As [`mq_notify`].
#[doc(hidden)]
pub fn mq_notify_deliver(mqdes: &MqdT, deliver: Box<dyn FnOnce() + Send + 'static>) -> Result<()> {
    errno(mqdes.0.notify(Some(Notification::Thread { deliver })))
}

/// `mq_timedsend` (or `mq_send` without `abstime`) for the C API: a sleep
/// returns `ERESTART` every 50 ms so that the caller can act on a pending
/// `pthread_cancel` (its frames must not be unwound through) and call again.
///
/// # Errors
/// As [`mq_timedsend`], plus `ERESTART`.
#[doc(hidden)]
pub fn __mq_send_cancellable(
    mqdes: &MqdT,
    message: &[u8],
    msq_prio: u32,
    abstime: Option<&TimeSpec>,
) -> Result<()> {
    errno(
        mqdes
            .0
            .desc()
            .send_with(msq_prio, message, abstime.map(AsRef::as_ref), true),
    )
}

/// `mq_timedreceive` (or `mq_receive`) for the C API; see
/// [`__mq_send_cancellable`].
///
/// # Errors
/// As [`mq_timedreceive`], plus `ERESTART`.
#[doc(hidden)]
pub fn __mq_receive_cancellable(
    mqdes: &MqdT,
    message: &mut [u8],
    msg_prio: &mut u32,
    abstime: Option<&TimeSpec>,
) -> Result<usize> {
    let (len, prio) = errno(mqdes.0.desc().receive_with(
        message,
        abstime.map(AsRef::as_ref),
        true,
    ))?;
    *msg_prio = prio;
    Ok(len)
}

/// `mq_receive` with acknowledgement: as [`mq_receive`], but the message
/// stays pending until the returned [`Pending`](crate::Pending) is
/// acknowledged, or goes back to the queue when it is returned or dropped
/// or this process ends (see [`PosixMq::recv_pending`](crate::PosixMq::recv_pending)).
/// The message is in `message[..pending.len()]`.
///
/// # Errors
/// As [`mq_receive`].
pub fn mq_receive_pending<'a>(
    mqdes: &'a MqdT,
    message: &mut [u8],
    msg_prio: &mut u32,
) -> Result<crate::Pending<'a>> {
    let desc = mqdes.0.desc();
    let held = errno(desc.receive_pending_with(message, None, false))?;
    *msg_prio = held.prio;
    Ok(crate::Pending::new(desc, held))
}

/// [`mq_receive_pending`], failing with `ETIMEDOUT` if no message arrives
/// by `abstime` (`CLOCK_REALTIME`).
///
/// # Errors
/// As [`mq_timedreceive`].
pub fn mq_timedreceive_pending<'a>(
    mqdes: &'a MqdT,
    message: &mut [u8],
    msg_prio: &mut u32,
    abstime: &TimeSpec,
) -> Result<crate::Pending<'a>> {
    let desc = mqdes.0.desc();
    let held = errno(desc.receive_pending_with(message, Some(abstime.as_ref()), false))?;
    *msg_prio = held.prio;
    Ok(crate::Pending::new(desc, held))
}

/// A pending message for the C API, which keeps it with its descriptor.
#[doc(hidden)]
#[derive(Debug)]
pub struct __PendingToken(crate::engine::Held);

/// [`mq_timedreceive_pending`] (or the blocking one without `abstime`) for
/// the C API, cancellable as [`__mq_receive_cancellable`]; returns the
/// length and the hold, which [`__mq_settle`] ends.
///
/// # Errors
/// As [`mq_timedreceive`], plus `ERESTART`.
#[doc(hidden)]
pub fn __mq_receive_pending_cancellable(
    mqdes: &MqdT,
    message: &mut [u8],
    msg_prio: &mut u32,
    abstime: Option<&TimeSpec>,
) -> Result<(usize, __PendingToken)> {
    let held = errno(mqdes.0.desc().receive_pending_with(
        message,
        abstime.map(AsRef::as_ref),
        true,
    ))?;
    *msg_prio = held.prio;
    Ok((held.len, __PendingToken(held)))
}

/// Acknowledges (`ack`) or returns a message held by `t`, received from
/// `mqdes`'s queue.
///
/// # Errors
/// `EBADMSG` if this process does not hold it (another queue's, a forked
/// child's, or returned by a repair of a damaged queue).
#[doc(hidden)]
pub fn __mq_settle(mqdes: &MqdT, t: __PendingToken, ack: bool) -> Result<()> {
    let desc = mqdes.0.desc();
    errno(if ack { desc.ack(t.0) } else { desc.nack(t.0) })
}

fn to_mq_attr(a: crate::engine::Attr) -> MqAttr {
    MqAttr::new(
        a.flags as mq_attr_member_t,
        a.maxmsg as mq_attr_member_t,
        a.msgsize as mq_attr_member_t,
        a.curmsgs as mq_attr_member_t,
    )
}

/// `mq_getattr(mqdes)`—Flags, capacity, message size and current count.
///
/// # Errors
/// `EBADMSG` once the queue is damaged; none otherwise in practice.
pub fn mq_getattr(mqd: &MqdT) -> Result<MqAttr> {
    errno(mqd.0.desc().attr()).map(to_mq_attr)
}

/// `mq_setattr(mqdes, newattr)`—Sets or clears `O_NONBLOCK` (nothing else
/// can change); returns the old attributes.
///
/// # Errors
/// `EINVAL` if `mq_flags` has any bit besides `O_NONBLOCK`.
pub fn mq_setattr(mqd: &MqdT, newattr: &MqAttr) -> Result<MqAttr> {
    let flags = newattr.flags();
    if flags & !(libc::O_NONBLOCK as mq_attr_member_t) != 0 {
        return Err(Errno::EINVAL);
    }
    let old = mq_getattr(mqd)?;
    mqd.0.desc().set_nonblocking(flags != 0);
    Ok(old)
}

/// Sets `O_NONBLOCK`; returns the old attributes.
///
/// # Errors
/// None in practice.
pub fn mq_set_nonblock(mqd: &MqdT) -> Result<MqAttr> {
    let old = mq_getattr(mqd)?;
    mqd.0.desc().set_nonblocking(true);
    Ok(old)
}

/// Clears `O_NONBLOCK`; returns the old attributes.
///
/// # Errors
/// None in practice.
pub fn mq_remove_nonblock(mqd: &MqdT) -> Result<MqAttr> {
    let old = mq_getattr(mqd)?;
    mqd.0.desc().set_nonblocking(false);
    Ok(old)
}
