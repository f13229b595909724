//! The table of open descriptors: file descriptor number → queue
//! descriptor, read without a lock.
//!
//! A lookup is async-signal-safe and never waits: two loads down a
//! two-level array of atomic pointers, one atomic increment of the entry's
//! user count, one load to check that the entry is still the descriptor's.
//! A C program may send, receive or ask for notification from a signal
//! handler, and fork at any time.
//!
//! # Entries
//! An [`Entry`] is allocated once and never freed: a lookup that loaded a
//! pointer to it may always touch it, however late. Its state word holds a
//! user count and two flags, `OPEN` (the descriptor is usable) and `DYING`
//! (closed, its queue descriptor still alive because calls that started
//! before the close are still using it). A lookup counts itself in, then
//! checks `OPEN` and that the slot still points to the entry; otherwise it
//! counts itself out and the descriptor is not open. The close clears the
//! slot and turns `OPEN` into `DYING` in one step on the state word, so a
//! call and a close on the same word are ordered: either the call counted
//! first (and the close leaves the queue descriptor to it), or it sees the
//! descriptor closed (`EBADF`, as a call racing with `close` may get from
//! the kernel). Whoever brings a `DYING` entry to zero users (the close, or
//! the last call) drops the queue descriptor (closing its file
//! descriptor) and puts the entry on a free list, from which a later open
//! takes it. A lookup that still holds a stale pointer to a recycled entry
//! finds either no `OPEN`, or the slot no longer pointing to it: never the
//! queue of another descriptor.
//!
//! # Writers
//! Opens, closes and the adoption of duplicates serialise on a mutex, held
//! with every signal blocked in the writing thread (a handler in that
//! thread could otherwise wait for it), and held across `fork` by atfork
//! handlers, so a child never inherits it locked or a table half-written.
//! The free list is pushed by anyone (a call can finish a close) and popped
//! only under the mutex, which makes its compare-and-swap free of ABA.

use shmq::mqueue::MqdT;
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::ops::Deref;
use std::ptr::{self, null_mut};
use std::sync::Once;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize};

/// File descriptors per second-level chunk.
const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;
/// First-level pointers: descriptors below [`MAX_FD`] (16 Mi) are served.
const TOP: usize = 1 << 14;
/// An open that gets a file descriptor this high fails with `EMFILE`.
pub(crate) const MAX_FD: usize = TOP * CHUNK;

/// The descriptor is open.
const OPEN: u64 = 1 << 62;
/// Closed, but its queue descriptor is still in use by calls.
const DYING: u64 = 1 << 61;
/// The user count: the low 32 bits.
const USERS: u64 = (1 << 32) - 1;

struct Chunk([AtomicPtr<Entry>; CHUNK]);

pub(crate) struct Entry {
    state: AtomicU64,
    /// Initialised exactly while `OPEN` or `DYING` is set.
    mq: UnsafeCell<MaybeUninit<MqdT>>,
    /// The queue file's device and inode, to recognise duplicates.
    file: UnsafeCell<(u64, u64)>,
    /// Next entry on the free list.
    next: AtomicPtr<Entry>,
    /// Next entry on the list of all entries (set before the entry joins
    /// it, never changed).
    all_next: *const Entry,
}

// SAFETY: `all_next` is never written after the entry is shared. `mq`
// and `file` are written only by a writer (under the mutex)
// while the entry is neither OPEN nor DYING and has been published by no
// slot since it was freed, and read only by holders of a counted reference
// to an OPEN entry, or by writers; the state word orders the two.
unsafe impl Sync for Entry {}

static LEVEL1: [AtomicPtr<Chunk>; TOP] = [const { AtomicPtr::new(null_mut()) }; TOP];
static FREE: AtomicPtr<Entry> = AtomicPtr::new(null_mut());
/// Every entry ever allocated, newest first (pushed by writers only).
static ALL: AtomicPtr<Entry> = AtomicPtr::new(null_mut());
/// Open descriptors; zero means no file descriptor can be a duplicate of
/// one, so a miss needs no system call.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct Writer(UnsafeCell<libc::pthread_mutex_t>);
// SAFETY: a pthread mutex is made for sharing between threads.
unsafe impl Sync for Writer {}
static WRITER: Writer = Writer(UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
static ATFORK: Once = Once::new();

extern "C" fn fork_prepare() {
    // SAFETY: the static mutex is initialised. Holding it across the fork
    // means no writer is mid-change when the process is copied.
    unsafe { libc::pthread_mutex_lock(WRITER.0.get()) };
}

extern "C" fn fork_parent() {
    // SAFETY: fork_prepare took the mutex in this thread.
    unsafe { libc::pthread_mutex_unlock(WRITER.0.get()) };
}

extern "C" fn fork_child() {
    // The child has one thread, this one: start from a fresh mutex.
    // SAFETY: writing the initial value over a mutex no thread can use.
    unsafe { WRITER.0.get().write(libc::PTHREAD_MUTEX_INITIALIZER) };
}

/// A counted reference to an open descriptor's queue descriptor: while it
/// lives, the queue descriptor is not dropped (a close in between only
/// marks it `DYING`).
pub(crate) struct Ref(&'static Entry);

impl Deref for Ref {
    type Target = MqdT;
    #[inline]
    fn deref(&self) -> &MqdT {
        // SAFETY: this reference counted itself in while the entry was
        // OPEN, so `mq` is initialised and stays so until it counts out.
        unsafe { (*self.0.mq.get()).assume_init_ref() }
    }
}

impl Drop for Ref {
    #[inline]
    fn drop(&mut self) {
        release(self.0);
    }
}

#[inline]
fn release(e: &'static Entry) {
    let s = e.state.fetch_sub(1, AcqRel);
    if s & DYING != 0 && s & USERS == 1 {
        finish(e);
    }
}

/// Drops the queue descriptor of a `DYING` entry with no users and frees
/// the entry, unless someone counted in meanwhile (that one will).
#[cold]
fn finish(e: &'static Entry) {
    if e.state.compare_exchange(DYING, 0, AcqRel, Relaxed).is_err() {
        return;
    }
    // SAFETY: DYING with no user, and now neither flag: nobody else may
    // read `mq`, and it was initialised (DYING).
    unsafe { (*e.mq.get()).assume_init_drop() };
    let mut head = FREE.load(Relaxed);
    loop {
        e.next.store(head, Relaxed);
        match FREE.compare_exchange_weak(head, ptr::from_ref(e).cast_mut(), Release, Relaxed) {
            Ok(_) => return,
            Err(h) => head = h,
        }
    }
}

#[inline]
fn slot(fd: libc::c_int) -> Option<&'static AtomicPtr<Entry>> {
    let fd = usize::try_from(fd).ok()?;
    let chunk = LEVEL1.get(fd >> CHUNK_BITS)?.load(Acquire);
    if chunk.is_null() {
        return None;
    }
    // SAFETY: chunks are never freed.
    Some(unsafe { &(*chunk).0[fd & (CHUNK - 1)] })
}

/// The open descriptor `fd`, if the table has it. Async-signal-safe, never
/// waits, no system call.
#[inline]
pub(crate) fn get(fd: libc::c_int) -> Option<Ref> {
    let slot = slot(fd)?;
    let e = slot.load(Acquire);
    if e.is_null() {
        return None;
    }
    // SAFETY: entries are never freed.
    let e: &'static Entry = unsafe { &*e };
    let s = e.state.fetch_add(1, AcqRel);
    if s & OPEN != 0 && ptr::eq(slot.load(Acquire), e) {
        Some(Ref(e))
    } else {
        release(e);
        None
    }
}

/// Whether no descriptor is open (a miss is then certainly not a
/// duplicate).
#[inline]
pub(crate) fn is_empty() -> bool {
    LIVE.load(Acquire) == 0
}

/// The table's write side: only exists with the mutex held and every
/// signal blocked.
pub(crate) struct Write(());

/// Runs `f` as a writer: every signal blocked in this thread, then the
/// mutex.
pub(crate) fn write<T>(f: impl FnOnce(&Write) -> T) -> T {
    ATFORK.call_once(|| {
        // SAFETY: the handlers only lock, unlock and reset the mutex.
        unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
    });
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises `all`; pthread_sigmask changes only
    // this thread's mask (saved into `old`, restored below); the mutex is
    // initialised.
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        libc::pthread_mutex_lock(WRITER.0.get());
    }
    let out = f(&Write(()));
    // SAFETY: locked above in this thread; `old` was filled above.
    unsafe {
        libc::pthread_mutex_unlock(WRITER.0.get());
        libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), null_mut());
    }
    out
}

/// What a close leaves to do once the writer is gone: drop the queue
/// descriptor if no call uses it.
pub(crate) struct Closed(Option<&'static Entry>);

impl Drop for Closed {
    fn drop(&mut self) {
        if let Some(e) = self.0 {
            finish(e);
        }
    }
}

impl Write {
    fn slot_or_grow(&self, fd: libc::c_int) -> Option<&'static AtomicPtr<Entry>> {
        let i = usize::try_from(fd).ok()?;
        let top = LEVEL1.get(i >> CHUNK_BITS)?;
        if top.load(Acquire).is_null() {
            let chunk: &'static Chunk = Box::leak(Box::new(Chunk(
                [const { AtomicPtr::new(null_mut()) }; CHUNK],
            )));
            top.store(ptr::from_ref(chunk).cast_mut(), Release);
        }
        slot(fd)
    }

    fn alloc(&self) -> &'static Entry {
        let head = FREE.load(Acquire);
        if !head.is_null() {
            // SAFETY: entries are never freed.
            let next = unsafe { &*head }.next.load(Relaxed);
            // Only writers pop, so `head` cannot have been popped and
            // pushed again since it was read: no ABA. Pushers may have
            // added entries: then retry through a fresh allocation attempt.
            if FREE.compare_exchange(head, next, Acquire, Relaxed).is_ok() {
                // SAFETY: as above.
                return unsafe { &*head };
            }
            return self.alloc();
        }
        let e: &'static Entry = Box::leak(Box::new(Entry {
            state: AtomicU64::new(0),
            mq: UnsafeCell::new(MaybeUninit::uninit()),
            file: UnsafeCell::new((0, 0)),
            next: AtomicPtr::new(null_mut()),
            all_next: ALL.load(Relaxed),
        }));
        // Only writers push, so the head read above is still the head.
        ALL.store(ptr::from_ref(e).cast_mut(), Release);
        e
    }

    /// Makes `mq` the open descriptor of its file descriptor, whose file is
    /// `file` (device, inode). Gives `mq` back if its descriptor number is
    /// beyond the table.
    pub(crate) fn insert(&self, mq: MqdT, file: (u64, u64)) -> Result<(), MqdT> {
        use std::os::fd::AsRawFd;
        let Some(slot) = self.slot_or_grow(mq.as_raw_fd()) else {
            return Err(mq);
        };
        let e = self.alloc();
        // SAFETY: a fresh or freed entry (neither flag): nobody reads `mq`
        // or `file` until OPEN is published below.
        unsafe {
            (*e.mq.get()).write(mq);
            *e.file.get() = file;
        }
        // Stray lookups may hold counts on a free entry: keep them.
        e.state.fetch_or(OPEN, AcqRel);
        slot.store(ptr::from_ref(e).cast_mut(), Release);
        LIVE.fetch_add(1, Release);
        Ok(())
    }

    /// Closes the descriptor `fd`: `None` if it is not open. The returned
    /// value finishes the close when dropped (after the writer is gone).
    pub(crate) fn remove(&self, fd: libc::c_int) -> Option<Closed> {
        let slot = slot(fd)?;
        let e = slot.load(Acquire);
        if e.is_null() {
            return None;
        }
        // SAFETY: entries are never freed.
        let e: &'static Entry = unsafe { &*e };
        slot.store(null_mut(), Release);
        // Only writers clear OPEN, and this one holds the mutex: the entry
        // a slot points to is OPEN.
        let s = e.state.fetch_xor(OPEN | DYING, AcqRel);
        debug_assert!(s & OPEN != 0);
        LIVE.fetch_sub(1, Release);
        Some(Closed((s & USERS == 0).then_some(e)))
    }
}

/// The open descriptors whose queue file is `file` (device, inode), as
/// counted references. Lock-free, like [`get`].
pub(crate) fn with_file(file: (u64, u64)) -> impl Iterator<Item = Ref> {
    let mut next = ALL.load(Acquire).cast_const();
    std::iter::from_fn(move || {
        while !next.is_null() {
            // SAFETY: entries are never freed.
            let e: &'static Entry = unsafe { &*next };
            next = e.all_next;
            let s = e.state.fetch_add(1, AcqRel);
            // SAFETY: counted in while OPEN: `file` is initialised and
            // not written until the entry is freed.
            if s & OPEN != 0 && unsafe { *e.file.get() } == file {
                return Some(Ref(e));
            }
            release(e);
        }
        None
    })
}
