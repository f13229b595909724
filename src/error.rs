//! The one error type, and the one table from errors to `errno`.

use nix::errno::Errno;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Result of shmq operations.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong. Every error has the `errno` that Linux's `mq_*` would
/// give for the same call ([`Error::errno`]); the variants that Linux cannot
/// produce (a file that is not a queue) carry a description as well.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A plain `errno`.
    Os(Errno),
    /// The file exists but is not a shmq queue (`EBADMSG`).
    NotAQueue(String),
    /// A queue of a layout version this library cannot use (`EPROTO`).
    Incompatible {
        /// Version found in the file (`major << 16 | minor`).
        found: u32,
        /// Version this library writes.
        expected: u32,
    },
    /// The queue's shared structures are damaged beyond repair (`EBADMSG`).
    Corrupted(String),
    /// The queue directory cannot be used: it is missing, or it (or a
    /// directory or link on the way to it) could have been prepared by
    /// someone else. `EACCES` for the latter, else the errno of
    /// [`DirProblem::errno`].
    Dir {
        /// The queue directory, as configured.
        dir: PathBuf,
        /// The path that has the problem: the queue directory itself or a
        /// component on the way to it.
        path: PathBuf,
        /// What is wrong with it.
        problem: DirProblem,
    },
}

/// What is wrong with a queue directory (see [`Error::Dir`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirProblem {
    /// A relative path: it would name another directory in another working
    /// directory (`EINVAL`).
    Relative,
    /// It does not exist (`ENOENT`).
    Missing,
    /// It is not a directory (`ENOTDIR`).
    NotADirectory,
    /// The queue directory itself is a symbolic link (`EACCES`).
    SymbolicLink,
    /// A symbolic link on the way is owned by someone other than root or
    /// the caller (`EACCES`).
    LinkOwner {
        /// Owner of the link.
        uid: u32,
    },
    /// Owned by someone other than root or the caller (`EACCES`).
    Owner {
        /// Owner of the directory.
        uid: u32,
    },
    /// Writable by everyone, without the sticky bit (`EACCES`).
    WorldWritable,
    /// Writable by its group, without the sticky bit (`EACCES`).
    GroupWritable {
        /// Group of the directory.
        gid: u32,
    },
    /// The system refused to open it (that errno).
    Os(Errno),
    /// It was missing and could not be created (that errno).
    NotCreated(Errno),
}

impl DirProblem {
    /// The `errno` value for this problem.
    pub fn errno(&self) -> Errno {
        match self {
            DirProblem::Relative => Errno::EINVAL,
            DirProblem::Missing => Errno::ENOENT,
            DirProblem::NotADirectory => Errno::ENOTDIR,
            DirProblem::SymbolicLink
            | DirProblem::LinkOwner { .. }
            | DirProblem::Owner { .. }
            | DirProblem::WorldWritable
            | DirProblem::GroupWritable { .. } => Errno::EACCES,
            DirProblem::Os(e) | DirProblem::NotCreated(e) => *e,
        }
    }
}

impl fmt::Display for DirProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirProblem::Relative => f.write_str("is a relative path; give an absolute one"),
            DirProblem::Missing => f.write_str("does not exist"),
            DirProblem::NotADirectory => f.write_str("is not a directory"),
            DirProblem::SymbolicLink => f.write_str("is a symbolic link"),
            DirProblem::LinkOwner { uid } => write!(
                f,
                "is a symbolic link owned by uid {uid}, not by root or you"
            ),
            DirProblem::Owner { uid } => write!(f, "is owned by uid {uid}, not by root or you"),
            DirProblem::WorldWritable => f.write_str("is world-writable without the sticky bit"),
            DirProblem::GroupWritable { gid } => {
                write!(f, "is writable by group {gid} without the sticky bit")
            }
            DirProblem::Os(e) => write!(f, "cannot be opened: {}", e.desc()),
            DirProblem::NotCreated(e) => {
                write!(f, "does not exist and cannot be created: {}", e.desc())
            }
        }
    }
}

impl Error {
    /// The `errno` value for this error.
    pub fn errno(&self) -> Errno {
        match self {
            Error::Os(e) => *e,
            Error::NotAQueue(_) => Errno::EBADMSG,
            Error::Incompatible { .. } => Errno::EPROTO,
            Error::Corrupted(_) => Errno::EBADMSG,
            Error::Dir { problem, .. } => problem.errno(),
        }
    }

    /// The symbolic name of the errno, e.g. `"EAGAIN"`.
    pub fn errno_name(&self) -> &'static str {
        errno_name(self.errno())
    }
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Error {
        Error::Os(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Os(e) => write!(f, "{} ({})", describe(*e), errno_name(*e)),
            Error::NotAQueue(why) => write!(f, "not a shmq queue: {why} (EBADMSG)"),
            Error::Incompatible { found, expected } => write!(
                f,
                "queue layout version {}.{} is not supported (this library uses {}.{}){} (EPROTO)",
                found >> 16,
                found & 0xffff,
                expected >> 16,
                expected & 0xffff,
                if found >> 16 < 3 {
                    "; a queue of layout 1 or 2 must be made again with this version"
                } else {
                    ""
                }
            ),
            Error::Corrupted(why) => write!(f, "queue is corrupted: {why} (EBADMSG)"),
            Error::Dir { dir, path, problem } => {
                write!(f, "queue directory {}", dir.display())?;
                if path != dir {
                    write!(f, ": {}", path.display())?;
                }
                write!(f, " {problem} ({})", errno_name(problem.errno()))
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    /// Plain errnos become `io::Error::from_raw_os_error`, so
    /// `raw_os_error()` is what Linux would give; the others keep their
    /// description and can be downcast back: a directory problem with the
    /// kind of its errno (`PermissionDenied`, `NotFound` …), the rest as
    /// `ErrorKind::InvalidData`.
    fn from(e: Error) -> io::Error {
        match e {
            Error::Os(errno) => io::Error::from_raw_os_error(errno as i32),
            Error::Dir { problem, .. } => io::Error::new(
                io::Error::from_raw_os_error(problem.errno() as i32).kind(),
                e,
            ),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

impl From<Error> for Errno {
    fn from(e: Error) -> Errno {
        e.errno()
    }
}

/// What an errno means for a queue, in words.
fn describe(e: Errno) -> &'static str {
    match e {
        Errno::EAGAIN => "queue is full or empty and the call would block",
        Errno::ETIMEDOUT => "timed out",
        Errno::EINTR => "interrupted by a signal",
        Errno::EMSGSIZE => "message too long for the queue or buffer too short",
        Errno::EBADF => "descriptor not open for this operation",
        Errno::EINVAL => "invalid argument",
        Errno::ENOENT => "no such queue",
        Errno::EEXIST => "queue already exists",
        Errno::EACCES => "permission denied",
        Errno::ENAMETOOLONG => "name too long",
        Errno::ENOSPC => "no space left for the queue",
        Errno::EOVERFLOW => "queue size overflows",
        Errno::EBUSY => "another process is registered for notification",
        Errno::ENOTRECOVERABLE => "queue lock is unrecoverable",
        e => e.desc(),
    }
}

/// The symbolic name of `e`.
pub fn errno_name(e: Errno) -> &'static str {
    match e {
        Errno::EAGAIN => "EAGAIN",
        Errno::ETIMEDOUT => "ETIMEDOUT",
        Errno::EINTR => "EINTR",
        Errno::EMSGSIZE => "EMSGSIZE",
        Errno::EBADF => "EBADF",
        Errno::EINVAL => "EINVAL",
        Errno::ENOENT => "ENOENT",
        Errno::EEXIST => "EEXIST",
        Errno::EACCES => "EACCES",
        Errno::EPERM => "EPERM",
        Errno::ENAMETOOLONG => "ENAMETOOLONG",
        Errno::ENOSPC => "ENOSPC",
        Errno::ENOMEM => "ENOMEM",
        Errno::EMFILE => "EMFILE",
        Errno::ENFILE => "ENFILE",
        Errno::EOVERFLOW => "EOVERFLOW",
        Errno::EBUSY => "EBUSY",
        Errno::EBADMSG => "EBADMSG",
        Errno::EPROTO => "EPROTO",
        Errno::ENOTRECOVERABLE => "ENOTRECOVERABLE",
        Errno::EISDIR => "EISDIR",
        Errno::ENOTDIR => "ENOTDIR",
        Errno::ELOOP => "ELOOP",
        Errno::EFBIG => "EFBIG",
        Errno::EROFS => "EROFS",
        Errno::ENOSYS => "ENOSYS",
        Errno::ENOTSUP => "ENOTSUP",
        Errno::ESRCH => "ESRCH",
        Errno::EIO => "EIO",
        _ => "errno",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        let cases = [
            (Error::Os(Errno::EAGAIN), Errno::EAGAIN),
            (Error::NotAQueue("x".into()), Errno::EBADMSG),
            (
                Error::Incompatible {
                    found: 2 << 16,
                    expected: 1 << 16,
                },
                Errno::EPROTO,
            ),
            (Error::Corrupted("x".into()), Errno::EBADMSG),
            (dir_error(DirProblem::Missing), Errno::ENOENT),
            (dir_error(DirProblem::Relative), Errno::EINVAL),
            (dir_error(DirProblem::NotADirectory), Errno::ENOTDIR),
            (dir_error(DirProblem::SymbolicLink), Errno::EACCES),
            (dir_error(DirProblem::LinkOwner { uid: 7 }), Errno::EACCES),
            (dir_error(DirProblem::Owner { uid: 7 }), Errno::EACCES),
            (dir_error(DirProblem::WorldWritable), Errno::EACCES),
            (
                dir_error(DirProblem::GroupWritable { gid: 7 }),
                Errno::EACCES,
            ),
            (dir_error(DirProblem::Os(Errno::EMFILE)), Errno::EMFILE),
            (
                dir_error(DirProblem::NotCreated(Errno::EROFS)),
                Errno::EROFS,
            ),
        ];
        for (err, errno) in cases {
            assert_eq!(err.errno(), errno);
            assert!(err.to_string().contains(err.errno_name()), "{err}");
        }
        let io: io::Error = Error::Os(Errno::EMSGSIZE).into();
        assert_eq!(io.raw_os_error(), Some(libc::EMSGSIZE));
        let io: io::Error = Error::NotAQueue("short".into()).into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidData);
        assert!(io.get_ref().unwrap().downcast_ref::<Error>().is_some());
        let io: io::Error = dir_error(DirProblem::Owner { uid: 65534 }).into();
        assert_eq!(io.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            io.to_string(),
            "queue directory /q is owned by uid 65534, not by root or you (EACCES)"
        );
        let e = Error::Dir {
            dir: "/a/b".into(),
            path: "/a".into(),
            problem: DirProblem::WorldWritable,
        };
        assert_eq!(
            e.to_string(),
            "queue directory /a/b: /a is world-writable without the sticky bit (EACCES)"
        );
    }

    fn dir_error(problem: DirProblem) -> Error {
        Error::Dir {
            dir: "/q".into(),
            path: "/q".into(),
            problem,
        }
    }
}
