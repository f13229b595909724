//! The on-disk layout of a queue file and the only safe window onto it.
//!
//! A queue file is a fixed-size [`Header`] followed by `maxmsg` slots of
//! `stride` bytes each. Every slot starts with a [`SlotHeader`] and holds up to
//! `msgsize` bytes of payload. All fields are fixed-width atomics, so a
//! reference to them may exist while other processes write the same bytes.
//!
//! Everything in the file is untrusted: another process may have written
//! anything. [`Region`] keeps a private copy of the geometry (checked once
//! when the file is opened) and bounds-checks every index against it, so
//! garbage in the file can make an operation fail, never touch memory outside
//! the mapping.
//!
//! ```text
//! offset 0        Header (identity, lock, counters, futex words, notify,
//!                 waiter table, priority bitmap, per-priority tails)
//! header_size     slot 0: SlotHeader (48 B) + payload (msgsize B), padded to 64
//! + stride        slot 1 ...
//! file_size       = header_size + maxmsg * stride
//! ```
#![allow(unsafe_code)]

use crate::sys::sigbus::Guarded;
use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};

/// `"SHMQUEUE"` read as a little-endian integer.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMQUEUE");
/// Layout major version: a reader refuses any other major version.
///
/// 3: the lock is shmq's own 64-bit word (owner thread id and participant
/// number, see `sync::mutex`) instead of a glibc `pthread_mutex_t`, which
/// no process ever hands to glibc; processes are known by participant
/// numbers whose liveness the kernel keeps (`sys::live`), not by pid and
/// start time; the 128-entry waiter table is gone (sleepers are known to the
/// kernel the same way); the `mq_notify` registration names a doorbell
/// instead of a process to signal. Files of layouts 1 and 2 are refused
/// with `EPROTO`: their lock and their liveness rule are the unsound ones
/// that 3 replaces, and processes still using them may share the file.
pub const VERSION_MAJOR: u32 = 3;
/// Layout minor version: additions that old readers may ignore.
pub const VERSION_MINOR: u32 = 0;
/// `major << 16 | minor`, as stored in [`Header::version`].
pub const VERSION: u32 = (VERSION_MAJOR << 16) | VERSION_MINOR;
/// Number of priorities: `0 ..= 32767`, like Linux's `MQ_PRIO_MAX`.
pub const NPRIO: usize = 32768;

/// [`Header::state`]: the file is fully initialised.
pub const STATE_READY: u32 = 0x5244_5921;
/// [`Header::state`]: a repair failed; the queue refuses further use.
pub const STATE_POISONED: u32 = 0x504f_4953;

/// Slot state: on the free list.
pub const SLOT_FREE: u32 = 0;
/// Slot state: reserved by a sender that is copying its payload in.
pub const SLOT_WRITING: u32 = 1;
/// Slot state: holds a message on its priority's list.
pub const SLOT_QUEUED: u32 = 2;
/// Slot state: taken by a receiver that is copying the payload out.
pub const SLOT_READING: u32 = 3;
/// Slot state: handed to a receiver that has not acknowledged it yet.
pub const SLOT_PENDING: u32 = 4;

/// "No slot" in a link field; links hold `index + 1` where they may be empty.
pub const NIL: u32 = 0;

/// The lock's cache line: the lock word and the counters every send and
/// receive changes, so that taking the lock brings them along.
#[repr(C, align(64))]
pub struct LockLine {
    /// The lock word (see `sync::mutex`): the low half is a futex word in
    /// the kernel's robust-futex format (owner thread id, `FUTEX_WAITERS`,
    /// `FUTEX_OWNER_DIED`); the high half is the owner's participant
    /// number. 0: free.
    pub word: AtomicU64,
    /// Messages on the priority lists (`mq_curmsgs`).
    pub curmsgs: AtomicU64,
    /// Slots on the free list.
    pub nfree: AtomicU64,
    /// Head of the free list (`index + 1`, or [`NIL`]).
    pub free_head: AtomicU32,
    /// Slots being copied outside the lock.
    pub ninflight: AtomicU32,
    /// Threads asleep on the lock (see `sync::mutex`).
    pub sleepers: AtomicU32,
    /// Messages received but not yet acknowledged.
    pub npending: AtomicU32,
    _reserved: [AtomicU64; 2],
}

/// A counter alone on its cache line (written by one side only).
#[repr(C, align(64))]
pub struct OwnLine {
    /// Next message sequence number (senders) or messages received
    /// (receivers).
    pub a: AtomicU64,
    /// Messages sent since creation (senders); for receivers, the one
    /// priority whose bitmap bit may be stale (its list empty), plus one, or
    /// 0 (see `queue::retire`).
    pub b: AtomicU64,
}

/// The registration made by `mq_notify`, guarded by the queue lock.
///
/// The file names only a participant and its doorbell: what the
/// registered process does when rung (which signal, which value, which
/// function) it keeps to itself, so nothing written here can make anyone
/// signal anyone.
#[repr(C)]
pub struct NotifyReg {
    /// Participant number of the registered process, 0 when nobody is.
    pub owner: AtomicU32,
    /// Its pid as it saw it (for display only: never acted on).
    pub pid: AtomicI32,
    /// `SIGEV_NONE`, `SIGEV_SIGNAL` or `SIGEV_THREAD` (for display).
    pub kind: AtomicU32,
    /// Signal number for `SIGEV_SIGNAL` (for display).
    pub signo: AtomicU32,
    /// The registration's serial, chosen by the registrant and sent back to
    /// it on the doorbell.
    pub token: AtomicU64,
    /// The registrant's doorbell: a socket name (see `sys::bell`).
    pub bell: AtomicU64,
    /// Number of notifications sent (statistics).
    pub fired: AtomicU64,
    _reserved: [AtomicU64; 3],
}

/// The queue header. Fields in the first block are written once, before the
/// file is linked into place; the rest change under [`Header::lock`] (and
/// some are also read without it, as hints).
#[repr(C, align(64))]
pub struct Header {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// [`VERSION`].
    pub version: AtomicU32,
    /// [`STATE_READY`] or [`STATE_POISONED`].
    pub state: AtomicU32,
    /// Bytes before slot 0.
    pub header_size: AtomicU32,
    /// Bytes from one slot to the next.
    pub stride: AtomicU32,
    /// Capacity in messages (`mq_maxmsg`).
    pub maxmsg: AtomicU64,
    /// Largest payload (`mq_msgsize`).
    pub msgsize: AtomicU64,
    /// Size of the whole file.
    pub file_size: AtomicU64,
    /// Permission bits the queue was created with, for display: access is
    /// checked against the file's own mode bits, which only its owner can
    /// change (see `engine::open`).
    pub mode: AtomicU32,
    /// `size_of::<LockLine>()`.
    pub lock_size: AtomicU32,
    /// [`NPRIO`].
    pub nprio: AtomicU32,
    /// `size_of::<SlotHeader>()`.
    pub slot_header_size: AtomicU32,

    /// The lock, with the hottest counters.
    pub lock: LockLine,
    /// Senders' line: `a` is the next message sequence number (orders
    /// messages within a priority), `b` the messages sent since creation.
    pub sent: OwnLine,
    /// Receivers' line: `a` is the messages received since creation, `b`
    /// the priority whose bitmap bit may be stale, plus one (0: none).
    pub received: OwnLine,

    /// Head of the list of slots being copied (`index + 1`, or [`NIL`]).
    pub inflight_head: AtomicU32,
    /// Receivers asleep on [`Header::not_empty`] (a hint that errs high: a
    /// sleeper killed asleep stays counted until a recount sets the count
    /// to the kernel's, see `member` and `engine::wait`).
    pub sleeping_recv: AtomicU32,
    /// Senders asleep on [`Header::not_full`] (as `sleeping_recv`).
    pub sleeping_send: AtomicU32,
    /// Repairs done after a process died mid-operation.
    pub repairs: AtomicU32,
    /// Damage found: slots or structures with impossible contents, which no
    /// crash explains.
    pub damage: AtomicU32,
    /// Source of member numbers (see `member`).
    pub next_member: AtomicU32,
    /// Wakes in a row on the lock that found nobody asleep.
    pub lock_futile: AtomicU32,
    _misc_reserved: [AtomicU32; 9],

    /// Futex word bumped when a message is published and someone sleeps.
    pub not_empty: FutexLine,
    /// Futex word bumped when a slot is freed and someone sleeps.
    pub not_full: FutexLine,

    /// `mq_notify` registration.
    pub notify: NotifyReg,
    /// Reserved for readiness watchers.
    pub watch: [AtomicU64; 8],

    /// Highest level of the priority bitmap: bit `i` set when `mid[i] != 0`.
    pub bitmap_top: AtomicU64,
    /// Middle level: bit `j` of `mid[i]` set when `leaf[i * 64 + j] != 0`.
    pub bitmap_mid: [AtomicU64; NPRIO / 64 / 64],
    /// Lowest level: bit `p % 64` of `leaf[p / 64]` set when priority `p`
    /// has messages.
    pub bitmap_leaf: [AtomicU64; NPRIO / 64],
    /// Tail of each priority's circular list (`index + 1`, or [`NIL`]); the
    /// tail's `next` is the head.
    pub tails: [AtomicU32; NPRIO],
}

/// A futex word alone on its cache line, and the CPU, plus one (0:
/// unknown), where a peer of its sleepers was last seen: the last caller
/// that woke one, or the last one that began to wait on the other side. A
/// hint for whether to spin, see `Side::peer_on_cpu`.
#[repr(C, align(64))]
pub struct FutexLine(pub AtomicU32, pub AtomicU32);

/// The header of every slot.
#[repr(C)]
pub struct SlotHeader {
    /// `SLOT_FREE`, `SLOT_WRITING`, `SLOT_QUEUED`, `SLOT_READING` or
    /// `SLOT_PENDING`.
    pub state: AtomicU32,
    /// Raw index of the next slot on whatever list this slot is on.
    pub next: AtomicU32,
    /// Message priority.
    pub prio: AtomicU32,
    /// Participant copying into or out of this slot (`WRITING`/`READING`),
    /// or holding it unacknowledged (`PENDING`).
    pub owner: AtomicU32,
    /// Payload length.
    pub len: AtomicU64,
    /// Sequence number given when the message was queued.
    pub seq: AtomicU64,
    /// Thread of `owner` copying (`WRITING`/`READING`).
    pub owner_tid: AtomicU32,
    _reserved: AtomicU32,
    _reserved2: AtomicU64,
}

const _: () = assert!(offset_of!(Header, magic) == 0);
const _: () = assert!(offset_of!(Header, version) == 8);
const _: () = assert!(offset_of!(Header, state) == 12);
const _: () = assert!(offset_of!(Header, maxmsg) == 24);
const _: () = assert!(offset_of!(Header, lock) == 64);
// Layout 3.0, frozen: a change here is a new layout version.
const _: () = {
    assert!(size_of::<LockLine>() == 64);
    assert!(offset_of!(Header, lock) + offset_of!(LockLine, sleepers) == 96);
    assert!(offset_of!(Header, sent) == 128);
    assert!(offset_of!(Header, received) == 192);
    assert!(offset_of!(Header, inflight_head) == 256);
    assert!(offset_of!(Header, next_member) == 276);
    assert!(offset_of!(Header, not_empty) == 320);
    assert!(offset_of!(Header, not_full) == 384);
    assert!(offset_of!(Header, notify) == 448);
    assert!(size_of::<NotifyReg>() == 64);
    assert!(offset_of!(Header, watch) == 512);
    assert!(offset_of!(Header, bitmap_top) == 576);
    assert!(offset_of!(Header, bitmap_leaf) == 648);
    assert!(offset_of!(Header, tails) == 4744);
    assert!(size_of::<Header>() == 135_872);
};
const _: () = assert!(size_of::<SlotHeader>() == 48);

/// Alignment of the slot area and of each slot.
pub const SLOT_ALIGN: usize = 64;
/// Bytes before slot 0: the header rounded up to a page.
pub const HEADER_SIZE: usize = size_of::<Header>().next_multiple_of(4096);

/// The shape of a queue, as validated numbers a process keeps for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Capacity in messages.
    pub maxmsg: u32,
    /// Largest payload in bytes.
    pub msgsize: usize,
    /// Bytes from one slot to the next.
    pub stride: usize,
    /// Size of the whole file.
    pub file_size: usize,
}

/// Why a geometry cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    /// `maxmsg <= 0` or `msgsize <= 0`.
    NotPositive,
    /// The sizes overflow.
    Overflow,
}

impl Geometry {
    /// Computes the layout for `maxmsg` messages of up to `msgsize` bytes.
    pub fn new(maxmsg: i64, msgsize: i64) -> Result<Geometry, GeometryError> {
        if maxmsg <= 0 || msgsize <= 0 {
            return Err(GeometryError::NotPositive);
        }
        // Slot indices are u32 with one value reserved for NIL.
        let maxmsg = u32::try_from(maxmsg)
            .ok()
            .filter(|&m| m < u32::MAX)
            .ok_or(GeometryError::Overflow)?;
        let msgsize = usize::try_from(msgsize).map_err(|_| GeometryError::Overflow)?;
        let stride = size_of::<SlotHeader>()
            .checked_add(msgsize)
            .and_then(|s| s.checked_next_multiple_of(SLOT_ALIGN))
            .ok_or(GeometryError::Overflow)?;
        let file_size = stride
            .checked_mul(maxmsg as usize)
            .and_then(|s| s.checked_add(HEADER_SIZE))
            .filter(|&s| s <= i64::MAX as usize)
            .ok_or(GeometryError::Overflow)?;
        if u32::try_from(stride).is_err() {
            return Err(GeometryError::Overflow);
        }
        Ok(Geometry {
            maxmsg,
            msgsize,
            stride,
            file_size,
        })
    }
}

/// What is wrong with a file that should be a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Too short, or the magic number is wrong.
    NotAQueue(&'static str),
    /// A queue of another layout version.
    Version { found: u32 },
    /// The header is inconsistent with itself or with the file's size.
    Corrupted(String),
    /// A repair failed earlier and the queue was poisoned.
    Poisoned,
}

/// A mapped queue file (or a heap buffer in unit tests) with its validated
/// geometry. All access to the shared bytes goes through this type.
pub struct Region {
    base: *mut u8,
    len: usize,
    geo: Geometry,
    /// Set when the mapping was found shrunk under this process and
    /// replaced by zero pages (see `sys::sigbus`).
    poison: &'static AtomicBool,
}

// SAFETY: the region only hands out references to atomics (which are Sync)
// and raw pointers to payload bytes; its own fields are immutable.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Wraps `len` bytes at `base` after checking the header against them.
    ///
    /// # Safety
    /// - `base` is valid for reads and writes of `len` bytes for the whole
    ///   life of the returned value, and aligned to 64 bytes;
    /// - the bytes are only ever accessed atomically or through a `Region`
    ///   (other processes included).
    pub unsafe fn open(base: *mut u8, len: usize) -> Result<Region, HeaderError> {
        debug_assert!(base as usize % SLOT_ALIGN == 0);
        if len < HEADER_SIZE {
            return Err(HeaderError::NotAQueue(
                "file is smaller than a queue header",
            ));
        }
        // SAFETY: len >= HEADER_SIZE >= size_of::<Header>() and base is
        // aligned (caller); Header is all atomics.
        let h = unsafe { &*(base as *const Header) };
        if h.magic.load(Relaxed) != MAGIC {
            return Err(HeaderError::NotAQueue("no shmq magic number"));
        }
        let version = h.version.load(Relaxed);
        if version >> 16 != VERSION_MAJOR {
            return Err(HeaderError::Version { found: version });
        }
        match h.state.load(Relaxed) {
            STATE_READY => {}
            STATE_POISONED => return Err(HeaderError::Poisoned),
            s => return Err(HeaderError::Corrupted(format!("unknown state word {s:#x}"))),
        }
        let maxmsg = h.maxmsg.load(Relaxed);
        let msgsize = h.msgsize.load(Relaxed);
        let geo = Geometry::new(
            i64::try_from(maxmsg).unwrap_or(-1),
            i64::try_from(msgsize).unwrap_or(-1),
        )
        .map_err(|_| HeaderError::Corrupted(format!("impossible capacity {maxmsg} x {msgsize}")))?;
        let checks = [
            (
                "header size",
                h.header_size.load(Relaxed) as u64,
                HEADER_SIZE as u64,
            ),
            (
                "slot stride",
                h.stride.load(Relaxed) as u64,
                geo.stride as u64,
            ),
            ("file size", h.file_size.load(Relaxed), geo.file_size as u64),
            ("actual file size", len as u64, geo.file_size as u64),
            (
                "lock line size",
                h.lock_size.load(Relaxed) as u64,
                size_of::<LockLine>() as u64,
            ),
            ("priority count", h.nprio.load(Relaxed) as u64, NPRIO as u64),
            (
                "slot header size",
                h.slot_header_size.load(Relaxed) as u64,
                size_of::<SlotHeader>() as u64,
            ),
        ];
        for (what, found, expected) in checks {
            if found != expected {
                return Err(HeaderError::Corrupted(format!(
                    "{what} is {found}, expected {expected}"
                )));
            }
        }
        Ok(Region {
            base,
            len,
            geo,
            poison: Guarded::never(),
        })
    }

    /// Writes a fresh, empty queue over zeroed bytes (all slots free).
    ///
    /// The lock word starts free (0), and `state` is left at 0: the creator
    /// publishes [`STATE_READY`] last.
    ///
    /// # Safety
    /// As for [`Region::open`]; additionally the bytes are zero, `len ==
    /// geo.file_size`, and no other process can see them yet.
    pub unsafe fn format(base: *mut u8, len: usize, geo: Geometry, mode: u32) -> Region {
        assert_eq!(len, geo.file_size);
        let r = Region {
            base,
            len,
            geo,
            poison: Guarded::never(),
        };
        let h = r.header();
        h.magic.store(MAGIC, Relaxed);
        h.version.store(VERSION, Relaxed);
        h.header_size.store(HEADER_SIZE as u32, Relaxed);
        h.stride.store(geo.stride as u32, Relaxed);
        h.maxmsg.store(u64::from(geo.maxmsg), Relaxed);
        h.msgsize.store(geo.msgsize as u64, Relaxed);
        h.file_size.store(geo.file_size as u64, Relaxed);
        h.mode.store(mode & 0o777, Relaxed);
        h.lock_size.store(size_of::<LockLine>() as u32, Relaxed);
        h.nprio.store(NPRIO as u32, Relaxed);
        h.slot_header_size
            .store(size_of::<SlotHeader>() as u32, Relaxed);
        h.sent.a.store(1, Relaxed);
        // Free list: 0 -> 1 -> ... -> maxmsg-1.
        for i in 0..geo.maxmsg {
            let s = r.slot(i).expect("index below maxmsg");
            s.next
                .store(if i + 1 < geo.maxmsg { i + 2 } else { NIL }, Relaxed);
        }
        h.lock.free_head.store(1, Relaxed);
        h.lock.nfree.store(u64::from(geo.maxmsg), Relaxed);
        r
    }

    /// The validated geometry.
    pub fn geometry(&self) -> Geometry {
        self.geo
    }

    /// Whether the file shrank under this mapping (truncated, or a hole
    /// that could not be filled): the bytes read since may be zeros that
    /// stand in for the lost pages, and nothing read from the region can be
    /// trusted any more. Stays set for the life of the mapping.
    #[inline(always)]
    pub fn poisoned(&self) -> bool {
        self.poison.load(Relaxed)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        // SAFETY: checked at construction: base is aligned and the region
        // holds at least HEADER_SIZE bytes; Header is atomics only, so shared references to it are sound while others write.
        unsafe { &*(self.base as *const Header) }
    }

    /// Slot `idx`, or `None` if `idx` is out of range.
    pub fn slot(&self, idx: u32) -> Option<&SlotHeader> {
        (idx < self.geo.maxmsg).then(|| {
            let off = HEADER_SIZE + idx as usize * self.geo.stride;
            debug_assert!(off + self.geo.stride <= self.len);
            // SAFETY: off + stride <= file_size == len (geometry checked at
            // construction); slots are 64-aligned; SlotHeader is atomics.
            unsafe { &*(self.base.add(off) as *const SlotHeader) }
        })
    }

    /// Slot `idx`, its index checked once for all its uses, or `None` if
    /// `idx` is out of range.
    #[inline(always)]
    pub fn slot_ref(&self, idx: u32) -> Option<SlotRef<'_>> {
        (idx < self.geo.maxmsg).then(|| SlotRef {
            // SAFETY: within the mapping, as in `slot`.
            ptr: unsafe { self.base.add(HEADER_SIZE + idx as usize * self.geo.stride) },
            idx,
            msgsize: self.geo.msgsize,
            _region: std::marker::PhantomData,
        })
    }

    /// Hints the CPU to fetch slot `idx` (header and first payload line),
    /// which the next receive will read. Out-of-range indices are ignored.
    #[inline]
    pub fn prefetch(&self, idx: u32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(s) = self.slot(idx) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let p = s as *const SlotHeader as *const i8;
            // SAFETY: prefetching is a hint with no architectural effect; SSE
            // is part of the x86_64 baseline; p and p + 64 lie in the slot.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.add(64));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = idx;
    }

    /// Copies the first `dst.len()` payload bytes of slot `idx` into `dst`.
    #[inline]
    pub fn read_payload(&self, idx: u32, dst: &mut [u8]) {
        self.slot_ref(idx)
            .expect("slot index checked by caller")
            .read(dst);
    }
}

/// A slot of a [`Region`] whose index was checked once
/// ([`Region::slot_ref`]): its header and payload are reached without
/// checking it again.
#[derive(Clone, Copy)]
pub struct SlotRef<'r> {
    /// Start of the slot: `stride` bytes in the mapping, the header first.
    ptr: *mut u8,
    idx: u32,
    msgsize: usize,
    _region: std::marker::PhantomData<&'r Region>,
}

impl std::fmt::Debug for SlotRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SlotRef").field(&self.idx).finish()
    }
}

impl PartialEq for SlotRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.ptr == other.ptr
    }
}

impl<'r> SlotRef<'r> {
    /// The slot's index.
    #[inline(always)]
    pub fn idx(self) -> u32 {
        self.idx
    }

    /// The slot's header.
    #[inline(always)]
    pub fn header(self) -> &'r SlotHeader {
        // SAFETY: ptr is a slot of the region, which outlives 'r; slots are
        // 64-aligned; SlotHeader is atomics only.
        unsafe { &*(self.ptr as *const SlotHeader) }
    }

    /// Copies `src` into the payload.
    #[inline(always)]
    pub fn write(self, src: &[u8]) {
        assert!(src.len() <= self.msgsize);
        // SAFETY: the payload follows the header and has msgsize >=
        // src.len() bytes inside the slot; the slot is reserved by this
        // caller (state WRITING or under the lock), so no conforming
        // process touches these bytes meanwhile.
        unsafe {
            let dst = self.ptr.add(size_of::<SlotHeader>());
            std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len())
        }
    }

    /// Copies the first `dst.len()` payload bytes into `dst`.
    #[inline(always)]
    pub fn read(self, dst: &mut [u8]) {
        assert!(dst.len() <= self.msgsize);
        // SAFETY: as in `write`; the slot is QUEUED or READING by us.
        unsafe {
            let src = self.ptr.add(size_of::<SlotHeader>());
            std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len())
        }
    }
}

impl std::ops::Deref for SlotRef<'_> {
    type Target = SlotHeader;
    #[inline(always)]
    fn deref(&self) -> &SlotHeader {
        self.header()
    }
}

/// A queue file mapped into this process, with its [`Region`].
///
/// The mapping is registered with the `SIGBUS` handler (`sys::sigbus`) for
/// as long as it exists: a file that shrinks under it poisons the region
/// instead of killing the process. Fields drop in order: the registration
/// goes before the mapping.
pub struct Mapping {
    region: Region,
    guard: Guarded,
    _map: memmap2::MmapRaw,
}

/// Why a file could not be mapped as a queue.
#[derive(Debug)]
pub enum MapError {
    /// The mapping itself failed.
    Os(nix::errno::Errno),
    /// The bytes are not a usable queue.
    Header(HeaderError),
    /// The file shrank while it was being mapped and checked.
    Shrunk,
}

fn map_file(file: &std::fs::File, len: usize) -> Result<memmap2::MmapRaw, nix::errno::Errno> {
    memmap2::MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOMEM)))
}

impl Mapping {
    /// Maps `len` bytes of an existing queue file and checks its header.
    /// The caller has checked that the file is at least `len` bytes long.
    pub fn open(file: &std::fs::File, len: usize) -> Result<Mapping, MapError> {
        if len < HEADER_SIZE {
            return Err(MapError::Header(HeaderError::NotAQueue(
                "file is smaller than a queue header",
            )));
        }
        let map = map_file(file, len).map_err(MapError::Os)?;
        // Registered before the first read: the file may shrink already.
        let guard = Guarded::new(map.as_mut_ptr(), len, Some(LOCK_WORD)).map_err(MapError::Os)?;
        // SAFETY: the mapping is page-aligned, `len` bytes long and lives as
        // long as the returned value (which owns it); all access to it goes
        // through Region.
        let opened = unsafe { Region::open(map.as_mut_ptr(), len) };
        if guard.flag().load(Relaxed) {
            return Err(MapError::Shrunk);
        }
        let mut region = opened.map_err(MapError::Header)?;
        region.poison = guard.flag();
        Ok(Mapping {
            region,
            guard,
            _map: map,
        })
    }

    /// Maps a new, zero-filled file of `geo.file_size` bytes that no other
    /// process can see yet and formats an empty queue in it.
    /// `state` is left at 0; the caller publishes [`STATE_READY`].
    pub fn format(
        file: &std::fs::File,
        geo: Geometry,
        mode: u32,
    ) -> Result<Mapping, nix::errno::Errno> {
        let map = map_file(file, geo.file_size)?;
        let guard = Guarded::new(map.as_mut_ptr(), geo.file_size, Some(LOCK_WORD))?;
        // SAFETY: as in `open`; the file is new, zeroed and private to us.
        let mut region = unsafe { Region::format(map.as_mut_ptr(), geo.file_size, geo, mode) };
        region.poison = guard.flag();
        Ok(Mapping {
            region,
            guard,
            _map: map,
        })
    }

    /// The queue inside.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Records this process's participant number (see
    /// `Guarded::set_member`).
    pub fn set_member(&self, id: u32) {
        self.guard.set_member(id);
    }

    /// Marks the region poisoned (see [`Region::poisoned`]): the file was
    /// found shrunk without a fault.
    pub fn poison(&self) {
        self.guard.poison();
    }
}

/// Offset of the lock word in the file.
const LOCK_WORD: usize = offset_of!(Header, lock) + offset_of!(LockLine, word);

/// An empty queue formatted in a heap buffer: the algorithm without a file,
/// for unit tests and property tests.
#[cfg(test)]
pub struct HeapRegion {
    region: Region,
    _buf: HeapBuf,
}

#[cfg(test)]
impl HeapRegion {
    /// A ready, empty queue of the given geometry.
    pub fn new(geo: Geometry) -> HeapRegion {
        let buf = HeapBuf::zeroed(geo.file_size);
        // SAFETY: a fresh, zeroed, page-aligned private buffer of exactly
        // file_size bytes, owned by the result and freed after the region.
        let region = unsafe { Region::format(buf.as_ptr(), buf.len(), geo, 0o600) };
        region.header().state.store(STATE_READY, Relaxed);
        HeapRegion { region, _buf: buf }
    }

    /// The queue.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Opens the same bytes again, as another process mapping the file
    /// would: the header is validated anew.
    pub fn reopen(&mut self) -> Result<(), HeaderError> {
        // SAFETY: the buffer is still owned by self, aligned and of the
        // region's length.
        self.region = unsafe { Region::open(self._buf.as_ptr(), self._buf.len()) }?;
        Ok(())
    }
}

/// A zeroed, page-aligned heap buffer that can stand in for a mapping in
/// tests.
#[cfg(test)]
pub struct HeapBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

#[cfg(test)]
impl HeapBuf {
    /// Allocates `len` zero bytes aligned to a page.
    pub fn zeroed(len: usize) -> HeapBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        HeapBuf { ptr, layout }
    }

    /// Start of the buffer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length of the buffer.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// The buffer's bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

#[cfg(test)]
impl Drop for HeapBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rejects_bad_sizes() {
        assert_eq!(Geometry::new(0, 10), Err(GeometryError::NotPositive));
        assert_eq!(Geometry::new(10, 0), Err(GeometryError::NotPositive));
        assert_eq!(Geometry::new(-1, 10), Err(GeometryError::NotPositive));
        assert_eq!(
            Geometry::new(i64::MAX, i64::MAX),
            Err(GeometryError::Overflow)
        );
        assert_eq!(Geometry::new(1 << 40, 64), Err(GeometryError::Overflow));
        let g = Geometry::new(10, 8192).unwrap();
        assert_eq!(g.stride % SLOT_ALIGN, 0);
        assert!(g.stride >= 8192 + 48);
        assert_eq!(g.file_size, HEADER_SIZE + 10 * g.stride);
    }

    #[test]
    fn format_then_open_round_trips() {
        let g = Geometry::new(5, 100).unwrap();
        let buf = HeapBuf::zeroed(g.file_size);
        // SAFETY: fresh zeroed private buffer of the right size.
        let r = unsafe { Region::format(buf.as_ptr(), buf.len(), g, 0o640) };
        r.header().state.store(STATE_READY, Relaxed);
        // SAFETY: as above.
        let r = unsafe { Region::open(buf.as_ptr(), buf.len()) }.unwrap();
        assert_eq!(r.geometry(), g);
        assert!(r.slot(4).is_some());
        assert!(r.slot(5).is_none());
        assert!(r.slot_ref(4).is_some());
        assert!(r.slot_ref(5).is_none());
    }

    #[test]
    fn open_rejects_garbage() {
        let g = Geometry::new(5, 100).unwrap();
        let mut buf = HeapBuf::zeroed(g.file_size);
        // SAFETY: zeroed buffer.
        let e = unsafe { Region::open(buf.as_ptr(), buf.len()) }
            .err()
            .unwrap();
        assert!(matches!(e, HeaderError::NotAQueue(_)));
        // SAFETY: as above.
        let r = unsafe { Region::format(buf.as_ptr(), buf.len(), g, 0o600) };
        r.header().state.store(STATE_READY, Relaxed);
        r.header().version.store(4 << 16, Relaxed);
        // SAFETY: as above.
        let e = unsafe { Region::open(buf.as_ptr(), buf.len()) }
            .err()
            .unwrap();
        assert_eq!(e, HeaderError::Version { found: 4 << 16 });
        buf.bytes_mut()[8..12].copy_from_slice(&VERSION.to_le_bytes());
        buf.bytes_mut()[24] = 6; // maxmsg 6 no longer matches the file size
        // SAFETY: as above.
        let e = unsafe { Region::open(buf.as_ptr(), buf.len()) }
            .err()
            .unwrap();
        assert!(matches!(e, HeaderError::Corrupted(_)), "{e:?}");
        // SAFETY: a length shorter than the header.
        let e = unsafe { Region::open(buf.as_ptr(), 100) }.err().unwrap();
        assert!(matches!(e, HeaderError::NotAQueue(_)));
    }
}
