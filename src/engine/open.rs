//! Opening, creating and removing queue files; access checks.

use super::*;
use crate::name::QueueDir;

/// Where each class's permissions sit: (shift of its `rwx` bits, the
/// special bit that records its write permission).
const CLASSES: [(u32, u32); 3] = [(6, libc::S_ISUID), (3, libc::S_ISGID), (0, libc::S_ISVTX)];

/// How many bytes of a queue file may be unallocated (holes) before it is
/// refused as sparse, besides an eighth of its size: file systems that
/// compress or deduplicate may report a little less than the size.
const SPARSE_SLACK: u64 = 1 << 20;

/// The file mode that carries a queue's permission bits.
///
/// Every participant writes the mapping (a receive changes it), so whoever
/// may read or write the queue must be able to open the file read-write:
/// each class with read or write permission gets `rw` on the file. What
/// the class may really do is recorded in bits that only the file's owner
/// (or root) can change, so that no participant can grant itself more: the
/// class's execute bit says "may receive", and its special bit (set-user-ID
/// for the owner, set-group-ID for the group, sticky for others) says "may
/// send". A mode recorded in the queue's header could be rewritten by
/// anyone who maps the file.
pub(super) fn file_mode(mode: u32) -> u32 {
    CLASSES.iter().fold(0, |acc, &(shift, special)| {
        let bits = (mode >> shift) & 7;
        let rw = if bits & 6 != 0 { 6 } else { 0 };
        let x = if bits & 4 != 0 { 1 } else { 0 };
        let w = if bits & 2 != 0 { special } else { 0 };
        acc | ((rw | x) << shift) | w
    })
}

/// The queue's permission bits (`rw` per class) recorded in a file mode
/// made by [`file_mode`].
pub(super) fn queue_mode(file_mode: u32) -> u32 {
    CLASSES.iter().fold(0, |acc, &(shift, special)| {
        let bits = (file_mode >> shift) & 7;
        if bits & 6 != 6 {
            return acc;
        }
        let r = if bits & 1 != 0 { 4 } else { 0 };
        let w = if file_mode & special != 0 { 2 } else { 0 };
        acc | ((r | w) << shift)
    })
}

/// Whether the caller may open a queue of `mode` (owned per `fi`) for the
/// given access, by the rules of the kernel's permission check.
pub(super) fn permitted(mode: u32, fi: &FileInfo, read: bool, write: bool) -> bool {
    let (uid, gid, groups) = sys::credentials();
    if uid == 0 {
        return true;
    }
    let bits = if uid == fi.uid {
        mode >> 6
    } else if gid == fi.gid || groups.contains(&fi.gid) {
        mode >> 3
    } else {
        mode
    } & 7;
    (!read || bits & 4 != 0) && (!write || bits & 2 != 0)
}

impl Queue {
    pub(super) fn open_file(file: &File, path: PathBuf, name: &[u8]) -> Result<Queue> {
        let fi = sys::fstat(file.as_raw_fd())?;
        if fi.mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::NotAQueue("not a regular file".into()));
        }
        let len = usize::try_from(fi.size).map_err(|_| Error::Os(Errno::EOVERFLOW))?;
        if len < crate::layout::HEADER_SIZE {
            use std::os::unix::fs::FileExt;
            let mut magic = [0u8; 8];
            let ours = file.read_exact_at(&mut magic, 0).is_ok()
                && u64::from_le_bytes(magic) == crate::layout::MAGIC;
            return Err(if ours {
                Error::Corrupted(format!(
                    "truncated to {len} bytes (the header alone is {})",
                    crate::layout::HEADER_SIZE
                ))
            } else {
                Error::NotAQueue("file is smaller than a queue header".into())
            });
        }
        // A queue's pages are all reserved when it is created (`reserve`).
        // A file with far fewer allocated is sparse: made by hand or holed
        // since. Mapping it would fill its holes at every touch, or fail
        // to and raise SIGBUS on a full file system.
        let missing = (len as u64).saturating_sub(fi.allocated);
        if missing > SPARSE_SLACK && missing > len as u64 / 8 {
            return Err(Error::Corrupted(format!(
                "only {} of its {len} bytes are allocated: a sparse file, not a queue as \
                 created",
                fi.allocated
            )));
        }
        let map = Mapping::open(file, len).map_err(|e| match e {
            MapError::Os(e) => Error::Os(e),
            MapError::Header(h) => corrupted(h),
            MapError::Shrunk => shrunk(),
        })?;
        Queue::new(map, path, name, fi, file)
    }

    pub(super) fn new(
        map: Mapping,
        path: PathBuf,
        name: &[u8],
        file_info: FileInfo,
        file: &File,
    ) -> Result<Queue> {
        // Here rather than at the first lock: in a process that already has
        // several threads, registering waits for the kernel (10-20 ms).
        mutex::register_process();
        let geo = map.region().geometry();
        let key = sys::fstat_ids(file.as_raw_fd())?;
        let q = Queue {
            map,
            geo,
            path,
            name: name.to_vec(),
            file_info,
            key,
            file: File::from(sys::dup_cloexec(file.as_raw_fd())?),
            member: PerIncarnation::new(),
            can_spin: sys::online_cpus() > 1,
            tuning: Tuning {
                spin_ns: AtomicU32::new(SPIN_MAX_NS / 2),
                probe: AtomicU32::new(0),
                futile_wakes: AtomicU32::new(0),
                last_prio: AtomicU32::new(u32::MAX),
                peer_on_my_cpu: AtomicBool::new(false),
                pending_scan: AtomicU64::new(0),
            },
            _relock: Relock::new(key),
        };
        q.member()?;
        Ok(q)
    }

    /// The queue's permission bits, from the file's mode (see
    /// [`file_mode`]).
    pub fn mode(&self) -> u32 {
        queue_mode(self.file_info.mode)
    }
}

impl Handle {
    /// `mq_open`.
    pub fn open(req: &OpenRequest<'_>) -> Result<Handle> {
        // Dropped last: a descriptor closed on the way out (an error) drops
        // this process's record lock on the file, which another handle of
        // it may need.
        let mut relock = Relock::default();
        let fname = crate::name::file_name(req.name)?;
        let dir = QueueDir::open(req.dir, req.create)?;
        let path = dir.path.join(fname);
        let (read, write) = match req.access & libc::O_ACCMODE {
            libc::O_RDONLY => (true, false),
            libc::O_WRONLY => (false, true),
            libc::O_RDWR => (true, true),
            _ => (false, false),
        };
        loop {
            match sys::open_existing(dir.fd(), fname) {
                Ok(file) => {
                    if let Ok(key) = sys::fstat_ids(file.as_raw_fd()) {
                        relock.set(key);
                    }
                    if req.create && req.exclusive {
                        return Err(Error::Os(Errno::EEXIST));
                    }
                    if req.access & libc::O_ACCMODE == libc::O_ACCMODE {
                        return Err(Error::Os(Errno::EINVAL));
                    }
                    let q = Queue::open_file(&file, path, req.name)?;
                    if !permitted(q.mode(), &q.file_info, read, write) {
                        return Err(Error::Os(Errno::EACCES));
                    }
                    return Handle::finish(file, q, read, write, req.nonblock);
                }
                Err(Errno::ENOENT) if req.create => match Self::create(req, &dir, fname, &path)? {
                    Some((file, q)) => return Handle::finish(file, q, read, write, req.nonblock),
                    None => continue, // another process created it first
                },
                Err(Errno::ELOOP) | Err(Errno::ENXIO) | Err(Errno::EISDIR) => {
                    return Err(Error::NotAQueue("not a regular file".into()));
                }
                Err(e) => return Err(Error::Os(e)),
            }
        }
    }

    pub(super) fn create(
        req: &OpenRequest<'_>,
        dir: &QueueDir,
        fname: &std::ffi::OsStr,
        path: &Path,
    ) -> Result<Option<(File, Queue)>> {
        let (maxmsg, msgsize) = req.attr.unwrap_or((DEFAULT_MAXMSG, DEFAULT_MSGSIZE));
        let geo = Geometry::new(maxmsg, msgsize).map_err(|e| match e {
            GeometryError::NotPositive => Error::Os(Errno::EINVAL),
            GeometryError::Overflow => Error::Os(Errno::EOVERFLOW),
        })?;
        let (file, tmp) = sys::create_unnamed(dir.fd(), req.mode & 0o777)?;
        let cleanup = |tmp: &Option<std::ffi::OsString>| {
            if let Some(t) = tmp {
                let _ = sys::unlink_at(dir.fd(), t);
            }
        };
        let built = (|| -> Result<Queue> {
            let fi = sys::fstat(file.as_raw_fd())?;
            let mode = fi.mode & 0o777; // requested mode minus umask
            sys::reserve(&file, geo.file_size as u64).map_err(|e| match e {
                Errno::EFBIG => Error::Os(Errno::ENOSPC),
                e => Error::Os(e),
            })?;
            let map = Mapping::format(&file, geo, mode).map_err(Error::Os)?;
            // The mode last: the kernel clears set-user-ID and set-group-ID
            // bits when an unprivileged caller writes or extends the file.
            sys::fchmod(&file, file_mode(mode))?;
            let fi = sys::fstat(file.as_raw_fd())?;
            if fi.mode & 0o7777 != file_mode(mode) {
                // The kernel dropped a set-group-ID bit: the file's group is
                // not one of the caller's (a set-group-ID directory).
                return Err(Error::Os(Errno::EPERM));
            }
            // Publish: the state word last, then the name.
            map.region().header().state.store(STATE_READY, Release);
            let fi = sys::fstat(file.as_raw_fd())?;
            Queue::new(map, path.to_path_buf(), req.name, fi, &file)
        })();
        let q = match built {
            Ok(q) => q,
            Err(e) => {
                cleanup(&tmp);
                return Err(e);
            }
        };
        let linked = sys::link_into_place(&file, tmp.as_deref(), dir.fd(), fname);
        cleanup(&tmp);
        match linked {
            Ok(()) => Ok(Some((file, q))),
            Err(Errno::EEXIST) if req.exclusive => Err(Error::Os(Errno::EEXIST)),
            Err(Errno::EEXIST) => Ok(None),
            Err(e) => Err(Error::Os(e)),
        }
    }

    pub(super) fn finish(
        file: File,
        q: Queue,
        read: bool,
        write: bool,
        nonblock: bool,
    ) -> Result<Handle> {
        let flags = SharedFlags::new(if nonblock { FLAG_NONBLOCK } else { 0 })?;
        let key = q.key;
        Ok(Handle {
            fd: file.into(),
            desc: Arc::new(Description {
                queue: q,
                flags,
                read,
                write,
            }),
            _relock: Relock::new(key),
        })
    }

    /// The open description.
    pub fn desc(&self) -> &Description {
        &self.desc
    }

    /// `mq_notify` on this descriptor.
    pub fn notify(&self, how: Option<crate::notify::Notification>) -> Result<()> {
        crate::notify::register(&self.desc, how)?;
        self.desc.queue.check_poison()
    }

    /// `dup`: a new descriptor sharing this one's open description.
    pub fn try_clone(&self) -> Result<Handle> {
        Ok(Handle {
            fd: sys::dup_cloexec(self.fd.as_raw_fd())?,
            desc: self.desc.clone(),
            _relock: Relock::new(self.desc.queue.key),
        })
    }

    /// A handle owning `fd` (a duplicate of this handle's descriptor) and
    /// sharing this handle's open description.
    pub fn with_fd(&self, fd: OwnedFd) -> Handle {
        Handle {
            fd,
            desc: self.desc.clone(),
            _relock: Relock::new(self.desc.queue.key),
        }
    }

    /// The file descriptor of the queue file held by this handle.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Borrows the descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Whether the caller may use queue `q` for the given access, by the
/// file's mode bits (never the header's `mode`, which anyone who maps the
/// file can rewrite).
pub fn permitted_on(q: &Queue, read: bool, write: bool) -> bool {
    permitted(q.mode(), &q.file_info, read, write)
}

/// `mq_unlink`: removes the name now; open handles keep working and the
/// storage goes when the last one closes.
pub fn unlink(name: &[u8], dir: Option<&Path>) -> Result<()> {
    let fname = crate::name::file_name(name)?;
    let dir = QueueDir::open(dir, false)?;
    match sys::unlink_at(dir.fd(), fname) {
        Ok(()) => Ok(()),
        // A sticky directory refuses with EPERM; mq_unlink says EACCES.
        Err(Errno::EPERM) => Err(Error::Os(Errno::EACCES)),
        Err(Errno::EISDIR) => Err(Error::NotAQueue("a directory".into())),
        Err(e) => Err(Error::Os(e)),
    }
}

/// Opens a queue file for inspection only (no access check beyond the
/// file's own permissions, no descriptor flags).
pub fn open_for_inspection(name: &[u8], dir: Option<&Path>) -> Result<Queue> {
    let dir = QueueDir::open(dir, false)?;
    open_for_inspection_in(&dir, name)
}

/// [`open_for_inspection`] in a directory already open.
pub(crate) fn open_for_inspection_in(dir: &QueueDir, name: &[u8]) -> Result<Queue> {
    // Dropped last, after `file`, which is closed on the way out (see
    // `Handle::open`).
    let mut relock = Relock::default();
    let fname = crate::name::file_name(name)?;
    let file = sys::open_existing(dir.fd(), fname).map_err(|e| match e {
        Errno::ELOOP | Errno::ENXIO | Errno::EISDIR => {
            Error::NotAQueue("not a regular file".into())
        }
        e => Error::Os(e),
    })?;
    if let Ok(key) = sys::fstat_ids(file.as_raw_fd()) {
        relock.set(key);
    }
    Queue::open_file(&file, dir.path.join(fname), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_modes_survive_the_file_mode() {
        for mode in 0..0o1000 {
            let f = file_mode(mode);
            // Whoever may read or write gets rw on the file.
            for shift in [6, 3, 0] {
                let has = (mode >> shift) & 6 != 0;
                assert_eq!((f >> shift) & 6 == 6, has, "{mode:o}");
            }
            // Read and write come back exactly (execute bits do not matter).
            assert_eq!(queue_mode(f), mode & 0o666, "{mode:o} -> {f:o}");
        }
        assert_eq!(file_mode(0o600), 0o4700);
        assert_eq!(file_mode(0o640), 0o4770);
        assert_eq!(file_mode(0o622), 0o7766);
        assert_eq!(file_mode(0o000), 0);
    }

    #[test]
    fn timespec_rules() {
        let ts = |s, n| libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        };
        assert!(check_timespec(&ts(0, 0)).is_ok());
        assert!(check_timespec(&ts(i64::MAX, 999_999_999)).is_ok());
        assert_eq!(
            check_timespec(&ts(0, 1_000_000_000)),
            Err(Error::Os(Errno::EINVAL))
        );
        assert_eq!(check_timespec(&ts(0, -1)), Err(Error::Os(Errno::EINVAL)));
        assert_eq!(check_timespec(&ts(-1, 0)), Err(Error::Os(Errno::EINVAL)));
    }
}
