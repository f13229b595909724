//! Queue names and the directory that holds the queue files.
//!
//! A name is `/` followed by 1 to 255 bytes, none of them `/` or NUL, and not
//! `.` or `..`: the rules and the errnos of Linux's `mq_open`. Queue `/jobs`
//! is the file `jobs` in the queue directory.
//!
//! The queue directory is, in order: the one given to the builder
//! ([`OpenOptions::dir`](crate::OpenOptions::dir)), the environment variable
//! `SHMQ_DIR`, or `/dev/shm/shmq`. The default is a directory of its own,
//! made on first use with mode `1777` like `/tmp`, so no queue file can ever
//! collide with a `shm_open` object (those live directly in `/dev/shm` and
//! their names cannot contain `/`).
//!
//! # Which directories are trusted
//! A queue directory is used only if nobody but root and the caller could
//! have prepared it, or could replace it or the files in it:
//! - its path is absolute;
//! - it is a directory, not a symbolic link;
//! - it and every directory on the way to it (from `/`) is owned by root or
//!   by the caller, and if writable by its group or by everyone, has the
//!   sticky bit (as `/tmp` and `/dev/shm`), which keeps others from
//!   renaming or removing what they do not own;
//! - a symbolic link on the way to it is owned by root or by the caller
//!   (it lies in a directory that passed the rule above, so nobody else can
//!   replace it).
//!
//! The path is walked one component at a time from a descriptor of the
//! previous one (`openat` with `O_NOFOLLOW | O_DIRECTORY`, then `fstat` of
//! the new descriptor), and every queue file is then reached relative to the
//! descriptor of the queue directory, so nothing swapped in after the check
//! is ever used. Each open, unlink and listing walks the path again.
//!
//! A missing default directory is created with mode `1777` (under a
//! temporary name, then renamed into place, so that no process ever sees
//! it with fewer bits). A missing directory of one's own (`SHMQ_DIR`,
//! [`OpenOptions::dir`](crate::OpenOptions::dir)) is created with mode
//! `0700` only by an open that creates a queue (`O_CREAT`); its parent must
//! exist and pass the rules. Everything else fails with
//! [`Error::Dir`].

use crate::error::{DirProblem, Error, Result};
use crate::sys;
use nix::errno::Errno;
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The default queue directory.
pub const DEFAULT_DIR: &str = "/dev/shm/shmq";
/// The environment variable that overrides [`DEFAULT_DIR`].
pub const DIR_ENV: &str = "SHMQ_DIR";
/// The longest name, not counting the leading `/` (Linux's `NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// Checks a queue name and returns the file name it maps to.
///
/// # Errors
/// - `EINVAL`: empty, no leading `/`, or a NUL byte;
/// - `ENOENT`: just `/`;
/// - `EACCES`: another `/`, or `.` / `..` (as Linux);
/// - `ENAMETOOLONG`: more than 255 bytes after the `/`.
pub fn file_name(name: &[u8]) -> Result<&OsStr> {
    let Some(rest) = name.strip_prefix(b"/") else {
        return Err(Error::Os(Errno::EINVAL));
    };
    if rest.contains(&0) {
        return Err(Error::Os(Errno::EINVAL));
    }
    if rest.is_empty() {
        return Err(Error::Os(Errno::ENOENT));
    }
    if rest.contains(&b'/') || rest == b"." || rest == b".." {
        return Err(Error::Os(Errno::EACCES));
    }
    if rest.len() > NAME_MAX {
        return Err(Error::Os(Errno::ENAMETOOLONG));
    }
    Ok(OsStr::from_bytes(rest))
}

/// The queue directory for an optional builder setting, checked by the
/// rules of this module; creates the default directory if it is missing.
///
/// # Errors
/// [`Error::Dir`] when the directory is missing (`ENOENT`), relative
/// (`EINVAL`) or not trusted (`EACCES`).
pub fn queue_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    Ok(QueueDir::open(explicit, false)?.path)
}

/// Which directory an optional builder setting names (the builder's, else
/// `SHMQ_DIR`, else [`DEFAULT_DIR`]), without looking at it.
///
/// # Errors
/// [`Error::Dir`] with [`DirProblem::Relative`] (`EINVAL`) for a relative
/// path.
pub fn chosen_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let d = match (explicit, std::env::var_os(DIR_ENV)) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(d)) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_DIR),
    };
    if !d.is_absolute() {
        return Err(dir_error(&d, &d, DirProblem::Relative));
    }
    Ok(d)
}

fn dir_error(dir: &Path, path: &Path, problem: DirProblem) -> Error {
    Error::Dir {
        dir: dir.to_path_buf(),
        path: path.to_path_buf(),
        problem,
    }
}

/// A checked queue directory: its path and a descriptor of it, through
/// which every queue file in it is reached.
#[derive(Debug)]
pub(crate) struct QueueDir {
    /// The path, as configured.
    pub path: PathBuf,
    fd: OwnedFd,
}

/// Symbolic links followed on the way, at most (Linux's limit).
const MAX_LINKS: u32 = 40;
/// Times a component that changed between its open and its `lstat` is
/// looked at again, at most.
const MAX_RETRIES: u32 = 8;

impl QueueDir {
    /// The queue directory for an optional builder setting, walked and
    /// checked; a missing default directory is created (mode `1777`), a
    /// missing other one too (mode `0700`) when `create`.
    pub fn open(explicit: Option<&Path>, create: bool) -> Result<QueueDir> {
        let path = chosen_dir(explicit)?;
        let default = path == Path::new(DEFAULT_DIR);
        match walk(&path) {
            Err(Walk::Missing(parent, last)) if default || create => {
                make_dir(parent.as_fd(), &last, if default { 0o1777 } else { 0o700 })
                    .map_err(|e| dir_error(&path, &path, DirProblem::NotCreated(e)))?;
            }
            Err(Walk::Missing(..)) => {
                return Err(dir_error(&path, &path, DirProblem::Missing));
            }
            Err(Walk::Refused(at, problem)) => return Err(dir_error(&path, &at, problem)),
            Ok(fd) => return Ok(QueueDir { path, fd }),
        }
        match walk(&path) {
            Ok(fd) => Ok(QueueDir { path, fd }),
            Err(Walk::Missing(..)) => Err(dir_error(&path, &path, DirProblem::Missing)),
            Err(Walk::Refused(at, problem)) => Err(dir_error(&path, &at, problem)),
        }
    }

    /// The descriptor of the directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Why a walk stopped.
enum Walk {
    /// The last component is missing: its parent (checked) and its name.
    Missing(OwnedFd, OsString),
    /// The path there has a problem.
    Refused(PathBuf, DirProblem),
}

/// Whether a directory (per `fstat`) may be trusted.
fn check_dir(fi: &sys::FileInfo, uid: u32) -> std::result::Result<(), DirProblem> {
    if fi.mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(DirProblem::NotADirectory);
    }
    if fi.uid != 0 && fi.uid != uid {
        return Err(DirProblem::Owner { uid: fi.uid });
    }
    let sticky = fi.mode & libc::S_ISVTX != 0;
    if fi.mode & libc::S_IWOTH != 0 && !sticky {
        return Err(DirProblem::WorldWritable);
    }
    if fi.mode & libc::S_IWGRP != 0 && !sticky {
        return Err(DirProblem::GroupWritable { gid: fi.gid });
    }
    Ok(())
}

/// Walks `path` (absolute) from `/`, one component at a time, each opened
/// relative to the descriptor of the previous one and checked by
/// [`check_dir`]; follows symbolic links on the way that root or the caller
/// own, never the last component. Returns a descriptor of the directory.
fn walk(path: &Path) -> std::result::Result<OwnedFd, Walk> {
    let (uid, _, _) = sys::credentials();
    let root = Path::new("/");
    let open_root = || -> std::result::Result<OwnedFd, Walk> {
        let fd = sys::open_dir_at(None, OsStr::new("/"), false)
            .map_err(|e| Walk::Refused(root.into(), DirProblem::Os(e)))?;
        let fi = sys::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .map_err(|e| Walk::Refused(root.into(), DirProblem::Os(e)))?;
        check_dir(&fi, uid).map_err(|p| Walk::Refused(root.into(), p))?;
        Ok(fd)
    };
    let mut fd = open_root()?;
    let mut at = PathBuf::from("/");
    let mut todo: VecDeque<OsString> = components(path);
    let (mut links, mut retries) = (0, 0);
    while let Some(c) = todo.pop_front() {
        let last = todo.is_empty();
        let next = if c == ".." {
            at.parent().unwrap_or(&at).to_path_buf()
        } else {
            at.join(&c)
        };
        match sys::open_dir_at(Some(fd.as_fd()), &c, false) {
            Ok(nfd) => {
                let fi = sys::fstat(std::os::fd::AsRawFd::as_raw_fd(&nfd))
                    .map_err(|e| Walk::Refused(next.clone(), DirProblem::Os(e)))?;
                check_dir(&fi, uid).map_err(|p| Walk::Refused(next.clone(), p))?;
                fd = nfd;
                at = next;
            }
            Err(Errno::ENOENT) if last => return Err(Walk::Missing(fd, c)),
            Err(Errno::ENOENT) => return Err(Walk::Refused(next, DirProblem::Missing)),
            Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                let fi = sys::lstat_at(fd.as_fd(), &c)
                    .map_err(|e| Walk::Refused(next.clone(), DirProblem::Os(e)))?;
                if fi.mode & libc::S_IFMT == libc::S_IFDIR && retries < MAX_RETRIES {
                    // Replaced by a directory since the open: look again.
                    retries += 1;
                    todo.push_front(c);
                    continue;
                }
                if fi.mode & libc::S_IFMT != libc::S_IFLNK {
                    let p = if e == Errno::ENOTDIR {
                        DirProblem::NotADirectory
                    } else {
                        DirProblem::Os(e)
                    };
                    return Err(Walk::Refused(next, p));
                }
                if last {
                    return Err(Walk::Refused(next, DirProblem::SymbolicLink));
                }
                if fi.uid != 0 && fi.uid != uid {
                    return Err(Walk::Refused(next, DirProblem::LinkOwner { uid: fi.uid }));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(Walk::Refused(next, DirProblem::Os(Errno::ELOOP)));
                }
                let target = sys::readlink_at(fd.as_fd(), &c)
                    .map_err(|e| Walk::Refused(next.clone(), DirProblem::Os(e)))?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    fd = open_root()?;
                    at = PathBuf::from("/");
                }
                for t in components(&target).into_iter().rev() {
                    todo.push_front(t);
                }
            }
            Err(e) => return Err(Walk::Refused(next, DirProblem::Os(e))),
        }
    }
    Ok(fd)
}

/// The components of `path` after its root, without `.`.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Creates directory `name` in `parent` with exactly `mode`, whatever the
/// umask: made under a temporary name, given its mode, then renamed into
/// place without replacing anything. Another creator winning the race is
/// not an error.
fn make_dir(parent: BorrowedFd<'_>, name: &OsStr, mode: u32) -> std::result::Result<(), Errno> {
    let tmp = OsString::from(format!(
        ".shmq-dir.{}.{:016x}",
        std::process::id(),
        sys::random_u64()
    ));
    sys::mkdir_at(parent, &tmp, 0o700)?;
    let made = sys::open_dir_at(Some(parent), &tmp, true).and_then(|fd| sys::fchmod(&fd, mode));
    if let Err(e) = made {
        let _ = sys::rmdir_at(parent, &tmp);
        return Err(e);
    }
    match sys::rename_noreplace_at(parent, &tmp, name) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => {
            let _ = sys::rmdir_at(parent, &tmp);
            Ok(())
        }
        Err(Errno::EINVAL | Errno::ENOSYS) => {
            // No RENAME_NOREPLACE here: make it in place, then set the mode.
            let _ = sys::rmdir_at(parent, &tmp);
            match sys::mkdir_at(parent, name, 0o700) {
                Ok(()) => {
                    let fd = sys::open_dir_at(Some(parent), name, true)?;
                    sys::fchmod(&fd, mode)
                }
                Err(Errno::EEXIST) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => {
            let _ = sys::rmdir_at(parent, &tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_name_rules() {
        let e = |n: &[u8]| file_name(n).unwrap_err().errno();
        assert_eq!(file_name(b"/jobs").unwrap(), "jobs");
        assert_eq!(e(b""), Errno::EINVAL);
        assert_eq!(e(b"jobs"), Errno::EINVAL);
        assert_eq!(e(b"/"), Errno::ENOENT);
        assert_eq!(e(b"/a/b"), Errno::EACCES);
        assert_eq!(e(b"/."), Errno::EACCES);
        assert_eq!(e(b"/.."), Errno::EACCES);
        assert_eq!(e(b"/a\0b"), Errno::EINVAL);
        let mut long = b"/".to_vec();
        long.extend([b'a'; 255]);
        assert!(file_name(&long).is_ok());
        long.push(b'a');
        assert_eq!(e(&long), Errno::ENAMETOOLONG);
    }
}
