//! The queue lock: one 64-bit word in the header, taken with a
//! compare-and-swap and released with a plain store.
//!
//! ```text
//! bits 63..32  participant number of the owner (see `member`), 0: free
//! bits 31..0   futex word in the kernel's robust-futex format:
//!              owner thread id | FUTEX_WAITERS | FUTEX_OWNER_DIED
//! ```
//!
//! No glibc call ever sees the word: glibc's robust mutexes keep list
//! pointers inside the mutex and follow them, which in a file that others
//! write would let them aim glibc's stores.
//!
//! Who holds the lock can die with it, and the next locker must find out
//! and repair the queue. Two mechanisms, one for each way of dying:
//! - a process that dies (any signal, `exec`) loses its participant
//!   number's liveness lock (`sys::live`): a thread that has waited for the
//!   lock for a while asks the kernel whether the owner's number is still
//!   alive, and takes the lock over if not. A word whose owner is no
//!   participant at all (0, or a number nobody holds: a scribble) is taken
//!   over the same way, so a damaged word costs a few milliseconds, not a
//!   hang.
//! - a thread that exits holding it while its process lives on is marked by
//!   the kernel: while it holds the lock, a thread names the word in the
//!   `list_op_pending` slot of its robust list (the kernel's ABI, found with
//!   `get_robust_list`), and the kernel sets `FUTEX_OWNER_DIED` in the word
//!   when that thread exits. The slot is only used when it is empty: a lock
//!   taken inside another robust operation of the thread (a signal handler
//!   using a second queue) goes without, and relies on the first mechanism.
//!
//! Waiting honours the caller: a deadline (`ETIMEDOUT`), `O_NONBLOCK` (gives
//! up after [`NONBLOCK_WAIT`]), a signal handler (`EINTR` for callers that
//! want it), and thread cancellation (a return every [`CANCEL_POLL`]). So a
//! stopped lock holder (`SIGSTOP`, a debugger) delays blocking callers, as
//! it must, and nobody else.
//!
//! The release is a plain store, not an atomic exchange: a locked
//! instruction costs 3-10 ns on the machines this was measured on, and a
//! send+receive pair releases the lock twice. A plain store cannot see a
//! `FUTEX_WAITERS` bit set just before it, so a thread that sleeps on the
//! lock also counts itself in the lock line (`LockLine::sleepers`), which the
//! releaser reads after its store. The processor may read the count before
//! its store is visible; a sleeper closes that window with
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` (every process that
//! releases this way registered for it when it opened its first queue; one
//! that could not releases with an exchange). The barrier costs about 20 µs,
//! so a nap skips it and lasts at most [`SHORT_NAP`], unless the previous nap
//! ran that long (which a missed release looks like): then it issues the
//! barrier and may last [`LONG_NAP`]. A sleeper killed while counted leaves
//! the count high; once [`FUTILE_WAKES`] releases in a row found nobody to
//! wake, the count is dropped, and a live sleeper dropped with it is still
//! bounded by its nap.
#![allow(unsafe_code)]

use crate::layout::Region;
use crate::sys::live;
use std::cell::Cell;
use std::mem::size_of;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64, compiler_fence};
use std::time::{Duration, Instant};

/// How a lock was acquired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// Normally.
    Clean,
    /// The previous owner died holding it (or the word named no live
    /// owner): the protected state may be half updated and must be
    /// repaired.
    OwnerDied,
}

/// Why a lock was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockError {
    /// Non-blocking, and the lock stayed busy for [`NONBLOCK_WAIT`].
    WouldBlock,
    /// The deadline passed.
    TimedOut,
    /// A signal handler ran, and the caller wants `EINTR`.
    Interrupted,
    /// [`CANCEL_POLL`] passed: the caller looks for a pending cancellation
    /// and calls again.
    Restart,
    /// The word names the calling thread, which holds the lock already (a
    /// signal handler using the queue its thread is using).
    Deadlock,
    /// The owner died and the caller does not take over
    /// ([`Wait::take_over`]).
    OwnerDead,
}

/// How long and how a caller may wait for the lock.
#[derive(Clone, Copy, Debug)]
pub struct Wait<'a> {
    /// Absolute `CLOCK_REALTIME` deadline.
    pub deadline: Option<&'a libc::timespec>,
    /// Give up after [`NONBLOCK_WAIT`].
    pub nonblock: bool,
    /// Return [`LockError::Interrupted`] when a signal handler runs.
    pub interruptible: bool,
    /// Return [`LockError::Restart`] every [`CANCEL_POLL`].
    pub cancel_poll: bool,
    /// Take over a lock whose owner died (the caller then repairs);
    /// otherwise return [`LockError::OwnerDead`] (inspection, which must
    /// not change the queue).
    pub take_over: bool,
}

impl Wait<'static> {
    /// Wait as long as it takes, whatever happens: for a caller that has
    /// started something it must finish (a slot copied outside the lock).
    pub const FOREVER: Wait<'static> = Wait {
        deadline: None,
        nonblock: false,
        interruptible: false,
        cancel_poll: false,
        take_over: true,
    };
}

/// How long a non-blocking caller waits for a busy lock before it gives up
/// with `EAGAIN`: the lock is normally held for well under a microsecond,
/// so this only ends a wait for a holder that was preempted, stopped or
/// died.
pub const NONBLOCK_WAIT: Duration = Duration::from_millis(2);
/// How long a waiter waits before it first asks whether the owner lives.
const OWNER_CHECK_AFTER: Duration = Duration::from_millis(1);
/// How often it asks again while the owner stays the same.
const OWNER_CHECK_EVERY: Duration = Duration::from_millis(10);
/// How often a waiter that polls for cancellation returns: a
/// `pthread_cancel` sends no signal to a thread in deferred mode, so this
/// bounds how long a cancelled thread waits on, for a lock that a stopped
/// holder keeps (well within the 50 ms the C API promises).
pub const CANCEL_POLL: Duration = Duration::from_millis(20);

/// A held lock, and how to release it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held(State);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Held; `head` is the thread's robust list head if the word is named
    /// in its `list_op_pending` slot (null otherwise); `exchange`: release
    /// with an atomic exchange (no barrier registration).
    Own {
        head: *mut RobustListHead,
        exchange: bool,
    },
    /// Released already.
    Released,
}

impl Held {
    /// Not held (any more): [`unlock`] does nothing with it.
    pub const RELEASED: Held = Held(State::Released);
}

const FUTEX_WAITERS: u32 = 0x8000_0000;
/// Set in the word when its owner died: the next locker takes it over and
/// repairs (also set by `sys::sigbus` for an owner whose view of the file
/// was lost).
pub(crate) const FUTEX_OWNER_DIED: u32 = 0x4000_0000;
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// The kernel's `struct robust_list_head` (linux/futex.h).
#[repr(C)]
#[derive(Debug)]
struct RobustListHead {
    list: *mut libc::c_void,
    futex_offset: libc::c_long,
    list_op_pending: *mut libc::c_void,
}

/// What a thread knows about itself, for one incarnation of the process.
#[derive(Clone, Copy)]
struct Me {
    incarnation: u64,
    tid: u32,
    /// Release with an atomic exchange: the process was not registered
    /// for the barrier when this was made (see [`register_process`]; a
    /// queue registers when it is opened, before its first lock, and a
    /// registration is never undone, so this only errs towards the
    /// exchange, which is always correct). 0 or 1: a `bool` would give
    /// the type a niche, and reading it from the thread-local a check.
    exchange: u8,
    /// The thread's robust list head, null if it has none we can use.
    head: *mut RobustListHead,
    /// The head's `futex_offset`, negated.
    node_offset: usize,
}

thread_local! {
    static ME: Cell<Me> = const {
        Cell::new(Me {
            incarnation: 0,
            tid: 0,
            exchange: 1,
            head: std::ptr::null_mut(),
            node_offset: 0,
        })
    };
}

/// This process's registration for `MEMBARRIER_CMD_GLOBAL_EXPEDITED`: 0 not
/// tried, 1 registered, 2 refused. Registration is kept across `fork`.
static BARRIER: AtomicU32 = AtomicU32::new(0);

/// What the calling thread knows about itself in `incarnation`, the
/// process's current one ([`live::incarnation`], read by the caller).
#[inline(always)]
fn me_in(incarnation: u64) -> Me {
    if ME.get().incarnation != incarnation {
        // (Returns nothing: a value merged from two paths would be copied
        // through the stack on the fast one.)
        refresh();
    }
    ME.get()
}

#[cold]
#[inline(never)]
fn refresh() {
    let incarnation = live::incarnation();
    let tid = live::tid();
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
        incarnation,
        tid,
        exchange: u8::from(BARRIER.load(Relaxed) != 1),
        head: std::ptr::null_mut(),
        node_offset: 0,
    };
    if r == 0 && !head.is_null() && len == size_of::<RobustListHead>() {
        // SAFETY: the kernel returned this thread's registered head, which
        // its C library keeps for the thread's lifetime.
        let off = unsafe { std::ptr::addr_of!((*head).futex_offset).read_volatile() };
        // The entry the kernel derives the word from is `word -
        // futex_offset` (glibc: 32 bytes after the word); the kernel only
        // computes with it. An odd or far offset: no registration.
        if let Some(n) = off.checked_neg().and_then(|n| usize::try_from(n).ok())
            && n % 8 == 0
            && n <= 64
            && tid & !FUTEX_TID_MASK == 0
        {
            m.head = head;
            m.node_offset = n;
        }
    }
    ME.set(m);
}

/// Registers this process, once, for the barrier that lock sleepers issue
/// (see the module docs); without it, this process releases with an atomic
/// exchange. Opening a queue calls it, since registering a process that
/// already has several threads waits for an RCU grace period (10-20 ms),
/// which a lock should not.
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

/// The lock word.
#[inline]
fn word(r: &Region) -> &AtomicU64 {
    &r.header().lock.word
}

/// The futex half of the lock word (the low 32 bits, first in memory).
#[inline]
fn futex_word(r: &Region) -> &AtomicU32 {
    const { assert!(cfg!(target_endian = "little")) };
    // SAFETY: the low half of an aligned AtomicU64 in the mapping is an
    // aligned u32; the kernel and this module only change it atomically.
    unsafe { &*(word(r) as *const AtomicU64 as *const AtomicU32) }
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

/// The owner's `(participant, thread)` in a word value.
#[inline]
pub fn owner_of(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32 & FUTEX_TID_MASK)
}

/// Takes the lock as participant `id`, spinning for at most `spin_ns`
/// nanoseconds while another thread holds it, then sleeping as `wait`
/// allows. `owner_alive(participant, tid)` tells whether an owner named by
/// the word may still run; it is asked only after a wait of
/// [`OWNER_CHECK_AFTER`], and a `false` makes this caller take the lock
/// over ([`Acquired::OwnerDied`]).
#[inline]
pub fn lock(
    r: &Region,
    id: u32,
    spin_ns: u32,
    wait: &Wait<'_>,
    owner_alive: &dyn Fn(u32, u32) -> bool,
) -> Result<(Acquired, Held), LockError> {
    match try_lock(r, id, live::incarnation()) {
        Ok(held) => Ok((Acquired::Clean, held)),
        Err(busy) => lock_busy(r, busy, spin_ns, wait, owner_alive),
    }
}

/// A lock that [`try_lock`] found taken (or damaged): hand it to
/// [`lock_busy`], which waits for it, or releases what the attempt set up.
#[derive(Debug)]
#[must_use = "hand it to lock_busy, which also clears the robust list slot"]
pub struct Busy {
    /// The word's value found.
    v: u64,
    /// What this thread puts in the word.
    mine: u64,
    /// Whether this thread may hold the lock already (see `try_lock`).
    again: bool,
    /// As in [`State::Own`].
    head: *mut RobustListHead,
    exchange: bool,
}

/// The first attempt of [`lock`], and all of it when the lock is free: one
/// compare-and-swap, with the word named in the thread's robust list
/// first. `incarnation`: the process's current one
/// ([`live::incarnation`], read once by the caller).
#[inline(always)]
pub fn try_lock(r: &Region, id: u32, incarnation: u64) -> Result<Held, Busy> {
    let m = me_in(incarnation);
    let mine = (u64::from(id) << 32) | u64::from(m.tid);
    let w = word(r);
    let mut head = std::ptr::null_mut();
    let node = (futex_word(r) as *const AtomicU32 as usize + m.node_offset) as *mut _;
    let outer = if m.head.is_null() {
        node
    } else {
        // SAFETY: a non-null m.head is this thread's robust list head.
        unsafe { pending(m.head) }
    };
    // Whether this thread may hold the lock already: it named this word
    // before (an interrupted frame below a signal handler), or it has no
    // robust list to tell.
    let again = outer == node;
    if outer.is_null() {
        head = m.head;
        // Named before the attempt: a death from here on is handled by the
        // kernel (it ignores a word that holds another thread's id).
        // SAFETY: as above.
        unsafe { set_pending(head, node) };
    }
    match w.compare_exchange(0, mine, Acquire, Relaxed) {
        Ok(_) => Ok(Held(State::Own {
            head,
            exchange: m.exchange != 0,
        })),
        Err(v) => Err(Busy {
            v,
            mine,
            again,
            head,
            exchange: m.exchange != 0,
        }),
    }
}

/// The rest of [`lock`] after [`try_lock`] found the lock busy.
#[cold]
#[inline(never)]
pub fn lock_busy(
    r: &Region,
    busy: Busy,
    spin_ns: u32,
    wait: &Wait<'_>,
    owner_alive: &dyn Fn(u32, u32) -> bool,
) -> Result<(Acquired, Held), LockError> {
    let Busy {
        v,
        mine,
        again,
        head,
        exchange,
    } = busy;
    match contended(r, v, mine, again, spin_ns, wait, owner_alive) {
        Ok(a) => Ok((a, Held(State::Own { head, exchange }))),
        Err(e) => {
            if !head.is_null() {
                // SAFETY: head is this thread's robust list head (Busy is
                // not Send: it stays with the thread that tried).
                unsafe { set_pending(head, std::ptr::null_mut()) };
            }
            Err(e)
        }
    }
}

#[cold]
fn contended(
    r: &Region,
    v: u64,
    mine: u64,
    again: bool,
    spin_ns: u32,
    wait: &Wait<'_>,
    owner_alive: &dyn Fn(u32, u32) -> bool,
) -> Result<Acquired, LockError> {
    let mut held_back = HeldBack::NONE;
    let out = contended_inner(
        r,
        v,
        mine,
        again,
        spin_ns,
        wait,
        owner_alive,
        &mut held_back,
    );
    // Whatever ends the wait, a signal held back meanwhile is delivered
    // now, before the call returns; a caller that gives up anyway (a
    // poll for cancellation) gives up with EINTR if it ran a handler.
    let handled = held_back.release();
    match out {
        Err(LockError::Restart) if handled => Err(LockError::Interrupted),
        out => out,
    }
}

#[allow(clippy::too_many_arguments)]
fn contended_inner(
    r: &Region,
    mut v: u64,
    mine: u64,
    again: bool,
    spin_ns: u32,
    wait: &Wait<'_>,
    owner_alive: &dyn Fn(u32, u32) -> bool,
    held_back: &mut HeldBack,
) -> Result<Acquired, LockError> {
    let w = word(r);
    let start = Instant::now();
    let spin = Duration::from_nanos(u64::from(spin_ns));
    let mut barrier = false;
    // Once this thread has slept, other sleepers may remain: keep the
    // waiters bit when acquiring (for the kernel, which wakes one at death).
    let mut keep = 0u64;
    let mut checked: Option<(Instant, u64)> = None;
    let mut polled = start;
    loop {
        let lo = v as u32;
        let (owner, tid) = owner_of(v);
        let take = mine | keep | u64::from(lo & FUTEX_WAITERS);
        let how = if lo & FUTEX_OWNER_DIED != 0 {
            // The kernel marked a thread that exited holding it.
            Some(Acquired::OwnerDied)
        } else if owner == 0 && tid == 0 {
            // Free (perhaps with a stray waiters bit).
            Some(Acquired::Clean)
        } else if v & !u64::from(FUTEX_WAITERS) == mine {
            if again {
                return Err(LockError::Deadlock);
            }
            // This thread does not hold it: the word was written by
            // someone else (damage). Take it over.
            Some(Acquired::OwnerDied)
        } else {
            None
        };
        if let Some(how) = how {
            match claim(w, v, take, how, wait) {
                Ok(result) => return result,
                Err(x) => {
                    v = x;
                    continue;
                }
            }
        }
        let waited = start.elapsed();
        if waited < spin {
            for _ in 0..16 {
                std::hint::spin_loop();
            }
            v = w.load(Relaxed);
            continue;
        }
        // Is the owner still there? Asked after a while, and again every
        // so often while the same owner holds it.
        let due = match checked {
            None => waited >= OWNER_CHECK_AFTER.min(NONBLOCK_WAIT / 2),
            Some((at, seen)) => seen != v || at.elapsed() >= OWNER_CHECK_EVERY,
        };
        if due && waited >= OWNER_CHECK_AFTER.min(NONBLOCK_WAIT / 2) {
            checked = Some((Instant::now(), v));
            if !owner_alive(owner, tid) {
                match claim(w, v, take, Acquired::OwnerDied, wait) {
                    Ok(result) => return result,
                    Err(x) => {
                        v = x;
                        continue;
                    }
                }
            }
        }
        if wait.nonblock && waited >= NONBLOCK_WAIT {
            return Err(LockError::WouldBlock);
        }
        let mut limit = LONG_NAP;
        if let Some(d) = wait.deadline {
            match until(d) {
                Some(left) => limit = limit.min(left),
                None => return Err(LockError::TimedOut),
            }
        }
        if wait.nonblock {
            limit = limit.min(NONBLOCK_WAIT.saturating_sub(waited));
        }
        if wait.cancel_poll {
            let since = polled.elapsed();
            if since >= CANCEL_POLL {
                return Err(LockError::Restart);
            }
            limit = limit.min(CANCEL_POLL - since);
        }
        if checked.is_none() {
            limit = limit.min(OWNER_CHECK_AFTER.saturating_sub(waited));
        } else {
            limit = limit.min(OWNER_CHECK_EVERY);
        }
        keep = u64::from(FUTEX_WAITERS);
        if wait.interruptible {
            // Signals wait for the end of each nap (see `HeldBack`).
            held_back.hold();
        }
        if nap(r, &mut barrier, limit.max(Duration::from_micros(10))) == Nap::Interrupted {
            if wait.interruptible {
                return Err(LockError::Interrupted);
            }
            polled = if wait.cancel_poll { start } else { polled };
        }
        if held_back.pending() {
            // Delivered on the way out, before the caller sees EINTR; a
            // signal that runs no handler is delivered at once, and the
            // wait goes on.
            if held_back.release() {
                return Err(LockError::Interrupted);
            }
        }
        v = w.load(Relaxed);
    }
}

/// Takes the lock from word value `v` (replacing it by `take`) as `how`:
/// `Ok` with what the caller returns (an owner-died take-over is refused
/// to a caller that does not take over), `Err` with the value found
/// instead, to look at again.
#[inline]
fn claim(
    w: &AtomicU64,
    v: u64,
    take: u64,
    how: Acquired,
    wait: &Wait<'_>,
) -> Result<Result<Acquired, LockError>, u64> {
    if how == Acquired::OwnerDied && !wait.take_over {
        return Ok(Err(LockError::OwnerDead));
    }
    w.compare_exchange(v, take, Acquire, Relaxed)
        .map(|_| Ok(how))
}

/// Signals held back from a thread while it waits for the lock and wants
/// `EINTR`: a handler that ran between two naps (or in a system call of
/// the wait that is not a nap) would leave no trace, and the wait would go
/// on for as long as the holder holds the lock, for ever if it is stopped.
/// So from its first nap the thread blocks the signals it does not block
/// already, looks for pending ones after each nap (naps are short), and
/// unblocks them when it gives up or gets the lock: a signal that arrives
/// at any instant ends the wait within one nap, and its handler runs
/// before the call returns. Synchronous signals (a fault) are never
/// blocked, nor can `SIGKILL` and `SIGSTOP` be.
#[derive(Debug)]
pub(crate) struct HeldBack {
    /// The thread's mask before, when blocking (kernel `sigset_t`, 64
    /// signals on Linux).
    old: Option<u64>,
}

/// `sig`'s bit in a kernel signal set.
const fn sigbit(sig: libc::c_int) -> u64 {
    1 << (sig - 1)
}

/// glibc's internal signals: thread cancellation and set*id broadcasts
/// (`sigaction` refuses both).
const SIGCANCEL: libc::c_int = 32;
const SIGSETXID: libc::c_int = 33;

/// Signals a fault raises: blocking them would turn the next fault into a
/// kill instead of a call of the handler.
const SYNCHRONOUS: u64 = sigbit(libc::SIGSEGV)
    | sigbit(libc::SIGBUS)
    | sigbit(libc::SIGFPE)
    | sigbit(libc::SIGILL)
    | sigbit(libc::SIGTRAP)
    | sigbit(libc::SIGSYS);

impl HeldBack {
    pub(crate) const NONE: HeldBack = HeldBack { old: None };

    /// Signals held back earlier, by a hold whose mask was kept with
    /// [`into_saved`](Self::into_saved): released when this is.
    pub(crate) fn from_saved(old: u64) -> HeldBack {
        HeldBack { old: Some(old) }
    }

    /// Keeps the signals held back beyond this value: returns the mask to
    /// restore later, if it holds any.
    pub(crate) fn into_saved(mut self) -> Option<u64> {
        self.old.take()
    }

    /// Blocks (once) every signal that may be blocked and is not yet.
    pub(crate) fn hold(&mut self) {
        if self.old.is_some() {
            return;
        }
        let block: u64 = !(sigbit(libc::SIGKILL) | sigbit(libc::SIGSTOP) | SYNCHRONOUS);
        let mut old: u64 = 0;
        // SAFETY: rt_sigprocmask with valid 8-byte kernel sigsets (the raw
        // call, since glibc's wrapper would silently keep SIGCANCEL
        // unblocked, and cancellation is among what must end the wait).
        let r = unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_BLOCK,
                &block as *const u64,
                &mut old as *mut u64,
                8usize,
            )
        };
        if r == 0 {
            self.old = Some(old);
        }
    }

    /// Whether a signal the caller had not blocked is pending.
    pub(crate) fn pending(&self) -> bool {
        let Some(old) = self.old else { return false };
        let mut set: u64 = 0;
        // SAFETY: rt_sigpending writes one 8-byte kernel sigset.
        let r = unsafe { libc::syscall(libc::SYS_rt_sigpending, &mut set as *mut u64, 8usize) };
        r == 0 && set & !old != 0
    }

    /// Unblocks what [`hold`](Self::hold) blocked, which delivers whatever
    /// is pending; returns whether any of it runs a handler that ends a
    /// call (an ignored signal does not, nor one with `SA_RESTART`).
    pub(crate) fn release(&mut self) -> bool {
        let Some(old) = self.old.take() else {
            return false;
        };
        let mut set: u64 = 0;
        // SAFETY: as in `pending`.
        let r = unsafe { libc::syscall(libc::SYS_rt_sigpending, &mut set as *mut u64, 8usize) };
        let pending = if r == 0 { set & !old } else { 0 };
        let handled = (1..=64)
            .filter(|&sig: &libc::c_int| pending & sigbit(sig) != 0)
            .any(runs_a_handler);
        // SAFETY: restores the mask read in `hold`.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &old as *const u64,
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
        handled
    }
}

impl Drop for HeldBack {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether delivering `sig` now runs a handler of the process that ends
/// a call with `EINTR`.
fn runs_a_handler(sig: libc::c_int) -> bool {
    match sig {
        SIGCANCEL => true,
        SIGSETXID => false,
        _ => {
            // SAFETY: a zeroed sigaction is valid storage for the answer;
            // a null new action only reads.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut sa) } != 0 {
                return false;
            }
            // A handler with SA_RESTART lets the call go on, as the
            // kernel restarts a system call.
            sa.sa_sigaction != libc::SIG_IGN
                && sa.sa_sigaction != libc::SIG_DFL
                && sa.sa_flags & libc::SA_RESTART == 0
        }
    }
}

/// Time left until `deadline` (absolute, `CLOCK_REALTIME`), `None` once it
/// passed.
fn until(deadline: &libc::timespec) -> Option<Duration> {
    let now = crate::sys::realtime_now();
    let d = (deadline.tv_sec as i128) * 1_000_000_000 + deadline.tv_nsec as i128;
    let n = (now.tv_sec as i128) * 1_000_000_000 + now.tv_nsec as i128;
    (d > n).then(|| Duration::from_nanos(u64::try_from(d - n).unwrap_or(u64::MAX)))
}

/// A nap on a held lock without the barrier (see the module docs) lasts at
/// most this long; after one that lasted that long, the next nap issues the
/// barrier and may last [`LONG_NAP`].
const SHORT_NAP: Duration = Duration::from_micros(100);
/// Bounds a nap whose release was missed all the same: a sleeper killed
/// while counted, whose count was then dropped (see [`wake_sleeper`]).
const LONG_NAP: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nap {
    Woken,
    TimedOut,
    Interrupted,
}

/// Sleeps once, for at most `limit`, while another thread holds the lock,
/// counted in `LockLine::sleepers` and with `FUTEX_WAITERS` set in the word
/// (for the kernel, which wakes a sleeper when a marked owner dies).
/// Returns at once when the lock is free or its owner died. `barrier`:
/// whether the last nap timed out, which a missed release looks like; this
/// nap then issues the barrier, and says whether it timed out.
fn nap(r: &Region, barrier: &mut bool, limit: Duration) -> Nap {
    let w = futex_word(r);
    let count = &r.header().lock.sleepers;
    // A locked instruction: the count is visible before the word is read.
    count.fetch_add(1, SeqCst);
    let mut v = w.load(SeqCst);
    let held = v & FUTEX_TID_MASK != 0 && v & FUTEX_OWNER_DIED == 0;
    let mut out = Nap::Woken;
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
            limit
        } else {
            limit.min(SHORT_NAP)
        };
        out = match crate::sync::futex::wait_for(w, v, limit) {
            Ok(()) => Nap::Woken,
            Err(crate::sync::futex::WaitError::TimedOut) => Nap::TimedOut,
            Err(crate::sync::futex::WaitError::Interrupted) => Nap::Interrupted,
        };
        *barrier = out == Nap::TimedOut;
    } else if v & FUTEX_TID_MASK == 0 && v & FUTEX_OWNER_DIED == 0 && word(r).load(Relaxed) != 0 {
        // The futex half is free but the owner half is not: a damaged
        // word. Sleep a little instead of spinning on it; the owner check
        // takes it over.
        std::thread::sleep(limit.min(SHORT_NAP));
    }
    let _ = count.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    out
}

/// Releases the lock, taken by this thread as `held`.
#[inline(always)]
pub fn unlock(r: &Region, held: Held) {
    let State::Own { head, exchange } = held.0 else {
        return;
    };
    let w = word(r);
    if exchange {
        w.swap(0, Release);
    } else {
        // A plain store: sleepers are found through their count (see the
        // module docs).
        w.store(0, Release);
        // Keeps the compiler from reading the count before the store; the
        // processor may, which is what the sleepers' barrier is for.
        compiler_fence(SeqCst);
    }
    if r.header().lock.sleepers.load(Relaxed) != 0 {
        wake_sleeper(r);
    }
    if !head.is_null() {
        // Cleared only once the word is free: a death in between leaves a
        // free word, for which the kernel at most wakes a sleeper.
        // SAFETY: head is this thread's robust list head (Held is not Send:
        // it stays with the thread that locked).
        unsafe { set_pending(head, std::ptr::null_mut()) };
    }
}

/// Releases in a row that must find nobody asleep before the sleeper count
/// is taken for one left by killed sleepers, and dropped.
const FUTILE_WAKES: u32 = 64;

/// Wakes one sleeper on the lock. A sleeper killed while counted never
/// uncounts itself, and every release would then make this call: once
/// [`FUTILE_WAKES`] calls in a row have found nobody, the count is reset.
#[cold]
fn wake_sleeper(r: &Region) {
    let h = r.header();
    if crate::sync::futex::wake(futex_word(r), 1) > 0 {
        if h.lock_futile.load(Relaxed) != 0 {
            h.lock_futile.store(0, Relaxed);
        }
    } else if h.lock_futile.fetch_add(1, Relaxed).wrapping_add(1) >= FUTILE_WAKES {
        // (The count is read from the file: any value, the largest too.)
        h.lock_futile.store(0, Relaxed);
        h.lock.sleepers.store(0, Relaxed);
    }
}

/// The word's value, for inspection.
pub fn peek(r: &Region) -> u64 {
    word(r).load(Relaxed)
}

#[cfg(test)]
mod tests;
