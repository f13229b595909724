//! The command line, declared with clap's derive API. Doc comments here are
//! the `--help` text, the man page and the shell completions.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

const AFTER_HELP: &str = "\
Queue names are '/name' as for mq_open(3); the leading '/' may be left out.
Queues live in --dir, else $SHMQ_DIR, else /dev/shm/shmq. The directory
must be an absolute path, not a symbolic link, and no one but root and you
may own it (or, without the sticky bit, write to it) or anything on the
way; create makes a missing one (0700).

Exit status: 0 success; 1 nothing happened (no message arrived, a --timeout
expired, the queue was full); 2 error. The JSON schema: mqtool --help.

Examples:
  mqtool create /jobs --capacity 100 --max-msg-len 256
  printf 'one\\ntwo\\n' | mqtool send /jobs        # two messages
  mqtool send /jobs -p 9 urgent
  mqtool recv /jobs --all -p                     # '9<TAB>urgent', ...
  mqtool info /jobs
  mqtool --json ls | jq .current_messages
  mqtool watch /jobs";

// The parts of the long help, also the man page's sections (cmd::man).
macro_rules! names_text {
    () => {
        "\
Queue names are '/name' as for mq_open(3); the leading '/' may be left out.
Queues live in --dir, else $SHMQ_DIR, else /dev/shm/shmq. The directory
must be an absolute path, not a symbolic link, and no one but root and you
may own it (or, without the sticky bit, write to it) or anything on the
way; create makes a missing one (0700)."
    };
}
macro_rules! exit_status_text {
    () => {
        "\
  0  success
  1  nothing happened: no message arrived (recv --nonblock on an empty
     queue, or --timeout expired), or send found the queue full
  2  error: bad arguments or name, missing queue, permission denied,
     message too long, not a queue ...

A broken pipe on standard output ends quietly with status 0."
    };
}
macro_rules! json_text {
    () => {
        "\
JSON Lines (--json): one object per line, each with a \"type\":
  message  (recv, peek)  queue, priority, len, data
  queue    (info, ls)    name, name_bytes (the name's bytes in hex: exact
                         when name, with U+FFFD for bytes that are not
                         UTF-8, is not), path, capacity, max_msg_len,
                         current_messages,
                         mode (\"0640\"), uid, gid,
                         per_priority [{priority, count}, ...] highest first,
                         blocked_senders, blocked_receivers, in_flight,
                         notify (null or {pid, kind, signal}),
                         total_sent, total_received, file_size,
                         version (\"3.0\"), health {status (ok, repaired,
                         corrupted), repairs, corrupted_slots},
                         lock {state (free, busy, owner-died), member};
                         a queue ls cannot read: name, name_bytes, path,
                         error {errno, message}
  sample   (watch)       queue, time (Unix seconds), elapsed,
                         current_messages, capacity, sent_per_sec,
                         received_per_sec (null in the first sample),
                         blocked_senders, blocked_receivers, total_sent,
                         total_received, health (as in queue)
  purged   (purge)       queue, messages
  bench    (bench)       case, description, unit (ns or msg/s), shmq,
                         kernel, ratio (above 1: shmq is faster),
                         repetitions, kernel_depth, note, msg_len,
                         baseline (kernel and ratio are null when the
                         kernel could not run the case; baseline is the
                         empty-queue figure of the shmq-only cases),
                         ratio_min, ratio_max (over the repetitions),
                         spread (largest / smallest repetition),
                         csw_shmq, csw_kernel (context switches per
                         message), shmq_min, shmq_max, kernel_min,
                         kernel_max (over the repetitions), peer (rust,
                         rust-processes, c-api, drop-in or boost)
  bench-summary (bench, last) cpus, loadavg_before, loadavg_after,
                         warnings [STRING, ...] (a busy machine ...)
  error    (any, on standard error instead of the plain message)
                         subject (queue or file, or null), message, errno
                         (\"ENOENT\" ..., or null), status (the exit status)

Payloads (\"data\") are {\"text\": STRING} when valid UTF-8, else
{\"bytes\": BASE64}, as in ripgrep's JSON output. Text output escapes
control characters and bytes that are not UTF-8 in queue names (\\n, \\e,
\\xff, and \\\\ for a backslash)."
    };
}
macro_rules! examples_text {
    () => {
        "\
  mqtool create /jobs --capacity 100 --max-msg-len 256
  printf 'one\\ntwo\\n' | mqtool send /jobs        # two messages
  mqtool send /jobs -p 9 urgent
  mqtool recv /jobs --all -p                     # '9<TAB>urgent', ...
  mqtool info /jobs
  mqtool --json ls | jq .current_messages
  mqtool watch /jobs"
    };
}

const AFTER_LONG_HELP: &str = concat!(
    names_text!(),
    "\n\nExit status:\n",
    exit_status_text!(),
    "\n\n",
    json_text!(),
    "\n\nExamples:\n",
    examples_text!()
);

/// How queues are named and where they live (man page: QUEUE NAMES).
pub const NAMES_TEXT: &str = names_text!();
/// The exit statuses (man page: EXIT STATUS).
pub const EXIT_STATUS_TEXT: &str = exit_status_text!();
/// The JSON Lines schema (man page: JSON OUTPUT).
pub const JSON_TEXT: &str = json_text!();
/// Examples (man page: EXAMPLES).
pub const EXAMPLES_TEXT: &str = examples_text!();

const JSON_HELP: &str = "\
Print JSON Lines, one object per line (recv, peek, info, ls, watch, purge,
bench). Payloads are {\"text\": STRING} when valid UTF-8, else
{\"bytes\": BASE64}, as in ripgrep's JSON output. Schema: mqtool --help.";

/// Create, use, inspect, watch and benchmark shmq message queues.
///
/// shmq queues are POSIX message queues (mq_overview(7)) that live in shared
/// memory files. mqtool works on them from the shell: quiet on success,
/// errors on standard error naming the queue and the errno.
#[derive(Debug, Parser)]
#[command(
    name = "mqtool",
    version,
    after_help = AFTER_HELP,
    after_long_help = AFTER_LONG_HELP,
    max_term_width = 100
)]
pub struct Cli {
    /// Directory holding the queue files, an absolute path [default: $SHMQ_DIR, else /dev/shm/shmq]
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub dir: Option<PathBuf>,

    /// Print JSON Lines (one object per line) on read commands
    #[arg(long, global = true, long_help = JSON_HELP, help_heading = "Global options")]
    pub json: bool,

    /// Say on standard error what was done (created, sent, purged …)
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    Create(CreateArgs),
    Send(SendArgs),
    Recv(RecvArgs),
    Peek(PeekArgs),
    Info(InfoArgs),
    Ls(LsArgs),
    Unlink(UnlinkArgs),
    Purge(PurgeArgs),
    Watch(WatchArgs),
    Bench(BenchArgs),
    /// One process of a `bench --shape processes` case (internal)
    #[command(name = "bench-peer", hide = true)]
    BenchPeer(BenchPeerArgs),
    Completions(CompletionsArgs),
    Man(ManArgs),
}

/// Create a queue (or check that it exists).
///
/// Without --exclusive an existing queue is left as it is, like
/// mq_open(O_CREAT); mqtool warns if its capacity or message size differ from
/// the ones asked for.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mqtool create /jobs
  mqtool create /jobs --capacity 1000 --max-msg-len 64 --mode 0660 --exclusive")]
pub struct CreateArgs {
    /// Queue name
    pub name: OsString,
    /// Maximum number of messages in the queue, 1 to 4294967294 [default: 10]
    #[arg(short, long, value_name = "N", allow_negative_numbers = true)]
    pub capacity: Option<i64>,
    /// Maximum size of one message in bytes, 1 or more [default: 8192]
    ///
    /// The queue file holds capacity x (max-msg-len + 48, rounded up to 64)
    /// bytes plus a 140 KiB header, and its memory is reserved when it is
    /// created: the room in the queue directory's file system is the
    /// practical limit.
    #[arg(short = 's', long, value_name = "BYTES", allow_negative_numbers = true)]
    pub max_msg_len: Option<i64>,
    /// Permissions in octal, less the umask
    #[arg(short, long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    pub mode: u32,
    /// Fail with EEXIST if the queue exists already
    #[arg(short = 'x', long)]
    pub exclusive: bool,
}

/// Waiting behaviour of send and recv.
#[derive(Debug, Args, Clone, Copy)]
pub struct WaitArgs {
    /// Do not wait: fail at once (exit 1) if the queue is full (send) or empty (recv)
    #[arg(short, long, conflicts_with = "timeout")]
    pub nonblock: bool,
    /// Wait at most this long for room or for a message (e.g. 2s, 100ms, 1m, 1h30m); exit 1 when it expires
    #[arg(short, long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub timeout: Option<Duration>,
}

/// Send messages.
///
/// With MESSAGE arguments each one is a message. Without (or with '-'),
/// every line of standard input is a message, sent as soon as it is read,
/// without its newline; --whole sends all of standard input as one message
/// and --file the bytes of a file. Standard input that ends at once (no
/// byte at all) is an error and sends nothing; an empty message is sent
/// with an empty argument ('').
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mqtool send /jobs hello                  # one message
  mqtool send /jobs -p 5 a b c             # three messages, priority 5
  mqtool send /jobs ''                     # one empty message
  tail -f app.log | mqtool send /logs      # one message per line
  mqtool send /blobs --file image.png      # binary, as is
  mqtool send /jobs --timeout 2s job-42    # exit 1 if still full after 2s")]
pub struct SendArgs {
    /// Queue name
    pub name: OsString,
    /// Messages to send, in order; '-' or none reads standard input
    #[arg(value_name = "MESSAGE")]
    pub messages: Vec<OsString>,
    /// Priority, 0 to 32767; higher priorities are received first
    #[arg(
        short,
        long,
        value_name = "P",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i64,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Send all of standard input as one message
    #[arg(short, long, conflicts_with_all = ["messages", "file"])]
    pub whole: bool,
    /// Send the contents of a file as one message (binary-safe)
    #[arg(short, long, value_name = "PATH", conflicts_with = "messages")]
    pub file: Option<PathBuf>,
}

/// How recv and peek print a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The payload as is, then a newline
    Text,
    /// The payload in lowercase hex, then a newline
    Hex,
    /// One JSON object per line (as --json)
    Json,
    /// The payload byte for byte, nothing added: one message only (--count
    /// 1, the default), so that `mqtool recv /q --format raw > file` gives
    /// back exactly what was sent
    Raw,
}

/// Receive messages: highest priority first, oldest first within a
/// priority.
///
/// Waits for one message unless told otherwise. --all takes every message
/// queued now (with --timeout: until none arrives for that long). Exit 1 if
/// fewer messages than asked for arrived.
///
/// A message leaves the queue only once it has been written to standard
/// output and flushed (it is received pending, then acknowledged). If a
/// write fails, recv stops with exit 2 and an error about standard output;
/// the message being written and every later one stay queued, in order (a
/// reader that went away ends recv quietly, the same way).
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mqtool recv /jobs                        # wait for one message
  mqtool recv /jobs --all -p               # drain, with priorities
  mqtool recv /jobs -c 10 --timeout 5s     # up to 10, each within 5s
  mqtool recv /jobs --nonblock || echo empty
  mqtool recv /blobs --format hex
  mqtool recv /blobs --format raw > image.png   # one message, byte for byte")]
pub struct RecvArgs {
    /// Queue name
    pub name: OsString,
    /// Number of messages to receive [default: 1]
    #[arg(short, long, value_name = "N", conflicts_with = "all", value_parser = parse_count, allow_negative_numbers = true)]
    pub count: Option<u64>,
    /// Receive every queued message, then stop
    #[arg(short, long)]
    pub all: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output format [default: text]; --json is --format json, and the two
    /// cannot be combined
    #[arg(long, value_enum, conflicts_with = "json")]
    pub format: Option<Format>,
    /// Print the priority before each message, then a tab
    #[arg(short, long)]
    pub priority: bool,
}

/// Show queued messages in delivery order without removing them.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mqtool peek /jobs -p
  mqtool peek /jobs --count 1 --format hex")]
pub struct PeekArgs {
    /// Queue name
    pub name: OsString,
    /// Show at most N messages, 1 or more [default: all]
    #[arg(short, long, value_name = "N", value_parser = parse_count, allow_negative_numbers = true)]
    pub count: Option<u64>,
    /// Output format [default: text]; --json is --format json, and the two
    /// cannot be combined
    #[arg(long, value_enum, conflicts_with = "json")]
    pub format: Option<Format>,
    /// Print the priority before each message, then a tab
    #[arg(short, long)]
    pub priority: bool,
    /// Show the pending messages instead: received with acknowledgement
    /// and not acknowledged yet (`mqtool recv` holds each until it has
    /// written it out); with --json, each names its holder's member number
    #[arg(long)]
    pub pending: bool,
}

/// Show a queue's attributes and state.
///
/// Capacity and message size, messages queued per priority, blocked senders
/// and receivers, the process registered for notification, total messages
/// sent and received, the file and its size, the layout version, and health:
/// whether the queue was repaired after a process died in it, or found
/// corrupted.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  mqtool info /jobs\n  mqtool --json info /jobs")]
pub struct InfoArgs {
    /// Queue name
    pub name: OsString,
}

/// List the queues in the queue directory.
///
/// Files that are not queues are left out; queues that cannot be read
/// (corrupted, another layout version, no permission) are listed with the
/// reason.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  mqtool ls\n  mqtool --dir /tmp/q --json ls")]
pub struct LsArgs {}

/// Remove queues.
///
/// Processes that have a removed queue open keep using it; its memory is
/// freed when the last one closes it. A file in the queue directory that is
/// not a queue is never removed.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  mqtool unlink /jobs /logs\n  mqtool unlink -f /maybe")]
pub struct UnlinkArgs {
    /// Queue names
    #[arg(required = true)]
    pub names: Vec<OsString>,
    /// Ignore queues that do not exist
    #[arg(short, long)]
    pub force: bool,
}

/// Drop every message in a queue (blocked senders wake up).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  mqtool purge /jobs\n  mqtool -v purge /jobs     # 'purged 12 messages'"
)]
pub struct PurgeArgs {
    /// Queue name
    pub name: OsString,
}

/// Watch a queue live: depth, send and receive rates, blocked callers.
///
/// On a terminal the view is redrawn in place; otherwise (or with --json)
/// one line is printed per sample. Rates are messages per second over the
/// last interval. Stop with Ctrl-C, or after --count samples.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mqtool watch /jobs
  mqtool watch /jobs --interval 250ms
  mqtool watch /jobs --count 10 | tee jobs.log")]
pub struct WatchArgs {
    /// Queue name
    pub name: OsString,
    /// Time between samples
    #[arg(short, long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval, allow_hyphen_values = true)]
    pub interval: Duration,
    /// Stop after N samples
    #[arg(short, long, value_name = "N", value_parser = parse_count, allow_negative_numbers = true)]
    pub count: Option<u64>,
}

/// Benchmark shmq against the kernel's message queues, side by side.
///
/// Cases: a send+receive pair in one thread (64 B); a ping-pong round trip
/// with the two threads pinned to two CPUs, then both pinned to one CPU
/// (median and 99th percentile; on one CPU also with the shmq queue opened
/// before pinning); streaming from one
/// thread to another, 64 B and 16 B at depth 10 and 256, 4 KiB at depth 10
/// and 256, 64 KiB at depth 10 (with bytes per second); 4 producers to 1
/// consumer, 64 B, depth 256 and 10. Then shmq alone: the pair on a queue
/// holding 100,000 messages and on one with 32,768 distinct priorities in
/// use, against the pair on an empty queue. Peers run interleaved, several
/// repetitions each; the table shows medians and how many times faster shmq
/// is. Progress goes to standard error.
///
/// The kernel allows 10 messages of 8192 bytes per queue unless
/// /proc/sys/fs/mqueue/msg_max and msgsize_max are raised: run as root,
/// mqtool raises them for the creation of a kernel queue and restores them
/// at once (also on error). Otherwise the kernel row uses the depth it can
/// get, or shows "-" when the message size is over the limit; a note says
/// so. RLIMIT_MSGQUEUE can also cap the kernel's depth.
///
/// --shape processes runs separate processes instead (mqtool starts copies
/// of itself): streaming 64 B at depth 10 and 256 and a ping-pong round
/// trip, each with the processes pinned before they open the queue (as
/// under taskset: consumer and ping on the first CPU, producer and echo on
/// the second), pinned after, and unpinned; ping-pong with both pinned to
/// one CPU, before and after opening; 4 producer processes to 1 consumer,
/// 64 B, depth 256, unpinned. With one usable CPU only the unpinned and
/// one-CPU cases run. --shape c runs the C program capi/bench/mqbench (see
/// --c-prog) against the kernel, through libshmq's C API, under the drop-in
/// (--preload) and, when built with Boost, against Boost.Interprocess.
/// Every table also shows context switches per message (getrusage).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  mqtool bench\n  mqtool bench --quick\n  mqtool bench --svg bench.svg\n  mqtool --json bench --reps 9\n  mqtool bench --shape processes --reps 5\n  mqtool bench --full --c-prog capi/bench/build/mqbench-boost \\\n      --preload target/release/libshmq_preload.so"
)]
pub struct BenchArgs {
    /// A short run (about a second), for smoke tests
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of each case and peer [default: 7, --quick: 3]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=99))]
    pub reps: Option<u32>,
    /// Do not show progress on standard error
    #[arg(short, long)]
    pub quiet: bool,
    /// Also draw latency and throughput against message size, shmq beside
    /// the kernel's mq, as an SVG file
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Which cases: threads (the default), processes, c; repeat or separate
    /// with commas
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SHAPE")]
    pub shape: Vec<Shape>,
    /// Every shape: threads, processes, and c when --c-prog is given
    #[arg(long, conflicts_with = "shape")]
    pub full: bool,
    /// The mqbench program (make -C capi/bench) for --shape c
    #[arg(long, value_name = "PROGRAM")]
    pub c_prog: Option<PathBuf>,
    /// libshmq_preload.so, for the drop-in rows of --shape c
    #[arg(long, value_name = "LIBRARY")]
    pub preload: Option<PathBuf>,
}

/// A family of `bench` cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Threads of one process, through the Rust API
    Threads,
    /// Separate processes, through the Rust API, pinned or not
    Processes,
    /// A C program: the kernel, libshmq's C API, the drop-in, Boost
    C,
}

/// What one process of a process case does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerRole {
    /// Receive --iters messages, timed
    Recv,
    /// Send --iters messages
    Send,
    /// Send and wait for the echo, --iters round trips, timed
    Ping,
    /// Echo --iters messages from --queue to --queue2
    Echo,
}

/// One process of a `bench --shape processes` case: it opens its queue(s),
/// pinned to --cpu before or after (--pin-after) if asked, prints "ready",
/// waits for a line on standard input, runs, and prints "result VALUE P99
/// CSW ELAPSED_NS".
#[derive(Debug, Args)]
pub struct BenchPeerArgs {
    /// What this process does
    #[arg(long, value_enum)]
    pub role: PeerRole,
    /// The kernel's queue of that name, not shmq's
    #[arg(long)]
    pub kernel: bool,
    /// The queue
    #[arg(long)]
    pub queue: String,
    /// The queue of the answers (ping, echo)
    #[arg(long)]
    pub queue2: Option<String>,
    /// Pin to this CPU
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Pin after opening the queues, not before
    #[arg(long)]
    pub pin_after: bool,
    /// Messages or round trips
    #[arg(long)]
    pub iters: u64,
    /// Message size
    #[arg(long)]
    pub len: usize,
}

/// Print a shell completion script.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mqtool completions bash > /etc/bash_completion.d/mqtool
  mqtool completions zsh > ~/.zfunc/_mqtool
  mqtool completions fish > ~/.config/fish/completions/mqtool.fish")]
pub struct CompletionsArgs {
    /// The shell
    pub shell: clap_complete::Shell,
}

/// Print the manual page (roff), or write every page to a directory.
///
/// mqtool(1) lists the subcommands as mqtool-SUBCOMMAND(1); --out-dir
/// writes those pages too, ready for a man1 directory.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mqtool man | man -l -
  mqtool man send | man -l -
  mqtool man --out-dir /usr/local/share/man/man1   # mqtool.1, mqtool-send.1, ...")]
pub struct ManArgs {
    /// A subcommand, for its own page (mqtool-SUBCOMMAND)
    pub subcommand: Option<String>,
    /// Write mqtool.1 and every mqtool-SUBCOMMAND.1 into this directory
    #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
    pub out_dir: Option<PathBuf>,
}

/// The longest duration accepted: about 31 years, so deadlines never
/// overflow.
const MAX_DURATION: Duration = Duration::from_secs(1 << 30);

/// Parses `2s`, `100ms`, `1.5s`, `250us`, `10ns`, `1m`, `1h`, and compound
/// durations such as `1h30m` or `1m 30s` (humantime style: each number with
/// its unit, summed); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!("'{s}' is negative: a duration is 0 or more"));
    }
    let bad = || format!("'{s}' is not a duration such as 2s, 100ms, 1.5m or 1h30m");
    let mut rest = s;
    let mut secs = 0.0;
    let mut parts = 0;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let value: f64 = match num.parse() {
            Ok(v) if num.starts_with(|c: char| c.is_ascii_digit()) => v,
            _ => return Err(bad()),
        };
        let tail = tail.trim_start();
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(tail.len());
        let (unit, after) = tail.split_at(unit_len);
        let scale = match unit {
            "" if parts == 0 && after.is_empty() => 1.0,
            "" => {
                return Err(format!(
                    "'{s}': a number without a unit (use ns, us, ms, s, m or h)"
                ));
            }
            "s" | "sec" | "secs" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            "m" | "min" | "mins" => 60.0,
            "h" => 3600.0,
            u => {
                return Err(format!(
                    "unknown unit '{u}' in '{s}' (use ns, us, ms, s, m or h)"
                ));
            }
        };
        secs += value * scale;
        parts += 1;
        rest = after.trim_start();
    }
    if parts == 0 {
        return Err(bad());
    }
    if !secs.is_finite() || secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("'{s}' is too long"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err("the interval must be at least 1ms".into());
    }
    Ok(d)
}

/// Parses a count of 1 or more (`--count`); a negative one is out of range,
/// not an option.
pub fn parse_count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if (1..=i128::from(u64::MAX)).contains(&n) => Ok(n as u64),
        Ok(_) => Err(format!("{s} is out of range: a count is 1 or more")),
        Err(_) => Err(format!("'{s}' is not a number")),
    }
}

/// Parses an octal mode: `640`, `0640`, `0o640`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && !digits.is_empty() => Ok(m),
        _ => Err(format!(
            "'{s}' is not an octal mode from 0 to 0777, such as 0640"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1 fortnight").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration(".s").is_err());
        assert!(parse_duration("1e30").is_err());
        assert!(parse_duration("99999999999h").is_err());
        assert!(parse_interval("0").is_err());
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2s500ms"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("1 h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("1h x").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert_eq!(parse_mode("640"), Ok(0o640));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("01777").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = Cli::try_parse_from(["mqtool", "ls", "--json", "--dir", "/tmp/x"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.dir.as_deref(), Some(std::path::Path::new("/tmp/x")));
        assert!(
            Cli::try_parse_from(["mqtool", "recv", "/q", "--nonblock", "--timeout", "1s"]).is_err()
        );
        assert!(Cli::try_parse_from(["mqtool", "send", "/q", "--whole", "x"]).is_err());
        assert!(Cli::try_parse_from(["mqtool", "recv", "/q", "--count", "0"]).is_err());
        assert!(Cli::try_parse_from(["mqtool", "peek", "/q", "--count", "0"]).is_err());
    }
}
