//! `mqtool peek`: the queued messages in delivery order, left in place;
//! with `--pending`, the messages received and not acknowledged yet.

use super::{Ctx, output_format, queue_name};
use crate::cli::{Format, PeekArgs};
use crate::exit::{Exit, Outcome};
use crate::output::MessagePrinter;
use std::io::{self, BufWriter};

pub fn run(ctx: &Ctx, a: &PeekArgs) -> Outcome {
    let name = queue_name(&a.name)?;
    crate::output::check_raw(
        a.format.unwrap_or(Format::Text),
        a.count.or(Some(0)),
        false,
        a.priority,
    )?;
    let limit = a.count.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let ins = ctx.inspector(&name)?;
    let messages: Vec<(u32, Vec<u8>, Option<u32>)> = if a.pending {
        ins.peek_pending(limit)
            .map_err(|e| ctx.inspect_error(&name, e))?
            .into_iter()
            .map(|m| (m.priority, m.data, Some(m.member)))
            .collect()
    } else {
        ins.peek(limit)
            .map_err(|e| ctx.inspect_error(&name, e))?
            .into_iter()
            .map(|m| (m.priority, m.data, None))
            .collect()
    };
    let queue = name.lossy();
    let format = output_format(ctx, a.format)?;
    let mut out = MessagePrinter {
        out: BufWriter::new(io::stdout().lock()),
        format,
        priority: a.priority,
        queue: &queue,
        holder: None,
    };
    for (priority, data, holder) in &messages {
        out.holder = *holder;
        out.print(*priority, data)?;
    }
    out.flush()?;
    Ok(Exit::Success)
}
