//! `mqtool peek`: the queued messages in delivery order, left in place.

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
    let messages = ctx
        .inspector(&name)?
        .peek(a.count.map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
        .map_err(|e| ctx.inspect_error(&name, e))?;
    let queue = name.lossy();
    let format = output_format(ctx, a.format)?;
    let mut out = MessagePrinter {
        out: BufWriter::new(io::stdout().lock()),
        format,
        priority: a.priority,
        queue: &queue,
    };
    for m in &messages {
        out.print(m.priority, &m.data)?;
    }
    out.flush()?;
    Ok(Exit::Success)
}
