//! `mqtool watch`: depth, rates and waiters, sampled every interval.
//!
//! On a terminal a small block is redrawn in place (cursor up, clear to end
//! of line); otherwise, or with `--json`, one line per sample.

use super::{Ctx, queue_name};
use crate::cli::WatchArgs;
use crate::exit::{Exit, Outcome};
use crate::output::{self, SampleJson, json_line};
use shmq::inspect::QueueInfo;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime};

/// Width of the depth bar on a terminal.
const BAR: usize = 30;

pub fn run(ctx: &Ctx, a: &WatchArgs) -> Outcome {
    let name = queue_name(&a.name)?;
    let inspector = ctx.inspector(&name)?;
    let queue = name.lossy();
    let mut out = io::stdout().lock();
    let mode = if ctx.json {
        Mode::Json
    } else if out.is_terminal() {
        Mode::Terminal { lines: 0 }
    } else {
        Mode::Lines
    };
    let mut mode = mode;
    let start = Instant::now();
    let mut prev: Option<(Instant, u64, u64)> = None;
    let mut samples = 0u64;
    loop {
        let info = inspector.info().map_err(|e| ctx.inspect_error(&name, e))?;
        let now = Instant::now();
        let rates = prev.map(|(t, sent, received)| {
            let dt = now.duration_since(t).as_secs_f64().max(1e-9);
            (
                info.total_sent.saturating_sub(sent) as f64 / dt,
                info.total_received.saturating_sub(received) as f64 / dt,
            )
        });
        let s = Sample {
            queue: &queue,
            info: &info,
            elapsed: now.duration_since(start),
            rates,
        };
        match &mut mode {
            Mode::Json => json_line(&mut out, &s.json())?,
            Mode::Lines => {
                if samples == 0 {
                    writeln!(out, "{}", Sample::HEADER)?;
                }
                writeln!(out, "{}", s.line())?;
            }
            Mode::Terminal { lines } => {
                let block = s.block(a.interval);
                if *lines > 0 {
                    // Back to the top of the previous block.
                    write!(out, "\x1b[{lines}A\r")?;
                }
                for l in &block {
                    writeln!(out, "{l}\x1b[K")?;
                }
                *lines = block.len();
            }
        }
        out.flush()?;
        prev = Some((now, info.total_sent, info.total_received));
        samples += 1;
        if a.count.is_some_and(|c| samples >= c) {
            return Ok(Exit::Success);
        }
        // Keep to the schedule; if a sample ran late, skip missed ticks.
        let elapsed = start.elapsed();
        let interval = a.interval.as_nanos();
        let ticks = (elapsed.as_nanos() / interval + 1).max(u128::from(samples));
        let next = Duration::from_nanos(u64::try_from(ticks * interval).unwrap_or(u64::MAX));
        std::thread::sleep(next.saturating_sub(elapsed));
    }
}

enum Mode {
    Json,
    Lines,
    Terminal { lines: usize },
}

struct Sample<'a> {
    queue: &'a str,
    info: &'a QueueInfo,
    elapsed: Duration,
    /// Sent and received per second since the last sample.
    rates: Option<(f64, f64)>,
}

impl Sample<'_> {
    const HEADER: &'static str =
        "   ELAPSED     DEPTH  CAPACITY      SENT/S  RECEIVED/S   SENDERS  RECEIVERS   PENDING";

    fn line(&self) -> String {
        let i = self.info;
        let (s, r) = match self.rates {
            Some((s, r)) => (format!("{s:.1}"), format!("{r:.1}")),
            None => ("-".into(), "-".into()),
        };
        format!(
            "{:>10.3}{:>10}{:>10}{:>12}{:>12}{:>10}{:>11}{:>10}",
            self.elapsed.as_secs_f64(),
            i.current_messages,
            i.capacity,
            s,
            r,
            i.blocked_senders,
            i.blocked_receivers,
            i.pending
        )
    }

    fn block(&self, interval: Duration) -> Vec<String> {
        let i = self.info;
        let filled = if i.capacity == 0 {
            0
        } else {
            ((i.current_messages as f64 / i.capacity as f64) * BAR as f64).round() as usize
        }
        .min(BAR);
        let pct = if i.capacity == 0 {
            0.0
        } else {
            100.0 * i.current_messages as f64 / i.capacity as f64
        };
        let (s, r) = match self.rates {
            Some((s, r)) => (output::rate(s), output::rate(r)),
            None => ("-".into(), "-".into()),
        };
        let plural = |n: u32, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        vec![
            format!(
                "{}   every {}, {:.0}s elapsed   (Ctrl-C to stop)",
                self.queue,
                output::duration(interval),
                self.elapsed.as_secs_f64()
            ),
            format!(
                "depth     {:>6} / {:<6} [{}{}] {pct:3.0}%",
                i.current_messages,
                i.capacity,
                "#".repeat(filled),
                ".".repeat(BAR - filled)
            ),
            format!("sent      {s:>16}   total {}", i.total_sent),
            format!("received  {r:>16}   total {}", i.total_received),
            format!(
                "blocked   {}, {}",
                plural(i.blocked_senders, "sender"),
                plural(i.blocked_receivers, "receiver")
            ),
            format!(
                "pending   {} (received, not acknowledged){}",
                i.pending,
                holders(i)
            ),
            format!("health    {}", i.health.as_str()),
        ]
    }

    fn json(&self) -> SampleJson<'_> {
        let i = self.info;
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        SampleJson {
            kind: "sample",
            queue: self.queue,
            time,
            elapsed: self.elapsed.as_secs_f64(),
            current_messages: i.current_messages,
            capacity: i.capacity,
            sent_per_sec: self.rates.map(|r| r.0),
            received_per_sec: self.rates.map(|r| r.1),
            blocked_senders: i.blocked_senders,
            blocked_receivers: i.blocked_receivers,
            pending: i.pending,
            total_sent: i.total_sent,
            total_received: i.total_received,
            health: crate::output::HealthJson::new(i.health),
        }
    }
}

/// `", held by member 3 (2), member 5 (1)"`, or nothing.
fn holders(i: &shmq::inspect::QueueInfo) -> String {
    if i.pending_holders.is_empty() {
        return String::new();
    }
    let who: Vec<String> = i
        .pending_holders
        .iter()
        .map(|h| {
            let dead = if h.alive { "" } else { ", dead" };
            format!("member {} ({}{dead})", h.member, h.messages)
        })
        .collect();
    format!(", held by {}", who.join(", "))
}
