//! `shmq-bridge`: carries messages between shmq queues and RabbitMQ queues,
//! at least once, priorities kept. See the README's "Across hosts".

mod link;
mod prio;
mod status;

use clap::{Parser, Subcommand};
use link::{Direction, Link};
use prio::PrioMap;
use serde::Deserialize;
use status::{Reporter, Stats, Status, redact, write_status};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Bridges shmq queues to and from a RabbitMQ broker, at least once,
/// priorities kept.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the bridges of a config file and of the flags, until SIGTERM or
    /// SIGINT.
    Run(RunArgs),
    /// Print the status a running bridge writes (its `--status` file).
    Status {
        /// The status file.
        file: PathBuf,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// A TOML config file (see the README); flags add to it and override
    /// its settings.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The broker's AMQP URL, e.g. amqp://user:pass@127.0.0.1:5672/%2f
    /// (its password is never printed). Better: --url-env.
    #[arg(long)]
    url: Option<String>,
    /// Read the AMQP URL from this environment variable.
    #[arg(long, value_name = "VAR")]
    url_env: Option<String>,
    /// The local queue directory (default: SHMQ_DIR, else /dev/shm/shmq).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Bridge local queue LOCAL to broker queue REMOTE (repeatable).
    #[arg(long = "out", value_name = "LOCAL=REMOTE")]
    outs: Vec<String>,
    /// Bridge broker queue REMOTE to local queue LOCAL (repeatable).
    #[arg(long = "in", value_name = "REMOTE=LOCAL")]
    ins: Vec<String>,
    /// Unconfirmed publishes (out) or the prefetch count (in) per queue.
    #[arg(long)]
    window: Option<u16>,
    /// The priority map: ascending lower bounds of the AMQP priority
    /// buckets, the first 0 (default 0,1,2,3,4,5,6,7,8,9).
    #[arg(long, value_name = "BOUNDS")]
    priorities: Option<PrioMap>,
    /// `in`: ignore the exact POSIX priority that `out` sends along, use
    /// the bucket map only.
    #[arg(long)]
    bucket_only: bool,
    /// Create missing local queues (with the library's default attributes,
    /// or those of the config file).
    #[arg(long)]
    create: bool,
    /// Write the status (JSON) to this file every report interval.
    #[arg(long)]
    status: Option<PathBuf>,
    /// Seconds between reports on stderr and status file writes.
    #[arg(long)]
    report: Option<f64>,
    /// Reports on stderr as JSON lines.
    #[arg(long)]
    json: bool,
}

/// The config file.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    url: Option<String>,
    url_env: Option<String>,
    dir: Option<PathBuf>,
    window: Option<u16>,
    priorities: Option<String>,
    bucket_only: Option<bool>,
    status: Option<PathBuf>,
    report: Option<f64>,
    json: Option<bool>,
    #[serde(default)]
    out: Vec<LinkConfig>,
    #[serde(default, rename = "in")]
    inb: Vec<LinkConfig>,
}

/// One bridged queue in the config file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LinkConfig {
    local: String,
    remote: String,
    dir: Option<PathBuf>,
    window: Option<u16>,
    priorities: Option<String>,
    /// Create the local queue if missing.
    create: Option<bool>,
    capacity: Option<usize>,
    max_msg_len: Option<usize>,
}

const DEFAULT_WINDOW: u16 = 256;

/// What `run` runs: the URL, the links, the status file, the report
/// interval and whether reports are JSON.
type Plan = (String, Vec<Link>, Option<PathBuf>, f64, bool);

fn build(args: RunArgs) -> Result<Plan, String> {
    let cfg = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            toml::from_str::<Config>(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => Config::default(),
    };
    let url = match (args.url, args.url_env.or(cfg.url_env), cfg.url) {
        (Some(u), _, _) => u,
        (None, Some(var), _) => {
            std::env::var(&var).map_err(|_| format!("the environment has no {var}"))?
        }
        (None, None, Some(u)) => u,
        (None, None, None) => {
            return Err("no broker URL: --url, --url-env or the config's url".into());
        }
    };
    let dir = args.dir.or(cfg.dir);
    let window = args.window.or(cfg.window).unwrap_or(DEFAULT_WINDOW);
    let prio = match (args.priorities, cfg.priorities) {
        (Some(p), _) => p,
        (None, Some(s)) => s.parse()?,
        (None, None) => PrioMap::default(),
    };
    let exact = !(args.bucket_only || cfg.bucket_only.unwrap_or(false));
    let mut links = Vec::new();
    for (direction, list) in [(Direction::Out, cfg.out), (Direction::In, cfg.inb)] {
        for l in list {
            links.push(Link {
                direction,
                local: l.local,
                remote: l.remote,
                dir: l.dir.or_else(|| dir.clone()),
                window: l.window.unwrap_or(window),
                prio: match l.priorities {
                    Some(s) => s.parse()?,
                    None => prio.clone(),
                },
                exact_priority: exact,
                create: (l.create.unwrap_or(false) || args.create)
                    .then(|| (l.capacity.unwrap_or(0), l.max_msg_len.unwrap_or(0))),
            });
        }
    }
    for (direction, list) in [(Direction::Out, args.outs), (Direction::In, args.ins)] {
        for spec in list {
            let (a, b) = spec
                .split_once('=')
                .ok_or_else(|| format!("{spec:?}: expected A=B"))?;
            let (local, remote) = match direction {
                Direction::Out => (a, b),
                Direction::In => (b, a),
            };
            links.push(Link {
                direction,
                local: local.into(),
                remote: remote.into(),
                dir: dir.clone(),
                window,
                prio: prio.clone(),
                exact_priority: exact,
                create: args.create.then_some((0, 0)),
            });
        }
    }
    if links.is_empty() {
        return Err("nothing to bridge: --out, --in or the config's [[out]] and [[in]]".into());
    }
    let report = args.report.or(cfg.report).unwrap_or(5.0).max(0.1);
    let json = args.json || cfg.json.unwrap_or(false);
    Ok((url, links, args.status.or(cfg.status), report, json))
}

fn run(args: RunArgs) -> Result<(), String> {
    let (url, links, status_file, report, json) = build(args)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signal: {e}"))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let stats: Vec<Arc<Stats>> = links
        .iter()
        .map(|l| Arc::new(Stats::new(l.name())))
        .collect();
    eprintln!(
        "shmq-bridge: pid {} broker {}: {}",
        std::process::id(),
        redact(&url, &url),
        links.iter().map(Link::name).collect::<Vec<_>>().join(", ")
    );
    let threads = link::run_all(
        links,
        Arc::new(url),
        rt.handle().clone(),
        stop.clone(),
        stats.clone(),
    );
    let mut reporter = Reporter::new(&stats);
    let every = Duration::from_secs_f64(report);
    let mut next = Instant::now() + every;
    let emit = |s: &Status| {
        if json {
            if let Ok(line) = serde_json::to_string(s) {
                eprintln!("{line}");
            }
        } else {
            eprint!("{}", s.text());
        }
        if let Some(f) = &status_file
            && let Err(e) = write_status(f, s)
        {
            eprintln!("shmq-bridge: status file {}: {e}", f.display());
        }
    };
    while !threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        // A bridge ends on its own only on a local error no reconnection
        // cures: stop the others too, and exit 1 for a supervisor to see.
        if threads.iter().any(|t| t.is_finished()) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if Instant::now() >= next {
            emit(&reporter.report());
            next += every;
        }
    }
    let mut errors = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a bridge thread panicked".into()),
        }
    }
    emit(&reporter.report());
    if errors.is_empty() {
        eprintln!("shmq-bridge: stopped");
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Status { file, json } => std::fs::read_to_string(&file)
            .map_err(|e| format!("{}: {e}", file.display()))
            .and_then(|text| {
                let s: Status =
                    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                } else {
                    println!("pid {} up {:.0} s", s.pid, s.uptime);
                    print!("{}", s.text());
                }
                Ok(())
            }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmq-bridge: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> RunArgs {
        match Cli::parse_from(v).cmd {
            Cmd::Run(a) => a,
            Cmd::Status { .. } => unreachable!(),
        }
    }

    #[test]
    fn example_config() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/example.toml");
        let a = args(&[
            "b",
            "run",
            "--config",
            path,
            "--url",
            "amqp://u:p@h/",
            "--in",
            "x=/y",
        ]);
        let (url, links, status, report, json) = build(a).unwrap();
        assert_eq!(url, "amqp://u:p@h/");
        assert_eq!(status.unwrap(), PathBuf::from("/tmp/shmq-bridge.json"));
        assert_eq!((report, json), (5.0, false));
        let names: Vec<_> = links.iter().map(Link::name).collect();
        assert_eq!(
            names,
            [
                "out /orders -> orders",
                "out /alerts -> alerts",
                "in invoices -> /invoices",
                "in x -> /y"
            ]
        );
        assert_eq!(links[1].window, 16);
        assert_eq!(links[1].prio.max_amqp(), 2);
        assert_eq!(links[0].prio.max_amqp(), 9);
        assert_eq!(links[2].create, Some((1000, 4096)));
        assert_eq!(links[3].create, None);
        assert!(links.iter().all(|l| l.exact_priority));
    }

    #[test]
    fn url_from_the_environment_and_errors() {
        let a = args(&[
            "b",
            "run",
            "--url-env",
            "SHMQ_BRIDGE_TEST_NO_SUCH_VAR",
            "--out",
            "/a=b",
        ]);
        assert!(
            build(a)
                .unwrap_err()
                .contains("SHMQ_BRIDGE_TEST_NO_SUCH_VAR")
        );
        let a = args(&["b", "run", "--url", "amqp://h/"]);
        assert!(build(a).unwrap_err().contains("nothing to bridge"));
        let a = args(&["b", "run", "--url", "amqp://h/", "--out", "/a"]);
        assert!(build(a).unwrap_err().contains("A=B"));
    }
}
