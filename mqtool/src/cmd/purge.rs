//! `mqtool purge`: drop every queued message.

use super::{Ctx, queue_name};
use crate::cli::PurgeArgs;
use crate::exit::{Exit, Outcome};
use crate::output::{PurgedJson, json_line};
use std::io::{self, Write};

pub fn run(ctx: &Ctx, a: &PurgeArgs) -> Outcome {
    let name = queue_name(&a.name)?;
    let n = ctx
        .inspector(&name)?
        .purge()
        .map_err(|e| ctx.inspect_error(&name, e))?;
    if ctx.json {
        let mut out = io::stdout().lock();
        json_line(
            &mut out,
            &PurgedJson {
                kind: "purged",
                queue: &name.lossy(),
                messages: n,
            },
        )?;
        out.flush()?;
    }
    ctx.note(
        &name,
        format_args!("purged {n} message{}", if n == 1 { "" } else { "s" }),
    );
    Ok(Exit::Success)
}
