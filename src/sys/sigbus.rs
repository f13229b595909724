//! Surviving `SIGBUS` from a queue file that shrank under its mappings.
//!
//! A queue file is mapped shared by every participant, and any of them can
//! `ftruncate` it or punch holes in it (on a full tmpfs, touching a hole
//! cannot allocate). The kernel then answers an access to the missing pages
//! with `SIGBUS`, whose default action kills the process: any participant
//! could kill all the others, even one that only calls `getattr`.
//!
//! So the first queue mapped installs a process-wide `SIGBUS` handler. For a
//! fault inside one of this process's queue mappings it maps anonymous zero
//! pages over that whole mapping (`MAP_FIXED | MAP_PRIVATE |
//! MAP_ANONYMOUS`), marks the mapping poisoned, and returns: the faulting
//! instruction runs again on the zero pages. The engine looks at the mark
//! (at least before an operation reports success, and before any wait or
//! repair) and fails with `EBADMSG`; the queue stays damaged for this
//! process until it is opened again, which refuses the shrunken file. If
//! the queue's lock word (in a page still there) names this process, the
//! handler first marks its owner dead, as the kernel does for a robust
//! futex whose owner exited: a thread of this process that held it can no
//! longer release it, so the other participants take it over and repair
//! instead of waiting for ever.
//!
//! Any other fault goes to whatever handler was installed before this one:
//! `SIG_DFL` is restored and the fault happens again (or, for a `SIGBUS`
//! sent by a process, the signal is raised again), `SIG_IGN` ignores a sent
//! signal and lets a fault kill as the kernel would, and a handler is called
//! with the same arguments (without applying its `sa_mask` or
//! `SA_RESETHAND`). A handler installed after this one replaces it
//! (this module only chains while it is installed), and then truncation
//! kills again.
//!
//! The handler is async-signal-safe: the registry of mappings is made of
//! blocks of atomics, allocated outside the handler and never freed (it
//! allocates nothing and takes no lock), and it makes only system
//! calls (`mmap`, `futex`, `gettid`, `sched_yield`, `sigaction`, `raise`)
//! and calls the previous handler. It is installed with `SA_NODEFER`: a
//! fault inside it (reading the lock word from a lost page) comes back to
//! it instead of killing the process. A thread that blocks `SIGBUS` is not
//! protected: the kernel kills on a fault with the signal blocked.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::Once;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize};

/// Entries per block of the registry.
const BLOCK: usize = 256;
/// Blocks of the registry: allocated when needed, never freed, so that the
/// handler can read any block it finds at any time.
const BLOCKS: usize = 256;
/// How many queue mappings one process can have at once (65,536: far more
/// than the file descriptors three per queue would allow by default).
pub const CAPACITY: usize = BLOCK * BLOCKS;

/// One mapping: `[start, start + len)`. `seq` is odd while the entry is
/// being written (a seqlock: the handler skips an entry whose `seq` moved
/// while it read it); `start` is 0 for a free entry.
struct Entry {
    seq: AtomicUsize,
    start: AtomicUsize,
    len: AtomicUsize,
    /// Offset of the queue's lock word in the mapping (see `sync::mutex`),
    /// plus one; 0 for none (so that the registry is all zeros, in `.bss`).
    lock_at: AtomicUsize,
    /// This process's participant number in the queue, 0 until it joins.
    member: AtomicU32,
    poisoned: AtomicBool,
    /// Thread handling a fault in this mapping now, 0: none.
    handling: AtomicU32,
    /// The zero pages are in place.
    done: AtomicBool,
}

impl Entry {
    const fn empty() -> Entry {
        Entry {
            seq: AtomicUsize::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            lock_at: AtomicUsize::new(0),
            member: AtomicU32::new(0),
            poisoned: AtomicBool::new(false),
            handling: AtomicU32::new(0),
            done: AtomicBool::new(false),
        }
    }
}

/// The registry: blocks of entries, each allocated when needed.
static REGISTRY: [AtomicPtr<Entry>; BLOCKS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; BLOCKS];

/// Entry `i`, if its block exists.
fn entry(i: usize) -> Option<&'static Entry> {
    let block = REGISTRY.get(i / BLOCK)?.load(Acquire);
    // SAFETY: a non-null block is a leaked, never freed `[Entry; BLOCK]`.
    (!block.is_null()).then(|| unsafe { &*block.add(i % BLOCK) })
}

/// Block `b`, allocated if needed (never from the handler).
fn block(b: usize) -> *mut Entry {
    let slot = &REGISTRY[b];
    let p = slot.load(Acquire);
    if !p.is_null() {
        return p;
    }
    let fresh = Box::into_raw(Box::new([const { Entry::empty() }; BLOCK])).cast::<Entry>();
    match slot.compare_exchange(std::ptr::null_mut(), fresh, AcqRel, Acquire) {
        Ok(_) => fresh,
        Err(theirs) => {
            // SAFETY: `fresh` came from Box::into_raw just above and was
            // never published.
            drop(unsafe { Box::from_raw(fresh.cast::<[Entry; BLOCK]>()) });
            theirs
        }
    }
}

/// One past the highest entry ever used: the handler looks no further.
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Installs the handler once.
static INSTALL: Once = Once::new();
/// Whether the handler is installed (else mappings are unprotected).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The action that was installed before ours, written once before ours is
/// installed and only read afterwards.
struct Previous(UnsafeCell<libc::sigaction>);

// SAFETY: written only inside `INSTALL.call_once`: first by a `sigaction`
// that installs nothing, then once more by the one that installs the
// handler, with the same bytes (unless another thread changed the action
// in between, and then with the action that ours really replaced); the
// handler only reads it, and only once it is installed.
unsafe impl Sync for Previous {}

// SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
static PREVIOUS: Previous = Previous(UnsafeCell::new(unsafe { std::mem::zeroed() }));

/// A mapping registered with the handler; unregisters on drop.
#[derive(Debug)]
pub struct Guarded {
    slot: usize,
}

/// A flag that is never set, for regions that are not mappings (tests).
static NEVER: AtomicBool = AtomicBool::new(false);

impl Guarded {
    /// Registers `[start, start + len)`, a mapping of a queue file whose
    /// lock word (if any) is at offset `lock_at`, and installs the handler
    /// if this is the first one. `EMFILE` when [`CAPACITY`] mappings are
    /// registered already.
    pub fn new(
        start: *mut u8,
        len: usize,
        lock_at: Option<usize>,
    ) -> Result<Guarded, nix::errno::Errno> {
        debug_assert!(lock_at.is_none_or(|o| o % 8 == 0 && o + 8 <= len));
        install();
        let start = start as usize;
        debug_assert!(start != 0 && len != 0);
        for i in 0..CAPACITY {
            if i % BLOCK == 0 {
                block(i / BLOCK);
            }
            let Some(e) = entry(i) else { continue };
            let s = e.seq.load(Relaxed);
            if s % 2 != 0 || e.start.load(Relaxed) != 0 {
                continue;
            }
            if e.seq.compare_exchange(s, s + 1, Acquire, Relaxed).is_err() {
                continue;
            }
            std::sync::atomic::fence(Release);
            e.poisoned.store(false, Relaxed);
            e.handling.store(0, Relaxed);
            e.done.store(false, Relaxed);
            e.member.store(0, Relaxed);
            e.lock_at.store(lock_at.map_or(0, |o| o + 1), Relaxed);
            e.len.store(len, Relaxed);
            e.start.store(start, Relaxed);
            e.seq.store(s + 2, Release);
            HIGH.fetch_max(i + 1, AcqRel);
            return Ok(Guarded { slot: i });
        }
        Err(nix::errno::Errno::EMFILE)
    }

    /// The poison flag of this mapping: set by the handler once a fault in
    /// it was answered with zero pages.
    pub fn flag(&self) -> &'static AtomicBool {
        &self.entry().poisoned
    }

    /// Records this process's participant number in the queue: a lock
    /// word that names it is marked as held by a dead owner when the
    /// mapping is lost, so that the other participants take it over
    /// instead of waiting for a release that cannot come.
    pub fn set_member(&self, id: u32) {
        self.entry().member.store(id, Relaxed);
    }

    /// Marks the mapping poisoned without a fault: the file was found
    /// shrunk by other means.
    pub fn poison(&self) {
        self.entry().poisoned.store(true, SeqCst);
    }

    fn entry(&self) -> &'static Entry {
        entry(self.slot).expect("a registered entry's block exists")
    }

    /// A flag that is never set, for memory that cannot fault.
    pub fn never() -> &'static AtomicBool {
        &NEVER
    }
}

impl Drop for Guarded {
    /// Takes the range out of the registry; the caller unmaps afterwards,
    /// so the handler never maps over an address that was reused.
    fn drop(&mut self) {
        let e = self.entry();
        let s = e.seq.load(Relaxed);
        e.seq.store(s + 1, Relaxed);
        std::sync::atomic::fence(Release);
        e.start.store(0, Relaxed);
        e.len.store(0, Relaxed);
        e.seq.store(s + 2, Release);
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid value to fill in.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = handler as extern "C" fn(_, _, _) as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        // SAFETY: sa_mask is valid storage for a sigset_t.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: the pointers are valid; PREVIOUS is filled before the
        // handler that reads it can run (see `Previous`).
        let r = unsafe {
            libc::sigaction(libc::SIGBUS, std::ptr::null(), PREVIOUS.0.get());
            // A sent SIGBUS restarts system calls exactly when the previous
            // handler asked for that.
            sa.sa_flags |= (*PREVIOUS.0.get()).sa_flags & libc::SA_RESTART;
            libc::sigaction(libc::SIGBUS, &sa, PREVIOUS.0.get())
        };
        INSTALLED.store(r == 0, Relaxed);
    });
}

/// The registered mapping that holds `addr`: `(start, len, entry)`.
fn find(addr: usize) -> Option<(usize, usize, &'static Entry)> {
    let high = HIGH.load(Acquire).min(CAPACITY);
    for e in (0..high).filter_map(entry) {
        let s1 = e.seq.load(Acquire);
        if s1 % 2 != 0 {
            continue;
        }
        let start = e.start.load(Relaxed);
        let len = e.len.load(Relaxed);
        std::sync::atomic::fence(Acquire);
        if e.seq.load(Relaxed) != s1 || start == 0 {
            continue;
        }
        if addr >= start && addr - start < len {
            return Some((start, len, e));
        }
    }
    None
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // A fault (si_code > 0) carries the address; a sent signal does not.
    if code > 0
        && let Some((start, len, e)) = find(addr)
    {
        // SAFETY: errno is thread-local and always valid.
        let errno = unsafe { *libc::__errno_location() };
        let handled = lose(start, len, e);
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
        if handled {
            return;
        }
        // No memory for the zero pages: nothing to do but die as the
        // kernel would.
    }
    chain(sig, info, ctx, code);
}

/// How many times a thread that faults while another handles the same
/// mapping yields before it maps the zero pages itself.
const WAIT_TURNS: u32 = 100_000;

/// A fault in mapping `e`: marks it poisoned, gives up the queue lock if
/// this process holds it, and maps zero pages over it. One thread does it
/// while the others that fault meanwhile wait; a fault inside (reading the
/// lock word from a lost page) only maps the zero pages. Returns whether
/// the zero pages are in place.
fn lose(start: usize, len: usize, e: &Entry) -> bool {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    loop {
        match e.handling.compare_exchange(0, tid, Acquire, Acquire) {
            Ok(_) => break,
            Err(t) if t == tid => return zero(start, len, e),
            Err(_) => {
                let mut turns = 0u32;
                while e.handling.load(Acquire) != 0 {
                    turns += 1;
                    if turns > WAIT_TURNS {
                        // The other thread does not finish (a child forked
                        // while it was in here has no such thread): do
                        // without it.
                        return zero(start, len, e);
                    }
                    // SAFETY: no preconditions.
                    unsafe { libc::sched_yield() };
                }
                if e.done.load(Acquire) {
                    return true;
                }
            }
        }
    }
    if e.done.load(Acquire) {
        // A fault on the old pages, delivered after another thread had
        // replaced them: the access now finds the zero pages.
        e.handling.store(0, Release);
        return true;
    }
    // Marked before the pages change: a thread that reads a zero page
    // then finds the mark (the remapping flushes every CPU's view of the
    // old pages after this store).
    e.poisoned.store(true, SeqCst);
    release_lock(start, e);
    let ok = zero(start, len, e);
    e.handling.store(0, Release);
    ok
}

/// If the queue's lock word names this process, marks its owner dead (as
/// the kernel does for a robust futex whose owner exited) and wakes a
/// sleeper: whoever takes it next repairs the queue. A thread of this
/// process that held it goes on with zero pages and can never release it.
fn release_lock(start: usize, e: &Entry) {
    let me = e.member.load(Relaxed);
    let Some(at) = e.lock_at.load(Relaxed).checked_sub(1) else {
        return;
    };
    if me == 0 {
        return;
    }
    // SAFETY: the word is an aligned u64 inside the live mapping (checked
    // at registration); if its page is lost, reading it faults into `lose`
    // again, which maps the zero pages, and the read then finds 0.
    let w = unsafe { &*((start + at) as *const AtomicU64) };
    let died = u64::from(crate::sync::mutex::FUTEX_OWNER_DIED);
    let mut v = w.load(Relaxed);
    loop {
        if (v >> 32) as u32 != me || v & died != 0 {
            return;
        }
        match w.compare_exchange(v, v | died, Relaxed, Relaxed) {
            Ok(_) => break,
            Err(x) => v = x,
        }
    }
    // SAFETY: a futex wake on the word's low half (little-endian), which
    // only reads the address; an error (the page went meanwhile) is
    // harmless, since lock sleepers nap for bounded times.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            start + at,
            libc::FUTEX_WAKE,
            1,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        )
    };
}

/// Maps private zero pages over `[start, start + len)`.
fn zero(start: usize, len: usize, e: &Entry) -> bool {
    e.poisoned.store(true, SeqCst);
    // SAFETY: [start, start + len) is a live mapping of this process (it is
    // taken out of the registry before it is unmapped, and a thread faulting
    // in it holds it); replacing it with private zero pages only changes
    // what its users read, which they learn from the poison flag.
    let p = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            // No swap reserved: they stay zero pages unless written, and a
            // large queue must not fail for want of commit charge.
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    let ok = p != libc::MAP_FAILED;
    if ok {
        e.done.store(true, Release);
    }
    ok
}

/// Hands a signal that is not ours to the action installed before us.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void, code: i32) {
    // SAFETY: PREVIOUS is read-only once the handler is installed.
    let prev = unsafe { &*PREVIOUS.0.get() };
    let action = prev.sa_sigaction;
    if action == libc::SIG_IGN && code <= 0 {
        return; // a sent SIGBUS, ignored
    }
    if action == libc::SIG_DFL || action == libc::SIG_IGN {
        // The kernel's way: a fault with the signal ignored or left at its
        // default kills. Restore the default; a fault then happens again
        // when the instruction is retried, a sent signal is raised again.
        // SAFETY: a zeroed sigaction is SIG_DFL; sigaction and raise are
        // async-signal-safe.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
            if code <= 0 {
                libc::raise(sig);
            }
        }
        return;
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous action is a three-argument handler (its
        // SA_SIGINFO flag says so), called as the kernel would.
        let f = unsafe {
            std::mem::transmute::<
                libc::sighandler_t,
                extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
            >(action)
        };
        f(sig, info, ctx);
    } else {
        // SAFETY: the previous action is a one-argument handler.
        let f = unsafe {
            std::mem::transmute::<libc::sighandler_t, extern "C" fn(libc::c_int)>(action)
        };
        f(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_finds_and_forgets_ranges() {
        let a = Guarded::new(0x1000_0000 as *mut u8, 0x2000, None).unwrap();
        let b = Guarded::new(0x2000_0000 as *mut u8, 0x1000, Some(64)).unwrap();
        assert!(INSTALLED.load(Relaxed));
        assert_eq!(find(0x1000_1fff).map(|f| f.0), Some(0x1000_0000));
        assert_eq!(find(0x2000_0000).map(|f| f.1), Some(0x1000));
        assert!(find(0x1000_2000).is_none());
        assert!(!a.flag().load(Relaxed));
        drop(a);
        assert!(find(0x1000_0000).is_none());
        assert!(find(0x2000_0fff).is_some());
        drop(b);
        assert!(find(0x2000_0000).is_none());
    }

    #[test]
    fn registry_grows_past_a_block() {
        let base = 0x3000_0000usize;
        let all: Vec<Guarded> = (0..BLOCK + 10)
            .map(|i| Guarded::new((base + i * 0x1000) as *mut u8, 0x1000, None).unwrap())
            .collect();
        for i in [0, BLOCK - 1, BLOCK, BLOCK + 9] {
            assert_eq!(
                find(base + i * 0x1000 + 5).map(|f| f.0),
                Some(base + i * 0x1000)
            );
        }
        drop(all);
        assert!(find(base + BLOCK * 0x1000).is_none());
    }
}
