//! `mqtool bench`: shmq and the kernel's mq side by side, in one run.
//!
//! Every case runs both peers with the same code (generic over
//! [`Endpoint`]), interleaved repetition by repetition (the order alternates,
//! so drift hits both), and reports medians: machines are noisy. Iteration
//! counts are calibrated so that each repetition takes about the same time
//! for both peers. Ping-pong pins its threads (`cpu`); kernel queues are made
//! within the system's limits (`kernel`). The cost-vs-contents cases are
//! shmq's alone, against the same pair on an empty queue.

mod c;
mod cpu;
mod kernel;
mod procs;
mod svg;

pub use procs::peer;

use super::Ctx;
use crate::cli::{BenchArgs, Shape};
use crate::exit::{Exit, Failure, Outcome};
use crate::output::{self, BenchJson, json_line};
use kernel::KernelMq;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

/// Message size of the pair, ping-pong and many-producer cases.
const SMALL: usize = 64;
const MSG: [u8; SMALL] = [0x5a; SMALL];

/// One side of a queue, as the benchmark uses it.
trait Endpoint: Sync {
    fn send(&self, msg: &[u8]) -> io::Result<()>;
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl Endpoint for shmq::PosixMq {
    fn send(&self, msg: &[u8]) -> io::Result<()> {
        shmq::PosixMq::send(self, 1, msg)
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        shmq::PosixMq::recv(self, buf).map(|(_, len)| len)
    }
}

impl Endpoint for KernelMq {
    fn send(&self, msg: &[u8]) -> io::Result<()> {
        KernelMq::send(self, msg, 1)
    }
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        KernelMq::receive(self, buf)
    }
}

/// One measurement: the figure (ns per operation, or messages per second),
/// the 99th percentile of the individual times where there are some, how
/// long it took, and context switches per message (NaN when unknown).
#[derive(Clone, Copy)]
struct Measure {
    value: f64,
    p99: f64,
    elapsed: Duration,
    csw: f64,
}

/// Context switches since `before` (see [`cpu::switches`]) per message.
fn switches_per(before: u64, messages: u64) -> f64 {
    cpu::switches().saturating_sub(before) as f64 / messages.max(1) as f64
}

/// Send + receive of `msg` in one thread, `iters` times: ns per pair.
fn pair<Q: Endpoint>(q: &Q, msg: &[u8], iters: u64) -> io::Result<Measure> {
    let mut buf = vec![0u8; msg.len()];
    let sw = cpu::switches();
    let t = Instant::now();
    for _ in 0..iters {
        q.send(std::hint::black_box(msg))?;
        std::hint::black_box(q.recv(&mut buf)?);
    }
    let elapsed = t.elapsed();
    Ok(Measure {
        value: elapsed.as_nanos() as f64 / iters as f64,
        p99: f64::NAN,
        elapsed,
        csw: switches_per(sw, iters),
    })
}

/// The pair at priority `prio`, on a shmq queue that may hold other
/// messages: ns per pair.
fn pair_at(q: &shmq::PosixMq, prio: u32, iters: u64) -> io::Result<Measure> {
    let mut buf = [0u8; SMALL];
    let t = Instant::now();
    for _ in 0..iters {
        q.send(prio, std::hint::black_box(&MSG))?;
        std::hint::black_box(q.recv(&mut buf)?);
    }
    let elapsed = t.elapsed();
    Ok(Measure {
        value: elapsed.as_nanos() as f64 / iters as f64,
        p99: f64::NAN,
        elapsed,
        csw: f64::NAN,
    })
}

/// Send, receive with acknowledgement, and ack, at priority `prio`: ns per
/// pair.
fn ack_pair(q: &shmq::PosixMq, prio: u32, iters: u64) -> io::Result<Measure> {
    let mut buf = [0u8; SMALL];
    let t = Instant::now();
    for _ in 0..iters {
        q.send(prio, std::hint::black_box(&MSG))?;
        let p = q.recv_pending(&mut buf)?;
        std::hint::black_box(&buf);
        p.ack()?;
    }
    let elapsed = t.elapsed();
    Ok(Measure {
        value: elapsed.as_nanos() as f64 / iters as f64,
        p99: f64::NAN,
        elapsed,
        csw: f64::NAN,
    })
}

/// Round trips through `ping` and back through `pong` (echoed by a second
/// thread), `iters` times: median and 99th percentile ns per round trip.
/// With `cpus`, the calling thread runs on the first CPU and the echo thread
/// on the second for the duration.
fn ping_pong<Q: Endpoint>(
    ping: &Q,
    pong: &Q,
    cpus: Option<(usize, usize)>,
    iters: u64,
) -> io::Result<Measure> {
    let _pinned = match cpus {
        Some((mine, _)) => Some(cpu::Pinned::to(mine)?),
        None => None,
    };
    std::thread::scope(|s| {
        let (ready, pinned) = std::sync::mpsc::channel();
        let echo = s.spawn(move || -> io::Result<()> {
            let pin = match cpus {
                Some((_, theirs)) => cpu::pin(theirs),
                None => Ok(()),
            };
            let ok = pin.is_ok();
            let _ = ready.send(pin);
            if !ok {
                return Ok(());
            }
            let mut buf = [0u8; SMALL];
            for _ in 0..iters {
                let n = ping.recv(&mut buf)?;
                pong.send(&buf[..n])?;
            }
            Ok(())
        });
        match pinned.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = echo.join();
                return Err(e);
            }
            Err(_) => return Err(io::Error::other("the echo thread failed")),
        }
        let mut buf = [0u8; SMALL];
        let mut rtt = Vec::with_capacity(usize::try_from(iters).unwrap_or(0).min(1 << 24));
        let sw = cpu::switches();
        let start = Instant::now();
        let mut last = start;
        for _ in 0..iters {
            ping.send(&MSG)?;
            if pong.recv(&mut buf)? != SMALL {
                return Err(io::Error::other(
                    "a message came back with the wrong length",
                ));
            }
            let now = Instant::now();
            rtt.push(now.duration_since(last).as_nanos() as f64);
            last = now;
        }
        let elapsed = start.elapsed();
        echo.join()
            .map_err(|_| io::Error::other("the echo thread failed"))??;
        let p99 = percentile(&mut rtt, 0.99);
        Ok(Measure {
            value: median(&mut rtt),
            p99,
            elapsed,
            csw: switches_per(sw, 2 * iters),
        })
    })
}

/// `producers` threads send `msg` about `iters` times in all, the calling
/// thread receives them: messages per second.
fn stream<Q: Endpoint>(q: &Q, producers: u64, msg: &[u8], iters: u64) -> io::Result<Measure> {
    let each = iters.div_ceil(producers).max(1);
    let total = each * producers;
    let mut buf = vec![0u8; msg.len()];
    std::thread::scope(|s| {
        let sw = cpu::switches();
        let start = Instant::now();
        let threads: Vec<_> = (0..producers)
            .map(|_| {
                s.spawn(move || -> io::Result<()> {
                    for _ in 0..each {
                        q.send(msg)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for _ in 0..total {
            if q.recv(&mut buf)? != msg.len() {
                return Err(io::Error::other("a message came out with the wrong length"));
            }
        }
        let elapsed = start.elapsed();
        for t in threads {
            t.join()
                .map_err(|_| io::Error::other("a producer thread failed"))??;
        }
        if buf != msg {
            return Err(io::Error::other("a message came out altered"));
        }
        Ok(Measure {
            value: total as f64 / elapsed.as_secs_f64(),
            p99: f64::NAN,
            elapsed,
            csw: switches_per(sw, total),
        })
    })
}

/// The `q` quantile (0 to 1) of `v`, by the nearest-rank method.
fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Whether a figure is a time (lower is better) or a rate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Nanos,
    PerSec,
}

impl Unit {
    fn json(self) -> &'static str {
        match self {
            Unit::Nanos => "ns",
            Unit::PerSec => "msg/s",
        }
    }

    /// The figure for the table; rates of large messages in bytes too.
    fn show(self, v: f64, msg_len: usize) -> String {
        match self {
            Unit::Nanos => output::nanos(v),
            Unit::PerSec if msg_len >= 1024 => {
                format!("{}, {}", output::rate(v), byte_rate(v * msg_len as f64))
            }
            Unit::PerSec => output::rate(v),
        }
    }

    /// How many times faster shmq is.
    fn ratio(self, shmq: f64, kernel: f64) -> f64 {
        match self {
            Unit::Nanos => kernel / shmq,
            Unit::PerSec => shmq / kernel,
        }
    }
}

/// Bytes per second in decimal units: `850 MB/s`, `3.20 GB/s`.
fn byte_rate(b: f64) -> String {
    if b >= 1e9 {
        format!("{} GB/s", output::sig3(b / 1e9))
    } else if b >= 1e6 {
        format!("{} MB/s", output::sig3(b / 1e6))
    } else {
        format!("{} kB/s", output::sig3(b / 1e3))
    }
}

/// `16 B`, `4 KiB`.
fn size(len: usize) -> String {
    if len >= 1024 && len % 1024 == 0 {
        format!("{} KiB", len / 1024)
    } else {
        format!("{len} B")
    }
}

/// Progress on standard error: one line redrawn on a terminal, one line per
/// case otherwise.
struct Progress {
    on: bool,
    tty: bool,
}

impl Progress {
    fn case(&self, what: &str) {
        if self.on && !self.tty {
            eprintln!("mqtool bench: {what} …");
        }
    }

    fn step(&self, what: &str) {
        if self.on && self.tty {
            eprint!("\r\x1b[Kmqtool bench: {what}");
        }
    }

    fn done(&self) {
        if self.on && self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

/// A peer of a case: its name (for errors) and one run of `iters`
/// iterations.
type Peer<'a> = (&'a str, &'a mut dyn FnMut(u64) -> io::Result<Measure>);

/// Medians over the repetitions of one peer, and every repetition's figure
/// (in repetition order, so that peers' repetitions pair up).
#[derive(Clone)]
struct Stat {
    value: f64,
    p99: f64,
    values: Vec<f64>,
    p99s: Vec<f64>,
    /// Median context switches per message (NaN when unknown).
    csw: f64,
}

/// Settings of a run.
struct Plan {
    reps: u32,
    /// Wanted duration of one repetition of one peer.
    target: Duration,
    progress: Progress,
}

impl Plan {
    /// A number of iterations that takes about `target` (running the peer a
    /// few times, which also warms it up).
    fn calibrate(&self, run: &mut dyn FnMut(u64) -> io::Result<Measure>) -> io::Result<u64> {
        let mut n = 16u64;
        loop {
            let m = run(n)?;
            if m.elapsed >= self.target / 8 || n >= 1 << 36 {
                let scale = self.target.as_secs_f64() / m.elapsed.as_secs_f64().max(1e-9);
                return Ok(((n as f64 * scale) as u64).max(1));
            }
            n *= 4;
        }
    }

    /// Calibrates and runs the peers, interleaved (the order alternates
    /// between repetitions, so that drift hits all alike); their medians.
    fn run(&self, label: &str, peers: &mut [Peer<'_>]) -> Result<Vec<Stat>, Failure> {
        let fail = |peer: &str, e: io::Error| {
            Failure::plain(format!("bench: {label}: {peer}: {}", super::io_message(&e)))
        };
        self.progress.case(label);
        self.progress.step(&format!("{label}: calibrating"));
        let mut iters = Vec::with_capacity(peers.len());
        for (name, run) in peers.iter_mut() {
            iters.push(self.calibrate(*run).map_err(|e| fail(name, e))?);
        }
        let mut values = vec![Vec::new(); peers.len()];
        let mut p99s = vec![Vec::new(); peers.len()];
        let mut csws = vec![Vec::new(); peers.len()];
        for rep in 0..self.reps {
            self.progress
                .step(&format!("{label}: repetition {}/{}", rep + 1, self.reps));
            let mut order: Vec<usize> = (0..peers.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let (name, run) = &mut peers[i];
                let m = run(iters[i]).map_err(|e| fail(name, e))?;
                values[i].push(m.value);
                p99s[i].push(m.p99);
                csws[i].push(m.csw);
            }
        }
        Ok(values
            .into_iter()
            .zip(p99s)
            .zip(csws)
            .map(|((v, p), mut c)| Stat {
                value: median(&mut v.clone()),
                p99: median(&mut p.clone()),
                values: v,
                p99s: p,
                csw: median(&mut c),
            })
            .collect())
    }
}

/// A finished case.
struct Row {
    case: String,
    description: String,
    unit: Unit,
    msg_len: usize,
    shmq: f64,
    /// `None` when the kernel could not run the case.
    kernel: Option<f64>,
    /// shmq-only cases: the same measurement on an empty queue.
    baseline: Option<f64>,
    /// Every repetition's figure, for shmq and for the kernel or the
    /// baseline (whichever the row compares with).
    shmq_reps: Vec<f64>,
    other_reps: Vec<f64>,
    kernel_depth: Option<i64>,
    notes: Vec<String>,
    /// Context switches per message, shmq's (or the C peer's) and the
    /// kernel's, when measured.
    csw: Option<f64>,
    kernel_csw: Option<f64>,
    /// Whose figures `shmq` holds (see `BenchJson::peer`).
    peer: &'static str,
}

/// A context-switch figure, if there is one.
fn known(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl Row {
    /// The smallest and largest ratio over the repetitions (each shmq
    /// repetition against the kernel's or the baseline's run next to it):
    /// how far the median ratio can be trusted.
    fn ratio_range(&self) -> Option<(f64, f64)> {
        if self.kernel.is_none() && self.baseline.is_none() {
            return None;
        }
        let ratios: Vec<f64> = self
            .shmq_reps
            .iter()
            .zip(&self.other_reps)
            .map(|(&s, &o)| match self.baseline {
                Some(_) => s / o,
                None => self.unit.ratio(s, o),
            })
            .filter(|r| r.is_finite())
            .collect();
        let min = ratios.iter().copied().reduce(f64::min)?;
        let max = ratios.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }

    /// The widest spread (largest over smallest figure) of one peer's
    /// repetitions.
    fn spread(&self) -> f64 {
        [&self.shmq_reps, &self.other_reps]
            .into_iter()
            .filter_map(|v| {
                let min = v.iter().copied().reduce(f64::min)?;
                let max = v.iter().copied().reduce(f64::max)?;
                (min > 0.0).then(|| max / min)
            })
            .fold(1.0, f64::max)
    }
}

/// A kernel queue for a case, or why there is none.
struct KernelSide {
    mq: Option<KernelMq>,
    depth: i64,
    notes: Vec<String>,
}

/// Everything a run needs.
struct Bench {
    dir: std::path::PathBuf,
    pid: u32,
    plan: Plan,
    rows: Vec<Row>,
    /// Remarks on the run as a whole (e.g. a case that could not run).
    notes: Vec<String>,
    /// CPUs this process may use.
    cpus: usize,
    /// The 1-minute load average before and after the run.
    load_before: Option<f64>,
    load_after: Option<f64>,
}

/// The 1-minute load average, from `/proc/loadavg`.
fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Repetitions of one peer further apart than this (largest over smallest)
/// mean the machine was busy.
const MAX_SPREAD: f64 = 2.0;

impl Bench {
    /// Why the figures may not be what this machine gives when idle.
    fn warnings(&self) -> Vec<String> {
        warnings(&self.rows, self.cpus, self.load_before, self.load_after)
    }
}

/// Why figures may not be what an idle machine gives: a load average above
/// the CPU count before or after the run, or a case whose repetitions
/// differ by more than [`MAX_SPREAD`].
fn warnings(
    rows: &[Row],
    cpus: usize,
    load_before: Option<f64>,
    load_after: Option<f64>,
) -> Vec<String> {
    let mut w = Vec::new();
    let busy: Vec<String> = [("before", load_before), ("after", load_after)]
        .into_iter()
        .filter_map(|(when, l)| {
            l.filter(|&l| l > cpus as f64)
                .map(|l| format!("{l:.2} {when}"))
        })
        .collect();
    if !busy.is_empty() {
        w.push(format!(
            "the machine was busy: load average {} the run, above its {} CPU{}; \
             figures and ratios are not those of an idle machine",
            busy.join(", "),
            cpus,
            if cpus == 1 { "" } else { "s" }
        ));
    }
    let noisy: Vec<&str> = rows
        .iter()
        .filter(|r| !r.case.ends_with("-p99") && r.spread() > MAX_SPREAD)
        .map(|r| r.case.as_str())
        .collect();
    if !noisy.is_empty() {
        w.push(format!(
            "repetitions differed by more than {MAX_SPREAD}x in {}: something else was \
             running; read the ranges, or run again on a quiet machine",
            noisy.join(", ")
        ));
    }
    w
}

impl Bench {
    /// A shmq queue, created in the queue directory and unlinked at once,
    /// like the kernel ones: nothing is left behind, whatever happens.
    fn shmq_queue(
        &self,
        tag: &str,
        depth: usize,
        msg_len: usize,
    ) -> Result<shmq::PosixMq, Failure> {
        let name = format!("/mqtool-bench-{}-{tag}", self.pid);
        let q = shmq::OpenOptions::readwrite()
            .capacity(depth)
            .max_msg_len(msg_len)
            .create_new()
            .dir(&self.dir)
            .open(&name)
            .map_err(|e| Failure::new(format!("bench: {name}"), crate::exit::describe_io(&e)))?;
        shmq::remove_queue_in(&self.dir, &name)
            .map_err(|e| Failure::new(format!("bench: {name}"), crate::exit::describe_io(&e)))?;
        Ok(q)
    }

    /// A kernel queue as close to `depth` × `msg_len` as the limits allow.
    fn kernel_queue(&self, tag: &str, depth: usize, msg_len: usize) -> Result<KernelSide, Failure> {
        let name = format!("/mqtool-bench-{}-{tag}", self.pid);
        let want = i64::try_from(depth).unwrap_or(i64::MAX);
        let len = i64::try_from(msg_len).unwrap_or(i64::MAX);
        match kernel::create_fitted(&name, want, len) {
            Ok(kernel::Fit::Made(f)) => Ok(KernelSide {
                mq: Some(f.mq),
                depth: f.depth,
                notes: f.notes,
            }),
            Ok(kernel::Fit::Impossible(why)) => Ok(KernelSide {
                mq: None,
                depth: want,
                notes: vec![format!("the kernel row could not run: {why}")],
            }),
            Err(e) => Err(Failure::plain(format!(
                "bench: kernel queue {name}: {}",
                super::io_message(&e)
            ))),
        }
    }

    /// Runs shmq, and the kernel when it has a queue, side by side.
    fn versus(
        &self,
        label: &str,
        shmq: &mut dyn FnMut(u64) -> io::Result<Measure>,
        kernel: Option<&mut dyn FnMut(u64) -> io::Result<Measure>>,
    ) -> Result<(Stat, Option<Stat>), Failure> {
        let mut peers: Vec<Peer<'_>> = vec![("shmq", shmq)];
        if let Some(k) = kernel {
            peers.push(("kernel mq", k));
        }
        let stats = self.plan.run(label, &mut peers)?;
        Ok((stats[0].clone(), stats.get(1).cloned()))
    }

    /// The uncontended send+receive pair of `msg_len`-byte messages.
    fn pair(&mut self, msg_len: usize) -> Result<(), Failure> {
        let tag = format!("pair-{msg_len}");
        let msg = vec![0x5au8; msg_len];
        let s = self.shmq_queue(&tag, 10, msg_len)?;
        let k = self.kernel_queue(&tag, 10, msg_len)?;
        let description = format!("send+receive pair, {}, one thread", size(msg_len));
        let (sv, kv) = match &k.mq {
            Some(kq) => self.versus(
                &description,
                &mut |n| pair(&s, &msg, n),
                Some(&mut |n| pair(kq, &msg, n)),
            )?,
            None => self.versus(&description, &mut |n| pair(&s, &msg, n), None)?,
        };
        self.rows.push(Row {
            case: if msg_len == SMALL {
                "pair".into()
            } else {
                format!("pair-{}", size(msg_len).replace(' ', "").to_lowercase())
            },
            description,
            unit: Unit::Nanos,
            msg_len,
            shmq: sv.value,
            kernel: kv.as_ref().map(|k| k.value),
            baseline: None,
            csw: known(sv.csw),
            kernel_csw: kv.as_ref().and_then(|k| known(k.csw)),
            shmq_reps: sv.values,
            other_reps: kv.map(|k| k.values).unwrap_or_default(),
            kernel_depth: None,
            notes: k.notes,
            peer: "rust",
        });
        Ok(())
    }

    /// Ping-pong with the two sides on two different CPUs.
    fn ping_pong_across(&mut self, cpus: &[usize]) -> Result<(), Failure> {
        let &[a, b, ..] = cpus else {
            self.notes.push(
                "ping-pong across CPUs did not run: this process may use one CPU only".into(),
            );
            return Ok(());
        };
        let (sp, sq) = (
            self.shmq_queue("ping", 10, SMALL)?,
            self.shmq_queue("pong", 10, SMALL)?,
        );
        let kp = self.kernel_queue("ping", 10, SMALL)?;
        let kq = self.kernel_queue("pong", 10, SMALL)?;
        let label = "ping-pong across CPUs";
        let (sv, kv) = match (&kp.mq, &kq.mq) {
            (Some(kp), Some(kq)) => self.versus(
                label,
                &mut |n| ping_pong(&sp, &sq, Some((a, b)), n),
                Some(&mut |n| ping_pong(kp, kq, Some((a, b)), n)),
            )?,
            _ => self.versus(label, &mut |n| ping_pong(&sp, &sq, Some((a, b)), n), None)?,
        };
        let mut notes = [kp.notes, kq.notes].concat();
        notes.push(format!(
            "ping-pong across CPUs: the two threads pinned to cpu{a} and cpu{b}"
        ));
        self.push_ping_pong("pingpong", label, sv, kv, &notes);
        Ok(())
    }

    /// Ping-pong with both sides on one CPU, where spinning cannot help: the
    /// queue opened by a thread already pinned (as in a process started
    /// under `taskset`), and a queue opened before pinning; shmq must see
    /// at each wait that the peer shares the CPU, in both.
    fn ping_pong_one_cpu(&mut self, cpus: &[usize]) -> Result<(), Failure> {
        let Some(&a) = cpus.first() else {
            return Ok(());
        };
        let early = if cpus.len() > 1 {
            Some((
                self.shmq_queue("ping-early", 10, SMALL)?,
                self.shmq_queue("pong-early", 10, SMALL)?,
            ))
        } else {
            None
        };
        let pinned = cpu::Pinned::to(a).map_err(|e| {
            Failure::plain(format!(
                "bench: pinning to cpu{a}: {}",
                super::io_message(&e)
            ))
        })?;
        let (sp, sq) = (
            self.shmq_queue("ping-1cpu", 10, SMALL)?,
            self.shmq_queue("pong-1cpu", 10, SMALL)?,
        );
        let kp = self.kernel_queue("ping-1cpu", 10, SMALL)?;
        let kq = self.kernel_queue("pong-1cpu", 10, SMALL)?;
        let label = "ping-pong on one CPU";
        let on = Some((a, a));
        let mut run_shmq = |n| ping_pong(&sp, &sq, on, n);
        let mut run_early = |n| match &early {
            Some((p, q)) => ping_pong(p, q, on, n),
            None => Err(io::Error::other("no queue")),
        };
        let mut run_kernel = |n| match (&kp.mq, &kq.mq) {
            (Some(p), Some(q)) => ping_pong(p, q, on, n),
            _ => Err(io::Error::other("no queue")),
        };
        let mut peers: Vec<Peer<'_>> = vec![("shmq", &mut run_shmq)];
        if early.is_some() {
            peers.push(("shmq (opened before pinning)", &mut run_early));
        }
        let with_kernel = kp.mq.is_some() && kq.mq.is_some();
        if with_kernel {
            peers.push(("kernel mq", &mut run_kernel));
        }
        let stats = self.plan.run(label, &mut peers)?;
        drop(peers);
        drop(pinned);
        let kernel = with_kernel.then(|| stats[stats.len() - 1].clone());
        let mut notes = [kp.notes, kq.notes].concat();
        notes.push(format!(
            "ping-pong on one CPU: both threads pinned to cpu{a}, the shmq queue opened after pinning"
        ));
        self.push_ping_pong(
            "pingpong-1cpu",
            label,
            stats[0].clone(),
            kernel.clone(),
            &notes,
        );
        if early.is_some() {
            notes.pop();
            notes.push(format!(
                "late pinning: the shmq queue was opened before its threads were pinned to cpu{a}"
            ));
            self.push_ping_pong(
                "pingpong-1cpu-late",
                "ping-pong on one CPU, late pinning",
                stats[1].clone(),
                kernel,
                &notes,
            );
        }
        Ok(())
    }

    /// The median and p99 rows of a ping-pong case.
    fn push_ping_pong(
        &mut self,
        case: &str,
        label: &str,
        shmq: Stat,
        kernel: Option<Stat>,
        notes: &[String],
    ) {
        self.push_ping_pong_of("rust", case, label, shmq, kernel, notes);
    }

    /// [`push_ping_pong`](Self::push_ping_pong) for the figures of `peer`.
    fn push_ping_pong_of(
        &mut self,
        peer: &'static str,
        case: &str,
        label: &str,
        shmq: Stat,
        kernel: Option<Stat>,
        notes: &[String],
    ) {
        for (suffix, what, s, k, s_reps, k_reps) in [
            (
                "",
                "median",
                shmq.value,
                kernel.as_ref().map(|k| k.value),
                &shmq.values,
                kernel.as_ref().map(|k| &k.values),
            ),
            (
                "-p99",
                "p99",
                shmq.p99,
                kernel.as_ref().map(|k| k.p99),
                &shmq.p99s,
                kernel.as_ref().map(|k| &k.p99s),
            ),
        ] {
            self.rows.push(Row {
                case: format!("{case}{suffix}"),
                description: format!("{label}, {what}"),
                unit: Unit::Nanos,
                msg_len: SMALL,
                shmq: s,
                kernel: k,
                baseline: None,
                shmq_reps: s_reps.clone(),
                other_reps: k_reps.cloned().unwrap_or_default(),
                kernel_depth: None,
                notes: notes.to_vec(),
                csw: known(shmq.csw),
                kernel_csw: kernel.as_ref().and_then(|k| known(k.csw)),
                peer,
            });
        }
    }

    /// `producers` threads streaming `msg_len`-byte messages to one
    /// receiver through a queue of `depth` messages.
    fn stream(&mut self, producers: u64, msg_len: usize, depth: usize) -> Result<(), Failure> {
        let tag = format!("stream-{producers}-{msg_len}-{depth}");
        let msg = vec![0x5au8; msg_len];
        let s = self.shmq_queue(&tag, depth, msg_len)?;
        let k = self.kernel_queue(&tag, depth, msg_len)?;
        let what = if producers == 1 {
            "streaming 1->1".to_string()
        } else {
            format!("{producers} producers -> 1 consumer")
        };
        let mut description = format!("{what}, {}, depth {depth}", size(msg_len));
        if k.mq.is_some() && k.depth != depth as i64 {
            description.push_str(&format!(" (kernel: {})", k.depth));
        }
        let (sv, kv) = match &k.mq {
            Some(kq) => self.versus(
                &description,
                &mut |n| stream(&s, producers, &msg, n),
                Some(&mut |n| stream(kq, producers, &msg, n)),
            )?,
            None => self.versus(&description, &mut |n| stream(&s, producers, &msg, n), None)?,
        };
        let case = match (producers, msg_len) {
            (1, SMALL) => format!("stream-{depth}"),
            (1, _) => format!(
                "stream-{}-{depth}",
                size(msg_len).replace(' ', "").to_lowercase()
            ),
            _ => format!("mpsc{producers}-{depth}"),
        };
        self.rows.push(Row {
            case,
            description,
            unit: Unit::PerSec,
            msg_len,
            shmq: sv.value,
            kernel: kv.as_ref().map(|k| k.value),
            baseline: None,
            csw: known(sv.csw),
            kernel_csw: kv.as_ref().and_then(|k| known(k.csw)),
            shmq_reps: sv.values,
            other_reps: kv.map(|k| k.values).unwrap_or_default(),
            kernel_depth: k.mq.is_some().then_some(k.depth),
            notes: k.notes,
            peer: "rust",
        });
        Ok(())
    }

    /// shmq alone: the pair on a queue holding 100,000 messages, and on one
    /// with 32,768 distinct priorities in use, against the pair on an empty
    /// queue (all at the top priority, 32,767), interleaved.
    fn cost_vs_contents(&mut self) -> Result<(), Failure> {
        const DEEP: usize = 100_000;
        const TOP: u32 = 32_767;
        let fill = |q: &shmq::PosixMq, prio: &dyn Fn(usize) -> u32, n: usize| {
            (0..n).try_for_each(|i| q.send(prio(i), &MSG)).map_err(|e| {
                Failure::plain(format!("bench: filling a queue: {}", super::io_message(&e)))
            })
        };
        let empty = self.shmq_queue("empty", 10, SMALL)?;
        // 100,000 messages at the pair's priority: each pair appends one and
        // takes the oldest, so the queue stays 100,000 deep.
        let deep = self.shmq_queue("deep", DEEP + 1, SMALL)?;
        fill(&deep, &|_| TOP, DEEP)?;
        // One message at each priority below the pair's: with the pair's own,
        // all 32,768 priorities are in use.
        let spread = self.shmq_queue("spread", TOP as usize + 1, SMALL)?;
        fill(&spread, &|i| i as u32, TOP as usize)?;
        let stats = self.plan.run(
            "cost vs queue contents",
            &mut [
                ("shmq, empty queue", &mut |n| pair_at(&empty, TOP, n)),
                ("shmq, 100,000 queued", &mut |n| pair_at(&deep, TOP, n)),
                ("shmq, 32,768 priorities", &mut |n| pair_at(&spread, TOP, n)),
            ],
        )?;
        for (case, description, stat) in [
            (
                "pair-100000-queued",
                "send+receive pair, 100,000 messages queued",
                &stats[1],
            ),
            (
                "pair-32768-priorities",
                "send+receive pair, 32,768 distinct priorities",
                &stats[2],
            ),
        ] {
            self.rows.push(Row {
                case: case.into(),
                description: description.into(),
                unit: Unit::Nanos,
                msg_len: SMALL,
                shmq: stat.value,
                kernel: None,
                baseline: Some(stats[0].value),
                shmq_reps: stat.values.clone(),
                other_reps: stats[0].values.clone(),
                kernel_depth: None,
                notes: Vec::new(),
                csw: None,
                kernel_csw: None,
                peer: "rust",
            });
        }
        Ok(())
    }
}

impl Bench {
    /// The cases of threads in one process, through the Rust API.
    fn threads(&mut self, cpus: &[usize]) -> Result<(), Failure> {
        self.pair(SMALL)?;
        for len in [16, 4096, 65536] {
            self.pair(len)?;
        }
        self.ping_pong_across(cpus)?;
        self.ping_pong_one_cpu(cpus)?;
        for len in [SMALL, 16] {
            for depth in [10, 256] {
                self.stream(1, len, depth)?;
            }
        }
        self.stream(1, 4096, 10)?;
        self.stream(1, 4096, 256)?;
        self.stream(1, 65536, 10)?;
        self.stream(4, SMALL, 256)?;
        self.stream(4, SMALL, 10)?;
        self.cost_vs_contents()?;
        self.ack_vs_plain()
    }

    /// shmq alone: the pair with acknowledgement (send, pending receive,
    /// ack) against the plain pair, interleaved, on one empty queue.
    fn ack_vs_plain(&mut self) -> Result<(), Failure> {
        let q = self.shmq_queue("ack", 10, SMALL)?;
        let stats = self.plan.run(
            "pair with acknowledgement",
            &mut [
                ("shmq, plain pair", &mut |n| pair_at(&q, 1, n)),
                ("shmq, pair with ack", &mut |n| ack_pair(&q, 1, n)),
            ],
        )?;
        self.rows.push(Row {
            case: "pair-ack".into(),
            description: "send + receive pending + ack, against the plain pair".into(),
            unit: Unit::Nanos,
            msg_len: SMALL,
            shmq: stats[1].value,
            kernel: None,
            baseline: Some(stats[0].value),
            csw: None,
            kernel_csw: None,
            shmq_reps: stats[1].values.clone(),
            other_reps: stats[0].values.clone(),
            kernel_depth: None,
            notes: Vec::new(),
            peer: "rust",
        });
        Ok(())
    }
}

pub fn run(ctx: &Ctx, a: &BenchArgs) -> Outcome {
    let mut b = Bench {
        dir: ctx.dir()?.to_path_buf(),
        pid: std::process::id(),
        plan: Plan {
            reps: a.reps.unwrap_or(if a.quick { 3 } else { 7 }),
            target: if a.quick {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(180)
            },
            progress: Progress {
                on: !a.quiet,
                tty: io::stderr().is_terminal(),
            },
        },
        rows: Vec::new(),
        notes: Vec::new(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_before: loadavg(),
        load_after: None,
    };
    let cpus = cpu::allowed()
        .map_err(|e| Failure::plain(format!("bench: CPU affinity: {}", super::io_message(&e))))?;
    let shapes: Vec<Shape> = if a.full {
        let mut all = vec![Shape::Threads, Shape::Processes];
        if a.c_prog.is_some() {
            all.push(Shape::C);
        }
        all
    } else if a.shape.is_empty() {
        vec![Shape::Threads]
    } else {
        a.shape.clone()
    };
    if shapes.contains(&Shape::C) && a.c_prog.is_none() {
        return Err(Failure::plain(
            "bench: --shape c needs --c-prog (make -C capi/bench builds it)",
        ));
    }
    if shapes.contains(&Shape::Threads) {
        b.threads(&cpus)?;
    }
    if shapes.contains(&Shape::Processes) {
        b.processes(&cpus)?;
    }
    if let (true, Some(prog)) = (shapes.contains(&Shape::C), &a.c_prog) {
        b.c_cases(prog, a.preload.as_deref(), &cpus)?;
    }
    b.plan.progress.done();
    b.load_after = loadavg();
    if let Some(path) = &a.svg {
        let subtitle = format!(
            "medians of {} interleaved repetitions (bars: lowest to highest), {} CPU{}, load average {} before, {} after{}",
            b.plan.reps,
            b.cpus,
            if b.cpus == 1 { "" } else { "s" },
            b.load_before.map_or("?".into(), |l| format!("{l:.2}")),
            b.load_after.map_or("?".into(), |l| format!("{l:.2}")),
            if cfg!(debug_assertions) {
                ", debug build"
            } else {
                ""
            }
        );
        std::fs::write(path, svg::render(&b.rows, &subtitle, &b.warnings()))
            .map_err(|e| Failure::new(path.display().to_string(), super::io_message(&e)))?;
    }
    report(ctx, &b)?;
    Ok(Exit::Success)
}

fn report(ctx: &Ctx, b: &Bench) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let warnings = b.warnings();
    if ctx.json {
        for w in &warnings {
            eprintln!("mqtool bench: warning: {w}");
        }
        for r in &b.rows {
            let range = r.ratio_range();
            json_line(
                &mut out,
                &BenchJson {
                    kind: "bench",
                    case: &r.case,
                    description: &r.description,
                    unit: r.unit.json(),
                    shmq: r.shmq,
                    kernel: r.kernel,
                    ratio: r.kernel.map(|k| r.unit.ratio(r.shmq, k)),
                    repetitions: b.plan.reps,
                    kernel_depth: r.kernel_depth,
                    note: (!r.notes.is_empty()).then(|| r.notes.join("; ")),
                    msg_len: r.msg_len,
                    baseline: r.baseline,
                    ratio_min: range.map(|r| r.0),
                    ratio_max: range.map(|r| r.1),
                    spread: r.spread(),
                    csw_shmq: r.csw,
                    csw_kernel: r.kernel_csw,
                    peer: r.peer,
                    shmq_min: r.shmq_reps.iter().copied().reduce(f64::min),
                    shmq_max: r.shmq_reps.iter().copied().reduce(f64::max),
                    kernel_min: r.other_reps.iter().copied().reduce(f64::min),
                    kernel_max: r.other_reps.iter().copied().reduce(f64::max),
                },
            )?;
        }
        json_line(
            &mut out,
            &output::BenchSummaryJson {
                kind: "bench-summary",
                cpus: b.cpus,
                loadavg_before: b.load_before,
                loadavg_after: b.load_after,
                warnings,
            },
        )?;
        return out.flush();
    }
    let cpus = b.cpus;
    writeln!(
        out,
        "shmq vs the kernel's mq, medians of {} interleaved repetitions, {cpus} CPU{}",
        b.plan.reps,
        if cpus == 1 { "" } else { "s" }
    )?;
    let versus: Vec<Vec<String>> = b
        .rows
        .iter()
        .filter(|r| r.baseline.is_none())
        .map(|r| {
            let (kernel, ratio) = match r.kernel {
                Some(k) => (
                    r.unit.show(k, r.msg_len),
                    format!("{}x", output::sig3(r.unit.ratio(r.shmq, k))),
                ),
                None => ("-".into(), "-".into()),
            };
            vec![
                r.description.clone(),
                r.unit.show(r.shmq, r.msg_len),
                kernel,
                csw_text(r),
                ratio,
                range_text(r),
            ]
        })
        .collect();
    output::table(
        &mut out,
        &[
            "CASE",
            ">SHMQ",
            ">KERNEL MQ",
            ">CS/MSG",
            ">SPEED-UP",
            ">RANGE",
        ],
        &versus,
    )?;
    writeln!(
        out,
        "(speed-up: how many times faster shmq (or the C row's peer) is than the kernel's mq, \
         median;\n range: the lowest and highest speed-up over the repetitions; cs/msg: \
         context switches per message, shmq/kernel, median)"
    )?;
    let alone: Vec<Vec<String>> = b
        .rows
        .iter()
        .filter_map(|r| {
            let base = r.baseline?;
            Some(vec![
                r.description.clone(),
                r.unit.show(r.shmq, r.msg_len),
                r.unit.show(base, r.msg_len),
                format!("{}x", output::sig3(r.shmq / base)),
                range_text(r),
            ])
        })
        .collect();
    if !alone.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "shmq alone, cost vs queue contents (more than the kernel's mq can hold)"
        )?;
        output::table(
            &mut out,
            &["CASE", ">SHMQ", ">EMPTY QUEUE", ">SLOWDOWN", ">RANGE"],
            &alone,
        )?;
        writeln!(
            out,
            "(slowdown: time over the same pair on an empty queue; flat is within 1.2x)"
        )?;
    }
    let mut seen = std::collections::HashSet::new();
    for note in b
        .rows
        .iter()
        .flat_map(|r| &r.notes)
        .chain(&b.notes)
        .filter(|n| seen.insert(n.as_str()))
    {
        writeln!(out, "note: {note}")?;
    }
    if cfg!(debug_assertions) {
        writeln!(
            out,
            "note: this mqtool is a debug build; its shmq figures are not representative"
        )?;
    }
    for w in &warnings {
        writeln!(out, "warning: {w}")?;
    }
    out.flush()
}

/// `0.01/1.00`: context switches per message, shmq's and the kernel's.
fn csw_text(r: &Row) -> String {
    let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    format!("{}/{}", show(r.csw), show(r.kernel_csw))
}

/// `0.95-1.30x`: the ratio's range over the repetitions.
fn range_text(r: &Row) -> String {
    match r.ratio_range() {
        Some((lo, hi)) => format!("{}-{}x", output::sig3(lo), output::sig3(hi)),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(case: &str, unit: Unit, shmq: &[f64], kernel: &[f64]) -> Row {
        Row {
            case: case.into(),
            description: case.into(),
            unit,
            msg_len: SMALL,
            shmq: median(&mut shmq.to_vec()),
            kernel: (!kernel.is_empty()).then(|| median(&mut kernel.to_vec())),
            baseline: None,
            shmq_reps: shmq.to_vec(),
            other_reps: kernel.to_vec(),
            kernel_depth: None,
            notes: Vec::new(),
            csw: None,
            kernel_csw: None,
            peer: "rust",
        }
    }

    #[test]
    fn ratio_range_pairs_repetitions() {
        // Times: the kernel over shmq, repetition by repetition.
        let r = row(
            "pair",
            Unit::Nanos,
            &[10.0, 20.0, 10.0],
            &[100.0, 100.0, 300.0],
        );
        assert_eq!(r.ratio_range(), Some((5.0, 30.0)));
        assert_eq!(r.spread(), 3.0);
        // Rates: shmq over the kernel.
        let r = row("stream-10", Unit::PerSec, &[2e6, 4e6], &[1e6, 1e6]);
        assert_eq!(r.ratio_range(), Some((2.0, 4.0)));
        assert_eq!(row("x", Unit::Nanos, &[1.0], &[]).ratio_range(), None);
    }

    #[test]
    fn busy_machines_are_flagged() {
        let quiet = [row("pair", Unit::Nanos, &[10.0, 11.0], &[100.0, 120.0])];
        assert!(warnings(&quiet, 2, Some(0.3), Some(1.9)).is_empty());
        let w = warnings(&quiet, 2, Some(0.3), Some(3.5));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("busy") && w[0].contains("3.50 after"),
            "{w:?}"
        );
        let noisy = [
            row("stream-10", Unit::PerSec, &[1e6, 3e6], &[1e6, 1e6]),
            // A p99's spread is its nature, not a sign of load.
            row("pingpong-p99", Unit::Nanos, &[1e3, 9e3], &[1e4, 1e4]),
        ];
        let w = warnings(&noisy, 2, None, None);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("stream-10") && !w[0].contains("p99"), "{w:?}");
    }
}
