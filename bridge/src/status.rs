//! Progress and health: counters each bridge keeps, and the reporter that
//! turns them into rates, log lines and the status file.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

/// The counters of one bridged queue.
#[derive(Debug, Default)]
pub struct Stats {
    /// `out LOCAL -> REMOTE` or `in REMOTE -> LOCAL`.
    pub name: String,
    /// Messages carried: confirmed by the broker and acknowledged locally
    /// (`out`), or sent locally and acknowledged to the broker (`in`).
    pub messages: AtomicU64,
    /// Their bytes.
    pub bytes: AtomicU64,
    /// Messages taken and not yet settled: published and not confirmed
    /// (`out`), delivered and not yet acknowledged (`in`).
    pub in_flight: AtomicU64,
    /// Connections lost (or never made) and tried again.
    pub reconnects: AtomicU64,
    /// Deliveries the broker marked as redelivered (`in`).
    pub redelivered: AtomicU64,
    /// Deliveries rejected because they can never fit the local queue (`in`).
    pub rejected: AtomicU64,
    /// Whether the bridge is connected to the broker now.
    pub connected: AtomicBool,
    /// The last error, credentials removed.
    pub last_error: Mutex<Option<String>>,
}

impl Stats {
    /// Counters for the bridge `name`.
    pub fn new(name: String) -> Self {
        Stats {
            name,
            ..Stats::default()
        }
    }

    /// Notes an error.
    pub fn error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// One bridge in the status report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeStatus {
    /// `out LOCAL -> REMOTE` or `in REMOTE -> LOCAL`.
    pub name: String,
    /// Connected to the broker now.
    pub connected: bool,
    /// Messages carried since start.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Messages per second over the last report interval.
    pub rate: f64,
    /// Taken and not yet settled.
    pub in_flight: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Deliveries marked redelivered by the broker.
    pub redelivered: u64,
    /// Deliveries rejected (too long for the local queue).
    pub rejected: u64,
    /// The last error.
    pub last_error: Option<String>,
}

/// The status report: the status file's content and `--json`'s output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The bridge process.
    pub pid: u32,
    /// Seconds since the Unix epoch of this report.
    pub time: f64,
    /// Seconds since start.
    pub uptime: f64,
    /// One entry a bridged queue.
    pub bridges: Vec<BridgeStatus>,
}

impl Status {
    /// A human-readable rendering, one line a bridge.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for b in &self.bridges {
            s.push_str(&format!(
                "{}: {} msgs {:.0}/s in-flight {} reconnects {} redelivered {} rejected {}{}{}\n",
                b.name,
                b.messages,
                b.rate,
                b.in_flight,
                b.reconnects,
                b.redelivered,
                b.rejected,
                if b.connected { "" } else { " DISCONNECTED" },
                b.last_error
                    .as_ref()
                    .map(|e| format!(" last error: {e}"))
                    .unwrap_or_default(),
            ));
        }
        s
    }
}

/// Makes reports from the counters, with rates since the previous one.
pub struct Reporter<'a> {
    stats: &'a [std::sync::Arc<Stats>],
    start: Instant,
    last: Instant,
    last_counts: Vec<u64>,
}

impl<'a> Reporter<'a> {
    /// A reporter over `stats`.
    pub fn new(stats: &'a [std::sync::Arc<Stats>]) -> Self {
        let now = Instant::now();
        Reporter {
            stats,
            start: now,
            last: now,
            last_counts: vec![0; stats.len()],
        }
    }

    /// The report now.
    pub fn report(&mut self) -> Status {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64().max(1e-3);
        let bridges = self
            .stats
            .iter()
            .zip(&mut self.last_counts)
            .map(|(s, last)| {
                let messages = s.messages.load(Relaxed);
                let rate = (messages - *last) as f64 / dt;
                *last = messages;
                BridgeStatus {
                    name: s.name.clone(),
                    connected: s.connected.load(Relaxed),
                    messages,
                    bytes: s.bytes.load(Relaxed),
                    rate,
                    in_flight: s.in_flight.load(Relaxed),
                    reconnects: s.reconnects.load(Relaxed),
                    redelivered: s.redelivered.load(Relaxed),
                    rejected: s.rejected.load(Relaxed),
                    last_error: s
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                }
            })
            .collect();
        self.last = now;
        Status {
            pid: std::process::id(),
            time: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_secs_f64(),
            uptime: now.duration_since(self.start).as_secs_f64(),
            bridges,
        }
    }
}

/// Writes `status` to `path` atomically (a temporary file renamed over it).
pub fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer_pretty(&mut f, status)?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Removes the credentials from an AMQP URL (`amqp://user:secret@host/`
/// becomes `amqp://user:***@host/`), and from any text that contains it.
pub fn redact(url: &str, text: &str) -> String {
    let mut out = text.to_string();
    if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, pass)) = userinfo.split_once(':')
            && !pass.is_empty()
        {
            out = out.replace(userinfo, &userinfo.replace(pass, "***"));
            out = out.replace(pass, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_password() {
        let u = "amqp://bob:s3cret@127.0.0.1:5672/%2f";
        assert_eq!(redact(u, u), "amqp://bob:***@127.0.0.1:5672/%2f");
        assert_eq!(redact(u, "error: s3cret bad"), "error: *** bad");
        assert_eq!(redact("amqp://h/", "amqp://h/"), "amqp://h/");
    }
}
