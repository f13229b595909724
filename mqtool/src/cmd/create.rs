//! `mqtool create`: `mq_open(O_CREAT [| O_EXCL])`.

use super::{Ctx, queue_name};
use crate::cli::CreateArgs;
use crate::exit::{Exit, Failure, Outcome, errno_of};
use nix::errno::Errno;

/// `mq_open`'s default capacity, used when only the message size is given.
const DEFAULT_CAPACITY: i64 = 10;
/// `mq_open`'s default message size, used when only the capacity is given.
const DEFAULT_MAX_MSG_LEN: i64 = 8192;
/// The most messages a queue holds: slots are numbered with 32 bits, one
/// value meaning "none" (the library fails with EOVERFLOW above it).
pub const MAX_CAPACITY: i64 = u32::MAX as i64 - 1;

pub fn run(ctx: &Ctx, a: &CreateArgs) -> Outcome {
    let name = queue_name(&a.name)?;
    let dir = ctx.dir()?;
    let capacity = a.capacity.unwrap_or(DEFAULT_CAPACITY);
    let max_msg_len = a.max_msg_len.unwrap_or(DEFAULT_MAX_MSG_LEN);
    if capacity < 1 || max_msg_len < 1 {
        return Err(Failure::new(
            name.to_string(),
            format!(
                "capacity ({capacity}) and max-msg-len ({max_msg_len}) must each be 1 or more (EINVAL)"
            ),
        ));
    }
    if capacity > MAX_CAPACITY {
        return Err(Failure::new(
            name.to_string(),
            format!("capacity {capacity} is over the limit of {MAX_CAPACITY} messages (EOVERFLOW)"),
        ));
    }
    // Both are positive i64s, so they fit a usize on the 64-bit targets
    // shmq builds for.
    let (capacity, max_msg_len) = (capacity as usize, max_msg_len as usize);
    let mut opts = shmq::OpenOptions::readonly();
    opts.mode(a.mode)
        .capacity(capacity)
        .max_msg_len(max_msg_len)
        .dir(dir)
        .create_new();
    match opts.open(name.bytes()) {
        Ok(mq) => {
            if ctx.verbose {
                let attr = mq.attributes().map_err(|e| ctx.queue_error(&name, &e))?;
                ctx.note(
                    &name,
                    format_args!(
                        "created: {} messages of up to {} bytes, file {}",
                        attr.capacity,
                        attr.max_msg_len,
                        mq.path().display()
                    ),
                );
            }
            Ok(Exit::Success)
        }
        Err(e) if errno_of(&e) == Some(Errno::EEXIST) && !a.exclusive => {
            // Like mq_open(O_CREAT): an existing queue is fine as it is.
            let mq = shmq::OpenOptions::readonly()
                .dir(dir)
                .open(name.bytes())
                .map_err(|e| ctx.queue_error(&name, &e))?;
            let attr = mq.attributes().map_err(|e| ctx.queue_error(&name, &e))?;
            let differs = a.capacity.is_some_and(|c| c as usize != attr.capacity)
                || a.max_msg_len
                    .is_some_and(|m| m as usize != attr.max_msg_len);
            if differs {
                eprintln!(
                    "mqtool: {name}: exists already with capacity {} and max-msg-len {}; left as it is",
                    attr.capacity, attr.max_msg_len
                );
            } else {
                ctx.note(&name, format_args!("exists already"));
            }
            Ok(Exit::Success)
        }
        Err(e) => Err(match errno_of(&e) {
            Some(Errno::EOVERFLOW) => Failure::new(
                name.to_string(),
                format!(
                    "capacity {capacity} x max-msg-len {max_msg_len} needs a queue file over \
                     the largest file size, 8 EiB (EOVERFLOW)"
                ),
            ),
            Some(Errno::ENOSPC) => Failure::new(
                name.to_string(),
                format!(
                    "no room for a queue of {capacity} x {max_msg_len} bytes in {} (ENOSPC)",
                    dir.display()
                ),
            ),
            _ => ctx.queue_error(&name, &e),
        }),
    }
}
