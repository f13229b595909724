//! Process cases: every side of a queue is a process of its own (a copy of
//! mqtool run as `mqtool bench-peer`), pinned before it opens its queues (as
//! under `taskset`), after, or not at all. The peers open queues made by the
//! benchmark, start together once all are ready, and report their figure
//! and their context switches; the benchmark removes the queues.

use super::{Bench, Endpoint, Measure, Peer, SMALL, Stat, Unit, known, median, percentile};
use crate::cli::{BenchPeerArgs, PeerRole};
use crate::cmd::Ctx;
use crate::exit::{Exit, Failure, Outcome};
use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// Where the processes of a case run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Pinned, then the queues opened: a process started under `taskset`.
    Before,
    /// The queues opened, then pinned.
    After,
    /// Wherever the scheduler puts them.
    Unpinned,
}

impl Placement {
    fn id(self) -> &'static str {
        match self {
            Placement::Before => "before",
            Placement::After => "after",
            Placement::Unpinned => "unpinned",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Placement::Before => "pinned before open",
            Placement::After => "pinned after open",
            Placement::Unpinned => "unpinned",
        }
    }
}

/// `mqtool bench-peer`: one process of a case.
pub fn peer(ctx: &Ctx, a: &BenchPeerArgs) -> Outcome {
    let fail = |what: &str, e: io::Error| {
        Failure::plain(format!(
            "bench-peer: {what}: {}",
            super::super::io_message(&e)
        ))
    };
    let pin = |when_after: bool| -> Result<(), Failure> {
        match a.cpu {
            Some(c) if a.pin_after == when_after => {
                super::cpu::pin(c).map_err(|e| fail(&format!("pinning to cpu{c}"), e))
            }
            _ => Ok(()),
        }
    };
    pin(false)?;
    let r = if a.kernel {
        let open = |n: &str| super::kernel::KernelMq::open(n).map_err(|e| fail(n, e));
        let q = open(&a.queue)?;
        let q2 = a.queue2.as_deref().map(open).transpose()?;
        pin(true)?;
        serve(a, &q, q2.as_ref())
    } else {
        let dir = ctx.dir()?;
        let open = |n: &str| {
            shmq::OpenOptions::readwrite()
                .dir(dir)
                .open(n)
                .map_err(|e| fail(n, e))
        };
        let q = open(&a.queue)?;
        let q2 = a.queue2.as_deref().map(open).transpose()?;
        pin(true)?;
        serve(a, &q, q2.as_ref())
    };
    r.map_err(|e| fail("run", e))?;
    Ok(Exit::Success)
}

/// Says "ready", waits for the start, runs the role, prints the result.
fn serve<Q: Endpoint>(a: &BenchPeerArgs, q: &Q, q2: Option<&Q>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut go = String::new();
    io::stdin().lock().read_line(&mut go)?;
    if go.trim() != "go" {
        return Err(io::Error::other("no start signal"));
    }
    let answers = || q2.ok_or_else(|| io::Error::other("--queue2 is needed"));
    let msg = vec![0x5au8; a.len];
    let mut buf = vec![0u8; a.len];
    let sw = super::cpu::switches();
    let start = Instant::now();
    let (mut value, mut p99) = (0.0, 0.0);
    match a.role {
        PeerRole::Send => {
            for _ in 0..a.iters {
                q.send(&msg)?;
            }
        }
        PeerRole::Recv => {
            for _ in 0..a.iters {
                if q.recv(&mut buf)? != a.len {
                    return Err(io::Error::other("a message came out with the wrong length"));
                }
            }
            if buf != msg {
                return Err(io::Error::other("a message came out altered"));
            }
            value = a.iters as f64 / start.elapsed().as_secs_f64().max(1e-9);
        }
        PeerRole::Echo => {
            let back = answers()?;
            for _ in 0..a.iters {
                let n = q.recv(&mut buf)?;
                back.send(&buf[..n])?;
            }
        }
        PeerRole::Ping => {
            let back = answers()?;
            let cap = usize::try_from(a.iters).unwrap_or(0).min(1 << 24);
            let mut rtt = Vec::with_capacity(cap);
            let mut last = start;
            for _ in 0..a.iters {
                q.send(&msg)?;
                if back.recv(&mut buf)? != a.len {
                    return Err(io::Error::other(
                        "a message came back with the wrong length",
                    ));
                }
                let now = Instant::now();
                rtt.push(now.duration_since(last).as_nanos() as f64);
                last = now;
            }
            p99 = percentile(&mut rtt, 0.99);
            value = median(&mut rtt);
        }
    }
    let elapsed = start.elapsed();
    let switches = super::cpu::switches().saturating_sub(sw);
    writeln!(
        out,
        "result {value} {p99} {switches} {}",
        elapsed.as_nanos()
    )?;
    out.flush()
}

/// The processes of one run, killed and reaped if the run fails.
struct Gang {
    kids: Vec<(Child, ChildStdin, BufReader<ChildStdout>)>,
}

impl Drop for Gang {
    fn drop(&mut self) {
        for (c, _, _) in &mut self.kids {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one peer process reports.
struct Report {
    value: f64,
    p99: f64,
    switches: u64,
    elapsed: Duration,
}

fn read_line(out: &mut BufReader<ChildStdout>, want: &str) -> io::Result<String> {
    let mut line = String::new();
    out.read_line(&mut line)?;
    match line.strip_prefix(want) {
        Some(rest) => Ok(rest.trim().to_string()),
        None => Err(io::Error::other(
            "a peer process failed (see its message above)",
        )),
    }
}

fn parse_report(s: &str) -> io::Result<Report> {
    let bad = || io::Error::other(format!("a peer process reported {s:?}"));
    let f: Vec<&str> = s.split_whitespace().collect();
    let [value, p99, switches, elapsed] = f[..] else {
        return Err(bad());
    };
    Ok(Report {
        value: value.parse().map_err(|_| bad())?,
        p99: p99.parse().map_err(|_| bad())?,
        switches: switches.parse().map_err(|_| bad())?,
        elapsed: Duration::from_nanos(elapsed.parse().map_err(|_| bad())?),
    })
}

/// One run of a process case: starts `peers` (arguments of `bench-peer`
/// each), lets them go together, and gathers the timed peer's figure and
/// everyone's context switches over `messages`.
fn run_gang(dir: &std::path::Path, peers: &[Vec<String>], messages: u64) -> io::Result<Measure> {
    let exe = std::env::current_exe()?;
    let mut gang = Gang { kids: Vec::new() };
    for args in peers {
        let mut c = Command::new(&exe)
            .arg("--dir")
            .arg(dir)
            .arg("bench-peer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(i), Some(o)) = (c.stdin.take(), c.stdout.take()) else {
            let _ = c.kill();
            let _ = c.wait();
            return Err(io::Error::other("no pipe to a peer process"));
        };
        gang.kids.push((c, i, BufReader::new(o)));
    }
    // A peer that hangs (its partner died, say) must not hang the run: past
    // a deadline far beyond any repetition, every peer is killed, and the
    // reads below end.
    let pids: Vec<nix::unistd::Pid> = gang
        .kids
        .iter()
        .filter_map(|(c, _, _)| i32::try_from(c.id()).ok().map(nix::unistd::Pid::from_raw))
        .collect();
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(PEER_DEADLINE) == Err(RecvTimeoutError::Timeout) {
            for p in pids {
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            }
        }
    });
    let r = gather(&mut gang, messages);
    // The watchdog is gone before any peer is reaped: it never signals a
    // pid that may have been reused.
    drop(done);
    let _ = watchdog.join();
    let r = r?;
    for (c, _, _) in &mut gang.kids {
        let st = c.wait()?;
        if !st.success() {
            return Err(io::Error::other(format!("a peer process ended with {st}")));
        }
    }
    gang.kids.clear();
    Ok(r)
}

/// How long a peer process may take before the run gives up on it.
const PEER_DEADLINE: Duration = Duration::from_secs(120);

/// Starts the peers of `gang` together and collects their reports.
fn gather(gang: &mut Gang, messages: u64) -> io::Result<Measure> {
    for (_, _, out) in &mut gang.kids {
        read_line(out, "ready")?;
    }
    for (_, inp, _) in &mut gang.kids {
        inp.write_all(b"go\n")?;
        inp.flush()?;
    }
    let mut timed = None;
    let mut switches = 0;
    for (_, _, out) in &mut gang.kids {
        let r = parse_report(&read_line(out, "result")?)?;
        switches += r.switches;
        if r.value > 0.0 {
            timed = Some(r);
        }
    }
    let r = timed.ok_or_else(|| io::Error::other("no peer process timed the run"))?;
    Ok(Measure {
        value: r.value,
        p99: if r.p99 > 0.0 { r.p99 } else { f64::NAN },
        elapsed: r.elapsed,
        csw: switches as f64 / messages.max(1) as f64,
    })
}

/// The arguments of one peer process.
fn peer_args(
    role: &str,
    kernel: bool,
    queues: &[&str],
    cpu: Option<usize>,
    place: Placement,
    iters: u64,
    len: usize,
) -> Vec<String> {
    let mut v = vec![
        "--role".to_string(),
        role.to_string(),
        "--queue".into(),
        queues[0].to_string(),
    ];
    if let Some(q2) = queues.get(1) {
        v.extend(["--queue2".into(), q2.to_string()]);
    }
    if kernel {
        v.push("--kernel".into());
    }
    if let (Some(c), false) = (cpu, place == Placement::Unpinned) {
        v.extend(["--cpu".into(), c.to_string()]);
        if place == Placement::After {
            v.push("--pin-after".into());
        }
    }
    v.extend([
        "--iters".into(),
        iters.to_string(),
        "--len".into(),
        len.to_string(),
    ]);
    v
}

/// A process case's queues on one side: their names (kept until the case
/// ends) and the handles that keep them.
struct Side {
    names: Vec<String>,
    _shmq: Vec<NamedShmq>,
    _kernel: Vec<super::kernel::KernelMq>,
}

/// A shmq queue left named for the peers; its name goes when dropped.
struct NamedShmq {
    _q: shmq::PosixMq,
    dir: std::path::PathBuf,
    name: String,
}

impl Drop for NamedShmq {
    fn drop(&mut self) {
        let _ = shmq::remove_queue_in(&self.dir, &self.name);
    }
}

/// The shape of a process case.
#[derive(Clone, Copy)]
enum Kind {
    /// `producers` processes stream to one, queue `depth` deep.
    Stream { producers: u64, depth: usize },
    /// Round trips; both on one CPU when `one_cpu`.
    PingPong { one_cpu: bool },
}

impl Bench {
    fn named_shmq(&self, tag: &str, depth: usize) -> Result<NamedShmq, Failure> {
        let name = format!("/mqtool-bench-{}-{tag}", self.pid);
        let q = shmq::OpenOptions::readwrite()
            .capacity(depth)
            .max_msg_len(SMALL)
            .create_new()
            .dir(&self.dir)
            .open(&name)
            .map_err(|e| Failure::new(format!("bench: {name}"), crate::exit::describe_io(&e)))?;
        Ok(NamedShmq {
            _q: q,
            dir: self.dir.clone(),
            name,
        })
    }

    /// A kernel queue left named for the peers, or why there is none.
    pub(super) fn named_kernel(
        &self,
        name: &str,
        depth: usize,
        notes: &mut Vec<String>,
    ) -> Result<Option<(super::kernel::KernelMq, i64)>, Failure> {
        let want = i64::try_from(depth).unwrap_or(i64::MAX);
        match super::kernel::create_fitted_named(name, want, SMALL as i64) {
            Ok(super::kernel::Fit::Made(f)) => {
                notes.extend(f.notes);
                Ok(Some((f.mq, f.depth)))
            }
            Ok(super::kernel::Fit::Impossible(why)) => {
                notes.push(format!("the kernel row could not run: {why}"));
                Ok(None)
            }
            Err(e) => Err(Failure::plain(format!(
                "bench: kernel queue {name}: {}",
                super::super::io_message(&e)
            ))),
        }
    }

    /// One process case, shmq beside the kernel.
    fn process_case(
        &mut self,
        kind: Kind,
        place: Placement,
        cpus: (usize, usize),
    ) -> Result<(), Failure> {
        let (tag, depth, queues) = match kind {
            Kind::Stream { producers, depth } => {
                (format!("p{producers}-{depth}-{}", place.id()), depth, 1)
            }
            Kind::PingPong { one_cpu } => (
                format!("pp{}-{}", if one_cpu { "1" } else { "2" }, place.id()),
                10,
                2,
            ),
        };
        let mut notes = Vec::new();
        let mut shmq_side = Side {
            names: Vec::new(),
            _shmq: Vec::new(),
            _kernel: Vec::new(),
        };
        let mut kernel_side = Some(Side {
            names: Vec::new(),
            _shmq: Vec::new(),
            _kernel: Vec::new(),
        });
        let mut kernel_depth = None;
        for i in 0..queues {
            let t = format!("{tag}-{i}");
            let q = self.named_shmq(&t, depth)?;
            shmq_side.names.push(q.name.clone());
            shmq_side._shmq.push(q);
            let kname = format!("/mqtool-bench-{}-k{t}", self.pid);
            match self.named_kernel(&kname, depth, &mut notes)? {
                Some((k, d)) => {
                    if let Some(side) = &mut kernel_side {
                        side.names.push(kname);
                        side._kernel.push(k);
                    }
                    kernel_depth = Some(d);
                }
                None => kernel_side = None,
            }
        }
        let (a, b) = cpus;
        let dir = self.dir.clone();
        let build = |kernel: bool, names: &[String], n: u64| -> (Vec<Vec<String>>, u64) {
            let q: Vec<&str> = names.iter().map(String::as_str).collect();
            match kind {
                Kind::Stream { producers, .. } => {
                    let each = n.div_ceil(producers).max(1);
                    let mut v = vec![peer_args(
                        "recv",
                        kernel,
                        &q,
                        Some(a),
                        place,
                        each * producers,
                        SMALL,
                    )];
                    for _ in 0..producers {
                        v.push(peer_args("send", kernel, &q, Some(b), place, each, SMALL));
                    }
                    (v, each * producers)
                }
                Kind::PingPong { one_cpu } => {
                    let other = if one_cpu { a } else { b };
                    let echo = [q[0], q[1]];
                    (
                        vec![
                            peer_args("ping", kernel, &q, Some(a), place, n, SMALL),
                            peer_args("echo", kernel, &echo, Some(other), place, n, SMALL),
                        ],
                        2 * n,
                    )
                }
            }
        };
        let run_side = |kernel: bool, names: &[String], n: u64| {
            let (peers, messages) = build(kernel, names, n);
            run_gang(&dir, &peers, messages)
        };
        let description = match kind {
            Kind::Stream {
                producers: 1,
                depth,
            } => {
                format!(
                    "processes: streaming 1->1, 64 B, depth {depth}, {}",
                    place.words()
                )
            }
            Kind::Stream { producers, depth } => format!(
                "processes: {producers} producers -> 1 consumer, 64 B, depth {depth}, {}",
                place.words()
            ),
            Kind::PingPong { one_cpu: false } if place == Placement::Unpinned => {
                "processes: ping-pong, unpinned".to_string()
            }
            Kind::PingPong { one_cpu: false } => {
                format!("processes: ping-pong across CPUs, {}", place.words())
            }
            Kind::PingPong { one_cpu: true } => {
                format!("processes: ping-pong on one CPU, {}", place.words())
            }
        };
        let mut run_shmq = |n| run_side(false, &shmq_side.names, n);
        let mut run_kernel = |n| match &kernel_side {
            Some(k) => run_side(true, &k.names, n),
            None => Err(io::Error::other("no kernel queue")),
        };
        let mut peers: Vec<Peer<'_>> = vec![("shmq", &mut run_shmq)];
        if kernel_side.is_some() {
            peers.push(("kernel mq", &mut run_kernel));
        }
        let stats = self.plan.run(&description, &mut peers)?;
        drop(peers);
        let sv = stats[0].clone();
        let kv: Option<Stat> = stats.get(1).cloned();
        match kind {
            Kind::Stream { producers, depth } => {
                let case = if producers == 1 {
                    format!("proc-stream-{depth}-{}", place.id())
                } else {
                    format!("proc-mpsc{producers}-{depth}-{}", place.id())
                };
                self.rows.push(super::Row {
                    case,
                    description,
                    unit: Unit::PerSec,
                    msg_len: SMALL,
                    shmq: sv.value,
                    kernel: kv.as_ref().map(|k| k.value),
                    baseline: None,
                    csw: known(sv.csw),
                    kernel_csw: kv.as_ref().and_then(|k| known(k.csw)),
                    shmq_reps: sv.values,
                    other_reps: kv.map(|k| k.values).unwrap_or_default(),
                    kernel_depth,
                    notes,
                    peer: "rust-processes",
                });
            }
            Kind::PingPong { one_cpu } => {
                let case = format!(
                    "proc-pingpong{}-{}",
                    if one_cpu { "-1cpu" } else { "" },
                    place.id()
                );
                self.push_ping_pong_of("rust-processes", &case, &description, sv, kv, &notes);
            }
        }
        Ok(())
    }

    /// Every process case that the CPUs allow.
    pub(super) fn processes(&mut self, cpus: &[usize]) -> Result<(), Failure> {
        let two = match cpus {
            [a, b, ..] => Some((*a, *b)),
            _ => None,
        };
        let first = cpus.first().copied().unwrap_or(0);
        let placements: &[Placement] = if two.is_some() {
            &[Placement::Before, Placement::After, Placement::Unpinned]
        } else {
            self.notes.push(
                "processes: one usable CPU, so the cross-CPU cases (pinned before and after open) did not run"
                    .into(),
            );
            &[Placement::Unpinned]
        };
        let across = two.unwrap_or((first, first));
        for &place in placements {
            for depth in [10, 256] {
                self.process_case(
                    Kind::Stream {
                        producers: 1,
                        depth,
                    },
                    place,
                    across,
                )?;
            }
            self.process_case(Kind::PingPong { one_cpu: false }, place, across)?;
        }
        for place in [Placement::Before, Placement::After] {
            self.process_case(Kind::PingPong { one_cpu: true }, place, (first, first))?;
        }
        self.process_case(
            Kind::Stream {
                producers: 4,
                depth: 256,
            },
            Placement::Unpinned,
            across,
        )?;
        Ok(())
    }
}
