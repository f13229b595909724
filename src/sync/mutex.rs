//! The robust, process-shared mutex in a queue's header.
//!
//! The lock is a glibc `pthread_mutex_t`, initialised robust and
//! process-shared, and it keeps the kernel's robust-futex protocol that glibc
//! uses for it: the first `u32` holds the owner's thread id, with
//! `FUTEX_WAITERS` set while someone sleeps on it. When a thread dies holding
//! it (`kill -9` included), the kernel finds the lock through the thread's
//! robust list, sets `FUTEX_OWNER_DIED` and wakes a sleeper; the next locker
//! gets [`Acquired::OwnerDied`] and repairs the queue.
//!
//! The fast path does not call glibc: on this kind of machine a robust
//! `pthread_mutex_trylock` + `pthread_mutex_unlock` costs 22-29 ns, against
//! 3-10 ns for each of the two atomic instructions that matter, and a
//! send+receive pair takes the lock twice. Instead, while it holds the lock a
//! thread names it in the `list_op_pending` slot of its robust list head
//! (found once per thread with `get_robust_list`), which the kernel also
//! handles at death. The slot belongs to a robust operation in progress, so
//! it is only used while no other robust operation of the thread is: a
//! nested lock (a signal handler using another queue while this thread holds
//! one) goes through glibc, and the outer lock's slot is put back after each
//! glibc call. A thread without a robust list goes through glibc too. Both
//! paths speak the same protocol, so they exclude each other.
//!
//! The release is a plain store of 0, not an atomic exchange: on this kind
//! of machine a locked instruction costs 3-10 ns, and a pair releases the
//! lock twice. A plain store cannot tell whether someone set
//! `FUTEX_WAITERS` just before it, so sleepers are also counted in
//! `Header::lock_sleepers`, which the releaser reads after its store. The
//! processor may read the count before the store is visible; the sleeper
//! closes that window with `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`
//! before it sleeps (every process that releases this way registered for it
//! when it opened its first queue): once the barrier returns, either
//! the releaser's store is visible, and the sleep returns at once, or its
//! read of the count comes after the sleeper's increment, and it wakes the
//! sleeper. The barrier costs about 20 µs here, so a nap skips it and
//! sleeps at most 100 µs, unless the previous one lasted that long (which a
//! missed release looks like): a release missed costs 100 µs, no more. (In
//! one run of `mqtool bench`, whose 4 producers and 1 consumer share two
//! CPUs, 21 of 172,000 naps missed their release.)
//! glibc would sleep uncounted, so the glibc path below only ever tries the
//! lock in glibc and naps on its own. On a layout 1.x file, whose other users
//! may be 1.x libraries sleeping uncounted, every lock takes the glibc path,
//! whose release is an exchange that sees their `FUTEX_WAITERS`.
//!
//! The thread id is cached per thread; a fork handler invalidates the cache
//! in the child, whose thread has a new id.
//!
//! These functions are safe because a [`Region`] always holds a mapped,
//! aligned `pthread_mutex_t`. A hostile process can still scribble on the
//! lock word; the worst that does is an error or a hang, never access outside
//! the mapping.
#![allow(unsafe_code)]

use crate::layout::Region;
use std::cell::Cell;
use std::mem::{MaybeUninit, size_of};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64, compiler_fence};
use std::time::{Duration, Instant};

/// How a lock was acquired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Normally.
    Clean,
    /// The previous owner died holding it: the protected state may be half
    /// updated and must be repaired before [`make_consistent`].
    OwnerDied,
}

/// How a held lock was taken, hence how it is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held(Path);

impl Held {
    /// Not held (any more): [`unlock`] does nothing with it.
    pub const RELEASED: Held = Held(Path::Released);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Our fast path; the pointer is the thread's robust list head.
    Own(*mut RobustListHead),
    /// `pthread_mutex_*`.
    Glibc,
    /// Released already.
    Released,
}

const FUTEX_WAITERS: u32 = 0x8000_0000;
const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// The kernel's `struct robust_list_head` (linux/futex.h).
#[repr(C)]
#[derive(Debug)]
struct RobustListHead {
    list: *mut libc::c_void,
    futex_offset: libc::c_long,
    list_op_pending: *mut libc::c_void,
}

/// What a thread knows about itself.
#[derive(Clone, Copy)]
struct Me {
    /// [`FORK_GEN`] when this was filled in; 0: never.
    epoch: u64,
    tid: u32,
    /// The thread's robust list head, null if it has none we can use.
    head: *mut RobustListHead,
    /// The head's `futex_offset`, negated: where a list entry sits after the
    /// futex word it stands for.
    node_offset: usize,
}

thread_local! {
    static ME: Cell<Me> = const {
        Cell::new(Me { epoch: 0, tid: 0, head: std::ptr::null_mut(), node_offset: 0 })
    };
}

/// Bumped in a forked child, whose thread has a new id.
static FORK_GEN: AtomicU64 = AtomicU64::new(1);
/// The fork handler: 0 not registered, 1 being registered, 2 registered.
/// Nothing is cached before 2: a fork in between would keep a stale id.
static FORK_HANDLER: AtomicU32 = AtomicU32::new(0);

/// This process's registration for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`: 0 not
/// tried, 1 registered, 2 refused. Registration is kept across `fork`.
static BARRIER: AtomicU32 = AtomicU32::new(0);
/// Wakes in a row that found nobody asleep on a lock (see [`wake_sleeper`]).
static FUTILE: AtomicU32 = AtomicU32::new(0);

extern "C" fn after_fork_in_child() {
    FORK_GEN.fetch_add(1, Relaxed);
}

impl Me {
    /// The robust operation this thread has in progress (null: none, or no
    /// robust list).
    #[inline]
    fn pending(&self) -> *mut libc::c_void {
        if self.head.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: a non-null head is this thread's robust list head.
        unsafe { pending(self.head) }
    }
}

#[inline]
fn me() -> Me {
    let m = ME.get();
    if m.epoch == FORK_GEN.load(Relaxed) {
        return m;
    }
    refresh()
}

#[cold]
fn refresh() -> Me {
    if FORK_HANDLER
        .compare_exchange(0, 1, Acquire, Relaxed)
        .is_ok()
    {
        // SAFETY: registers a handler that only increments an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        FORK_HANDLER.store(2, Release);
    }
    // Until the handler is in place, use the id without caching it.
    let epoch = if FORK_HANDLER.load(Acquire) == 2 {
        FORK_GEN.load(Relaxed)
    } else {
        0
    };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    let mut head: *mut RobustListHead = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: pid 0 is the calling thread; both out-pointers are valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            &mut head as *mut *mut RobustListHead,
            &mut len as *mut libc::size_t,
        )
    };
    let mut m = Me {
        epoch,
        tid,
        head: std::ptr::null_mut(),
        node_offset: 0,
    };
    if r == 0 && !head.is_null() && len == size_of::<RobustListHead>() {
        // SAFETY: the kernel returned this thread's registered head, which
        // its C library keeps for the thread's lifetime.
        let off = unsafe { std::ptr::addr_of!((*head).futex_offset).read_volatile() };
        // The entry the kernel derives the word from must lie inside our
        // mutex (glibc: -32, the mutex's list field).
        let node = off.checked_neg().and_then(|n| usize::try_from(n).ok());
        if let Some(n) = node
            && n % 8 == 0
            && n + 8 <= size_of::<libc::pthread_mutex_t>()
            && tid & !FUTEX_TID_MASK == 0
            && registered()
        {
            m.head = head;
            m.node_offset = n;
        }
    }
    ME.set(m);
    m
}

/// Registers this process, once, for the barrier that lock sleepers issue
/// (see the module docs); without it, this process's threads take the
/// glibc path, whose release is an atomic exchange. The first lock of each
/// thread checks it; opening a queue calls it first, since registering a
/// process that already has several threads waits for an RCU grace period
/// (10-20 ms here), which a lock should not.
pub fn register_process() {
    registered();
}

fn registered() -> bool {
    match BARRIER.load(Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let ok = membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED);
            BARRIER.store(if ok { 1 } else { 2 }, Relaxed);
            ok
        }
    }
}

const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

fn membarrier(cmd: libc::c_int) -> bool {
    // SAFETY: membarrier takes no pointers.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) == 0 }
}

/// The lock word: the first `u32` of the mutex.
fn word(r: &Region) -> &AtomicU32 {
    // SAFETY: the mutex is at least 4 bytes and 4-aligned inside the mapping
    // that `r` keeps alive; glibc and the kernel only change its first int
    // atomically.
    unsafe { &*(r.mutex_ptr() as *const AtomicU32) }
}

/// # Safety
/// `head` is the calling thread's robust list head.
#[inline]
unsafe fn pending(head: *mut RobustListHead) -> *mut libc::c_void {
    // SAFETY: per the contract, head points to live thread-owned memory.
    unsafe { std::ptr::addr_of!((*head).list_op_pending).read_volatile() }
}

/// # Safety
/// `head` is the calling thread's robust list head.
#[inline]
unsafe fn set_pending(head: *mut RobustListHead, p: *mut libc::c_void) {
    compiler_fence(SeqCst);
    // SAFETY: per the contract; only this thread and, when it dies, the
    // kernel read the slot.
    unsafe { std::ptr::addr_of_mut!((*head).list_op_pending).write_volatile(p) };
    compiler_fence(SeqCst);
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

/// Locks the region's mutex, spinning for at most `spin_ns()` nanoseconds
/// while another thread holds it before sleeping (0: sleeps at once).
///
/// A contended lock sleeps in the kernel, and on this kind of machine a
/// cross-CPU futex wake-up costs 25-30 µs, against critical sections of tens
/// of nanoseconds: with more than one usable CPU, the caller spins a little.
///
/// # Errors
/// `EDEADLK` when the word says this thread holds the lock already (a damaged
/// word); pthread errors from the glibc path.
#[inline]
pub fn lock_spinning(r: &Region, spin_ns: impl FnOnce() -> u32) -> Result<(Acquired, Held), i32> {
    let m = me();
    if m.head.is_null() || !m.pending().is_null() || r.legacy_lock() {
        return glibc_lock(r, m, spin_ns());
    }
    let w = word(r);
    let node = (w as *const AtomicU32 as usize + m.node_offset) as *mut libc::c_void;
    // Named before the attempt: a death from here on is handled by the
    // kernel (it ignores a word that holds another thread's id).
    // SAFETY: m.head is this thread's robust list head.
    unsafe { set_pending(m.head, node) };
    let held = Held(Path::Own(m.head));
    match w.compare_exchange(0, m.tid, Acquire, Relaxed) {
        Ok(_) => Ok((Acquired::Clean, held)),
        Err(v) => match contended(r, v, m.tid, spin_ns()) {
            Ok(a) => Ok((a, held)),
            Err(e) => {
                // SAFETY: as above.
                unsafe { set_pending(m.head, std::ptr::null_mut()) };
                Err(e)
            }
        },
    }
}

#[cold]
fn contended(r: &Region, mut v: u32, tid: u32, spin_ns: u32) -> Result<Acquired, i32> {
    let w = word(r);
    let mut barrier = false;
    let limit = Duration::from_nanos(u64::from(spin_ns));
    let start = (spin_ns > 0).then(Instant::now);
    // Once this thread has slept, other sleepers may remain: keep the
    // waiters bit when acquiring, so that the unlock wakes the next one.
    let mut keep = 0;
    loop {
        if v & FUTEX_OWNER_DIED != 0 {
            // The kernel cleared the dead owner's id and kept the waiters bit.
            match w.compare_exchange(v, tid | keep | (v & FUTEX_WAITERS), Acquire, Relaxed) {
                Ok(_) => return Ok(Acquired::OwnerDied),
                Err(x) => {
                    v = x;
                    continue;
                }
            }
        }
        let owner = v & FUTEX_TID_MASK;
        if owner == tid {
            return Err(libc::EDEADLK);
        }
        if owner == 0 {
            match w.compare_exchange(v, tid | keep | (v & FUTEX_WAITERS), Acquire, Relaxed) {
                Ok(_) => return Ok(Acquired::Clean),
                Err(x) => {
                    v = x;
                    continue;
                }
            }
        }
        if let Some(s) = start
            && s.elapsed() < limit
        {
            for _ in 0..16 {
                std::hint::spin_loop();
            }
            v = w.load(Relaxed);
            continue;
        }
        keep = FUTEX_WAITERS;
        nap(r, &mut barrier);
        v = w.load(Relaxed);
    }
}

/// A nap on a held lock without the barrier (see the module docs) lasts at
/// most this long; after one that lasted that long, the next nap issues the
/// barrier and may last [`LONG_NAP`].
const SHORT_NAP: Duration = Duration::from_micros(100);
/// Bounds a nap whose release was missed all the same: a sleeper killed
/// while counted, whose count was then dropped (see [`wake_sleeper`]).
const LONG_NAP: Duration = Duration::from_millis(20);

/// Sleeps once while another thread holds the lock, counted in
/// `Header::lock_sleepers` and with `FUTEX_WAITERS` set in the word (for
/// the kernel, which wakes a sleeper when the owner dies, and for glibc's
/// release). Returns at once when the lock is free or its owner died.
/// `barrier`: whether the last nap timed out, which a missed release looks
/// like; this nap then issues the barrier, and says whether it timed out.
fn nap(r: &Region, barrier: &mut bool) {
    let w = word(r);
    let count = &r.header().lock_sleepers;
    // A locked instruction: the count is visible before the word is read.
    count.fetch_add(1, SeqCst);
    let mut v = w.load(SeqCst);
    let held = v & FUTEX_TID_MASK != 0 && v & FUTEX_OWNER_DIED == 0;
    if held
        && (v & FUTEX_WAITERS != 0
            || w.compare_exchange(v, v | FUTEX_WAITERS, Relaxed, Relaxed)
                .is_ok())
    {
        v |= FUTEX_WAITERS;
        let limit = if *barrier {
            // Every thread that may release with a plain store has passed
            // a full barrier once this returns: either its store of 0 is
            // visible (the wait below returns at once) or its read of the
            // count comes after ours (it wakes us).
            membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED);
            LONG_NAP
        } else {
            SHORT_NAP
        };
        *barrier = crate::sync::futex::wait_for(w, v, limit);
    }
    let _ = count.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
}

/// The glibc path: a thread without a usable robust list, or a lock nested
/// in another robust operation of the same thread.
#[cold]
fn glibc_lock(r: &Region, m: Me, spin_ns: u32) -> Result<(Acquired, Held), i32> {
    let outer = m.pending();
    let res = glibc_lock_spinning(r, m.tid, spin_ns);
    restore(m.head, outer);
    res.map(|a| (a, Held(Path::Glibc)))
}

/// Puts back the slot of an outer lock that a glibc call cleared.
fn restore(head: *mut RobustListHead, outer: *mut libc::c_void) {
    if !outer.is_null() {
        // SAFETY: a non-null outer was read from head, this thread's head.
        unsafe { set_pending(head, outer) };
    }
}

/// Never sleeps inside glibc: its sleepers are not counted, and a release
/// with a plain store would not wake them.
fn glibc_lock_spinning(r: &Region, tid: u32, spin_ns: u32) -> Result<Acquired, i32> {
    let start = Instant::now();
    let limit = Duration::from_nanos(u64::from(spin_ns));
    let mut barrier = false;
    loop {
        // SAFETY: the region holds an initialised process-shared mutex.
        match unsafe { libc::pthread_mutex_trylock(r.mutex_ptr()) } {
            0 => return Ok(Acquired::Clean),
            libc::EOWNERDEAD => return Ok(Acquired::OwnerDied),
            libc::EBUSY => {
                let w = word(r);
                let v = w.load(Relaxed);
                let owner = v & FUTEX_TID_MASK;
                if owner == tid {
                    return Err(libc::EDEADLK);
                }
                if owner == 0 && v & FUTEX_OWNER_DIED == 0 {
                    // Neither free nor owned: stray bits in a damaged word,
                    // which glibc's trylock refuses for ever. Clear them.
                    let _ = w.compare_exchange(v, 0, Relaxed, Relaxed);
                } else if start.elapsed() < limit {
                    for _ in 0..16 {
                        std::hint::spin_loop();
                    }
                } else {
                    nap(r, &mut barrier);
                }
            }
            e => return Err(e),
        }
    }
}

/// Unlocks the region's mutex, taken by this thread as `held`.
#[inline(always)]
pub fn unlock(r: &Region, held: Held) {
    match held.0 {
        Path::Own(head) => {
            // A plain store: sleepers are found through their count (see
            // the module docs).
            word(r).store(0, Release);
            // Keeps the compiler from reading the count before the store;
            // the processor may, which is what the sleepers' barrier is for.
            compiler_fence(SeqCst);
            if r.header().lock_sleepers.load(Relaxed) != 0 {
                wake_sleeper(r);
            }
            // Cleared only once the word is free: a death in between leaves
            // a free word, for which the kernel at most wakes a sleeper.
            // SAFETY: head is this thread's robust list head (Held is not
            // Send: it stays with the thread that locked).
            unsafe { set_pending(head, std::ptr::null_mut()) };
        }
        Path::Glibc => glibc_unlock(r),
        Path::Released => {}
    }
}

/// Consecutive wakes that find nobody asleep after which the sleeper count
/// is taken for one left by killed sleepers, and dropped.
const FUTILE_WAKES: u32 = 64;

/// Wakes one sleeper on the lock. A sleeper killed while counted never
/// uncounts itself, and every release would then make this call: once
/// [`FUTILE_WAKES`] calls in a row have found nobody, the count is reset.
/// A live sleeper it drops is still bounded by its nap's timeout.
#[cold]
fn wake_sleeper(r: &Region) {
    if crate::sync::futex::wake(word(r), 1) > 0 {
        FUTILE.store(0, Relaxed);
    } else if FUTILE.fetch_add(1, Relaxed) + 1 >= FUTILE_WAKES {
        FUTILE.store(0, Relaxed);
        r.header().lock_sleepers.store(0, Relaxed);
    }
}

#[cold]
fn glibc_unlock(r: &Region) {
    let m = me();
    let outer = m.pending();
    // SAFETY: the region holds an initialised process-shared mutex; a robust
    // mutex refuses (EPERM) an unlock by a non-owner.
    let res = unsafe { libc::pthread_mutex_unlock(r.mutex_ptr()) };
    debug_assert_eq!(res, 0);
    restore(m.head, outer);
    // glibc wakes a sleeper only if the word's FUTEX_WAITERS bit is set,
    // and a release with a plain store may have cleared it.
    if r.header().lock_sleepers.load(Relaxed) != 0 {
        wake_sleeper(r);
    }
}

/// Marks the mutex, acquired with [`Acquired::OwnerDied`], usable again.
pub fn make_consistent(r: &Region, held: Held) {
    // Our path cleared FUTEX_OWNER_DIED when it took the word; glibc keeps
    // its own mark in the mutex.
    if held.0 == Path::Glibc {
        // SAFETY: the region holds an initialised mutex; glibc checks that
        // the caller owns it.
        let res = unsafe { libc::pthread_mutex_consistent(r.mutex_ptr()) };
        debug_assert_eq!(res, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Geometry, Mapping};

    /// A formatted queue file, already unlinked, its geometry and mapping.
    fn shared_file(tag: &str) -> (std::fs::File, Geometry, Mapping) {
        let path = std::env::temp_dir().join(format!("shmq-mutex-{tag}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let geo = Geometry::new(1, 8).unwrap();
        file.set_len(geo.file_size as u64).unwrap();
        let m = Mapping::format(&file, geo, 0o600).unwrap();
        (file, geo, m)
    }

    fn shared_lock(tag: &str) -> Mapping {
        shared_file(tag).2
    }

    fn lock(r: &Region) -> (Acquired, Held) {
        lock_spinning(r, || 0).unwrap()
    }

    /// The next locker after a death: told so, and the lock works again.
    fn take_after_death(r: &Region) {
        let (a, held) = lock(r);
        assert_eq!(a, Acquired::OwnerDied, "the kernel marks a dead owner");
        make_consistent(r, held);
        unlock(r, held);
        let (a, held) = lock(r);
        assert_eq!(a, Acquired::Clean);
        unlock(r, held);
    }

    /// Runs `f` in a forked child (see [`spawn_child`]) and returns its
    /// exit code.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        reap(spawn_child(f)).expect("child did not exit normally")
    }

    /// Forks a child that runs `f` (async-signal-safe work only: the lock
    /// paths make syscalls and touch atomics) and `_exit`s with its result;
    /// returns its pid.
    fn spawn_child(f: impl FnOnce() -> i32) -> libc::pid_t {
        // SAFETY: the child only runs `f` and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = f();
            // SAFETY: ends the child without running the parent's cleanup.
            unsafe { libc::_exit(code) };
        }
        pid
    }

    /// Waits for `pid`; its exit code, or `None` if a signal killed it.
    fn reap(pid: libc::pid_t) -> Option<i32> {
        let mut status = 0;
        // SAFETY: pid is our child; status is valid storage.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }

    /// Polls until another thread or process sleeps on the lock (counted,
    /// with the waiters bit set in the word).
    fn until_someone_sleeps(r: &Region) {
        let start = Instant::now();
        while r.header().lock_sleepers.load(Relaxed) == 0
            || word(r).load(Relaxed) & FUTEX_WAITERS == 0
        {
            assert!(start.elapsed() < Duration::from_secs(30), "nobody slept");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Takes `r`'s lock, forks a child that runs `f` (which takes it too),
    /// and returns once the child sleeps on it: the lock, the child's pid.
    fn hold_while_a_child_sleeps(r: &Region, f: impl FnOnce() -> i32) -> (Held, libc::pid_t) {
        let (_, held) = lock(r);
        let child = spawn_child(f);
        until_someone_sleeps(r);
        (held, child)
    }

    #[test]
    fn a_sleeper_in_another_process_gets_the_lock_once_released() {
        let m = shared_lock("sleeper");
        let r = m.region();
        let (held, child) = hold_while_a_child_sleeps(r, || {
            let (a, held) = lock(r);
            unlock(r, held);
            i32::from(a == Acquired::Clean)
        });
        // Long enough for the child's first nap to end and the next one to
        // begin with the barrier.
        std::thread::sleep(Duration::from_millis(50));
        unlock(r, held);
        assert_eq!(reap(child), Some(1));
        assert_eq!(r.header().lock_sleepers.load(Relaxed), 0);
        assert_eq!(word(r).load(Relaxed), 0);
    }

    #[test]
    fn a_nested_glibc_locker_sleeps_counted_and_is_woken() {
        let outer = shared_lock("gouter");
        let inner = shared_lock("ginner");
        let (a, b) = (outer.region(), inner.region());
        let (held, child) = hold_while_a_child_sleeps(b, || {
            let (_, ho) = lock(a);
            // Nested: the glibc path, which must not sleep inside glibc.
            let (_, hi) = lock(b);
            let ok = hi.0 == Path::Glibc;
            unlock(b, hi);
            unlock(a, ho);
            i32::from(ok)
        });
        unlock(b, held);
        assert_eq!(reap(child), Some(1));
        assert_eq!(b.header().lock_sleepers.load(Relaxed), 0);
    }

    #[test]
    fn the_count_of_a_sleeper_killed_asleep_is_dropped() {
        let m = shared_lock("killed");
        let r = m.region();
        let (held, child) = hold_while_a_child_sleeps(r, || {
            let (_, held) = lock(r);
            unlock(r, held);
            0
        });
        // SAFETY: child is our child process.
        assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
        assert_eq!(reap(child), None);
        // Futile wakes of other tests must not complete a reset here.
        FUTILE.store(0, Relaxed);
        unlock(r, held);
        assert_eq!(
            r.header().lock_sleepers.load(Relaxed),
            1,
            "a killed sleeper cannot uncount itself"
        );
        // Releases that find nobody to wake drop the count (other tests in
        // this process may interleave their own wakes: bounded, not exact).
        let mut rounds = 0;
        while r.header().lock_sleepers.load(Relaxed) != 0 {
            rounds += 1;
            assert!(rounds < 100_000, "the stale count was never dropped");
            let (_, held) = lock(r);
            unlock(r, held);
        }
    }

    #[test]
    fn a_1x_file_takes_the_glibc_path() {
        let (file, geo, m) = shared_file("v1");
        m.region().header().version.store(1 << 16 | 1, Relaxed);
        m.region()
            .header()
            .state
            .store(crate::layout::STATE_READY, Relaxed);
        let m = Mapping::open(&file, geo.file_size).unwrap();
        let r = m.region();
        assert!(r.legacy_lock());
        let (a, held) = lock(r);
        assert_eq!((a, held.0), (Acquired::Clean, Path::Glibc));
        unlock(r, held);
        assert_eq!(word(r).load(Relaxed), 0);
        // A word with no owner but the waiters bit (only damage makes one)
        // is taken, not refused for ever.
        word(r).store(FUTEX_WAITERS, Relaxed);
        let (a, held) = lock(r);
        assert_eq!((a, held.0), (Acquired::Clean, Path::Glibc));
        unlock(r, held);
    }

    #[test]
    fn a_word_with_only_the_waiters_bit_is_taken() {
        let m = shared_lock("stray");
        let r = m.region();
        word(r).store(FUTEX_WAITERS, Relaxed);
        let (a, held) = lock(r);
        assert_eq!(a, Acquired::Clean);
        unlock(r, held);
        assert_eq!(word(r).load(Relaxed), 0);
    }

    #[test]
    fn takes_the_fast_path_and_releases() {
        let m = shared_lock("fast");
        let r = m.region();
        let (a, held) = lock(r);
        assert_eq!(a, Acquired::Clean);
        assert!(
            matches!(held.0, Path::Own(_)),
            "a thread of a glibc program has a robust list"
        );
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert_eq!(word(r).load(Relaxed), tid);
        unlock(r, held);
        assert_eq!(word(r).load(Relaxed), 0);
        let (_, again) = lock(r);
        unlock(r, again);
    }

    #[test]
    fn a_forked_child_that_dies_holding_the_lock_leaves_it_owner_dead() {
        let m = shared_lock("fork");
        let r = m.region();
        // The parent caches its thread id first; the child must not use it.
        let (_, held) = lock(r);
        unlock(r, held);
        let code = in_child(|| {
            // Dies holding it: no unlock.
            let (a, _held) = lock(r);
            i32::from(a == Acquired::Clean)
        });
        assert_eq!(code, 1);
        take_after_death(r);
    }

    #[test]
    fn a_thread_that_exits_holding_the_lock_leaves_it_owner_dead() {
        let m = shared_lock("thread");
        let r = m.region();
        std::thread::scope(|s| {
            s.spawn(|| {
                let (a, _held) = lock(r);
                assert_eq!(a, Acquired::Clean);
            });
        });
        take_after_death(r);
    }

    #[test]
    fn a_nested_lock_goes_through_glibc_and_both_survive_a_death() {
        let outer = shared_lock("outer");
        let inner = shared_lock("inner");
        let (a, b) = (outer.region(), inner.region());
        let code = in_child(|| {
            let (_, ho) = lock(a);
            let (_, hi) = lock(b);
            let nested_glibc = hi.0 == Path::Glibc;
            // Lock and unlock the inner one again, then die holding both.
            unlock(b, hi);
            let (_, _hi) = lock(b);
            i32::from(nested_glibc && matches!(ho.0, Path::Own(_)))
        });
        assert_eq!(code, 1);
        take_after_death(a);
        take_after_death(b);
    }

    #[test]
    fn sleepers_are_woken_and_every_critical_section_is_exclusive() {
        let m = shared_lock("contend");
        let r = m.region();
        let counter = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        let (_, held) = lock(r);
                        // A non-atomic increment: lost updates show a hole.
                        let v = counter.load(Relaxed);
                        std::hint::spin_loop();
                        counter.store(v + 1, Relaxed);
                        unlock(r, held);
                    }
                });
            }
        });
        assert_eq!(counter.load(Relaxed), 80_000);
        assert_eq!(word(r).load(Relaxed), 0);
    }

    #[test]
    fn releasing_what_is_no_longer_held_leaves_the_word_alone() {
        let m = shared_lock("released");
        let r = m.region();
        let (_, held) = lock(r);
        let owned = word(r).load(Relaxed);
        unlock(r, Held::RELEASED);
        assert_eq!(word(r).load(Relaxed), owned);
        unlock(r, held);
        assert_eq!(word(r).load(Relaxed), 0);
    }

    #[test]
    fn a_word_naming_this_thread_is_refused() {
        let m = shared_lock("self");
        let r = m.region();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        word(r).store(tid, Relaxed);
        assert_eq!(lock_spinning(r, || 0).unwrap_err(), libc::EDEADLK);
        word(r).store(0, Relaxed);
        let (_, held) = lock(r);
        unlock(r, held);
    }
}
