//! `mqtool ls`: every queue in the queue directory.

use super::Ctx;
use super::info::user_name;
use crate::cli::LsArgs;
use crate::exit::{Exit, Failure, Outcome};
use crate::output::{self, ErrorJson, QueueErrorJson, QueueJson, json_line};
use shmq::inspect::Health;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;

pub fn run(ctx: &Ctx, _a: &LsArgs) -> Outcome {
    let dir = ctx.dir()?;
    let entries = shmq::inspect::list(Some(dir)).map_err(|e| match e {
        // Names the directory itself.
        shmq::Error::Dir { .. } => Failure::plain(e.to_string()),
        e => Failure::new(dir.display().to_string(), e.to_string()),
    })?;
    let mut out = BufWriter::new(io::stdout().lock());
    if ctx.json {
        for e in &entries {
            match &e.info {
                Ok(info) => json_line(&mut out, &QueueJson::new(&e.name_bytes, info))?,
                Err(err) => json_line(
                    &mut out,
                    &QueueErrorJson {
                        kind: "queue",
                        name: e.name.clone(),
                        name_bytes: output::hex(&e.name_bytes),
                        path: dir
                            .join(OsStr::from_bytes(&e.name_bytes[1..]))
                            .display()
                            .to_string(),
                        error: ErrorJson {
                            errno: err.errno_name(),
                            message: err.to_string(),
                        },
                    },
                )?,
            }
        }
    } else if !entries.is_empty() {
        let mut users = HashMap::new();
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| match &e.info {
                Ok(i) => vec![
                    output::escape(&e.name_bytes),
                    i.current_messages.to_string(),
                    i.capacity.to_string(),
                    i.max_msg_len.to_string(),
                    output::mode_string(i.mode),
                    users
                        .entry(i.uid)
                        .or_insert_with(|| user_name(i.uid))
                        .clone(),
                    match i.health {
                        Health::Ok => "ok".into(),
                        Health::Repaired { repairs } => format!("repaired x{repairs}"),
                        Health::Damaged { damage, .. } => {
                            format!("damaged ({damage} found)")
                        }
                    },
                ],
                Err(err) => {
                    let dash = || "-".to_string();
                    vec![
                        output::escape(&e.name_bytes),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                        dash(),
                        format!("error: {err}"),
                    ]
                }
            })
            .collect();
        output::table(
            &mut out,
            &[
                "NAME",
                ">DEPTH",
                ">CAPACITY",
                ">MSGSIZE",
                "MODE",
                "OWNER",
                "STATUS",
            ],
            &rows,
        )?;
    }
    out.flush()?;
    Ok(Exit::Success)
}
