//! The kernel's message queues, through libc's `mq_*`: the only unsafe code
//! in mqtool, each call with its `// SAFETY:` reason.
#![allow(unsafe_code)]

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::path::Path;

/// Where Linux keeps the limits of unprivileged `mq_open`.
const SYSCTLS: &str = "/proc/sys/fs/mqueue";
/// The largest capacity an unprivileged `mq_open` may ask for.
const MSG_MAX: &str = "/proc/sys/fs/mqueue/msg_max";
/// The largest message size an unprivileged `mq_open` may ask for.
const MSGSIZE_MAX: &str = "/proc/sys/fs/mqueue/msgsize_max";

/// An open kernel queue, already unlinked (it disappears when dropped), or
/// still named for other processes to open (see [`create_fitted_named`]);
/// then its name is removed when dropped.
pub struct KernelMq {
    mqd: libc::mqd_t,
    /// The name to unlink when dropped, for a queue left named.
    named: Option<CString>,
}

impl KernelMq {
    /// `mq_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600, {maxmsg,
    /// msgsize})`, then `mq_unlink(name)` so that nothing is left behind;
    /// with `keep`, the name stays until the queue is dropped, for other
    /// processes to open.
    ///
    /// # Errors
    /// As `mq_open`: EINVAL when `maxmsg` is over `fs.mqueue.msg_max`,
    /// EEXIST, EMFILE, ENOMEM …
    pub fn create(name: &str, maxmsg: i64, msgsize: i64, keep: bool) -> io::Result<KernelMq> {
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
        if keep {
            return Ok(KernelMq {
                mqd,
                named: Some(cname),
            });
        }
        let q = KernelMq { mqd, named: None };
        // SAFETY: `cname` is NUL-terminated and outlives the call.
        if unsafe { libc::mq_unlink(cname.as_ptr()) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(q)
    }

    /// `mq_open(name, O_RDWR | O_CLOEXEC)`: a queue another process made.
    pub fn open(name: &str) -> io::Result<KernelMq> {
        let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `cname` is NUL-terminated and outlives the call; without
        // O_CREAT mq_open reads no variadic argument.
        let mqd = unsafe { libc::mq_open(cname.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if mqd == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(KernelMq { mqd, named: None })
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
        if let Some(name) = &self.named {
            // SAFETY: `name` is NUL-terminated and outlives the call.
            unsafe {
                libc::mq_unlink(name.as_ptr());
            }
        }
    }
}

/// A kernel queue as close to the one asked for as this system allows.
pub struct Fitted {
    /// The queue.
    pub mq: KernelMq,
    /// Its capacity: the one asked for, or less when the limits forced it.
    pub depth: i64,
    /// What it took, or why the depth is smaller.
    pub notes: Vec<String>,
}

/// The result of [`create_fitted`].
pub enum Fit {
    /// A queue.
    Made(Fitted),
    /// No kernel queue can take such messages here; why.
    Impossible(String),
}

/// Makes a kernel queue of `maxmsg` messages of `msgsize` bytes, if at all
/// possible:
///
/// - over `fs.mqueue.msg_max` or `msgsize_max` (EINVAL), the limit is raised
///   just for the `mq_open` when it is writable (root) and restored at once
///   by a guard, also on error or panic. Meanwhile an exclusive `flock` on
///   the sysctl directory keeps other mqtool processes from doing the same,
///   and the calling thread holds back SIGINT, SIGTERM, SIGHUP and SIGQUIT
///   (the caller must be the only thread of the process).
/// - when `msg_max` cannot be raised, the queue gets that capacity;
/// - over RLIMIT_MSGQUEUE (EMFILE), the capacity is halved until it fits.
///
/// # Errors
/// As [`KernelMq::create`], for other errors.
pub fn create_fitted(name: &str, maxmsg: i64, msgsize: i64) -> io::Result<Fit> {
    fit(name, maxmsg, msgsize, false)
}

/// [`create_fitted`], leaving the queue named for other processes to open
/// until it is dropped.
pub fn create_fitted_named(name: &str, maxmsg: i64, msgsize: i64) -> io::Result<Fit> {
    fit(name, maxmsg, msgsize, true)
}

fn fit(name: &str, maxmsg: i64, msgsize: i64, keep: bool) -> io::Result<Fit> {
    let mut depth = maxmsg;
    let mut why_less = None;
    let mut retries = 0;
    loop {
        let err = match KernelMq::create(name, depth, msgsize, keep) {
            Ok(mq) => return Ok(Fit::Made(fitted(mq, maxmsg, depth, why_less, Vec::new()))),
            Err(e) => e,
        };
        match err.raw_os_error() {
            Some(libc::EINVAL) => match raised_for_open(name, depth, msgsize, keep) {
                Raise::Made(mq, notes) => {
                    return Ok(Fit::Made(fitted(mq, maxmsg, depth, why_less, notes)));
                }
                Raise::Failed(e, notes) => match e.raw_os_error() {
                    Some(libc::EMFILE) if depth > 1 && notes.is_empty() => {
                        depth /= 2;
                        why_less = Some(rlimit_reason());
                    }
                    _ => {
                        return Err(with_notes(e, &notes));
                    }
                },
                Raise::DepthLimit(limit, why) if limit >= 1 && limit < depth => {
                    depth = limit;
                    why_less = Some(why);
                }
                Raise::SizeLimit(why) => return Ok(Fit::Impossible(why)),
                Raise::Retry if retries < 3 => retries += 1,
                Raise::DepthLimit(..) | Raise::Retry => return Err(err),
            },
            Some(libc::EMFILE) if depth > 1 => {
                depth /= 2;
                why_less = Some(rlimit_reason());
            }
            _ => return Err(err),
        }
    }
}

fn fitted(
    mq: KernelMq,
    maxmsg: i64,
    depth: i64,
    why_less: Option<String>,
    mut notes: Vec<String>,
) -> Fitted {
    if depth < maxmsg {
        let why = why_less.unwrap_or_default();
        notes.insert(
            0,
            format!("the kernel queue has depth {depth}, not {maxmsg}: {why}"),
        );
    }
    Fitted { mq, depth, notes }
}

/// An error that also carries what the notes say (a sysctl that could not be
/// restored must not go unsaid).
fn with_notes(e: io::Error, notes: &[String]) -> io::Error {
    if notes.is_empty() {
        e
    } else {
        io::Error::new(
            e.kind(),
            format!("{}; {}", super::super::io_message(&e), notes.join("; ")),
        )
    }
}

fn rlimit_reason() -> String {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is valid for writes of one rlimit.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_MSGQUEUE, &raw mut rl) } == 0 {
        format!(" ({} bytes)", rl.rlim_cur)
    } else {
        String::new()
    };
    format!(
        "a deeper one would put this user's kernel queues over RLIMIT_MSGQUEUE{limit}, which only CAP_SYS_RESOURCE can raise"
    )
}

/// What [`raised_for_open`] did.
enum Raise {
    /// The queue, and notes on the limits raised and restored.
    Made(KernelMq, Vec<String>),
    /// `mq_open` failed even so (notes: limits that could not be restored).
    Failed(io::Error, Vec<String>),
    /// `msg_max` is this and cannot be raised (why).
    DepthLimit(i64, String),
    /// `msgsize_max` is too small and cannot be raised (why).
    SizeLimit(String),
    /// Both limits are high enough already (another process may have just
    /// restored one): try again.
    Retry,
}

fn read_limit(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn sysctl_name(path: &Path) -> String {
    let path = path.to_string_lossy();
    path.trim_start_matches("/proc/sys/").replace('/', ".")
}

/// `mq_open` with `fs.mqueue.msg_max` and `msgsize_max` raised as needed for
/// that call only.
fn raised_for_open(name: &str, depth: i64, msgsize: i64, keep: bool) -> Raise {
    // Declared first, dropped last: the limits are restored before the lock
    // and the signals are let go.
    let _critical = Critical::enter();
    let (Some(depth_max), Some(size_max)) = (read_limit(MSG_MAX), read_limit(MSGSIZE_MAX)) else {
        return Raise::Retry;
    };
    let mut raised = Vec::new();
    if msgsize > size_max {
        match Raised::new(Path::new(MSGSIZE_MAX), size_max, msgsize) {
            Ok(r) => raised.push(r),
            Err(e) => {
                return Raise::SizeLimit(format!(
                    "the kernel's mq takes messages of at most {size_max} bytes here (fs.mqueue.msgsize_max, which cannot be raised: {})",
                    super::super::io_message(&e)
                ));
            }
        }
    }
    if depth > depth_max {
        match Raised::new(Path::new(MSG_MAX), depth_max, depth) {
            Ok(r) => raised.push(r),
            Err(e) => {
                return Raise::DepthLimit(
                    depth_max,
                    format!(
                        "fs.mqueue.msg_max is {depth_max} and cannot be raised here ({})",
                        super::super::io_message(&e)
                    ),
                );
            }
        }
    }
    if raised.is_empty() {
        return Raise::Retry;
    }
    let q = KernelMq::create(name, depth, msgsize, keep);
    let mut notes = Vec::new();
    let mut unrestored = Vec::new();
    for r in raised {
        let (what, old, new) = (sysctl_name(r.path), r.old, r.new);
        match r.restore() {
            Ok(()) => notes.push(format!(
                "{what} ({old}) was raised for the creation of a kernel queue and restored at once"
            )),
            Err(e) => unrestored.push(format!(
                "{what} was raised from {old} to {new} and could NOT be restored: {}",
                super::super::io_message(&e)
            )),
        }
    }
    match q {
        Ok(q) => {
            notes.extend(unrestored);
            Raise::Made(q, notes)
        }
        Err(e) => Raise::Failed(e, unrestored),
    }
}

/// A sysctl raised for a moment: written back to its former value by
/// [`Raised::restore`], or when dropped (on an early return or a panic).
struct Raised<'a> {
    path: &'a Path,
    old: i64,
    new: i64,
    restored: bool,
}

impl<'a> Raised<'a> {
    fn new(path: &'a Path, old: i64, new: i64) -> io::Result<Raised<'a>> {
        std::fs::write(path, new.to_string())?;
        Ok(Raised {
            path,
            old,
            new,
            restored: false,
        })
    }

    fn restore(mut self) -> io::Result<()> {
        self.restored = true;
        std::fs::write(self.path, self.old.to_string())
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        if !self.restored {
            let _ = std::fs::write(self.path, self.old.to_string());
        }
    }
}

/// While alive: an exclusive `flock` on the sysctl directory (other mqtool
/// processes raising the same limits wait, so that none of them restores a
/// value another one raised), and the calling thread's SIGINT, SIGTERM,
/// SIGHUP and SIGQUIT held back, so that they cannot end the process between
/// a raise and its restore. Both are best effort.
struct Critical {
    _lock: Option<Flock<File>>,
    mask: Option<SigSet>,
}

impl Critical {
    fn enter() -> Critical {
        let mut hold = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            hold.add(s);
        }
        let mask = hold.thread_swap_mask(SigmaskHow::SIG_BLOCK).ok();
        let lock = File::open(SYSCTLS)
            .ok()
            .and_then(|f| Flock::lock(f, FlockArg::LockExclusive).ok());
        Critical { _lock: lock, mask }
    }
}

impl Drop for Critical {
    fn drop(&mut self) {
        if let Some(mask) = &self.mask {
            let _ = mask.thread_set_mask();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn a_raised_limit_comes_back_on_restore_error_and_panic() {
        let dir = std::env::temp_dir().join(format!("mqtool-raised-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("msg_max");
        std::fs::write(&path, "10").unwrap();

        let r = Raised::new(&path, 10, 256).unwrap();
        assert_eq!(value(&path), "256");
        r.restore().unwrap();
        assert_eq!(value(&path), "10");

        // An early return (an error) drops the guard.
        let early = || -> io::Result<()> {
            let _r = Raised::new(&path, 10, 256)?;
            assert_eq!(value(&path), "256");
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        };
        assert!(early().is_err());
        assert_eq!(value(&path), "10");

        // So does unwinding from a panic.
        let panicked = std::panic::catch_unwind(|| {
            let _r = Raised::new(&path, 10, 256).unwrap();
            assert_eq!(value(&path), "256");
            panic!("in the middle of an mq_open");
        });
        assert!(panicked.is_err());
        assert_eq!(value(&path), "10");

        // A value that cannot be written leaves nothing to restore.
        assert!(Raised::new(&dir.join("no/such/file"), 10, 256).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sysctl_names() {
        assert_eq!(sysctl_name(Path::new(MSG_MAX)), "fs.mqueue.msg_max");
        assert_eq!(sysctl_name(Path::new(MSGSIZE_MAX)), "fs.mqueue.msgsize_max");
    }
}
