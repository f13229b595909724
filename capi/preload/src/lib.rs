//! A drop-in replacement for glibc's `mq_*` functions: preload it
//! (`LD_PRELOAD=libshmq_preload.so`) and unmodified programs, and language
//! bindings built on glibc's queues, use shmq instead of the kernel.
//!
//! Exports the exact names `mq_open`, `mq_close`, `mq_unlink`,
//! `mq_getattr`, `mq_setattr`, `mq_notify`, `mq_send`, `mq_timedsend`,
//! `mq_receive`, `mq_timedreceive`, and `__mq_open_2` (called by programs
//! built with `_FORTIFY_SOURCE`). Each is the `shmq_*` function of the C API,
//! which this library contains.
#![allow(unsafe_code)]

#[path = "../../src/lib.rs"]
mod capi;

use capi::*;
use libc::{c_char, c_int, c_uint, mq_attr, mqd_t, sigevent, size_t, ssize_t, timespec};

/// `mq_open(name, oflag, ...)`: see [`capi::shmq_open`] for the variadic
/// trampoline and why it is correct by the ABI.
///
/// # Safety
/// As `mq_open`.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub unsafe extern "C" fn mq_open() {
    #[cfg(target_arch = "x86_64")]
    std::arch::naked_asm!("jmp {}", sym shmq_open4);
    #[cfg(target_arch = "aarch64")]
    std::arch::naked_asm!("b {}", sym shmq_open4);
}

/// `__mq_open_2(name, oflag)`: glibc's fortified `mq_open` without the
/// optional arguments. As glibc, aborts if `oflag` has `O_CREAT` (a mode
/// and attributes were required).
///
/// # Safety
/// `name` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __mq_open_2(name: *const c_char, oflag: c_int) -> mqd_t {
    if oflag & libc::O_CREAT != 0 {
        let msg = b"*** invalid mq_open call: O_CREAT without mode and attr ***: terminated\n";
        // SAFETY: writing a static buffer to stderr, then aborting.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::abort();
        }
    }
    // SAFETY: forwarded contract; mode and attr are not read without O_CREAT.
    unsafe { shmq_open4(name, oflag, 0, std::ptr::null()) }
}

/// `mq_close`.
#[unsafe(no_mangle)]
pub extern "C" fn mq_close(mqdes: mqd_t) -> c_int {
    shmq_close(mqdes)
}

/// `mq_unlink`.
///
/// # Safety
/// As [`capi::shmq_unlink`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_unlink(name: *const c_char) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { shmq_unlink(name) }
}

/// `mq_getattr`.
///
/// # Safety
/// As [`capi::shmq_getattr`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_getattr(mqdes: mqd_t, attr: *mut mq_attr) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { shmq_getattr(mqdes, attr) }
}

/// `mq_setattr`.
///
/// # Safety
/// As [`capi::shmq_setattr`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_setattr(
    mqdes: mqd_t,
    newattr: *const mq_attr,
    oldattr: *mut mq_attr,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { shmq_setattr(mqdes, newattr, oldattr) }
}

/// `mq_notify`.
///
/// # Safety
/// As [`capi::shmq_notify`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mq_notify(mqdes: mqd_t, sevp: *const sigevent) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { shmq_notify(mqdes, sevp) }
}

/// `mq_send`.
///
/// # Safety
/// As [`capi::shmq_send`].
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn mq_send(
    mqdes: mqd_t,
    msg: *const c_char,
    len: size_t,
    prio: c_uint,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { shmq_send(mqdes, msg, len, prio) }
}

/// `mq_timedsend`.
///
/// # Safety
/// As [`capi::shmq_timedsend`].
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn mq_timedsend(
    mqdes: mqd_t,
    msg: *const c_char,
    len: size_t,
    prio: c_uint,
    abs_timeout: *const timespec,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { shmq_timedsend(mqdes, msg, len, prio, abs_timeout) }
}

/// `mq_receive`.
///
/// # Safety
/// As [`capi::shmq_receive`].
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn mq_receive(
    mqdes: mqd_t,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
) -> ssize_t {
    // SAFETY: forwarded contract.
    unsafe { shmq_receive(mqdes, msg, len, prio) }
}

/// `mq_timedreceive`.
///
/// # Safety
/// As [`capi::shmq_timedreceive`].
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn mq_timedreceive(
    mqdes: mqd_t,
    msg: *mut c_char,
    len: size_t,
    prio: *mut c_uint,
    abs_timeout: *const timespec,
) -> ssize_t {
    // SAFETY: forwarded contract.
    unsafe { shmq_timedreceive(mqdes, msg, len, prio, abs_timeout) }
}
