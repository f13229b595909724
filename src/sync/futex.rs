//! Futex-word conditions.
//!
//! A condition is a 32-bit sequence word in the mapping. A waiter reads it
//! under the queue lock, drops the lock and sleeps while the word still holds
//! that value; a waker bumps the word under the lock and wakes. A waiter that
//! dies costs nothing: the kernel forgets it, unlike glibc's process-shared
//! condvar, whose next signal can hang once a waiter was SIGKILLed.
//!
//! Waits take an absolute `CLOCK_REALTIME` deadline (`FUTEX_WAIT_BITSET |
//! FUTEX_CLOCK_REALTIME`), exactly the clock of `mq_timedsend`, so clock
//! changes move deadlines as they do for the kernel's queues.
#![allow(unsafe_code)]

use std::sync::atomic::AtomicU32;

/// Why a wait ended early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed.
    TimedOut,
    /// A signal handler ran.
    Interrupted,
}

/// Sleeps while `*word == expected`, until woken or `deadline` (absolute,
/// `CLOCK_REALTIME`) passes. Spurious returns are possible.
pub fn wait(
    word: &AtomicU32,
    expected: u32,
    deadline: Option<&libc::timespec>,
) -> Result<(), WaitError> {
    let ts = deadline.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: word is a valid aligned u32 for the duration of the call (it
    // lives in a mapping the caller keeps), ts is null or a valid timespec.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT_BITSET | libc::FUTEX_CLOCK_REALTIME,
            expected,
            ts,
            std::ptr::null::<u32>(),
            libc::FUTEX_BITSET_MATCH_ANY,
        )
    };
    outcome(r)
}

/// Sleeps while `*word == expected`, for at most `limit` (relative,
/// `CLOCK_MONOTONIC`); spurious returns are possible.
pub fn wait_for(
    word: &AtomicU32,
    expected: u32,
    limit: std::time::Duration,
) -> Result<(), WaitError> {
    let ts = libc::timespec {
        tv_sec: limit.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    // SAFETY: word is a valid aligned u32 for the duration of the call; ts
    // is a valid relative timeout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
    outcome(r)
}

/// What a futex wait's return value `r` (errno set when -1) means.
fn outcome(r: libc::c_long) -> Result<(), WaitError> {
    if r == 0 {
        return Ok(());
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ETIMEDOUT) => Err(WaitError::TimedOut),
        Some(libc::EINTR) => Err(WaitError::Interrupted),
        // EAGAIN: the word changed before we slept.
        _ => Ok(()),
    }
}

/// Wakes up to `n` sleepers on `word`; returns how many were woken.
pub fn wake(word: &AtomicU32, n: i32) -> usize {
    // SAFETY: word is a valid aligned u32 in a live mapping.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        )
    };
    r.max(0) as usize
}
