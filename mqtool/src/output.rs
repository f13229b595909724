//! What `mqtool` prints: the JSON Lines schema, message printing, and
//! human-readable numbers.
//!
//! # JSON Lines schema (`--json`)
//!
//! Every object is printed on one line and has a `"type"`:
//!
//! - `"message"` ([`MessageJson`], from `recv` and `peek`):
//!   `{"type":"message","queue":"/jobs","priority":7,"len":5,"data":{"text":"hello"}}`
//! - `"queue"` ([`QueueJson`] from `info` and `ls`, or [`QueueErrorJson`]
//!   from `ls` for a queue that cannot be read):
//!   `{"type":"queue","name":"/jobs","name_bytes":"2f6a6f6273","path":"/dev/shm/shmq/jobs","capacity":10,"max_msg_len":8192,"current_messages":2,"pending":0,"pending_holders":[],"mode":"0600","uid":0,"gid":0,"per_priority":[{"priority":7,"count":1},{"priority":3,"count":1}],"blocked_senders":0,"blocked_receivers":0,"in_flight":0,"notify":null,"total_sent":2,"total_received":0,"file_size":86016,"version":"3.0","health":{"status":"ok","repairs":0,"corrupted_slots":0},"lock":{"state":"free","member":null}}`
//!   or `{"type":"queue","name":"/bad","name_bytes":"2f626164","path":"…","error":{"errno":"EBADMSG","message":"…"}}`
//!
//!   Queue names are bytes: `name` is them as UTF-8, with U+FFFD for any
//!   byte that is not, and `name_bytes` is every byte in lowercase hex, to
//!   get the exact name back. Text output escapes names instead (see
//!   [`escape`]).
//! - `"sample"` ([`SampleJson`], from `watch`)
//!
//!   `"health"` has one shape wherever it appears (`info`, `ls`, `watch`):
//!   `{"status":"ok"|"repaired"|"corrupted","repairs":N,"corrupted_slots":N}`.
//! - `"purged"` ([`PurgedJson`], from `purge`)
//! - `"bench"` ([`BenchJson`], from `bench`), then one `"bench-summary"`
//!   ([`BenchSummaryJson`])
//!
//! Payloads ([`Payload`]) follow ripgrep's JSON output: `{"text": STRING}`
//! when the bytes are valid UTF-8, otherwise `{"bytes": BASE64}` (standard
//! alphabet, padded). Fields are never removed within a major version; new
//! fields may appear.

use crate::cli::Format;
use serde::Serialize;
use std::io::{self, Write};
use std::time::Duration;

/// A message payload: `{"text": …}` for UTF-8, else `{"bytes": base64}`.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Payload<'a> {
    /// Valid UTF-8.
    Text {
        /// The payload.
        text: &'a str,
    },
    /// Anything else.
    Bytes {
        /// The payload in base64 (RFC 4648, padded).
        bytes: String,
    },
}

impl<'a> Payload<'a> {
    /// Chooses the representation for `data`.
    pub fn new(data: &'a [u8]) -> Payload<'a> {
        match std::str::from_utf8(data) {
            Ok(text) => Payload::Text { text },
            Err(_) => Payload::Bytes {
                bytes: base64(data),
            },
        }
    }
}

/// One message (`recv`, `peek`).
#[derive(Debug, Serialize)]
pub struct MessageJson<'a> {
    /// Always `"message"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Queue name.
    pub queue: &'a str,
    /// Priority, 0 to 32767.
    pub priority: u32,
    /// Payload length in bytes.
    pub len: usize,
    /// The payload.
    pub data: Payload<'a>,
    /// For a pending message (`peek --pending`): the member number of the
    /// process holding it; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<u32>,
}

/// Messages queued at one priority.
#[derive(Debug, Serialize)]
pub struct PriorityCount {
    /// Priority.
    pub priority: u32,
    /// Messages queued at it.
    pub count: u64,
}

/// The process registered for notification.
#[derive(Debug, Serialize)]
pub struct NotifyJson {
    /// Process id.
    pub pid: i32,
    /// `"none"` (SIGEV_NONE), `"signal"` or `"thread"`.
    pub kind: &'static str,
    /// Signal number, for `"signal"`.
    pub signal: Option<i32>,
}

/// Repair history.
#[derive(Debug, Serialize)]
pub struct HealthJson {
    /// `"ok"`, `"repaired"` (after processes died mid-operation; nothing
    /// lost) or `"corrupted"` (impossible slot contents were found and freed).
    pub status: &'static str,
    /// Number of repairs.
    pub repairs: u32,
    /// Slots freed because their contents were impossible.
    pub corrupted_slots: u32,
}

impl HealthJson {
    /// The one shape of `"health"`, in `info`, `ls` and `watch` alike.
    pub fn new(h: shmq::inspect::Health) -> HealthJson {
        use shmq::inspect::Health;
        let (repairs, corrupted_slots) = match h {
            Health::Ok => (0, 0),
            Health::Repaired { repairs } => (repairs, 0),
            Health::Damaged { repairs, damage } => (repairs, damage),
        };
        HealthJson {
            status: h.as_str(),
            repairs,
            corrupted_slots,
        }
    }
}

/// A queue (`info`, `ls`).
#[derive(Debug, Serialize)]
pub struct QueueJson {
    /// Always `"queue"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Queue name, `/…`; bytes that are not UTF-8 become U+FFFD.
    pub name: String,
    /// The name's bytes in lowercase hex, exact even when `name` is not.
    pub name_bytes: String,
    /// Path of the queue file (not UTF-8: as `name`).
    pub path: String,
    /// Maximum number of messages (`mq_maxmsg`).
    pub capacity: u64,
    /// Maximum message size in bytes (`mq_msgsize`).
    pub max_msg_len: u64,
    /// Messages queued now (`mq_curmsgs`).
    pub current_messages: u64,
    /// Messages received with acknowledgement and not acknowledged yet:
    /// not counted in `current_messages`, but filling their slots.
    pub pending: u64,
    /// Who holds them, most messages first.
    pub pending_holders: Vec<HolderJson>,
    /// Permission bits in octal, e.g. `"0640"`.
    pub mode: String,
    /// Owner of the queue file.
    pub uid: u32,
    /// Group of the queue file.
    pub gid: u32,
    /// Messages queued per priority, highest priority first; priorities
    /// without messages are left out.
    pub per_priority: Vec<PriorityCount>,
    /// Senders blocked waiting for room (live processes only).
    pub blocked_senders: u32,
    /// Receivers blocked waiting for a message (live processes only).
    pub blocked_receivers: u32,
    /// Messages being copied in or out right now.
    pub in_flight: u32,
    /// The notification registration, or `null`.
    pub notify: Option<NotifyJson>,
    /// Messages sent since the queue was created.
    pub total_sent: u64,
    /// Messages received (or purged) since the queue was created.
    pub total_received: u64,
    /// Size of the queue file in bytes.
    pub file_size: u64,
    /// Layout version of the file, `"MAJOR.MINOR"`.
    pub version: String,
    /// Repair history.
    pub health: HealthJson,
    /// The queue lock when the snapshot was taken.
    pub lock: LockJson,
}

/// A process holding pending messages.
#[derive(Debug, Serialize)]
pub struct HolderJson {
    /// Its member number.
    pub member: u32,
    /// Messages it holds.
    pub messages: u64,
    /// False once it died (its messages go back to the queue when a
    /// receiver next looks).
    pub alive: bool,
}

/// The queue lock, as `info` found it.
#[derive(Debug, Serialize)]
pub struct LockJson {
    /// `"free"` (the snapshot was taken under it), `"busy"` (held for
    /// longer than `info` waits, by a stopped or busy process: the snapshot
    /// was read without it) or `"owner-died"` (the next send or receive
    /// repairs the queue).
    pub state: &'static str,
    /// The holder's member number, `null` when free.
    pub member: Option<u32>,
}

impl LockJson {
    /// Converts the library's lock state.
    pub fn new(l: shmq::inspect::LockState) -> LockJson {
        use shmq::inspect::LockState;
        let (state, member) = match l {
            LockState::Free => ("free", None),
            LockState::Busy { member } => ("busy", Some(member)),
            LockState::OwnerDied { member } => ("owner-died", Some(member)),
        };
        LockJson { state, member }
    }
}

impl QueueJson {
    /// Converts the library's snapshot of the queue named `name` (bytes,
    /// `/…`).
    pub fn new(name: &[u8], i: &shmq::inspect::QueueInfo) -> QueueJson {
        QueueJson {
            kind: "queue",
            name: String::from_utf8_lossy(name).into_owned(),
            name_bytes: hex(name),
            path: i.path.display().to_string(),
            capacity: i.capacity,
            max_msg_len: i.max_msg_len,
            current_messages: i.current_messages,
            pending: i.pending,
            pending_holders: i
                .pending_holders
                .iter()
                .map(|h| HolderJson {
                    member: h.member,
                    messages: h.messages,
                    alive: h.alive,
                })
                .collect(),
            mode: mode_string(i.mode),
            uid: i.uid,
            gid: i.gid,
            per_priority: i
                .per_priority
                .iter()
                .map(|&(priority, count)| PriorityCount { priority, count })
                .collect(),
            blocked_senders: i.blocked_senders,
            blocked_receivers: i.blocked_receivers,
            in_flight: i.in_flight,
            notify: i.notify.map(|n| NotifyJson {
                pid: n.pid,
                kind: n.kind,
                signal: (n.kind == "signal").then_some(n.signo),
            }),
            total_sent: i.total_sent,
            total_received: i.total_received,
            file_size: i.file_size,
            version: format!("{}.{}", i.version.0, i.version.1),
            health: HealthJson::new(i.health),
            lock: LockJson::new(i.lock),
        }
    }
}

/// Why a queue could not be read.
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    /// The errno name, e.g. `"EBADMSG"`.
    pub errno: &'static str,
    /// The error in words.
    pub message: String,
}

/// A queue that `ls` found but could not read (corrupted, another layout
/// version, permission denied).
#[derive(Debug, Serialize)]
pub struct QueueErrorJson {
    /// Always `"queue"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Queue name (as in [`QueueJson`]).
    pub name: String,
    /// The name's bytes in lowercase hex.
    pub name_bytes: String,
    /// Path of the file.
    pub path: String,
    /// What went wrong.
    pub error: ErrorJson,
}

/// One `watch` sample.
#[derive(Debug, Serialize)]
pub struct SampleJson<'a> {
    /// Always `"sample"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Queue name.
    pub queue: &'a str,
    /// Wall-clock time of the sample, seconds since the Unix epoch.
    pub time: f64,
    /// Seconds since the first sample.
    pub elapsed: f64,
    /// Messages queued.
    pub current_messages: u64,
    /// Capacity.
    pub capacity: u64,
    /// Messages sent per second since the previous sample (`null` in the
    /// first sample).
    pub sent_per_sec: Option<f64>,
    /// Messages received per second since the previous sample (`null` in
    /// the first sample).
    pub received_per_sec: Option<f64>,
    /// Blocked senders.
    pub blocked_senders: u32,
    /// Blocked receivers.
    pub blocked_receivers: u32,
    /// Messages received and not acknowledged yet.
    pub pending: u64,
    /// Messages sent since creation.
    pub total_sent: u64,
    /// Messages received since creation.
    pub total_received: u64,
    /// Repair history, as in [`QueueJson`].
    pub health: HealthJson,
}

/// Result of `purge`.
#[derive(Debug, Serialize)]
pub struct PurgedJson<'a> {
    /// Always `"purged"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Queue name.
    pub queue: &'a str,
    /// Messages dropped.
    pub messages: u64,
}

/// One row of `bench`.
#[derive(Debug, Serialize)]
pub struct BenchJson<'a> {
    /// Always `"bench"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Short case id: `"pair"`, `"pingpong"`, `"pingpong-p99"`,
    /// `"pingpong-1cpu"`, `"stream-10"`, `"stream-256"`, `"stream-4kib-10"`,
    /// `"mpsc4-256"`, `"pair-100000-queued"`; process cases
    /// `"proc-stream-10-before"`, `"proc-pingpong-after"`,
    /// `"proc-mpsc4-256-unpinned"` …; C cases `"c-capi-pair"`,
    /// `"c-dropin-stream-256-before"`, `"c-boost-pingpong-1cpu"` …
    pub case: &'a str,
    /// The case in words.
    pub description: &'a str,
    /// `"ns"` (time per operation: lower is better) or `"msg/s"` (higher
    /// is better).
    pub unit: &'static str,
    /// Median for shmq.
    pub shmq: f64,
    /// Median for the kernel's mq; `null` when the kernel could not run the
    /// case (see `note`) or the case is shmq's alone (see `baseline`).
    pub kernel: Option<f64>,
    /// How many times faster shmq is (above 1: shmq wins); `null` without a
    /// kernel figure.
    pub ratio: Option<f64>,
    /// Repetitions per peer.
    pub repetitions: u32,
    /// Queue depth used on the kernel side, when it matters.
    pub kernel_depth: Option<i64>,
    /// A remark, e.g. when the kernel queue could not get the same depth.
    pub note: Option<String>,
    /// Message size in bytes (bytes per second: msg/s times this).
    pub msg_len: usize,
    /// Cases of shmq alone: the same measurement on an empty queue, in the
    /// same run (`shmq / baseline` is the slowdown); else `null`.
    pub baseline: Option<f64>,
    /// The smallest and largest `ratio` (or slowdown, for shmq-alone
    /// cases) over the repetitions, each shmq repetition against the run
    /// next to it; `null` when there is nothing to compare with.
    pub ratio_min: Option<f64>,
    /// See `ratio_min`.
    pub ratio_max: Option<f64>,
    /// Largest over smallest figure among one peer's repetitions (the
    /// wider of the two peers); above 2 the machine was probably busy.
    pub spread: f64,
    /// Context switches (voluntary and involuntary, from `getrusage`) per
    /// message for shmq, median over the repetitions: of the benchmark's
    /// own threads, or of all the processes of a process case; `null` when
    /// not measured.
    pub csw_shmq: Option<f64>,
    /// The same for the kernel's mq.
    pub csw_kernel: Option<f64>,
    /// The lowest and highest of shmq's repetitions (for a run-to-run
    /// stability check: the worst against the median).
    pub shmq_min: Option<f64>,
    /// See `shmq_min`.
    pub shmq_max: Option<f64>,
    /// The lowest and highest of the kernel's (or, for shmq-alone cases,
    /// the baseline's) repetitions.
    pub kernel_min: Option<f64>,
    /// See `kernel_min`.
    pub kernel_max: Option<f64>,
    /// Whose figures the row shows as `shmq`: `"rust"` (the Rust API,
    /// threads), `"rust-processes"`, or for C cases `"c-api"`, `"drop-in"`
    /// or `"boost"` (then `shmq` is Boost.Interprocess's figure).
    pub peer: &'a str,
}

/// The last line of `bench`: the machine and what may have spoiled the run.
#[derive(Debug, Serialize)]
pub struct BenchSummaryJson {
    /// Always `"bench-summary"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// CPUs this process may use.
    pub cpus: usize,
    /// 1-minute load average before the run (`null` if unknown).
    pub loadavg_before: Option<f64>,
    /// 1-minute load average after the run.
    pub loadavg_after: Option<f64>,
    /// Why the figures may not be representative (empty when none).
    pub warnings: Vec<String>,
}

/// Writes `value` as one line of JSON.
pub fn json_line<W: Write, T: Serialize>(w: &mut W, value: &T) -> io::Result<()> {
    serde_json::to_writer(&mut *w, value).map_err(io::Error::from)?;
    w.write_all(b"\n")
}

/// Prints messages for `recv` and `peek`.
pub struct MessagePrinter<'a, W: Write> {
    /// Where to.
    pub out: W,
    /// How.
    pub format: Format,
    /// Prefix text and hex lines with `PRIORITY\t`.
    pub priority: bool,
    /// Queue name for JSON.
    pub queue: &'a str,
    /// The holder of the next message printed, when it is pending (JSON
    /// only).
    pub holder: Option<u32>,
}

impl<W: Write> MessagePrinter<'_, W> {
    /// Prints one message.
    pub fn print(&mut self, priority: u32, data: &[u8]) -> io::Result<()> {
        if matches!(self.format, Format::Text | Format::Hex) && self.priority {
            write!(self.out, "{priority}\t")?;
        }
        match self.format {
            Format::Text => {
                self.out.write_all(data)?;
                self.out.write_all(b"\n")
            }
            Format::Raw => self.out.write_all(data),
            Format::Hex => {
                self.out.write_all(hex(data).as_bytes())?;
                self.out.write_all(b"\n")
            }
            Format::Json => json_line(
                &mut self.out,
                &MessageJson {
                    kind: "message",
                    queue: self.queue,
                    priority,
                    len: data.len(),
                    data: Payload::new(data),
                    holder: self.holder,
                },
            ),
        }
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `bytes` made safe to print on a terminal, one line, reversibly:
/// control characters become `\n`, `\t`, `\r`, `\e` or `\xHH`, bytes
/// that are not UTF-8 `\xHH`, and `\` itself `\\`; everything else is
/// left as it is.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                '\r' => s.push_str("\\r"),
                '\x1b' => s.push_str("\\e"),
                c if c.is_control() => {
                    let mut buf = [0; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        s.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => s.push(c),
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Checks that `--format raw` is asked for one message (`count`), without
/// `--priority`: raw payloads have no framing.
pub fn check_raw(
    format: Format,
    count: Option<u64>,
    all: bool,
    priority: bool,
) -> Result<(), crate::exit::Failure> {
    if format != Format::Raw {
        return Ok(());
    }
    if all || count.is_some_and(|n| n != 1) {
        return Err(crate::exit::Failure::plain(
            "--format raw prints exactly one message, byte for byte: ask for one with \
             --count 1; for several, use --format hex or --json",
        ));
    }
    if priority {
        return Err(crate::exit::Failure::plain(
            "--format raw prints the payload alone: --priority cannot be added (use --json)",
        ));
    }
    Ok(())
}

/// Lowercase hex.
pub fn hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// `0640`.
pub fn mode_string(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// `512 B`, `84 KiB`, `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

/// A time in nanoseconds with three significant digits: `31.2 ns`,
/// `1.09 µs`, `66.0 µs`, `1.20 ms`.
pub fn nanos(ns: f64) -> String {
    let (v, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{} {unit}", sig3(v))
}

/// A rate with three significant digits: `512 msg/s`, `1.29 M msg/s`.
pub fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{} M msg/s", sig3(per_sec / 1e6))
    } else if per_sec >= 1e3 {
        format!("{} k msg/s", sig3(per_sec / 1e3))
    } else {
        format!("{} msg/s", sig3(per_sec))
    }
}

/// Three significant digits (at least the integer part).
pub fn sig3(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `2s`, `100ms`, `1.5s`.
pub fn duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 {
            format!("{s:.0}s")
        } else {
            format!("{}s", format!("{s:.3}").trim_end_matches('0'))
        }
    } else if d >= Duration::from_millis(1) && d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_nanos() % 1000 == 0 {
        format!("{}us", d.as_micros())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// Prints rows as aligned columns separated by two spaces; the last column
/// is not padded. Columns whose header starts with `>` are right-aligned.
pub fn table<W: Write>(w: &mut W, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let cols = header.len();
    let mut width: Vec<usize> = header
        .iter()
        .map(|h| h.trim_start_matches('>').chars().count())
        .collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |w: &mut W, cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            let right = header[i].starts_with('>');
            let pad = width[i].saturating_sub(cell.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right {
                s.extend(std::iter::repeat_n(' ', pad));
            }
            s.push_str(cell);
            if !right && i + 1 < cols {
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(w, "{}", s.trim_end())
    };
    line(w, &mut header.iter().map(|h| h.trim_start_matches('>')))?;
    for row in rows {
        line(w, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input), want);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn payloads_follow_ripgrep() {
        let j = serde_json::to_string(&Payload::new(b"h\xc3\xa9")).unwrap();
        assert_eq!(j, r#"{"text":"hé"}"#);
        let j = serde_json::to_string(&Payload::new(b"\xff\x00")).unwrap();
        assert_eq!(j, r#"{"bytes":"/wA="}"#);
    }

    #[test]
    fn message_lines() {
        let mut p = MessagePrinter {
            out: Vec::new(),
            format: Format::Text,
            priority: true,
            queue: "/q",
            holder: None,
        };
        p.print(7, b"hi").unwrap();
        p.format = Format::Hex;
        p.print(0, b"\x01\xab").unwrap();
        p.format = Format::Json;
        p.print(3, b"x\ny").unwrap();
        let s = String::from_utf8(p.out).unwrap();
        assert_eq!(
            s,
            "7\thi\n0\t01ab\n{\"type\":\"message\",\"queue\":\"/q\",\"priority\":3,\"len\":3,\"data\":{\"text\":\"x\\ny\"}}\n"
        );
    }

    #[test]
    fn escapes_control_and_invalid_bytes() {
        assert_eq!(escape(b"/jobs-\xc3\xa9"), "/jobs-\u{e9}");
        assert_eq!(escape(b"/a\nb\tc\x1b[31m\x7f"), "/a\\nb\\tc\\e[31m\\x7f");
        assert_eq!(escape(b"/\xff\\"), "/\\xff\\\\");
        assert_eq!(escape("/\u{85}".as_bytes()), "/\\xc2\\x85");
    }

    #[test]
    fn human_numbers() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(86016), "84 KiB");
        assert_eq!(bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(nanos(31.24), "31.2 ns");
        assert_eq!(nanos(1089.0), "1.09 µs");
        assert_eq!(nanos(66_000.0), "66.0 µs");
        assert_eq!(rate(1_290_000.0), "1.29 M msg/s");
        assert_eq!(rate(512.0), "512 msg/s");
        assert_eq!(duration(Duration::from_secs(2)), "2s");
        assert_eq!(duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration(Duration::from_millis(100)), "100ms");
        assert_eq!(mode_string(0o640), "0640");
    }

    #[test]
    fn aligned_table() {
        let mut out = Vec::new();
        let rows = vec![vec!["/a".to_string(), "1".to_string(), "x".to_string()]];
        table(&mut out, &["NAME", ">DEPTH", "NOTE"], &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME  DEPTH  NOTE\n/a        1  x\n"
        );
    }
}
