//! Who is alive, asked of the kernel: process incarnations and locks on
//! open file descriptions.
//!
//! A process that uses a queue holds an open-file-description lock
//! (`F_OFD_SETLK`) on one byte of the queue file, far past its end, through a
//! descriptor of its own (close-on-exec, never shared with another
//! process). The kernel drops that lock exactly when the description goes:
//! at exit, at `exec`, however the process dies. Another process asks with
//! `F_OFD_GETLK` whether the byte is locked. Nothing here reads `/proc`, so
//! neither a zombie thread-group leader, nor `hidepid`, nor a full descriptor
//! table, nor another pid namespace can make a live process look dead.
//!
//! A child made by `fork` would share the parent's descriptions, and with
//! them its locks. So a child closes its copies: at once after `fork` (an
//! `atfork` handler, which only calls `close`), and, for a child made by
//! `_Fork` or a raw `clone` that runs no handler, at its first call into
//! shmq, which notices that it is a new process through a page mapped with
//! `MADV_WIPEONFORK` (zero in any child). Until such a child calls in, exits
//! or `exec`s, its parent counts as alive: a wrong "alive" only delays, a
//! wrong "dead" would destroy data.
#![allow(unsafe_code)]

use nix::errno::Errno;
use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::Once;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64};

/// The page whose first word holds this process's incarnation (never 0);
/// the kernel gives a child a zero page in its place (`MADV_WIPEONFORK`).
/// Until the page is mapped, [`UNSET`]: a zero word too, so that one test
/// of the word covers both.
static PAGE: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::addr_of!(UNSET).cast_mut());
/// The word [`PAGE`] points to before the page is mapped: always 0.
static UNSET: AtomicU64 = AtomicU64::new(0);
/// The last incarnation handed out by this process (copied into children,
/// which hand out the next one).
static LAST: AtomicU64 = AtomicU64::new(0);
static SETUP: Once = Once::new();

/// This process's incarnation: a number that changes in a child made by any
/// kind of fork. Caches of the thread id, of the process's queue
/// registrations and of anything else that must not cross a fork are keyed
/// by it.
#[inline]
pub fn incarnation() -> u64 {
    let p = PAGE.load(Acquire);
    // SAFETY: PAGE points to UNSET or into a page mapped for the life of
    // the process.
    let v = unsafe { (*p).load(Relaxed) };
    if v != 0 {
        return v;
    }
    new_incarnation()
}

#[cold]
fn new_incarnation() -> u64 {
    SETUP.call_once(|| {
        // SAFETY: an anonymous private mapping with no address hint.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(m != libc::MAP_FAILED, "cannot map a page");
        // SAFETY: advice on the page just mapped. If the kernel lacks
        // MADV_WIPEONFORK (before 4.14), the atfork handler below still
        // clears the word in a child made by fork().
        unsafe { libc::madvise(m, 4096, libc::MADV_WIPEONFORK) };
        PAGE.store(m.cast(), Release);
        // SAFETY: registers a handler that only stores and calls close().
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    let p = PAGE.load(Acquire);
    let next = LAST.fetch_add(1, Relaxed) + 1;
    // SAFETY: mapped above, for the life of the process.
    let word = unsafe { &*p };
    match word.compare_exchange(0, next, AcqRel, Acquire) {
        Ok(_) => {
            // A child (or the first call): what it inherited is not its own.
            close_inherited();
            next
        }
        Err(v) => v,
    }
}

extern "C" fn after_fork_in_child() {
    // Async-signal-safe work only: an atomic store and close().
    let p = PAGE.load(Relaxed);
    // SAFETY: as in `incarnation` (UNSET only ever holds 0).
    unsafe { (*p).store(0, Relaxed) };
    close_inherited();
}

/// Descriptors that carry this process's liveness locks, so that a child
/// can close its copies. Fixed slots first, then chunks added as needed
/// (never freed); -1 marks a free slot.
struct Chunk {
    fds: [AtomicI32; 64],
    next: AtomicPtr<Chunk>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk {
            fds: [const { AtomicI32::new(-1) }; 64],
            next: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

static FIRST: Chunk = Chunk::new();

fn chunks() -> impl Iterator<Item = &'static Chunk> {
    let mut c: Option<&'static Chunk> = Some(&FIRST);
    std::iter::from_fn(move || {
        let cur = c?;
        let n = cur.next.load(Acquire);
        // SAFETY: chunks are leaked boxes, alive for the process's life.
        c = (!n.is_null()).then(|| unsafe { &*n });
        Some(cur)
    })
}

fn close_inherited() {
    for c in chunks() {
        for s in &c.fds {
            let fd = s.swap(-1, Relaxed);
            if fd >= 0 {
                // SAFETY: the descriptor was recorded by `LiveFd::new` and
                // is not used by anyone in this (new) process.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// A descriptor that carries liveness locks: recorded so that a forked
/// child closes its copy, and closed on drop unless a child already did.
#[derive(Debug)]
pub struct LiveFd {
    slot: &'static AtomicI32,
    fd: RawFd,
    incarnation: u64,
}

impl LiveFd {
    /// Takes ownership of `fd` (close-on-exec, a description of its own).
    pub fn new(fd: std::os::fd::OwnedFd) -> LiveFd {
        use std::os::fd::IntoRawFd;
        let incarnation = incarnation();
        let fd = fd.into_raw_fd();
        loop {
            for c in chunks() {
                for s in &c.fds {
                    if s.compare_exchange(-1, fd, Relaxed, Relaxed).is_ok() {
                        return LiveFd {
                            slot: s,
                            fd,
                            incarnation,
                        };
                    }
                }
            }
            // All slots taken: append a chunk to the last one.
            let fresh = Box::into_raw(Box::new(Chunk::new()));
            let last = chunks().last().expect("at least the first chunk");
            if last
                .next
                .compare_exchange(std::ptr::null_mut(), fresh, AcqRel, Acquire)
                .is_err()
            {
                // SAFETY: never published; another thread appended first.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
    }

    /// The descriptor.
    pub fn raw(&self) -> RawFd {
        self.fd
    }
}

impl Drop for LiveFd {
    fn drop(&mut self) {
        // In a child, the copy was closed already and the slot may hold
        // someone else's descriptor by now.
        if self.incarnation == incarnation()
            && self
                .slot
                .compare_exchange(self.fd, -1, Relaxed, Relaxed)
                .is_ok()
        {
            // SAFETY: our own descriptor, closed once.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// A lock for process-local state that a child made by any kind of fork
/// (`fork`, `_Fork`, `clone`) may find held by a thread it does not have:
/// a holder of an earlier incarnation counts as gone. What that holder
/// left is either kept (state that stays meaningful in the child) or
/// forgotten without running its destructors (it may be half changed, and
/// it described the parent) and replaced by a fresh value.
pub struct ForkLock<T> {
    /// Incarnation of the holder, 0: free.
    holder: AtomicU64,
    value: std::cell::UnsafeCell<T>,
    /// Makes the value a child starts from; `None`: keep the parent's.
    fresh: Option<fn() -> T>,
}

// SAFETY: the value is only reached through a guard, which exists for one
// holder at a time (see `lock`).
unsafe impl<T: Send> Sync for ForkLock<T> {}

impl<T> std::fmt::Debug for ForkLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkLock").finish_non_exhaustive()
    }
}

/// Access to the value of a [`ForkLock`].
pub struct ForkGuard<'a, T>(&'a ForkLock<T>);

impl<T> ForkLock<T> {
    /// A lock whose value a child replaces by `fresh()`.
    pub const fn resetting(value: T, fresh: fn() -> T) -> ForkLock<T> {
        ForkLock {
            holder: AtomicU64::new(0),
            value: std::cell::UnsafeCell::new(value),
            fresh: Some(fresh),
        }
    }

    /// A lock whose value a child keeps.
    pub const fn keeping(value: T) -> ForkLock<T> {
        ForkLock {
            holder: AtomicU64::new(0),
            value: std::cell::UnsafeCell::new(value),
            fresh: None,
        }
    }

    /// Takes the lock, waiting for another thread of this process that
    /// holds it (never call it again from a signal handler that may have
    /// interrupted the holder: use [`try_lock`](Self::try_lock) there).
    pub fn lock(&self) -> ForkGuard<'_, T> {
        loop {
            if let Some(g) = self.try_lock() {
                return g;
            }
            std::thread::yield_now();
        }
    }

    /// Takes the lock unless a thread of this process holds it.
    pub fn try_lock(&self) -> Option<ForkGuard<'_, T>> {
        let me = incarnation();
        let cur = self.holder.load(Relaxed);
        if cur == me {
            return None;
        }
        self.holder
            .compare_exchange(cur, me, Acquire, Relaxed)
            .ok()?;
        if cur != 0 {
            // Held by a thread of an earlier incarnation: not in this
            // process. Only this process can see this copy of the value.
            if let Some(fresh) = self.fresh {
                // SAFETY: we hold the lock; the old value is overwritten
                // without being dropped (it may be half changed).
                unsafe { self.value.get().write(fresh()) };
            }
        }
        Some(ForkGuard(self))
    }
}

impl<T> std::ops::Deref for ForkGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard is the lock's only holder.
        unsafe { &*self.0.value.get() }
    }
}

impl<T> std::ops::DerefMut for ForkGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`.
        unsafe { &mut *self.0.value.get() }
    }
}

impl<T> Drop for ForkGuard<'_, T> {
    fn drop(&mut self) {
        self.0.holder.store(0, Release);
    }
}

/// A value per incarnation of the process: [`get`](Self::get) hands out
/// the one set in the current incarnation, if any. Values set in earlier
/// incarnations (before a fork, in a parent) are kept until the cell is
/// dropped, since references to them may still be around.
#[derive(Debug)]
pub struct PerIncarnation<T> {
    /// The last entry set, null: none. Entries never change once
    /// published, so one load gives a value and its incarnation together.
    current: AtomicPtr<Entry<T>>,
    #[allow(clippy::vec_box, reason = "entries must not move: readers hold them")]
    all: ForkLock<Vec<Box<Entry<T>>>>,
}

#[derive(Debug)]
struct Entry<T> {
    incarnation: u64,
    value: std::sync::Arc<T>,
}

impl<T> PerIncarnation<T> {
    /// An empty cell.
    pub fn new() -> PerIncarnation<T> {
        PerIncarnation {
            current: AtomicPtr::new(std::ptr::null_mut()),
            // A child keeps the parent's values alive: references to them
            // may still be around.
            all: ForkLock::keeping(Vec::new()),
        }
    }

    /// The value set in this incarnation.
    #[inline]
    pub fn get(&self) -> Option<&T> {
        self.get_in(incarnation())
    }

    /// The value set in `incarnation`, the current one (read by the
    /// caller, who may need it for other caches too).
    #[inline(always)]
    pub fn get_in(&self, incarnation: u64) -> Option<&T> {
        let p = self.current.load(Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: p came from a box kept in `all` until self is dropped,
        // never changed after it was published, and the reference cannot
        // outlive self.
        let e = unsafe { &*p };
        (e.incarnation == incarnation).then(|| &*e.value)
    }

    /// Sets the value for this incarnation (keeping any earlier one alive)
    /// and returns it.
    pub fn set(&self, v: std::sync::Arc<T>) -> &T {
        let mut all = self.all.lock();
        all.push(Box::new(Entry {
            incarnation: incarnation(),
            value: v,
        }));
        let p = &**all.last().expect("just pushed") as *const Entry<T> as *mut Entry<T>;
        self.current.store(p, Release);
        // SAFETY: as in `get_in`.
        unsafe { &(*p).value }
    }
}

impl<T> Default for PerIncarnation<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn flock(typ: i32, start: u64, len: u64) -> libc::flock {
    // SAFETY: flock is plain data; zero is a valid value for every field.
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = typ as _;
    f.l_whence = libc::SEEK_SET as _;
    f.l_start = start as libc::off_t;
    f.l_len = len as libc::off_t;
    f
}

/// Takes an exclusive lock on byte `at` through `fd`'s description, without
/// waiting: `Ok(false)` when another description holds a lock there.
pub fn try_lock(fd: RawFd, at: u64) -> Result<bool, Errno> {
    try_lock_range(fd, at, 1)
}

/// Takes an exclusive lock on `len` bytes from `at` (as [`try_lock`]).
pub fn try_lock_range(fd: RawFd, at: u64, len: u64) -> Result<bool, Errno> {
    let f = flock(libc::F_WRLCK, at, len);
    // SAFETY: f is a valid flock the kernel only reads.
    if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &f) } == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::EAGAIN | Errno::EACCES => Ok(false),
        e => Err(e),
    }
}

/// Releases this description's locks on `len` bytes from `at`.
pub fn unlock_range(fd: RawFd, at: u64, len: u64) {
    let f = flock(libc::F_UNLCK, at, len);
    // SAFETY: as in try_lock; unlocking what is not locked is no error.
    unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &f) };
}

/// The first lock of another description that overlaps `start .. start +
/// len`, as `(start, len)` (len 0: to the end of the file's range), or
/// `None`. `Err` when the kernel cannot say (the caller must then assume a
/// lock is there).
pub fn conflict(fd: RawFd, start: u64, len: u64) -> Result<Option<(u64, u64)>, Errno> {
    let mut f = flock(libc::F_WRLCK, start, len);
    // SAFETY: f is valid storage for the kernel's answer.
    if unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut f) } != 0 {
        return Err(Errno::last());
    }
    Ok((f.l_type as i32 != libc::F_UNLCK).then_some((f.l_start as u64, f.l_len as u64)))
}

/// Takes a classic record lock (owned by the process, not the
/// description) for writing on byte `at` through `fd`, without waiting.
/// Unlike the description locks above, such a lock names its process to
/// whoever asks ([`record_holder`]); it goes when the process closes any
/// descriptor of the file, exits or execs.
pub fn record_lock(fd: RawFd, at: u64) -> Result<bool, Errno> {
    let f = flock(libc::F_WRLCK, at, 1);
    // SAFETY: f is a valid flock the kernel only reads.
    if unsafe { libc::fcntl(fd, libc::F_SETLK, &f) } == 0 {
        return Ok(true);
    }
    match Errno::last() {
        Errno::EAGAIN | Errno::EACCES => Ok(false),
        e => Err(e),
    }
}

/// The first record lock of another process that overlaps `start ..
/// start + len`, as `(start, pid)`: the pid as the caller's pid namespace
/// numbers it, 0 when the holder is not visible there and -1 for a
/// description's lock. `None` when there is none; `Err` when the kernel
/// cannot say.
pub fn record_holder(fd: RawFd, start: u64, len: u64) -> Result<Option<(u64, i32)>, Errno> {
    let mut f = flock(libc::F_WRLCK, start, len);
    // SAFETY: f is valid storage for the kernel's answer.
    if unsafe { libc::fcntl(fd, libc::F_GETLK, &mut f) } != 0 {
        return Err(Errno::last());
    }
    Ok((f.l_type as i32 != libc::F_UNLCK).then_some((f.l_start as u64, f.l_pid)))
}

/// This process's pid namespace, as the inode number of
/// `/proc/self/ns/pid` (the namespace its pids and thread ids are numbers
/// of); `None` when that cannot be read (no `/proc`).
pub fn pid_namespace() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    const PATH: &std::ffi::CStr = c"/proc/self/ns/pid";
    // Only the kernel's own namespace file counts, not whatever a mount
    // put at that path.
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a valid C string, and storage the kernel fills on success.
    if unsafe { libc::statfs(PATH.as_ptr(), fs.as_mut_ptr()) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast, reason = "f_type's width differs by target")]
    // SAFETY: filled by the successful statfs.
    let f_type = unsafe { fs.assume_init() }.f_type as i64;
    if f_type != NSFS_MAGIC {
        return None;
    }
    let ino = std::fs::metadata("/proc/self/ns/pid").ok()?.ino();
    u32::try_from(ino).ok().filter(|&i| i != 0)
}

/// Whether thread `tid` is certainly not a thread of process `pid` (both
/// numbered in the caller's pid namespace): only the kernel's "no such
/// thread" (`tgkill` with no signal) says so.
pub fn not_a_thread_of(pid: i32, tid: u32) -> bool {
    let Ok(tid) = i32::try_from(tid) else {
        return false;
    };
    if pid <= 0 || tid <= 0 {
        return false;
    }
    // SAFETY: signal 0 checks existence and permission only.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, 0) };
    r == -1 && Errno::last() == Errno::ESRCH
}

thread_local! {
    /// (incarnation, tid) of the calling thread.
    static TID: Cell<(u64, u32)> = const { Cell::new((0, 0)) };
}

/// The calling thread's id, cached per thread and per incarnation (a
/// child's thread has a new id, however it was made).
#[inline]
pub fn tid() -> u32 {
    let inc = incarnation();
    let (i, t) = TID.get();
    if i == inc {
        return t;
    }
    // SAFETY: gettid has no preconditions.
    let t = unsafe { libc::gettid() } as u32;
    TID.set((inc, t));
    t
}

/// Whether `tid` is a thread of the calling process (`tgkill` with no
/// signal). Only a certain "no such thread" counts as dead.
pub fn thread_alive(tid: u32) -> bool {
    let Ok(tid) = i32::try_from(tid) else {
        return false;
    };
    if tid <= 0 {
        return false;
    }
    // SAFETY: signal 0 checks existence and permission only.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) };
    !(r == -1 && Errno::last() == Errno::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child forked while another thread of its parent holds a
    /// `ForkLock` takes the lock (a `std::sync::Mutex` there would never be
    /// released in the child), with a fresh value or the parent's.
    #[test]
    fn a_child_takes_a_lock_held_by_a_thread_it_does_not_have() {
        static RESET: ForkLock<u32> = ForkLock::resetting(7, || 0);
        static KEPT: ForkLock<u32> = ForkLock::keeping(7);
        let _ = incarnation();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let a = RESET.lock();
            let b = KEPT.lock();
            held_tx.send(()).unwrap();
            done_rx.recv().unwrap();
            drop((a, b));
        });
        held_rx.recv().unwrap();
        assert!(
            RESET.try_lock().is_none(),
            "held by a thread of this process"
        );
        // SAFETY: the child only takes the two locks (atomics, and
        // yield_now while it would wait), reads them, and _exits; alarm
        // kills it if it would wait for ever.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: alarm has no preconditions.
            unsafe { libc::alarm(10) };
            let code = match (*RESET.lock(), *KEPT.lock()) {
                (0, 7) => 0,
                _ => 1,
            };
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
        done_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child status {st:#x}"
        );
        assert_eq!(*RESET.lock(), 7, "the parent keeps its value");
    }

    #[test]
    fn incarnation_is_stable_and_changes_in_a_forked_child() {
        let a = incarnation();
        assert_ne!(a, 0);
        assert_eq!(incarnation(), a);
        let t = tid();
        // SAFETY: the child only reads atomics and calls gettid, then _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = incarnation() != a && tid() != t && incarnation() == incarnation();
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(i32::from(ok)) };
        }
        let mut status = 0;
        // SAFETY: pid is our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(libc::WEXITSTATUS(status), 1);
    }

    #[test]
    fn a_description_lock_is_seen_from_another_description_only() {
        let path = std::env::temp_dir().join(format!("shmq-live-{}", std::process::id()));
        let a = std::fs::File::create(&path).unwrap();
        let b = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        use std::os::fd::AsRawFd;
        let at = 1 << 40;
        assert!(try_lock(a.as_raw_fd(), at).unwrap());
        assert!(!try_lock(b.as_raw_fd(), at).unwrap());
        assert_eq!(conflict(b.as_raw_fd(), at, 1).unwrap(), Some((at, 1)));
        assert_eq!(conflict(a.as_raw_fd(), at, 1).unwrap(), None);
        assert_eq!(
            conflict(b.as_raw_fd(), at - 10, 100).unwrap(),
            Some((at, 1))
        );
        unlock_range(a.as_raw_fd(), at, 1);
        assert_eq!(conflict(b.as_raw_fd(), at, 1).unwrap(), None);
    }

    #[test]
    fn threads_of_this_process_are_told_from_gone_ones() {
        assert!(thread_alive(tid()));
        let gone = std::thread::spawn(tid).join().unwrap();
        // A thread id is reused only after many others; this one just ended.
        assert!(!thread_alive(gone));
        assert!(!thread_alive(0));
    }
}
