//! Helpers for the tests that play a hostile participant: the offsets of
//! layout 3.0, a raw read-write mapping of a queue file that bypasses the
//! library, children run as another user, and checks on how a child ended.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

/// Byte offsets of layout 3.0 (`src/layout.rs`, frozen there by asserts).
pub mod off {
    /// `Header::mode` (display only: access comes from the file's mode).
    pub const MODE: usize = 48;
    /// `Header::lock.word`: owner member in bits 63..32, futex word below.
    pub const LOCK_WORD: usize = 64;
    /// `Header::lock.curmsgs`.
    pub const CURMSGS: usize = 72;
    /// `Header::lock.nfree`.
    pub const NFREE: usize = 80;
    /// `Header::lock.free_head`.
    pub const FREE_HEAD: usize = 88;
    /// `Header::lock.ninflight`.
    pub const NINFLIGHT: usize = 92;
    /// `Header::lock.sleepers`.
    pub const LOCK_SLEEPERS: usize = 96;
    /// `Header::sent` line.
    pub const SENT: usize = 128;
    /// `Header::received` line.
    pub const RECEIVED: usize = 192;
    /// `Header::inflight_head`, then sleepers, repairs, damage.
    pub const INFLIGHT_HEAD: usize = 256;
    /// `Header::next_member`.
    pub const NEXT_MEMBER: usize = 276;
    /// `Header::not_empty` futex line.
    pub const NOT_EMPTY: usize = 320;
    /// `Header::not_full` futex line.
    pub const NOT_FULL: usize = 384;
    /// `Header::notify`: owner u32, pid i32, kind u32, signo u32, token u64,
    /// bell u64, fired u64.
    pub const NOTIFY: usize = 448;
    pub const NOTIFY_OWNER: usize = NOTIFY;
    pub const NOTIFY_PID: usize = NOTIFY + 4;
    pub const NOTIFY_KIND: usize = NOTIFY + 8;
    pub const NOTIFY_SIGNO: usize = NOTIFY + 12;
    pub const NOTIFY_TOKEN: usize = NOTIFY + 16;
    pub const NOTIFY_BELL: usize = NOTIFY + 24;
    /// `Header::bitmap_top`, then 8 middle words and 512 leaves.
    pub const BITMAP_TOP: usize = 576;
    /// `Header::tails`: 32768 x u32.
    pub const TAILS: usize = 4744;
    /// End of the header proper.
    pub const HEADER_END: usize = 135_872;
    /// Slot 0 (the header rounded up to a page).
    pub const SLOTS: usize = 135_872_usize.next_multiple_of(4096);
    /// Size of a slot header.
    pub const SLOT_HEADER: usize = 48;
}

/// Bytes from one slot to the next for payloads of `msgsize` bytes.
pub fn stride(msgsize: usize) -> usize {
    (off::SLOT_HEADER + msgsize).next_multiple_of(64)
}

/// A queue file mapped read-write by a process that ignores the library's
/// rules: every store is an atomic one (other processes may be using the
/// same bytes), but what it stores is anything at all.
pub struct Raw {
    map: memmap2::MmapRaw,
    _file: File,
}

impl Raw {
    /// Maps the whole of the file at `path`, opened read-write.
    pub fn open(path: &Path) -> std::io::Result<Raw> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let map = memmap2::MmapRaw::map_raw(&file)?;
        Ok(Raw { map, _file: file })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    fn at<T>(&self, off: usize) -> *mut T {
        assert!(off + std::mem::size_of::<T>() <= self.len(), "offset {off}");
        assert_eq!(off % std::mem::align_of::<T>(), 0, "offset {off}");
        // The offset is inside the mapping (checked above).
        self.map.as_mut_ptr().wrapping_add(off).cast()
    }

    pub fn u8(&self, off: usize) -> &AtomicU8 {
        // SAFETY: in bounds and aligned (checked by `at`); the mapping lives
        // as long as self.
        unsafe { &*self.at::<AtomicU8>(off) }
    }

    pub fn u32(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as in `u8`.
        unsafe { &*self.at::<AtomicU32>(off) }
    }

    pub fn u64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: as in `u8`.
        unsafe { &*self.at::<AtomicU64>(off) }
    }

    /// Stores `bytes` at `off`, byte by byte (clipped to the mapping).
    pub fn write(&self, off: usize, bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            if off + i >= self.len() {
                break;
            }
            self.u8(off + i).store(b, Relaxed);
        }
    }

    /// The current value of the lock word.
    pub fn lock_word(&self) -> u64 {
        self.u64(off::LOCK_WORD).load(Relaxed)
    }

    /// Writes a lock word naming `member` and thread `tid`.
    pub fn set_lock_owner(&self, member: u32, tid: u32) {
        self.u64(off::LOCK_WORD)
            .store((u64::from(member) << 32) | u64::from(tid), Relaxed);
    }
}

/// A small deterministic generator (xorshift64*), for scribbles that a
/// failure report can reproduce from the seed.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A value a scribbler would pick for a word of `width` bytes: random
    /// bits, or one of the values that make indices and counters go wrong
    /// (0, 1, small indices, the largest values).
    pub fn nasty(&mut self, width: usize, small: u64) -> Vec<u8> {
        let v: u64 = match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.below(small + 3),
            3 => u64::from(u32::MAX) - self.below(3),
            4 => 1 << self.below(64),
            _ => self.next(),
        };
        v.to_le_bytes()[..width.min(8)].to_vec()
    }
}

/// A command running `program args` as uid and gid 65534 with no
/// supplementary groups (`setpriv`), or `None` when this process cannot
/// switch users (not root, or no `setpriv`).
pub fn as_nobody(program: &Path) -> Option<Command> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let mut c = Command::new(setpriv);
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(program);
    Some(c)
}

/// Fails the test, loudly, when a test that must run as another user
/// cannot: such a test never passes by doing nothing.
pub fn require_nobody(test: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    match as_nobody(&exe) {
        Some(c) => c,
        None => panic!(
            "{test}: needs to run a child as uid 65534 (root and setpriv); \
             run the test suite as root"
        ),
    }
}

/// How a child ended, as a verdict on the rule "never crash": a signal or
/// Rust's panic exit code (101) is a crash.
pub fn crashed(st: &ExitStatus) -> Option<String> {
    if let Some(sig) = st.signal() {
        return Some(format!("killed by signal {sig}"));
    }
    if st.code() == Some(101) {
        return Some("panicked (exit code 101)".into());
    }
    None
}

/// Waits for `child`, killing it and failing after `limit` (a watchdog);
/// returns its status and its captured output, if any.
pub fn wait_with_watchdog(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?} (a hang)");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// How long an honest call may outlive its deadline.
pub const MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `f`, and ends the process with a report (exit code 3, which the
/// parent reads as a failure) if it took longer than `limit` + [`MARGIN`].
pub fn timed<T>(what: &str, limit: std::time::Duration, f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let v = f();
    let took = t.elapsed();
    if took > limit + MARGIN {
        eprintln!("{what} took {took:?}, over its limit of {limit:?}");
        std::process::exit(3);
    }
    v
}
