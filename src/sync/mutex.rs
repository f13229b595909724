//! The robust, process-shared `pthread_mutex_t` in a queue's header.
//!
//! `PTHREAD_MUTEX_ROBUST` makes the kernel mark the mutex when its owner dies
//! (the dying thread's robust list is walked at exit, `kill -9` included); the
//! next locker gets `EOWNERDEAD`, repairs the queue and calls
//! `pthread_mutex_consistent`. raw-sync's mutex is not robust, hence libc.
//!
//! These functions are safe because a [`Region`] always holds a mapped,
//! aligned `pthread_mutex_t`, and robust mutexes check ownership on unlock
//! (`EPERM` rather than undefined behaviour). A hostile process can still
//! scribble on the mutex word; the worst that does is an error or a hang,
//! never access outside the mapping.
#![allow(unsafe_code)]

use crate::layout::Region;
use std::mem::MaybeUninit;

/// How a lock was acquired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Normally.
    Clean,
    /// The previous owner died holding it: the protected state may be half
    /// updated and must be repaired before [`make_consistent`].
    OwnerDied,
}

fn check(r: i32) -> Result<(), i32> {
    if r == 0 { Ok(()) } else { Err(r) }
}

/// Initialises the region's mutex as robust and process-shared. Only for a
/// region that no other thread or process can see yet.
pub fn init(r: &Region) -> Result<(), i32> {
    let m = r.mutex_ptr();
    let mut attr = MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: attr is storage for a mutexattr, initialised first and
    // destroyed last; m is the region's mutex, unused by anyone yet.
    unsafe {
        check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
        let a = attr.as_mut_ptr();
        let res = check(libc::pthread_mutexattr_setpshared(
            a,
            libc::PTHREAD_PROCESS_SHARED,
        ))
        .and_then(|_| {
            check(libc::pthread_mutexattr_setrobust(
                a,
                libc::PTHREAD_MUTEX_ROBUST,
            ))
        })
        .and_then(|_| check(libc::pthread_mutex_init(m, a)));
        libc::pthread_mutexattr_destroy(a);
        res
    }
}

/// Locks the region's mutex.
///
/// # Errors
/// `ENOTRECOVERABLE` when an earlier owner died and nobody made the mutex
/// consistent; other pthread errors for a damaged mutex word.
#[inline]
pub fn lock(r: &Region) -> Result<Acquired, i32> {
    // SAFETY: the region holds an initialised process-shared mutex in place.
    match unsafe { libc::pthread_mutex_lock(r.mutex_ptr()) } {
        0 => Ok(Acquired::Clean),
        libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
        e => Err(e),
    }
}

/// Locks the region's mutex, spinning briefly while another thread holds it
/// before sleeping in `pthread_mutex_lock`.
///
/// glibc's robust mutexes never spin: a contended lock sleeps in the kernel
/// at once, and on this kind of machine a cross-CPU futex wake-up costs
/// 25-30 µs, against critical sections of tens of nanoseconds. So, with more
/// than one usable CPU, try for a few microseconds first. Only a hint is
/// read here: the owner's thread id is the first `int` of a glibc
/// `pthread_mutex_t` (`__data.__lock`); the lock itself is always taken by
/// `pthread_mutex_trylock` or `pthread_mutex_lock`.
/// Spins for at most `spin_ns` (0: sleeps at once).
#[inline]
pub fn lock_spinning(r: &Region, spin_ns: u32) -> Result<Acquired, i32> {
    // SAFETY: the region holds an initialised process-shared mutex in place.
    match unsafe { libc::pthread_mutex_trylock(r.mutex_ptr()) } {
        0 => return Ok(Acquired::Clean),
        libc::EOWNERDEAD => return Ok(Acquired::OwnerDied),
        libc::EBUSY => {}
        e => return Err(e),
    }
    contended(r, spin_ns)
}

#[cold]
fn contended(r: &Region, spin_ns: u32) -> Result<Acquired, i32> {
    const FUTEX_TID_MASK: i32 = 0x3fff_ffff;
    let limit = std::time::Duration::from_nanos(u64::from(spin_ns));
    // SAFETY: the mutex is at least 4 bytes, 4-aligned, and glibc updates its
    // first int atomically; reading it atomically is a hint only.
    let word = unsafe { &*(r.mutex_ptr() as *const std::sync::atomic::AtomicI32) };
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        for _ in 0..16 {
            std::hint::spin_loop();
        }
        if word.load(std::sync::atomic::Ordering::Relaxed) & FUTEX_TID_MASK != 0 {
            continue;
        }
        // SAFETY: as in `lock_spinning`.
        match unsafe { libc::pthread_mutex_trylock(r.mutex_ptr()) } {
            0 => return Ok(Acquired::Clean),
            libc::EOWNERDEAD => return Ok(Acquired::OwnerDied),
            libc::EBUSY => {}
            e => return Err(e),
        }
    }
    lock(r)
}

/// Unlocks the region's mutex; the calling thread must hold it.
#[inline]
pub fn unlock(r: &Region) {
    // SAFETY: as in `lock`; a robust mutex refuses (EPERM) an unlock by a
    // thread that does not own it.
    let res = unsafe { libc::pthread_mutex_unlock(r.mutex_ptr()) };
    debug_assert_eq!(res, 0);
}

/// Marks the mutex, acquired with [`Acquired::OwnerDied`], usable again.
pub fn make_consistent(r: &Region) {
    // SAFETY: as in `lock`; glibc checks the caller owns the mutex.
    let res = unsafe { libc::pthread_mutex_consistent(r.mutex_ptr()) };
    debug_assert_eq!(res, 0);
}
