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
