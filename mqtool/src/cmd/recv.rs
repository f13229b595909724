//! `mqtool recv`: `mq_receive` / `mq_timedreceive`.

use super::{Ctx, output_format, queue_name};
use crate::cli::{Format, RecvArgs};
use crate::exit::{Exit, Outcome, errno_of};
use crate::output::{self, MessagePrinter};
use nix::errno::Errno;
use std::io::{self, BufWriter};

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
    let mut out = MessagePrinter {
        out: BufWriter::new(io::stdout().lock()),
        format,
        priority: a.priority,
        queue: &queue,
    };
    let mut got = 0;
    while got < want {
        let r = match a.wait.timeout {
            Some(t) => mq.recv_timeout(&mut buf, t),
            None => mq.recv(&mut buf),
        };
        match r {
            Ok((priority, len)) => {
                got += 1;
                out.print(priority, &buf[..len])?;
                if !nonblock {
                    // The next receive may wait: show this message now.
                    out.flush()?;
                }
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
                _ => {
                    out.flush()?;
                    return Err(ctx.queue_error(&name, &e));
                }
            },
        }
    }
    out.flush()?;
    if got == want || (a.all && got > 0) {
        Ok(Exit::Success)
    } else {
        Ok(Exit::Nothing)
    }
}
