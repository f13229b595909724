//! C cases: the program capi/bench/mqbench, which calls plain `mq_*`, run
//! against the kernel, through libshmq's C API (`-a shmq`), under the
//! drop-in (`LD_PRELOAD`) and, when built with Boost, against
//! Boost.Interprocess (`-a boost`); interleaved like every other case, each
//! beside the kernel.

use super::{Bench, Measure, Peer, SMALL, Unit, known};
use crate::exit::Failure;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A C case: its id, words, and mqbench's arguments.
struct Case {
    id: &'static str,
    words: &'static str,
    unit: Unit,
    depth: usize,
    args: Vec<String>,
    /// Two queues (`NAME-ping`, `NAME-pong`) rather than one.
    two: bool,
}

/// One peer of the C cases.
struct CPeer {
    id: &'static str,
    words: &'static str,
    api: &'static str,
    preload: Option<PathBuf>,
}

/// Runs mqbench once; its figure.
fn run_prog(
    prog: &Path,
    dir: &Path,
    peer: &CPeer,
    name: &str,
    exists: bool,
    case: &Case,
    iters: u64,
) -> io::Result<Measure> {
    let mut cmd = Command::new(prog);
    cmd.env("SHMQ_DIR", dir)
        .args(["-a", peer.api, "-n", name, "-l", &SMALL.to_string()])
        .args(["-d", &case.depth.to_string()])
        .args(exists.then_some("-x"))
        .args(&case.args)
        .arg(iters.max(1).to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(lib) = &peer.preload {
        cmd.env("LD_PRELOAD", lib);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} ended with {}",
            prog.display(),
            out.status
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let bad = || io::Error::other(format!("{} printed {text:?}", prog.display()));
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|w| w.parse().map_err(|_| bad()))
        .collect::<io::Result<_>>()?;
    let [value, p99, csw, elapsed] = f[..] else {
        return Err(bad());
    };
    Ok(Measure {
        value,
        p99: if p99 > 0.0 { p99 } else { f64::NAN },
        elapsed: Duration::from_nanos(elapsed.max(0.0) as u64),
        csw,
    })
}

/// Whether mqbench was built with Boost.
fn has_boost(prog: &Path) -> bool {
    Command::new(prog)
        .args([
            "-a",
            "boost",
            "-n",
            &format!("/mqtool-probe-{}", std::process::id()),
        ])
        .args(["pair", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Bench {
    /// Every C case that the CPUs allow.
    pub(super) fn c_cases(
        &mut self,
        prog: &Path,
        preload: Option<&Path>,
        cpus: &[usize],
    ) -> Result<(), Failure> {
        let mut peers = vec![CPeer {
            id: "capi",
            words: "C API",
            api: "shmq",
            preload: None,
        }];
        match preload {
            Some(lib) => peers.push(CPeer {
                id: "dropin",
                words: "drop-in",
                api: "kernel",
                preload: Some(std::path::absolute(lib).map_err(|e| {
                    Failure::plain(format!(
                        "bench: --preload: {}",
                        super::super::io_message(&e)
                    ))
                })?),
            }),
            None => self
                .notes
                .push("C: no --preload given, so no drop-in rows".into()),
        }
        if has_boost(prog) {
            peers.push(CPeer {
                id: "boost",
                words: "Boost.Interprocess",
                api: "boost",
                preload: None,
            });
        } else {
            self.notes.push(format!(
                "C: {} was built without Boost (make -C capi/bench boost), so no Boost rows",
                prog.display()
            ));
        }
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let first = cpus.first().copied().unwrap_or(0);
        let one = format!("{first},{first}");
        let mut cases = vec![Case {
            id: "pair",
            words: "send+receive pair, 64 B, one process",
            unit: Unit::Nanos,
            depth: 10,
            args: s(&["pair"]),
            two: false,
        }];
        if let [a, b, ..] = cpus {
            let two = format!("{a},{b}");
            cases.push(Case {
                id: "pingpong-before",
                words: "ping-pong across CPUs, pinned before open",
                unit: Unit::Nanos,
                depth: 10,
                args: s(&["-p", "before", "-c", &two, "pingpong"]),
                two: true,
            });
            for (id, words, depth) in [
                (
                    "stream-10-before",
                    "streaming 1->1, 64 B, depth 10, pinned before open",
                    10,
                ),
                (
                    "stream-256-before",
                    "streaming 1->1, 64 B, depth 256, pinned before open",
                    256,
                ),
            ] {
                cases.push(Case {
                    id,
                    words,
                    unit: Unit::PerSec,
                    depth,
                    args: s(&["-p", "before", "-c", &two, "stream"]),
                    two: false,
                });
            }
        } else {
            self.notes
                .push("C: one usable CPU, so the cross-CPU cases did not run".into());
        }
        cases.push(Case {
            id: "pingpong-1cpu",
            words: "ping-pong on one CPU, pinned before open",
            unit: Unit::Nanos,
            depth: 10,
            args: s(&["-p", "before", "-c", &one, "pingpong"]),
            two: true,
        });
        cases.push(Case {
            id: "stream-256-unpinned",
            words: "streaming 1->1, 64 B, depth 256, unpinned",
            unit: Unit::PerSec,
            depth: 256,
            args: s(&["stream"]),
            two: false,
        });
        cases.push(Case {
            id: "mpsc4-256-unpinned",
            words: "4 producers -> 1 consumer, 64 B, depth 256, unpinned",
            unit: Unit::PerSec,
            depth: 256,
            args: s(&["-P", "4", "stream"]),
            two: false,
        });
        for case in &cases {
            self.c_case(prog, &peers, case)?;
        }
        Ok(())
    }

    fn c_case(&mut self, prog: &Path, peers: &[CPeer], case: &Case) -> Result<(), Failure> {
        let base = format!("/mqtool-bench-{}-c{}", self.pid, case.id);
        let mut notes = Vec::new();
        // The kernel's queues are made here, within the system's limits
        // (see `kernel`), and left named for mqbench -x.
        let mut kq = Vec::new();
        let suffixes: &[&str] = if case.two { &["-ping", "-pong"] } else { &[""] };
        let mut kernel_depth = None;
        for sfx in suffixes {
            if let Some((q, d)) =
                self.named_kernel(&format!("{base}{sfx}"), case.depth, &mut notes)?
            {
                kq.push(q);
                kernel_depth = Some(d);
            }
        }
        let with_kernel = kq.len() == suffixes.len();
        let dir = self.dir.clone();
        let kernel_peer = CPeer {
            id: "kernel",
            words: "kernel mq",
            api: "kernel",
            preload: None,
        };
        let mut runs: Vec<Box<dyn FnMut(u64) -> io::Result<Measure> + '_>> = Vec::new();
        for p in peers {
            let name = format!("{base}-{}", p.id);
            let dir = dir.clone();
            runs.push(Box::new(move |n| {
                run_prog(prog, &dir, p, &name, false, case, n)
            }));
        }
        if with_kernel {
            let kernel_peer = &kernel_peer;
            let base = base.clone();
            let dir = dir.clone();
            runs.push(Box::new(move |n| {
                run_prog(prog, &dir, kernel_peer, &base, true, case, n)
            }));
        }
        let names: Vec<String> = peers
            .iter()
            .map(|p| p.words.to_string())
            .chain(with_kernel.then(|| "kernel mq".to_string()))
            .collect();
        let label = format!("C: {}", case.words);
        let mut list: Vec<Peer<'_>> = names
            .iter()
            .map(String::as_str)
            .zip(runs.iter_mut())
            .map(|(n, r)| (n, &mut **r as &mut dyn FnMut(u64) -> io::Result<Measure>))
            .collect();
        let stats = self.plan.run(&label, &mut list)?;
        drop(list);
        drop(runs);
        drop(kq);
        let kernel = with_kernel.then(|| stats[stats.len() - 1].clone());
        for (p, st) in peers.iter().zip(&stats) {
            let id = format!("c-{}-{}", p.id, case.id);
            let words = format!("C, {}: {}", p.words, case.words);
            if case.args.iter().any(|a| a == "pingpong") {
                let peer = match p.id {
                    "capi" => "c-api",
                    "dropin" => "drop-in",
                    _ => "boost",
                };
                self.push_ping_pong_of(peer, &id, &words, st.clone(), kernel.clone(), &notes);
                continue;
            }
            self.rows.push(super::Row {
                case: id,
                description: words,
                unit: case.unit,
                msg_len: SMALL,
                shmq: st.value,
                kernel: kernel.as_ref().map(|k| k.value),
                baseline: None,
                csw: known(st.csw),
                kernel_csw: kernel.as_ref().and_then(|k| known(k.csw)),
                shmq_reps: st.values.clone(),
                other_reps: kernel
                    .as_ref()
                    .map(|k| k.values.clone())
                    .unwrap_or_default(),
                kernel_depth: if case.unit == Unit::PerSec {
                    kernel_depth
                } else {
                    None
                },
                notes: notes.clone(),
                peer: match p.id {
                    "capi" => "c-api",
                    "dropin" => "drop-in",
                    _ => "boost",
                },
            });
        }
        Ok(())
    }
}
