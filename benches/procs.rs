//! Ping-pong round trip between two processes, 64-byte messages: shmq and
//! the kernel's mq side by side in one run, interleaved, medians of several
//! repetitions, and their ratio. Each process is forked before any queue is
//! opened and pinned before it opens its queues, as under `taskset`: across
//! two CPUs, then both on one CPU (skipped with fewer than two CPUs).
//!
//! `cargo bench --bench procs` (add `-- --quick` for a short run).

use std::ffi::CString;
use std::path::Path;
use std::time::Instant;

const LEN: usize = 64;

/// One side of a queue pair, opened in the process that uses it.
enum Ends {
    Shmq(shmq::PosixMq, shmq::PosixMq),
    Kernel(libc::mqd_t, libc::mqd_t),
}

impl Ends {
    fn open(kernel: bool, dir: &Path, ping: &str, pong: &str) -> Ends {
        if kernel {
            let open = |n: &str| {
                let c = CString::new(n).unwrap();
                // SAFETY: `c` is NUL-terminated; without O_CREAT mq_open reads
                // no variadic argument.
                let q = unsafe { libc::mq_open(c.as_ptr(), libc::O_RDWR) };
                assert_ne!(q, -1, "mq_open {n}: {}", std::io::Error::last_os_error());
                q
            };
            Ends::Kernel(open(ping), open(pong))
        } else {
            let open = |n: &str| shmq::OpenOptions::readwrite().dir(dir).open(n).unwrap();
            Ends::Shmq(open(ping), open(pong))
        }
    }

    /// Sends on the first queue (`back`: on the second).
    fn send(&self, back: bool, msg: &[u8]) {
        match self {
            Ends::Shmq(p, q) => (if back { q } else { p }).send(1, msg).unwrap(),
            Ends::Kernel(p, q) => {
                let d = if back { *q } else { *p };
                // SAFETY: `d` is an open kernel queue; `msg` is valid for its
                // length.
                let r = unsafe { libc::mq_send(d, msg.as_ptr().cast(), msg.len(), 1) };
                assert_eq!(r, 0, "mq_send: {}", std::io::Error::last_os_error());
            }
        }
    }

    /// Receives from the first queue (`back`: from the second).
    fn recv(&self, back: bool, buf: &mut [u8]) -> usize {
        match self {
            Ends::Shmq(p, q) => (if back { q } else { p }).recv(buf).unwrap().1,
            Ends::Kernel(p, q) => {
                let d = if back { *q } else { *p };
                let mut prio = 0;
                // SAFETY: `d` is an open kernel queue; `buf` and `prio` are
                // valid for writes.
                let r =
                    unsafe { libc::mq_receive(d, buf.as_mut_ptr().cast(), buf.len(), &mut prio) };
                usize::try_from(r)
                    .unwrap_or_else(|_| panic!("mq_receive: {}", std::io::Error::last_os_error()))
            }
        }
    }
}

fn pin(cpu: usize) {
    // SAFETY: all-zero bytes are an empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is a CPU number the process may use, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is valid for reads of its size.
    let r = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(
        r,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// `iters` round trips between this process (pinned to `cpus.0`) and a
/// forked echo (pinned to `cpus.1`), each pinned before it opens the
/// queues: the median round trip in ns.
fn ping_pong(
    kernel: bool,
    dir: &Path,
    names: (&str, &str),
    cpus: (usize, usize),
    iters: u64,
) -> f64 {
    // SAFETY: the bench is single-threaded here; the child only pins, opens
    // the queues, echoes and exits with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let ok = std::panic::catch_unwind(|| {
            pin(cpus.1);
            let e = Ends::open(kernel, dir, names.0, names.1);
            let mut buf = [0u8; LEN];
            for _ in 0..iters {
                let n = e.recv(false, &mut buf);
                e.send(true, &buf[..n]);
            }
        })
        .is_ok();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    // The parent runs each repetition on its own CPU too, then gets all of
    // them back.
    // SAFETY: all-zero bytes are an empty cpu_set_t.
    let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `old` is valid for writes of its size.
    unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut old) };
    pin(cpus.0);
    let e = Ends::open(kernel, dir, names.0, names.1);
    let msg = [0x5au8; LEN];
    let mut buf = [0u8; LEN];
    let mut rtt = Vec::with_capacity(iters as usize);
    let mut last = Instant::now();
    for _ in 0..iters {
        e.send(false, &msg);
        assert_eq!(e.recv(true, &mut buf), LEN);
        let now = Instant::now();
        rtt.push(now.duration_since(last).as_nanos() as f64);
        last = now;
    }
    if let Ends::Kernel(p, q) = e {
        // SAFETY: both are open kernel queues of this process, closed once.
        unsafe {
            libc::mq_close(p);
            libc::mq_close(q);
        }
    }
    let mut st = 0;
    // SAFETY: `pid` is this process's child; `st` is valid for writes.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "the echo failed"
    );
    // SAFETY: `old` is valid for reads of its size.
    unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &old) };
    median(rtt)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (reps, iters) = if quick { (3, 2_000) } else { (7, 20_000) };
    // SAFETY: all-zero bytes are an empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of its size.
    unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    // SAFETY: each CPU_ISSET reads one bit below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("shmq-bench-procs-{pid}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (ping, pong) = ("/ping", "/pong");
    let _queues: Vec<shmq::PosixMq> = [ping, pong]
        .iter()
        .map(|n| {
            shmq::OpenOptions::readwrite()
                .capacity(10)
                .max_msg_len(LEN)
                .create_new()
                .dir(&dir)
                .open(n)
                .unwrap()
        })
        .collect();
    let (kping, kpong) = (
        format!("/shmq-bench-ping-{pid}"),
        format!("/shmq-bench-pong-{pid}"),
    );
    let knames: Vec<CString> = [&kping, &kpong]
        .iter()
        .map(|n| CString::new(n.as_str()).unwrap())
        .collect();
    for n in &knames {
        // SAFETY: mq_attr is plain integers; all-zero bytes are valid.
        let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
        attr.mq_maxmsg = 10;
        attr.mq_msgsize = LEN as libc::c_long;
        // SAFETY: `n` is NUL-terminated, `attr` valid; with O_CREAT mq_open
        // reads the mode and the attributes.
        let q = unsafe {
            libc::mq_open(
                n.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
                0o600 as libc::c_uint,
                &raw mut attr,
            )
        };
        assert_ne!(q, -1, "mq_open: {}", std::io::Error::last_os_error());
        // SAFETY: `q` is open and not used again here.
        unsafe { libc::mq_close(q) };
    }
    let mut cases = Vec::new();
    if let [a, b, ..] = cpus[..] {
        cases.push(("ping-pong across CPUs, pinned before open", (a, b)));
    } else {
        println!("(one usable CPU: the case across CPUs is skipped)");
    }
    cases.push((
        "ping-pong on one CPU, pinned before open",
        (cpus[0], cpus[0]),
    ));
    for (what, on) in cases {
        let (mut s, mut k) = (Vec::new(), Vec::new());
        for rep in 0..reps {
            let run = |kernel: bool| {
                if kernel {
                    ping_pong(true, &dir, (&kping, &kpong), on, iters)
                } else {
                    ping_pong(false, &dir, (ping, pong), on, iters)
                }
            };
            // Alternate the order, so that drift hits both alike.
            if rep % 2 == 0 {
                s.push(run(false));
                k.push(run(true));
            } else {
                k.push(run(true));
                s.push(run(false));
            }
        }
        let ratios: Vec<f64> = s.iter().zip(&k).map(|(s, k)| k / s).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "{what}: shmq {:.0} ns, kernel {:.0} ns, median round trips of {reps} interleaved repetitions; speed-up {:.2}x ({lo:.2}-{hi:.2}x)",
            median(s.clone()),
            median(k.clone()),
            median(ratios.clone()),
        );
    }
    for n in &knames {
        // SAFETY: `n` is NUL-terminated.
        unsafe { libc::mq_unlink(n.as_ptr()) };
    }
    drop(_queues);
    std::fs::remove_dir_all(&dir).unwrap();
}
