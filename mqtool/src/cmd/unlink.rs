//! `mqtool unlink`: `mq_unlink` for each name.

use super::{Ctx, queue_name};
use crate::cli::UnlinkArgs;
use crate::exit::{Exit, Failure, Outcome, errno_of};
use nix::errno::Errno;

pub fn run(ctx: &Ctx, a: &UnlinkArgs) -> Outcome {
    let dir = ctx.dir()?;
    let mut status = Exit::Success;
    for arg in &a.names {
        let r = queue_name(arg).and_then(|name| {
            // The queue directory may be shared with other files (--dir):
            // never remove one that is not a queue.
            match shmq::inspect::Inspector::open(name.bytes(), Some(dir)) {
                Err(e @ shmq::Error::NotAQueue(_)) => {
                    return Err(Failure::new(name.to_string(), format!("{e}; not removed")));
                }
                Err(shmq::Error::Os(Errno::ENOENT)) if a.force => return Ok(()),
                _ => {}
            }
            match shmq::remove_queue_in(dir, name.bytes()) {
                Ok(()) => {
                    ctx.note(&name, format_args!("removed"));
                    Ok(())
                }
                Err(e) if a.force && errno_of(&e) == Some(Errno::ENOENT) => Ok(()),
                Err(e) => Err(ctx.queue_error(&name, &e)),
            }
        });
        if let Err(f) = r {
            // Go on with the other names, as rm does.
            status = status.worst(f.report(ctx.json));
        }
    }
    Ok(status)
}
