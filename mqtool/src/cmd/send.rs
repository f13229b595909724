//! `mqtool send`: `mq_send` / `mq_timedsend`.

use super::{Ctx, QueueName, io_message, queue_name};
use crate::cli::SendArgs;
use crate::exit::{Exit, Failure, Outcome, errno_of};
use crate::output;
use nix::errno::Errno;
use std::io::{self, BufRead, Read};

/// The highest priority (`MQ_PRIO_MAX - 1` on Linux).
pub const MAX_PRIORITY: u32 = 32767;

pub fn run(ctx: &Ctx, a: &SendArgs) -> Outcome {
    let name = queue_name(&a.name)?;
    let Some(priority) = u32::try_from(a.priority)
        .ok()
        .filter(|&p| p <= MAX_PRIORITY)
    else {
        return Err(Failure::new(
            name.to_string(),
            format!(
                "priority {} is out of range: 0 to {MAX_PRIORITY} (EINVAL)",
                a.priority
            ),
        ));
    };
    let mut opts = shmq::OpenOptions::writeonly();
    opts.existing().dir(ctx.dir()?);
    if a.wait.nonblock {
        opts.nonblocking();
    }
    let mq = opts
        .open(name.bytes())
        .map_err(|e| ctx.queue_error(&name, &e))?;
    let max_msg_len = mq
        .attributes()
        .map_err(|e| ctx.queue_error(&name, &e))?
        .max_msg_len;
    let mut s = Sender {
        ctx,
        a,
        name: &name,
        mq: &mq,
        max_msg_len,
        priority,
        sent: 0,
    };

    let stdin_lines =
        a.file.is_none() && !a.whole && (a.messages.is_empty() || a.messages == ["-"]);
    if let Some(path) = &a.file {
        let data = std::fs::read(path)
            .map_err(|e| Failure::new(path.display().to_string(), io_message(&e)))?;
        s.send(&data, None)?;
    } else if a.whole {
        let mut data = Vec::new();
        io::stdin()
            .lock()
            .read_to_end(&mut data)
            .map_err(|e| Failure::new("standard input", io_message(&e)))?;
        if data.is_empty() {
            return Err(no_input());
        }
        s.send(&data, None)?;
    } else if stdin_lines {
        // Each line is sent as soon as it is read, so `tail -f | mqtool send` streams.
        let mut input = io::stdin().lock();
        let mut line = Vec::new();
        for number in 1.. {
            line.clear();
            let n = input
                .read_until(b'\n', &mut line)
                .map_err(|e| Failure::new("standard input", io_message(&e)))?;
            if n == 0 {
                if number == 1 {
                    return Err(no_input());
                }
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            s.send(&line, Some(number))?;
        }
    } else {
        for msg in &a.messages {
            s.send(
                std::os::unix::ffi::OsStrExt::as_bytes(msg.as_os_str()),
                None,
            )?;
        }
    }
    let sent = s.sent;
    ctx.note(
        &name,
        format_args!("sent {sent} message{}", if sent == 1 { "" } else { "s" }),
    );
    Ok(Exit::Success)
}

/// Standard input ended before a single byte: nothing is sent. An empty
/// message has to be asked for, as an empty argument.
fn no_input() -> Failure {
    Failure::new(
        "standard input",
        "no message on standard input, nothing sent (to send an empty message: mqtool send QUEUE '')",
    )
}

struct Sender<'a> {
    ctx: &'a Ctx,
    a: &'a SendArgs,
    name: &'a QueueName,
    mq: &'a shmq::PosixMq,
    max_msg_len: usize,
    priority: u32,
    sent: u64,
}

impl Sender<'_> {
    /// Sends one message; `line` is its line number on standard input.
    fn send(&mut self, msg: &[u8], line: Option<u64>) -> Result<(), Failure> {
        let p = self.priority;
        let r = match self.a.wait.timeout {
            Some(t) => self.mq.send_timeout(p, msg, t),
            None => self.mq.send(p, msg),
        };
        let e = match r {
            Ok(()) => {
                self.sent += 1;
                return Ok(());
            }
            Err(e) => e,
        };
        let at = line.map(|n| format!("line {n}: ")).unwrap_or_default();
        let after = match self.sent {
            0 => String::new(),
            1 => ", after 1 message was sent".to_string(),
            n => format!(", after {n} messages were sent"),
        };
        let name = self.name.to_string();
        Err(match errno_of(&e) {
            Some(Errno::EAGAIN) => Failure::new(name, format!("{at}queue is full{after} (EAGAIN)"))
                .with_status(Exit::Nothing),
            Some(Errno::ETIMEDOUT) => Failure::new(
                name,
                format!(
                    "{at}queue still full after {}{after} (ETIMEDOUT)",
                    output::duration(self.a.wait.timeout.unwrap_or_default())
                ),
            )
            .with_status(Exit::Nothing),
            Some(Errno::EMSGSIZE) => Failure::new(
                name,
                format!(
                    "{at}message of {} bytes is longer than the queue allows ({} bytes){after} (EMSGSIZE)",
                    msg.len(),
                    self.max_msg_len
                ),
            ),
            _ => self.ctx.queue_error(self.name, &e),
        })
    }
}
