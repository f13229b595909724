//! The kernel's message queues, through libc's `mq_*`: the only unsafe code
//! in mqtool, each call with its `// SAFETY:` reason.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;

/// Where Linux keeps the largest capacity an unprivileged `mq_open` may ask
/// for.
const MSG_MAX: &str = "/proc/sys/fs/mqueue/msg_max";

/// An open kernel queue, already unlinked: it disappears when dropped.
pub struct KernelMq {
    mqd: libc::mqd_t,
}

impl KernelMq {
    /// `mq_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600, {maxmsg,
    /// msgsize})`, then `mq_unlink(name)` so that nothing is left behind.
    ///
    /// # Errors
    /// As `mq_open`: EINVAL when `maxmsg` is over `fs.mqueue.msg_max`,
    /// EEXIST, EMFILE, ENOMEM …
    pub fn create(name: &str, maxmsg: i64, msgsize: i64) -> io::Result<KernelMq> {
        let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: mq_attr is a C struct of integers only, for which all-zero
        // bytes are a valid value.
        let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
        attr.mq_maxmsg = maxmsg;
        attr.mq_msgsize = msgsize;
        let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC;
        // SAFETY: `cname` is NUL-terminated and `attr` is a valid mq_attr;
        // both outlive the call. With O_CREAT mq_open reads exactly two
        // variadic arguments: the mode (a mode_t, passed as c_uint as C's
        // default promotions do) and a pointer to the attributes.
        let mqd =
            unsafe { libc::mq_open(cname.as_ptr(), flags, 0o600 as libc::c_uint, &raw mut attr) };
        if mqd == -1 {
            return Err(io::Error::last_os_error());
        }
        let q = KernelMq { mqd };
        // SAFETY: `cname` is NUL-terminated and outlives the call.
        if unsafe { libc::mq_unlink(cname.as_ptr()) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(q)
    }

    /// `mq_send`, retried on EINTR.
    pub fn send(&self, msg: &[u8], priority: u32) -> io::Result<()> {
        loop {
            // SAFETY: `self.mqd` is an open queue descriptor owned by `self`;
            // `msg` is valid for reads of `msg.len()` bytes.
            let r = unsafe { libc::mq_send(self.mqd, msg.as_ptr().cast(), msg.len(), priority) };
            if r == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// `mq_receive`, retried on EINTR; returns the message length.
    pub fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut priority = 0;
        loop {
            // SAFETY: `self.mqd` is an open queue descriptor owned by `self`;
            // `buf` is valid for writes of `buf.len()` bytes and `priority`
            // for one u32.
            let r = unsafe {
                libc::mq_receive(self.mqd, buf.as_mut_ptr().cast(), buf.len(), &mut priority)
            };
            if let Ok(n) = usize::try_from(r) {
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for KernelMq {
    fn drop(&mut self) {
        // SAFETY: `self.mqd` is open and owned by `self`; it is closed only
        // here, once.
        unsafe {
            libc::mq_close(self.mqd);
        }
    }
}

/// A kernel queue of `maxmsg` messages if at all possible: when the kernel
/// limit `fs.mqueue.msg_max` is lower and writable (root), it is raised just
/// for the `mq_open` and restored at once; otherwise the queue gets the
/// limit. Returns the queue, its capacity, and a note when the limit got in
/// the way.
///
/// # Errors
/// As [`KernelMq::create`].
pub fn create_deep(
    name: &str,
    maxmsg: i64,
    msgsize: i64,
) -> io::Result<(KernelMq, i64, Option<String>)> {
    match KernelMq::create(name, maxmsg, msgsize) {
        Ok(q) => return Ok((q, maxmsg, None)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(e),
    }
    let limit: i64 = match std::fs::read_to_string(MSG_MAX)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(l) if l < maxmsg => l,
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    match std::fs::write(MSG_MAX, maxmsg.to_string()) {
        Ok(()) => {
            let q = KernelMq::create(name, maxmsg, msgsize);
            // Restore before anything else can fail.
            let restored = std::fs::write(MSG_MAX, limit.to_string());
            let q = q?;
            let note = match restored {
                Ok(()) => format!(
                    "the kernel's depth-{maxmsg} queue needed fs.mqueue.msg_max raised from {limit} for its creation; restored at once"
                ),
                Err(e) => format!(
                    "fs.mqueue.msg_max was raised from {limit} to {maxmsg} and could NOT be restored: {}",
                    super::super::io_message(&e)
                ),
            };
            Ok((q, maxmsg, Some(note)))
        }
        Err(e) => {
            let q = KernelMq::create(name, limit, msgsize)?;
            let note = format!(
                "the kernel row uses depth {limit}, its limit: fs.mqueue.msg_max is {limit} and cannot be raised here ({})",
                super::super::io_message(&e)
            );
            Ok((q, limit, Some(note)))
        }
    }
}
