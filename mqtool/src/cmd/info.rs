//! `mqtool info`: everything the inspection API knows about one queue.

use super::{Ctx, queue_name};
use crate::cli::InfoArgs;
use crate::exit::{Exit, Outcome};
use crate::output::{self, QueueJson, json_line};
use shmq::inspect::{Health, LockState, QueueInfo};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;

pub fn run(ctx: &Ctx, a: &InfoArgs) -> Outcome {
    let name = queue_name(&a.name)?;
    let info = ctx
        .inspector(&name)?
        .info()
        .map_err(|e| ctx.inspect_error(&name, e))?;
    let mut out = io::stdout().lock();
    if ctx.json {
        json_line(&mut out, &QueueJson::new(name.bytes(), &info))?;
    } else {
        out.write_all(human(name.bytes(), &info).as_bytes())?;
    }
    out.flush()?;
    Ok(Exit::Success)
}

/// The `key: value` block.
fn human(name: &[u8], i: &QueueInfo) -> String {
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let by_priority = if i.per_priority.is_empty() {
        "-".to_string()
    } else {
        i.per_priority
            .iter()
            .map(|(p, n)| format!("{p}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let notify = match i.notify {
        None => "none".to_string(),
        Some(n) if n.kind == "signal" => format!("pid {} (signal {})", n.pid, n.signo),
        Some(n) => format!("pid {} ({})", n.pid, n.kind),
    };
    let health = match i.health {
        Health::Ok => "ok".to_string(),
        Health::Repaired { repairs } => {
            format!(
                "repaired ({} after processes died mid-operation; no completed send lost)",
                plural(repairs.into(), "time", "times")
            )
        }
        Health::Damaged { repairs, damage } => format!(
            "damaged ({} with contents no crash explains, written by something other \
             than shmq; messages may have been lost; {})",
            plural(damage.into(), "slot or link", "slots or links"),
            plural(repairs.into(), "repair", "repairs")
        ),
    };
    let lock = match i.lock {
        LockState::Free => "free".to_string(),
        LockState::Busy { member } => format!(
            "busy (held by member {member} longer than info waits: \
             a stopped or busy process; the figures above were read without it)"
        ),
        LockState::OwnerDied { member } => {
            format!("owner died (member {member}; the next send or receive repairs the queue)")
        }
    };
    let mut pending = i.pending.to_string();
    if !i.pending_holders.is_empty() {
        let who: Vec<String> = i
            .pending_holders
            .iter()
            .map(|h| {
                format!(
                    "member {}: {}{}",
                    h.member,
                    h.messages,
                    if h.alive { "" } else { ", dead: going back" }
                )
            })
            .collect();
        pending = format!("{pending} (received, not acknowledged; {})", who.join("; "));
    }
    let (major, minor) = shmq::inspect::layout_version();
    let rows = [
        ("name", output::escape(name)),
        ("path", output::escape(i.path.as_os_str().as_bytes())),
        (
            "messages",
            format!(
                "{} of {} (up to {} bytes each)",
                i.current_messages, i.capacity, i.max_msg_len
            ),
        ),
        ("by priority", by_priority),
        (
            "blocked",
            format!(
                "{}, {}",
                plural(i.blocked_senders.into(), "sender", "senders"),
                plural(i.blocked_receivers.into(), "receiver", "receivers")
            ),
        ),
        ("in flight", i.in_flight.to_string()),
        ("pending", pending),
        ("notify", notify),
        ("sent", i.total_sent.to_string()),
        ("received", i.total_received.to_string()),
        (
            "mode",
            format!(
                "{} owner {} group {}",
                output::mode_string(i.mode),
                user_name(i.uid),
                group_name(i.gid)
            ),
        ),
        (
            "file size",
            format!("{} ({} bytes)", output::bytes(i.file_size), i.file_size),
        ),
        (
            "layout",
            format!(
                "{}.{} (this mqtool: {major}.{minor})",
                i.version.0, i.version.1
            ),
        ),
        ("health", health),
        ("lock", lock),
    ];
    rows.iter()
        .map(|(k, v)| format!("{:<12} {v}\n", format!("{k}:")))
        .collect()
}

/// The user name for `uid`, else the number.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// The group name for `gid`, else the number.
pub fn group_name(gid: u32) -> String {
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}
