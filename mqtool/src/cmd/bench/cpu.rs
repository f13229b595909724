//! CPU affinity of the calling thread, through libc's
//! `sched_{get,set}affinity` (pid 0: the calling thread only), and the
//! process's context switches (`getrusage`).
#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;

fn get() -> io::Result<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array, for which all-zero bytes are
    // a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of size_of::<cpu_set_t>() bytes.
    let r = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(set)
}

fn set(set: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: `set` is valid for reads of size_of::<cpu_set_t>() bytes.
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the calling thread may run on, in increasing order.
pub fn allowed() -> io::Result<Vec<usize>> {
    let set = get()?;
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(1024);
    // SAFETY: CPU_ISSET only reads bit `c` of `set`, and `c` is below
    // CPU_SETSIZE, the number of bits in a cpu_set_t.
    Ok((0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Restricts the calling thread to one CPU.
pub fn pin(cpu: usize) -> io::Result<()> {
    let max = usize::try_from(libc::CPU_SETSIZE).unwrap_or(1024);
    if cpu >= max {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: as in `get`, all-zero bytes are an empty cpu_set_t.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET only writes bit `cpu` of `one`, and `cpu` is below
    // CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut one) };
    set(&one)
}

/// The calling thread restricted to one CPU until dropped; then it gets its
/// former affinity back. Not `Send`: it must be dropped by the thread it
/// pinned.
pub struct Pinned {
    old: libc::cpu_set_t,
    _thread: PhantomData<*const ()>,
}

impl Pinned {
    /// Pins the calling thread to `cpu`.
    pub fn to(cpu: usize) -> io::Result<Pinned> {
        let old = get()?;
        pin(cpu)?;
        Ok(Pinned {
            old,
            _thread: PhantomData,
        })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Nothing useful to do on failure: the thread keeps one CPU.
        let _ = set(&self.old);
    }
}

/// Context switches so far, voluntary and involuntary, of this process (all
/// its threads) and of its children that have been waited for.
pub fn switches() -> u64 {
    let mut total = 0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: rusage is a C struct of integers, for which all-zero bytes
        // are a valid value.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `r` is valid for writes of one rusage.
        if unsafe { libc::getrusage(who, &raw mut r) } == 0 {
            total +=
                u64::try_from(r.ru_nvcsw).unwrap_or(0) + u64::try_from(r.ru_nivcsw).unwrap_or(0);
        }
    }
    total
}
