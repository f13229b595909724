//! `mqtool bench`: shmq and the kernel's mq side by side, in one run.
//!
//! Every case runs both peers with the same code (generic over
//! [`Endpoint`]), interleaved repetition by repetition (the order alternates,
//! so drift hits both), and reports medians: this machine is noisy.
//! Iteration counts are calibrated so that each repetition takes about the
//! same time for both peers.

mod kernel;

use super::Ctx;
use crate::cli::BenchArgs;
use crate::exit::{Exit, Failure, Outcome};
use crate::output::{self, BenchJson, json_line};
use kernel::KernelMq;
use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

/// Message size of every case.
const MSG_LEN: usize = 64;
const MSG: [u8; MSG_LEN] = [0x5a; MSG_LEN];

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

/// One measurement: the figure (ns per operation, or messages per second)
/// and how long it took.
#[derive(Clone, Copy)]
struct Measure {
    value: f64,
    elapsed: Duration,
}

/// Send + receive in one thread, `iters` times: ns per pair.
fn pair<Q: Endpoint>(q: &Q, iters: u64) -> io::Result<Measure> {
    let mut buf = [0u8; MSG_LEN];
    let t = Instant::now();
    for _ in 0..iters {
        q.send(std::hint::black_box(&MSG))?;
        std::hint::black_box(q.recv(&mut buf)?);
    }
    let elapsed = t.elapsed();
    Ok(Measure {
        value: elapsed.as_nanos() as f64 / iters as f64,
        elapsed,
    })
}

/// Round trips through `ping` and back through `pong` (echoed by a second
/// thread), `iters` times: median ns per round trip.
fn ping_pong<Q: Endpoint>(ping: &Q, pong: &Q, iters: u64) -> io::Result<Measure> {
    std::thread::scope(|s| {
        let echo = s.spawn(|| -> io::Result<()> {
            let mut buf = [0u8; MSG_LEN];
            for _ in 0..iters {
                let n = ping.recv(&mut buf)?;
                pong.send(&buf[..n])?;
            }
            Ok(())
        });
        let mut buf = [0u8; MSG_LEN];
        let mut rtt = Vec::with_capacity(usize::try_from(iters).unwrap_or(0).min(1 << 24));
        let start = Instant::now();
        let mut last = start;
        for _ in 0..iters {
            ping.send(&MSG)?;
            pong.recv(&mut buf)?;
            let now = Instant::now();
            rtt.push(now.duration_since(last).as_nanos() as f64);
            last = now;
        }
        let elapsed = start.elapsed();
        echo.join()
            .map_err(|_| io::Error::other("the echo thread failed"))??;
        Ok(Measure {
            value: median(&mut rtt),
            elapsed,
        })
    })
}

/// One thread sends `iters` messages, another receives them: messages per
/// second.
fn stream<Q: Endpoint>(q: &Q, iters: u64) -> io::Result<Measure> {
    std::thread::scope(|s| {
        let start = Instant::now();
        let producer = s.spawn(|| -> io::Result<()> {
            for _ in 0..iters {
                q.send(&MSG)?;
            }
            Ok(())
        });
        let mut buf = [0u8; MSG_LEN];
        for _ in 0..iters {
            q.recv(&mut buf)?;
        }
        let elapsed = start.elapsed();
        producer
            .join()
            .map_err(|_| io::Error::other("the producer thread failed"))??;
        Ok(Measure {
            value: iters as f64 / elapsed.as_secs_f64(),
            elapsed,
        })
    })
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

    fn show(self, v: f64) -> String {
        match self {
            Unit::Nanos => output::nanos(v),
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

    /// Calibrates and runs both peers, interleaved; their medians.
    fn run(
        &self,
        label: &str,
        shmq: &mut dyn FnMut(u64) -> io::Result<Measure>,
        kernel: &mut dyn FnMut(u64) -> io::Result<Measure>,
    ) -> Result<(f64, f64), Failure> {
        let fail = |peer: &str, e: io::Error| {
            Failure::plain(format!("bench: {label}: {peer}: {}", super::io_message(&e)))
        };
        self.progress.case(label);
        self.progress.step(&format!("{label}: calibrating"));
        let ns = self.calibrate(shmq).map_err(|e| fail("shmq", e))?;
        let nk = self.calibrate(kernel).map_err(|e| fail("kernel mq", e))?;
        let (mut s, mut k) = (Vec::new(), Vec::new());
        for rep in 0..self.reps {
            self.progress
                .step(&format!("{label}: repetition {}/{}", rep + 1, self.reps));
            // Alternate who goes first, so that drift hits both alike.
            if rep % 2 == 0 {
                s.push(shmq(ns).map_err(|e| fail("shmq", e))?.value);
                k.push(kernel(nk).map_err(|e| fail("kernel mq", e))?.value);
            } else {
                k.push(kernel(nk).map_err(|e| fail("kernel mq", e))?.value);
                s.push(shmq(ns).map_err(|e| fail("shmq", e))?.value);
            }
        }
        Ok((median(&mut s), median(&mut k)))
    }
}

/// A finished case.
struct Row {
    case: &'static str,
    description: String,
    unit: Unit,
    shmq: f64,
    kernel: f64,
    kernel_depth: Option<i64>,
    note: Option<String>,
}

pub fn run(ctx: &Ctx, a: &BenchArgs) -> Outcome {
    let dir = ctx.dir()?.to_path_buf();
    let plan = Plan {
        reps: a.reps.unwrap_or(if a.quick { 3 } else { 7 }),
        target: if a.quick {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(250)
        },
        progress: Progress {
            on: !a.quiet,
            tty: io::stderr().is_terminal(),
        },
    };
    let pid = std::process::id();
    // shmq queues are created in the queue directory and unlinked at once,
    // like the kernel ones: nothing is left behind, whatever happens.
    let shmq_queue = |tag: &str, depth: usize| -> Result<shmq::PosixMq, Failure> {
        let name = format!("/mqtool-bench-{pid}-{tag}");
        let q = shmq::OpenOptions::readwrite()
            .capacity(depth)
            .max_msg_len(MSG_LEN)
            .create_new()
            .dir(&dir)
            .open(&name)
            .map_err(|e| Failure::new(format!("bench: {name}"), crate::exit::describe_io(&e)))?;
        shmq::remove_queue_in(&dir, &name)
            .map_err(|e| Failure::new(format!("bench: {name}"), crate::exit::describe_io(&e)))?;
        Ok(q)
    };
    let kernel_queue =
        |tag: &str, depth: i64| -> Result<(KernelMq, i64, Option<String>), Failure> {
            let name = format!("/mqtool-bench-{pid}-{tag}");
            match kernel::create_fitted(&name, depth, MSG_LEN as i64) {
                Ok(kernel::Fit::Made(f)) => Ok((
                    f.mq,
                    f.depth,
                    (!f.notes.is_empty()).then(|| f.notes.join("; ")),
                )),
                Ok(kernel::Fit::Impossible(why)) => {
                    Err(Failure::plain(format!("bench: kernel queue {name}: {why}")))
                }
                Err(e) => Err(Failure::plain(format!(
                    "bench: kernel queue {name}: {}",
                    super::io_message(&e)
                ))),
            }
        };

    let mut rows = Vec::new();
    {
        let s = shmq_queue("pair", 10)?;
        let (k, _, note) = kernel_queue("pair", 10)?;
        let (sv, kv) = plan.run("send+receive pair", &mut |n| pair(&s, n), &mut |n| {
            pair(&k, n)
        })?;
        rows.push(Row {
            case: "pair",
            description: "send+receive pair, one thread".into(),
            unit: Unit::Nanos,
            shmq: sv,
            kernel: kv,
            kernel_depth: None,
            note,
        });
    }
    {
        let (sp, sq) = (shmq_queue("ping", 10)?, shmq_queue("pong", 10)?);
        let (kp, _, _) = kernel_queue("ping", 10)?;
        let (kq, _, note) = kernel_queue("pong", 10)?;
        let (sv, kv) = plan.run("ping-pong", &mut |n| ping_pong(&sp, &sq, n), &mut |n| {
            ping_pong(&kp, &kq, n)
        })?;
        rows.push(Row {
            case: "pingpong",
            description: "ping-pong round trip, two threads".into(),
            unit: Unit::Nanos,
            shmq: sv,
            kernel: kv,
            kernel_depth: None,
            note,
        });
    }
    for depth in [10usize, 256] {
        let s = shmq_queue(&format!("stream{depth}"), depth)?;
        let (k, kdepth, note) = kernel_queue(&format!("stream{depth}"), depth as i64)?;
        let label = format!("streaming depth {depth}");
        let (sv, kv) = plan.run(&label, &mut |n| stream(&s, n), &mut |n| stream(&k, n))?;
        let description = if kdepth == depth as i64 {
            format!("streaming 1->1, depth {depth}")
        } else {
            format!("streaming 1->1, depth {depth} (kernel: {kdepth})")
        };
        rows.push(Row {
            case: if depth == 10 {
                "stream-10"
            } else {
                "stream-256"
            },
            description,
            unit: Unit::PerSec,
            shmq: sv,
            kernel: kv,
            kernel_depth: Some(kdepth),
            note,
        });
    }
    plan.progress.done();
    report(ctx, &plan, &rows)?;
    Ok(Exit::Success)
}

fn report(ctx: &Ctx, plan: &Plan, rows: &[Row]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if ctx.json {
        for r in rows {
            json_line(
                &mut out,
                &BenchJson {
                    kind: "bench",
                    case: r.case,
                    description: &r.description,
                    unit: r.unit.json(),
                    shmq: r.shmq,
                    kernel: r.kernel,
                    ratio: r.unit.ratio(r.shmq, r.kernel),
                    repetitions: plan.reps,
                    kernel_depth: r.kernel_depth,
                    note: r.note.clone(),
                },
            )?;
        }
        return out.flush();
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    writeln!(
        out,
        "shmq vs the kernel's mq, {MSG_LEN}-byte messages, medians of {} interleaved repetitions, {cpus} CPUs",
        plan.reps
    )?;
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.description.clone(),
                r.unit.show(r.shmq),
                r.unit.show(r.kernel),
                format!("{}x", output::sig3(r.unit.ratio(r.shmq, r.kernel))),
            ]
        })
        .collect();
    output::table(
        &mut out,
        &["CASE", ">SHMQ", ">KERNEL MQ", ">SPEED-UP"],
        &table,
    )?;
    writeln!(
        out,
        "(speed-up: how many times faster shmq is than the kernel's mq)"
    )?;
    for note in rows.iter().filter_map(|r| r.note.as_deref()) {
        writeln!(out, "note: {note}")?;
    }
    if cfg!(debug_assertions) {
        writeln!(
            out,
            "note: this mqtool is a debug build; its shmq figures are not representative"
        )?;
    }
    out.flush()
}
