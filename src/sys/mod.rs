//! Operating-system calls: queue files, mappings, process identity.
//!
//! Everything here returns `Errno` exactly as the kernel gave it; the callers
//! decide what each means for a queue.
#![allow(unsafe_code)]

pub mod bell;
pub mod live;
pub mod sigbus;

use nix::errno::Errno;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

fn cvt(r: libc::c_int) -> Result<libc::c_int, Errno> {
    if r == -1 { Err(Errno::last()) } else { Ok(r) }
}

/// What `fstat` says about a queue file.
#[derive(Clone, Copy, Debug)]
pub struct FileInfo {
    /// File size in bytes.
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Mode bits, type included.
    pub mode: u32,
    /// Bytes the file system has allocated to the file (`st_blocks * 512`).
    pub allocated: u64,
}

impl From<&libc::stat> for FileInfo {
    fn from(st: &libc::stat) -> FileInfo {
        FileInfo {
            size: st.st_size as u64,
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode,
            allocated: (st.st_blocks as u64).saturating_mul(512),
        }
    }
}

/// `fstat(fd)`.
pub fn fstat(fd: RawFd) -> Result<FileInfo, Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is valid storage for a stat; fstat initialises it on success.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    Ok(FileInfo::from(&st))
}

/// `(device, inode)` of an open file.
pub fn fstat_ids(fd: RawFd) -> Result<(u64, u64), Errno> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is valid storage for a stat; fstat initialises it on success.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    Ok((st.st_dev, st.st_ino))
}

/// A new open description of the file open as `file` (read-write,
/// close-on-exec), through `/proc/self/fd`: not a `dup`, which would share
/// the description.
pub fn reopen_self(file: &File) -> Result<File, Errno> {
    let path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    // SAFETY: path is a valid C string; open returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
    })?;
    // SAFETY: fd is a fresh descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    if fstat_ids(f.as_raw_fd())? != fstat_ids(file.as_raw_fd())? {
        return Err(Errno::ESTALE);
    }
    Ok(f)
}

fn cname(name: &OsStr) -> Result<CString, Errno> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Opens the directory `name` in `dir` (with `dir` `None`, `name` is `/`)
/// close-on-exec, never following a symbolic link in `name` (`O_NOFOLLOW |
/// O_DIRECTORY`). The descriptor is `O_PATH` (it needs only search
/// permission on the way, as a path would): good for `fstat` and as the
/// directory of `*at` calls; with `for_fchmod`, read-only instead, so
/// that `fchmod` works on it.
pub fn open_dir_at(
    dir: Option<BorrowedFd<'_>>,
    name: &OsStr,
    for_fchmod: bool,
) -> Result<OwnedFd, Errno> {
    let c = cname(name)?;
    let at = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let how = if for_fchmod {
        libc::O_RDONLY
    } else {
        libc::O_PATH
    };
    // SAFETY: c is a valid C string; openat returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            how | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: what `name` itself is.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<FileInfo, Errno> {
    let st = nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(FileInfo::from(&st))
}

/// `readlinkat(dir, name)`.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OsString, Errno> {
    nix::fcntl::readlinkat(dir, name)
}

/// `mkdirat(dir, name, mode)` (the kernel applies the umask).
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> Result<(), Errno> {
    nix::sys::stat::mkdirat(
        dir,
        name,
        nix::sys::stat::Mode::from_bits_truncate(mode as libc::mode_t),
    )
}

/// `renameat2(dir, from, dir, to, RENAME_NOREPLACE)`: `EEXIST` when `to`
/// exists; `EINVAL` where the file system cannot do it.
pub fn rename_noreplace_at(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> Result<(), Errno> {
    nix::fcntl::renameat2(
        dir,
        from,
        dir,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
}

/// `unlinkat(dir, name, AT_REMOVEDIR)`.
pub fn rmdir_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir)
}

/// `unlinkat(dir, name, 0)`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)
}

/// The entries of the directory open as `dir` (read through a new
/// descriptor of it), without `.` and `..`: each name, and whether it is a
/// regular file (`None` when the file system does not say).
pub fn read_dir_at(dir: BorrowedFd<'_>) -> Result<Vec<(OsString, Option<bool>)>, Errno> {
    use nix::dir::{Dir, Type};
    use nix::fcntl::OFlag;
    let mut d = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut out = Vec::new();
    for ent in d.iter() {
        let ent = ent?;
        let name = OsStr::from_bytes(ent.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let is_file = ent.file_type().map(|t| t == Type::File);
        out.push((name.to_os_string(), is_file));
    }
    Ok(out)
}

/// Opens the existing queue file `name` in `dir` read-write, close-on-exec,
/// never following a symbolic link and never blocking on a FIFO.
pub fn open_existing(dir: BorrowedFd<'_>, name: &OsStr) -> Result<File, Errno> {
    let c = cname(name)?;
    // SAFETY: c is a valid C string; openat returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        )
    })?;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Creates an unnamed file in `dir` (`O_TMPFILE`) with `mode` (the kernel
/// applies the umask); falls back to a uniquely named file in `dir` that the
/// caller must unlink. Returns the file and, for the fallback, its name.
pub fn create_unnamed(dir: BorrowedFd<'_>, mode: u32) -> Result<(File, Option<OsString>), Errno> {
    // SAFETY: "." is a valid C string; openat returns a new fd or -1.
    let r = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if r >= 0 {
        // SAFETY: fresh descriptor we own.
        return Ok((unsafe { File::from_raw_fd(r) }, None));
    }
    match Errno::last() {
        Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL => {}
        e => return Err(e),
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Relaxed);
        let name = OsString::from(format!(".shmq-creating.{}.{n}", std::process::id()));
        let c = cname(&name)?;
        // SAFETY: c is a valid C string.
        let r = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                mode as libc::c_uint,
            )
        };
        if r >= 0 {
            // SAFETY: fresh descriptor we own.
            return Ok((unsafe { File::from_raw_fd(r) }, Some(name)));
        }
        if Errno::last() != Errno::EEXIST {
            return Err(Errno::last());
        }
    }
}

/// Gives `file` (made by [`create_unnamed`] in `dir`) the name `name` in
/// `dir`. `EEXIST` when the name is taken: the file is never replaced.
pub fn link_into_place(
    file: &File,
    tmp: Option<&OsStr>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> Result<(), Errno> {
    let dst = cname(name)?;
    let (src_dir, src, flags) = match tmp {
        Some(t) => (dir.as_raw_fd(), cname(t)?, 0),
        None => (
            libc::AT_FDCWD,
            CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL"),
            libc::AT_SYMLINK_FOLLOW,
        ),
    };
    // SAFETY: both are valid C strings; both directory descriptors are open
    // (or AT_FDCWD).
    cvt(unsafe { libc::linkat(src_dir, src.as_ptr(), dir.as_raw_fd(), dst.as_ptr(), flags) })
        .map(drop)
}

/// Sets the file size to `size` and reserves its pages now, so that a full
/// file system fails here with `ENOSPC` instead of with `SIGBUS` later.
pub fn reserve(file: &File, size: u64) -> Result<(), Errno> {
    let size = i64::try_from(size).map_err(|_| Errno::EFBIG)?;
    // SAFETY: plain syscall on a descriptor we own.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size) };
    if r == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::EOPNOTSUPP | Errno::ENOSYS => {
            // SAFETY: as above; posix_fallocate returns the error number.
            match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size) } {
                0 => Ok(()),
                e => Err(Errno::from_raw(e)),
            }
        }
        e => Err(e),
    }
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: impl AsFd, mode: u32) -> Result<(), Errno> {
    // SAFETY: plain syscall on a descriptor the caller holds open.
    cvt(unsafe { libc::fchmod(fd.as_fd().as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

/// `dup(fd)` with close-on-exec.
pub fn dup_cloexec(fd: RawFd) -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall; the new descriptor is owned by the result.
    let r = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// The caller's effective uid, effective gid and supplementary groups.
pub fn credentials() -> (u32, u32, Vec<u32>) {
    // SAFETY: these calls cannot fail and have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let groups = nix::unistd::getgroups().unwrap_or_default();
    (uid, gid, groups.into_iter().map(|g| g.as_raw()).collect())
}

/// A page of memory shared with forked children (`MAP_SHARED |
/// MAP_ANONYMOUS`): holds the flags of an open queue description, which a
/// child created by `fork` shares with its parent, as it does for the
/// kernel's queue descriptors.
pub struct SharedFlags {
    ptr: *mut AtomicU32,
}

// SAFETY: the page holds only an atomic; the pointer is never reassigned.
unsafe impl Send for SharedFlags {}
// SAFETY: as above.
unsafe impl Sync for SharedFlags {}

impl SharedFlags {
    /// Maps a new zeroed page.
    pub fn new(initial: u32) -> Result<SharedFlags, Errno> {
        // SAFETY: anonymous mapping with no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let f = SharedFlags { ptr: p.cast() };
        f.word().store(initial, Relaxed);
        Ok(f)
    }

    /// The flag word.
    #[inline]
    pub fn word(&self) -> &AtomicU32 {
        // SAFETY: ptr is a live page-aligned mapping of 4096 bytes that only
        // ever holds this atomic.
        unsafe { &*self.ptr }
    }
}

impl Drop for SharedFlags {
    fn drop(&mut self) {
        // SAFETY: unmapping the page mapped in `new`; no references outlive
        // self.
        unsafe { libc::munmap(self.ptr.cast(), 4096) };
    }
}

/// Number of CPUs online on the machine, whatever this thread's affinity
/// (1 when unknown).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The CPU the calling thread runs on, plus one, or 0 when unknown
/// (`sched_getcpu`; glibc reads it from the thread's rseq area or the vDSO,
/// no system call).
pub fn current_cpu_tag() -> u32 {
    // SAFETY: no preconditions.
    u32::try_from(unsafe { libc::sched_getcpu() }).map_or(0, |c| c.saturating_add(1))
}

/// `CLOCK_REALTIME` now.
pub fn realtime_now() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is valid storage; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts
}

/// Queues `signo` to this process with `si_code = SI_MESGQ`, the given
/// sender's pid and uid, and `value` (`rt_sigqueueinfo` on itself): what
/// the kernel's queues send for `SIGEV_SIGNAL`.
pub fn queue_mesgq_signal(signo: i32, value: u64, pid: i32, uid: u32) -> Result<(), Errno> {
    /// The `_rt` member of Linux's `siginfo_t`, padded to its full size.
    #[repr(C)]
    struct SigInfoRt {
        si_signo: i32,
        si_errno: i32,
        si_code: i32,
        _pad0: i32,
        si_pid: i32,
        si_uid: u32,
        si_value: u64,
        _rest: [u8; 128 - 32],
    }
    const _: () =
        assert!(std::mem::size_of::<SigInfoRt>() == std::mem::size_of::<libc::siginfo_t>());
    const SI_MESGQ: i32 = -3;
    let info = SigInfoRt {
        si_signo: signo,
        si_errno: 0,
        si_code: SI_MESGQ,
        _pad0: 0,
        si_pid: pid,
        si_uid: uid,
        si_value: value,
        _rest: [0; 128 - 32],
    };
    // SAFETY: info is a fully initialised siginfo_t-sized buffer that the
    // kernel only reads; the target is this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigqueueinfo,
            libc::getpid(),
            signo,
            &info as *const SigInfoRt,
        )
    };
    if r == -1 { Err(Errno::last()) } else { Ok(()) }
}

/// 64 random bits (`getrandom`; without it, the clock and the pid).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: b is valid storage of 8 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 8, 0) };
    if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        let t = realtime_now();
        (t.tv_nsec as u64) ^ ((t.tv_sec as u64) << 30) ^ (u64::from(std::process::id()) << 40)
    }
}
