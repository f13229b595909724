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

use crate::error::{Error, Result};
use nix::errno::Errno;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

/// The queue directory for an optional builder setting; creates the default
/// directory if it is missing, however it was named.
pub fn queue_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    let d = match (explicit, std::env::var_os(DIR_ENV)) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(d)) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_DIR),
    };
    if d == Path::new(DEFAULT_DIR) && !d.is_dir() {
        crate::sys::ensure_shared_dir(&d)?;
    }
    Ok(d)
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
