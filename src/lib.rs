//! POSIX message queues (`mq_*`) in shared memory.
//!
//! A queue is a file in `/dev/shm/shmq` (see [the naming rules](crate::name))
//! holding a header and linked message slots, mapped by every process that
//! opens it and guarded by a robust process-shared pthread mutex. Sending and
//! receiving make no system call unless someone has to sleep or be woken.
//! The semantics and errnos are Linux's `mq_*`, without its limits.
//!
//! Two front doors over one engine:
//! - [`PosixMq`], [`OpenOptions`], … : the API of the `posixmq` crate;
//! - [`mqueue`]: the functions of `nix::mqueue`.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("shmq-doc-lib-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let mq = shmq::OpenOptions::readwrite()
//!     .capacity(4)
//!     .max_msg_len(64)
//!     .create_new()
//! #   .dir(&dir)
//!     .open("/lib-example")?;
//! mq.send(1, b"low")?;
//! mq.send(9, b"high")?;
//! let mut buf = [0; 64];
//! let (prio, len) = mq.recv(&mut buf)?;
//! assert_eq!((prio, &buf[..len]), (9, &b"high"[..]));
//! # shmq::remove_queue_in(&dir, "/lib-example")?;
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # The guarantee
//! A message whose send returned success is never lost and never delivered
//! twice to live receivers, whatever process is killed at whatever instant;
//! the queue stays usable for the survivors, with correct counts.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod engine;
mod error;
pub mod inspect;
mod layout;
mod member;
pub mod mqueue;
pub mod name;
mod notify;
mod posix;
mod queue;
mod sync;
mod sys;

pub use error::{DirProblem, Error, Result, errno_name};
pub use posix::{
    Attributes, IntoIter, Iter, Notify, OpenOptions, Pending, PosixMq, remove_queue,
    remove_queue_c, remove_queue_in,
};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
