//! `mqtool recv`: `mq_receive` / `mq_timedreceive`, with acknowledgement.
//!
//! Each message is received pending, written to standard output and
//! flushed, and only then acknowledged. When a write fails, the message
//! being written goes back to its place in the queue (the output may hold
//! a cut copy of it) and recv stops: nothing it did not write out leaves
//! the queue.

use super::{Ctx, output_format, queue_name};
use crate::cli::{Format, RecvArgs};
use crate::exit::{Exit, Outcome, errno_of};
use crate::output::{self, MessagePrinter};
use nix::errno::Errno;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

pub fn run(ctx: &Ctx, a: &RecvArgs) -> Outcome {
    let name = queue_name(&a.name)?;
    output::check_raw(a.format.unwrap_or(Format::Text), a.count, a.all, a.priority)?;
    // --all takes what is queued now: it never waits, unless --timeout says
    // how long to wait for more.
    let nonblock = a.wait.nonblock || (a.all && a.wait.timeout.is_none());
    let mut opts = shmq::OpenOptions::readonly();
    opts.existing().dir(ctx.dir()?);
    if nonblock {
        opts.nonblocking();
    }
    let mq = opts
        .open(name.bytes())
        .map_err(|e| ctx.queue_error(&name, &e))?;
    let max_msg_len = mq
        .attributes()
        .map_err(|e| ctx.queue_error(&name, &e))?
        .max_msg_len;
    let mut buf = vec![0; max_msg_len];
    let want = if a.all {
        u64::MAX
    } else {
        a.count.unwrap_or(1)
    };
    let queue = name.lossy();
    let format = output_format(ctx, a.format)?;
    // Standard output unbuffered, as a descriptor of our own: a write that
    // fails says so (the standard library's handle takes a closed standard
    // output for a sink that accepts everything), and nothing is left in a
    // buffer to be written after a failure.
    let mut stdout = stdout_file()?;
    let mut out = MessagePrinter {
        out: Vec::new(),
        format,
        priority: a.priority,
        queue: &queue,
        holder: None,
    };
    let mut got = 0;
    while got < want {
        let r = match a.wait.timeout {
            Some(t) => mq.recv_pending_timeout(&mut buf, t),
            None => mq.recv_pending(&mut buf),
        };
        match r {
            Ok(pending) => {
                out.out.clear();
                out.print(pending.priority(), &buf[..pending.len()])?;
                // On a failure, `pending` is dropped on the way out: the
                // message goes back to the queue.
                stdout.write_all(&out.out)?;
                stdout.flush()?;
                pending.ack().map_err(|e| ctx.queue_error(&name, &e))?;
                got += 1;
            }
            Err(e) => match errno_of(&e) {
                Some(Errno::EAGAIN) => {
                    ctx.note(&name, format_args!("queue is empty (EAGAIN)"));
                    break;
                }
                Some(Errno::ETIMEDOUT) => {
                    let t = output::duration(a.wait.timeout.unwrap_or_default());
                    ctx.note(&name, format_args!("no message within {t} (ETIMEDOUT)"));
                    break;
                }
                _ => return Err(ctx.queue_error(&name, &e)),
            },
        }
    }
    if got == want || (a.all && got > 0) {
        Ok(Exit::Success)
    } else {
        Ok(Exit::Nothing)
    }
}

/// A descriptor of standard output of our own (`dup`): fails with `EBADF`
/// when standard output is closed, or stands for a closed one.
fn stdout_file() -> Result<File, crate::exit::Failure> {
    let fd = io::stdout().as_fd().try_clone_to_owned()?;
    if stands_for_closed(&fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF).into());
    }
    Ok(File::from(fd))
}

/// Whether `fd` is the `/dev/null` that the Rust runtime opens, read-write,
/// in place of a standard descriptor that was closed (`>&-`): messages
/// written there would be acknowledged and lost, which the caller never
/// asked for. A shell's `> /dev/null` opens it write-only.
fn stands_for_closed(fd: &std::os::fd::OwnedFd) -> bool {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::sys::stat::{SFlag, fstat, stat};
    let Ok(fl) = fcntl(fd, FcntlArg::F_GETFL) else {
        return false;
    };
    if OFlag::from_bits_truncate(fl) & OFlag::O_ACCMODE != OFlag::O_RDWR {
        return false;
    }
    match (fstat(fd), stat("/dev/null")) {
        (Ok(a), Ok(b)) => {
            SFlag::from_bits_truncate(a.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR
                && a.st_rdev == b.st_rdev
        }
        _ => false,
    }
}
