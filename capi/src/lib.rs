//! The C API of shmq: `shmq_open`, `shmq_send`, … with the exact signatures
//! and errno behaviour of `mq_open`, `mq_send`, …, using the system's `mqd_t`,
//! `struct mq_attr`, `struct sigevent` and `struct timespec`.
//!
//! # Descriptors
//! A descriptor is an `int`: the file descriptor of the queue file, opened
//! close-on-exec, which this library owns. It is inherited across `fork`
//! (the child's descriptor works and shares `O_NONBLOCK` with the parent's)
//! and closed by `exec`. Anything that is not an open shmq descriptor (-1,
//! a closed one, an ordinary file descriptor, any other number) gives
//! `EBADF`; [`shmq_close`] never closes a file descriptor it does not own.
//! Do not `close(2)` a shmq descriptor: use `shmq_close`.
//!
//! # Errors
//! Every function returns -1 (or `(mqd_t)-1`) and sets `errno` on failure,
//! as the `mq_*` functions do. A blocked call interrupted by a signal
//! handler fails with `EINTR` (unless the handler was installed with
//! `SA_RESTART`). The four send and receive functions are cancellation
//! points, like the `mq_*` ones: a thread blocked in them is cancelled by
//! `pthread_cancel` within about 50 ms. No panic crosses the boundary: an
//! internal panic becomes -1 with `errno = EIO`.
//!
//! Queues live in the queue directory: `SHMQ_DIR`, read at every
//! `shmq_open` and `shmq_unlink`, else `/dev/shm/shmq`. A directory that
//! someone other than root and the caller could have prepared (see the
//! Rust library's `name` module) makes them fail with `EACCES`; a missing
//! one with `ENOENT` (with `O_CREAT`, a missing `SHMQ_DIR` is made, mode
//! 0700), a relative `SHMQ_DIR` with `EINVAL`, a file with `ENOTDIR`.
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

use libc::{c_char, c_int, c_uint, mq_attr, mqd_t, sigevent, size_t, ssize_t, timespec};
use nix::errno::Errno;
use nix::mqueue::{MQ_OFlag, MqAttr};
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;
use shmq::mqueue::{self, MqdT};
use std::ffi::CStr;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};

#[path = "table.rs"]
mod table;
use table::Ref;

/// The descriptor for `fd`, if it is an open shmq descriptor.
#[inline]
fn lookup(fd: mqd_t) -> Result<Ref, Errno> {
    match table::get(fd) {
        Some(mq) => Ok(mq),
        None => adopt_duplicate(fd),
    }
}

/// The device and inode of the file `fd` is open on.
fn file_id(fd: c_int) -> Option<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a struct stat into valid storage, read only on
    // success.
    (unsafe { libc::fstat(fd, st.as_mut_ptr()) } == 0).then(|| {
        // SAFETY: initialised by the successful fstat.
        let st = unsafe { st.assume_init() };
        (st.st_dev, st.st_ino)
    })
}

/// `fd` is not in the table, but may be a `dup` of a descriptor that is
/// (programs that treat `mqd_t` as a file descriptor do that): if it refers
/// to the same open file description as a known descriptor (`kcmp`), it
/// becomes a descriptor of the same queue, sharing its `O_NONBLOCK`.
///
/// No system call when no descriptor is open; one (`fstat`) for a file
/// descriptor that is not open on a queue file of an open descriptor; the
/// `kcmp` comparisons and the table's writer only for one that is.
#[cold]
fn adopt_duplicate(fd: mqd_t) -> Result<Ref, Errno> {
    use std::os::fd::{FromRawFd, OwnedFd};
    const KCMP_FILE: libc::c_long = 0;
    if table::is_empty() || usize::try_from(fd).map_or(true, |i| i >= table::MAX_FD) {
        return Err(Errno::EBADF);
    }
    let file = file_id(fd).ok_or(Errno::EBADF)?;
    if table::with_file(file).next().is_none() {
        return Err(Errno::EBADF);
    }
    // SAFETY: getpid has no preconditions (not cached: a child made by
    // any kind of fork gets its own).
    let pid = unsafe { libc::getpid() };
    // Find and insert as the writer, so two threads cannot adopt the same
    // descriptor twice.
    table::write(|w| {
        if let Some(mq) = table::get(fd) {
            return Ok(mq);
        }
        let original = table::with_file(file)
            .find(|mq| {
                // SAFETY: kcmp only compares two descriptors of this process.
                let r = unsafe {
                    libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, fd, mq.as_raw_fd())
                };
                r == 0
            })
            .ok_or(Errno::EBADF)?;
        // SAFETY: fd is open and, from now on, owned by the new descriptor
        // (as any descriptor passed to shmq_close is); it is below MAX_FD,
        // so the insertion below cannot give it back.
        let adopted = original.__adopt_duplicate(unsafe { OwnedFd::from_raw_fd(fd) });
        drop(original);
        w.insert(adopted, file).map_err(|_| Errno::EBADF)?;
        table::get(fd).ok_or(Errno::EBADF)
    })
}

/// Enters a newly opened descriptor into the table.
fn insert(mq: MqdT) -> Result<mqd_t, Errno> {
    let fd = mq.as_raw_fd();
    let file = file_id(fd).ok_or_else(Errno::last)?;
    // A descriptor beyond the table is dropped (closed) outside the writer.
    let rejected = table::write(|w| w.insert(mq, file).err());
    match rejected {
        None => Ok(fd),
        Some(mq) => {
            drop(mq);
            Err(Errno::EMFILE)
        }
    }
}

unsafe extern "C-unwind" {
    /// glibc's `pthread_testcancel`: acts on a pending cancellation by
    /// unwinding the thread (a forced unwind), hence `C-unwind`.
    fn pthread_testcancel();
}

/// Runs `f` (a send or receive) behind the panic boundary as a
/// cancellation point, as the `mq_*` functions are: a pending
/// `pthread_cancel` is acted on when the call starts, when its sleep is cut
/// short by the engine (`ERESTART`, every 50 ms while asleep; `f` is then
/// called again) and when a signal interrupts it (`EINTR`). Failures set
/// errno and return `err`.
///
/// `f` gets the descriptor through [`hold`], which looks it up once: a
/// call made again after `ERESTART` goes on with the same queue even if
/// the descriptor was closed meanwhile (as a blocked kernel call does).
/// The forced unwind of a cancellation passes only through this frame and
/// the exported function's; it releases the held descriptor on its way.
#[inline(always)]
fn cancellable<T>(err: T, mut f: impl FnMut(&mut Option<Ref>) -> Result<T, Errno>) -> T {
    // SAFETY: see above; pthread_testcancel has no preconditions.
    unsafe { pthread_testcancel() };
    let mut held = None;
    loop {
        let e = match catch_unwind(AssertUnwindSafe(|| f(&mut held))) {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => e,
            Err(_) => Errno::EIO,
        };
        if !after_failure(e) {
            return err;
        }
    }
}

/// The slow end of [`cancellable`]: acts on a pending cancellation where
/// `e` calls for it; true to call again (`ERESTART`), else sets errno.
#[cold]
fn after_failure(e: Errno) -> bool {
    match e {
        Errno::ERESTART => {
            // SAFETY: as in `cancellable`.
            unsafe { pthread_testcancel() };
            true
        }
        _ => {
            if e == Errno::EINTR {
                // SAFETY: as above.
                unsafe { pthread_testcancel() };
            }
            Errno::set_raw(e as i32);
            false
        }
    }
}

/// The descriptor `fd`, looked up at the first call only.
#[inline(always)]
fn hold(held: &mut Option<Ref>, fd: mqd_t) -> Result<&MqdT, Errno> {
    if held.is_none() {
        *held = Some(lookup(fd)?);
    }
    held.as_deref().ok_or(Errno::EBADF)
}

/// Runs `f` behind the panic boundary; failures set errno and return `err`.
fn ffi<T>(err: T, f: impl FnOnce() -> Result<T, Errno>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            Errno::set_raw(e as i32);
            err
        }
        Err(_) => {
            Errno::set_raw(libc::EIO);
            err
        }
    }
}

fn name_arg<'a>(name: *const c_char) -> Result<&'a CStr, Errno> {
    if name.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: the caller passes a NUL-terminated string (the mq_* contract).
    Ok(unsafe { CStr::from_ptr(name) })
}

/// Reads and checks an absolute timeout the way Linux does, before anything
/// else (even the descriptor): `EFAULT` for NULL, `EINVAL` for a negative
/// second or a nanosecond field outside `0..1e9`.
fn timespec_arg(ts: *const timespec) -> Result<TimeSpec, Errno> {
    if ts.is_null() {
        return Err(Errno::EFAULT);
    }
    // SAFETY: non-null; the caller passes a valid timespec (mq_* contract).
    let ts = unsafe { *ts };
    if ts.tv_sec < 0 || !(0..1_000_000_000).contains(&ts.tv_nsec) {
        return Err(Errno::EINVAL);
    }
    Ok(TimeSpec::from(ts))
}

/// Linux checks the priority before the descriptor.
fn prio_arg(prio: c_uint) -> Result<u32, Errno> {
    if prio >= 32768 {
        Err(Errno::EINVAL)
    } else {
        Ok(prio)
    }
}

/// `mq_open` with its optional arguments made explicit: `mode` and `attr`
/// are read only when `oflag` has `O_CREAT`, exactly as the variadic
/// [`shmq_open`] would read them. For callers that cannot call a variadic
/// function.
///
/// # Safety
/// `name` is a NUL-terminated string; `attr`, when `O_CREAT` is set, is NULL
/// or points to a `struct mq_attr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmq_open4(
    name: *const c_char,
    oflag: c_int,
    mode: libc::mode_t,
    attr: *const mq_attr,
) -> mqd_t {
    ffi(-1, || {
        let name = name_arg(name)?;
        let creating = oflag & libc::O_CREAT != 0;
        let attr = if creating && !attr.is_null() {
            // SAFETY: non-null and, with O_CREAT, a valid mq_attr (contract).
            let a = unsafe { &*attr };
            Some(MqAttr::new(0, a.mq_maxmsg, a.mq_msgsize, 0))
        } else {
            None
        };
        let mode = if creating {
            Mode::from_bits_truncate(mode)
        } else {
            Mode::empty()
        };
        let flags = MQ_OFlag::from_bits_retain(oflag);
        mqueue::mq_open(name, flags, mode, attr.as_ref()).and_then(insert)
    })
}

// `mq_open` is variadic. Stable Rust cannot define a variadic function, and
// a C definition linked into a Rust cdylib is not exported. So the variadic
// entry point is a trampoline into `shmq_open4`: by the x86-64 System V ABI
// (§3.5.7) and AAPCS64 (as used on Linux), variadic integer and pointer
// arguments are passed in the same registers as named ones, in order, so
// `name, oflag, mode, attr` arrive in the argument registers of a
// four-argument call whether the caller declared them variadic or not.
// `shmq_open4` reads `mode` and `attr` only when `O_CREAT` is set, that is,
// only when the caller actually passed them.
#[cfg(not(any(
    all(target_os = "linux", target_arch = "x86_64"),
    all(target_os = "linux", target_arch = "aarch64")
)))]
compile_error!("shmq_open's variadic trampoline is written for x86-64 and AArch64 Linux");

/// `mq_open(name, oflag, ... /* mode_t mode, struct mq_attr *attr */)`.
///
/// # Safety
/// As `mq_open`: `name` is a NUL-terminated string; with `O_CREAT`, a mode
/// and a pointer to a `struct mq_attr` (or NULL) follow.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn shmq_open() {
    #[cfg(target_arch = "x86_64")]
    std::arch::naked_asm!("jmp {}", sym shmq_open4);
    #[cfg(target_arch = "aarch64")]
    std::arch::naked_asm!("b {}", sym shmq_open4);
}

/// `mq_close(mqdes)`. Removes this process's notification registration on
/// the queue, if any.
#[unsafe(no_mangle)]
pub extern "C" fn shmq_close(mqdes: mqd_t) -> c_int {
    ffi(-1, || {
        let closed = table::write(|w| w.remove(mqdes)).ok_or(Errno::EBADF)?;
        // The file descriptor closes when the last call using the
        // descriptor is done: here, unless one is in progress.
        drop(closed);
        Ok(0)
    })
}

/// `mq_unlink(name)`.
///
/// # Safety
/// `name` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmq_unlink(name: *const c_char) -> c_int {
    ffi(-1, || mqueue::mq_unlink(name_arg(name)?).map(|()| 0))
}

fn write_attr(out: *mut mq_attr, a: &MqAttr) {
    // SAFETY: callers check `out` is non-null; the caller of the C function
    // passes a valid mq_attr.
    unsafe {
        (*out).mq_flags = a.flags();
        (*out).mq_maxmsg = a.maxmsg();
        (*out).mq_msgsize = a.msgsize();
        (*out).mq_curmsgs = a.curmsgs();
    }
}

/// `mq_getattr(mqdes, attr)`.
///
/// # Safety
/// `attr` points to a `struct mq_attr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmq_getattr(mqdes: mqd_t, attr: *mut mq_attr) -> c_int {
    ffi(-1, || {
        let mq = lookup(mqdes)?;
        if attr.is_null() {
            return Err(Errno::EFAULT);
        }
        write_attr(attr, &mqueue::mq_getattr(&mq)?);
        Ok(0)
    })
}

/// `mq_setattr(mqdes, newattr, oldattr)`: only `O_NONBLOCK` in
/// `newattr->mq_flags` changes anything (`EINVAL` for other bits); the old
/// attributes go to `oldattr` if it is not NULL. A NULL `newattr` only
/// reads.
///
/// # Safety
/// `newattr` and `oldattr` are NULL or point to `struct mq_attr`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmq_setattr(
    mqdes: mqd_t,
    newattr: *const mq_attr,
    oldattr: *mut mq_attr,
) -> c_int {
    ffi(-1, || {
        let mq = lookup(mqdes)?;
        let old = if newattr.is_null() {
            mqueue::mq_getattr(&mq)?
        } else {
            // SAFETY: non-null, valid per the contract.
            let flags = unsafe { (*newattr).mq_flags };
            mqueue::mq_setattr(&mq, &MqAttr::new(flags, 0, 0, 0))?
        };
        if !oldattr.is_null() {
            write_attr(oldattr, &old);
        }
        Ok(0)
    })
}

/// `mq_send(mqdes, msg, len, prio)`.
///
/// # Safety
/// `msg` points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn shmq_send(
    mqdes: mqd_t,
    msg: *const c_char,
    len: size_t,
    prio: c_uint,
) -> c_int {
    cancellable(-1, |held| {
        let prio = prio_arg(prio)?;
        let mq = hold(held, mqdes)?;
        // SAFETY: per the contract (and an empty slice for len 0).
        let msg = unsafe { bytes(msg, len)? };
        mqueue::__mq_send_cancellable(mq, msg, prio, None).map(|()| 0)
    })
}

/// `mq_timedsend(mqdes, msg, len, prio, abs_timeout)`: `abs_timeout` is an
/// absolute `CLOCK_REALTIME` time.
///
/// # Safety
/// `msg` points to `len` readable bytes; `abs_timeout` to a `timespec`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn shmq_timedsend(
    mqdes: mqd_t,
    msg: *const c_char,
    len: size_t,
    prio: c_uint,
    abs_timeout: *const timespec,
) -> c_int {
    cancellable(-1, |held| {
        let ts = timespec_arg(abs_timeout)?;
        let prio = prio_arg(prio)?;
        let mq = hold(held, mqdes)?;
        // SAFETY: per the contract.
        let msg = unsafe { bytes(msg, len)? };
        mqueue::__mq_send_cancellable(mq, msg, prio, Some(&ts)).map(|()| 0)
    })
}

/// `mq_receive(mqdes, msg, len, prio)`: returns the message's length.
///
/// # Safety
/// `msg` points to `len` writable bytes; `prio` is NULL or points to an
/// `unsigned int`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn shmq_receive(
    mqdes: mqd_t,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
) -> ssize_t {
    cancellable(-1, |held| {
        let mq = hold(held, mqdes)?;
        // SAFETY: per the contract.
        let buf = unsafe { bytes_mut(msg, len)? };
        let mut p = 0;
        let n = mqueue::__mq_receive_cancellable(mq, buf, &mut p, None)?;
        store_prio(prio, p);
        Ok(n as ssize_t)
    })
}

/// `mq_timedreceive(mqdes, msg, len, prio, abs_timeout)`.
///
/// # Safety
/// As [`shmq_receive`]; `abs_timeout` points to a `timespec`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn shmq_timedreceive(
    mqdes: mqd_t,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
    abs_timeout: *const timespec,
) -> ssize_t {
    cancellable(-1, |held| {
        let ts = timespec_arg(abs_timeout)?;
        let mq = hold(held, mqdes)?;
        // SAFETY: per the contract.
        let buf = unsafe { bytes_mut(msg, len)? };
        let mut p = 0;
        let n = mqueue::__mq_receive_cancellable(mq, buf, &mut p, Some(&ts))?;
        store_prio(prio, p);
        Ok(n as ssize_t)
    })
}

/// A message received with acknowledgement ([`shmq_receive_pending`]),
/// not yet acknowledged: opaque. It belongs to the queue it came from and
/// to this process. Exactly one of [`shmq_ack`] and [`shmq_nack`] must be
/// called with it, which frees it; it is not usable afterwards. Closing the
/// descriptor does not end the hold (the queue stays mapped for it); the
/// end of the process (exit, a signal, `exec`) returns the message to the
/// queue. A forked child's copy of it holds nothing: `shmq_ack` and
/// `shmq_nack` fail there with `EBADMSG` (and free the copy).
pub struct shmq_pending {
    /// Counted in as a user of the descriptor's entry: a close meanwhile
    /// leaves the queue open until the hold ends.
    mq: Ref,
    token: mqueue::__PendingToken,
}

/// Receive with acknowledgement: as [`shmq_receive`], but the message
/// stays *pending* (invisible to other receivers, still filling its slot)
/// until [`shmq_ack`] removes it or [`shmq_nack`] puts it back ahead of
/// every message of its priority sent after it. On success, `*pending` is
/// set to a new handle owned by the caller; on failure it is left alone.
/// `mq_getattr`'s `mq_curmsgs` does not count pending messages; a send
/// finds the queue full while they fill it.
///
/// # Safety
/// As [`shmq_receive`]; `pending` points to a writable `shmq_pending *`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn shmq_receive_pending(
    mqdes: mqd_t,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
    pending: *mut *mut shmq_pending,
) -> ssize_t {
    // SAFETY: per the contract.
    unsafe { receive_pending(mqdes, msg, len, prio, None, pending) }
}

/// [`shmq_receive_pending`] with an absolute `CLOCK_REALTIME` timeout, as
/// [`shmq_timedreceive`].
///
/// # Safety
/// As [`shmq_receive_pending`]; `abs_timeout` points to a `timespec`.
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn shmq_timedreceive_pending(
    mqdes: mqd_t,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
    abs_timeout: *const timespec,
    pending: *mut *mut shmq_pending,
) -> ssize_t {
    // SAFETY: per the contract.
    unsafe { receive_pending(mqdes, msg, len, prio, Some(abs_timeout), pending) }
}

/// The two receives with acknowledgement.
///
/// # Safety
/// As [`shmq_timedreceive_pending`].
unsafe fn receive_pending(
    mqdes: mqd_t,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
    abs_timeout: Option<*const timespec>,
    pending: *mut *mut shmq_pending,
) -> ssize_t {
    cancellable(-1, |held| {
        let ts = abs_timeout.map(timespec_arg).transpose()?;
        if pending.is_null() {
            return Err(Errno::EFAULT);
        }
        let mq = hold(held, mqdes)?;
        // SAFETY: per the contract.
        let buf = unsafe { bytes_mut(msg, len)? };
        let mut p = 0;
        let (n, token) = mqueue::__mq_receive_pending_cancellable(mq, buf, &mut p, ts.as_ref())?;
        store_prio(prio, p);
        // The descriptor this call used (and the hold is on) goes with it.
        let mq = held.take().ok_or(Errno::EBADF)?;
        // SAFETY: non-null, writable per the contract.
        unsafe { *pending = Box::into_raw(Box::new(shmq_pending { mq, token })) };
        Ok(n as ssize_t)
    })
}

/// Acknowledges a pending message: it leaves the queue for good, and its
/// slot is free for a sender. Frees `pending`, whatever the outcome.
/// Returns 0, or -1 with errno: `EINVAL` for NULL, `EBADMSG` if this
/// process does not hold the message (a forked child, or a queue damaged
/// and repaired meanwhile).
///
/// # Safety
/// `pending` is NULL or a handle from [`shmq_receive_pending`] not yet
/// passed to `shmq_ack` or `shmq_nack`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmq_ack(pending: *mut shmq_pending) -> c_int {
    // SAFETY: per the contract.
    unsafe { settle(pending, true) }
}

/// Returns a pending message to the queue, ahead of every message of its
/// priority sent after it: it is delivered again. Frees `pending`,
/// whatever the outcome. Errors as [`shmq_ack`].
///
/// # Safety
/// As [`shmq_ack`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmq_nack(pending: *mut shmq_pending) -> c_int {
    // SAFETY: per the contract.
    unsafe { settle(pending, false) }
}

/// # Safety
/// As [`shmq_ack`].
unsafe fn settle(pending: *mut shmq_pending, ack: bool) -> c_int {
    if pending.is_null() {
        Errno::set_raw(libc::EINVAL);
        return -1;
    }
    // SAFETY: a handle made by Box::into_raw in receive_pending, given back
    // once (the contract).
    let p = unsafe { Box::from_raw(pending) };
    ffi(-1, move || {
        let shmq_pending { mq, token } = *p;
        mqueue::__mq_settle(&mq, token, ack).map(|()| 0)
    })
}

fn store_prio(prio: *mut c_uint, p: u32) {
    if !prio.is_null() {
        // SAFETY: non-null, valid per the contract.
        unsafe { *prio = p };
    }
}

/// The longest slice Rust can describe. A longer length from C is cut to
/// it: no message is that long, so the call goes as it would with the full
/// length (a send fails with `EMSGSIZE`, a receive copies at most the
/// queue's message size).
const MAX_LEN: usize = isize::MAX as usize;

/// # Safety
/// `p` is valid for `len` reads (when non-null).
unsafe fn bytes<'a>(p: *const c_char, len: size_t) -> Result<&'a [u8], Errno> {
    match (p.is_null(), len) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(Errno::EFAULT),
        // SAFETY: caller's contract, for at most `len` bytes.
        (false, _) => Ok(unsafe { std::slice::from_raw_parts(p.cast(), len.min(MAX_LEN)) }),
    }
}

/// # Safety
/// `p` is valid for `len` writes (when non-null).
unsafe fn bytes_mut<'a>(p: *mut c_char, len: size_t) -> Result<&'a mut [u8], Errno> {
    match (p.is_null(), len) {
        (_, 0) => Ok(&mut []),
        (true, _) => Err(Errno::EFAULT),
        // SAFETY: caller's contract, for at most `len` bytes.
        (false, _) => Ok(unsafe { std::slice::from_raw_parts_mut(p.cast(), len.min(MAX_LEN)) }),
    }
}

/// What a `SIGEV_THREAD` notification needs from the `sigevent`.
struct ThreadNotify {
    function: extern "C" fn(libc::sigval),
    value: usize,
    /// Stack and guard size from `sigev_notify_attributes`, read at
    /// registration (the caller may destroy its attributes afterwards).
    sizes: Option<(size_t, size_t)>,
}

/// glibc's `struct sigevent`: the `_sigev_thread` member of the union.
#[repr(C)]
struct SigEventThread {
    sigev_value: usize,
    sigev_signo: c_int,
    sigev_notify: c_int,
    function: Option<extern "C" fn(libc::sigval)>,
    attributes: *const libc::pthread_attr_t,
}
const _: () = assert!(std::mem::size_of::<SigEventThread>() <= std::mem::size_of::<sigevent>());

impl ThreadNotify {
    fn start(self) {
        extern "C" fn run(arg: *mut libc::c_void) -> *mut libc::c_void {
            // SAFETY: `arg` is the Box leaked in `start`, used once.
            let t = unsafe { Box::from_raw(arg.cast::<ThreadNotify>()) };
            (t.function)(libc::sigval {
                sival_ptr: t.value as *mut libc::c_void,
            });
            std::ptr::null_mut()
        }
        let sizes = self.sizes;
        let arg = Box::into_raw(Box::new(self));
        // SAFETY: attr is initialised before use and destroyed after;
        // pthread_create gets a valid start routine and argument.
        unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
            libc::pthread_attr_init(attr.as_mut_ptr());
            libc::pthread_attr_setdetachstate(attr.as_mut_ptr(), libc::PTHREAD_CREATE_DETACHED);
            if let Some((stack, guard)) = sizes {
                libc::pthread_attr_setstacksize(attr.as_mut_ptr(), stack);
                libc::pthread_attr_setguardsize(attr.as_mut_ptr(), guard);
            }
            let mut tid = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
            if libc::pthread_create(tid.as_mut_ptr(), attr.as_ptr(), run, arg.cast()) != 0 {
                drop(Box::from_raw(arg));
            }
            libc::pthread_attr_destroy(attr.as_mut_ptr());
        }
    }
}

/// `mq_notify(mqdes, sevp)`: `SIGEV_NONE`, `SIGEV_SIGNAL` (with `si_code ==
/// SI_MESGQ`) and `SIGEV_THREAD` (the function runs in a new detached
/// thread; of the thread attributes, the stack and guard sizes are
/// honoured); NULL
/// removes this process's registration.
///
/// # Safety
/// `sevp` is NULL or points to a `struct sigevent`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmq_notify(mqdes: mqd_t, sevp: *const sigevent) -> c_int {
    ffi(-1, || {
        let mq = lookup(mqdes)?;
        if sevp.is_null() {
            return mqueue::mq_notify(&mq, None).map(|()| 0);
        }
        // SAFETY: non-null, a valid sigevent per the contract.
        let ev = unsafe { &*sevp };
        match ev.sigev_notify {
            libc::SIGEV_NONE | libc::SIGEV_SIGNAL => {
                let how = nix::sys::signal::SigEvent::from(ev);
                mqueue::mq_notify(&mq, Some(&how)).map(|()| 0)
            }
            libc::SIGEV_THREAD => {
                // SAFETY: glibc's sigevent holds _sigev_thread at this layout.
                let t = unsafe { &*sevp.cast::<SigEventThread>() };
                let function = t.function.ok_or(Errno::EINVAL)?;
                let sizes = (!t.attributes.is_null()).then(|| {
                    let (mut stack, mut guard): (size_t, size_t) = (0, 0);
                    // SAFETY: the caller passes initialised attributes.
                    unsafe {
                        libc::pthread_attr_getstacksize(t.attributes, &mut stack);
                        libc::pthread_attr_getguardsize(t.attributes, &mut guard);
                    }
                    (stack, guard)
                });
                let notify = ThreadNotify {
                    function,
                    value: t.sigev_value,
                    sizes,
                };
                mqueue::mq_notify_deliver(&mq, Box::new(move || notify.start())).map(|()| 0)
            }
            _ => Err(Errno::EINVAL),
        }
    })
}
