//! Uncontended send+receive pair, 64-byte messages, one thread: shmq and the
//! kernel's mq side by side in one run, interleaved, medians of several
//! repetitions, and their ratio.
//!
//! `cargo bench --bench pair` (add `-- --quick` for a short run).

use std::ffi::CString;
use std::hint::black_box;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::{Duration, Instant};

const MSG: [u8; 64] = [0x5a; 64];

fn shmq_pair(iters: u64, mq: &shmq::PosixMq) -> Duration {
    let mut buf = [0u8; 64];
    let t = Instant::now();
    for _ in 0..iters {
        mq.send(1, black_box(&MSG)).unwrap();
        black_box(mq.recv(&mut buf).unwrap());
    }
    t.elapsed()
}

/// The pair with acknowledgement: send, pending receive, ack.
fn shmq_ack_pair(iters: u64, mq: &shmq::PosixMq) -> Duration {
    let mut buf = [0u8; 64];
    let t = Instant::now();
    for _ in 0..iters {
        mq.send(1, black_box(&MSG)).unwrap();
        let p = mq.recv_pending(&mut buf).unwrap();
        black_box(&buf);
        p.ack().unwrap();
    }
    t.elapsed()
}

fn kernel_pair(iters: u64, mqd: libc::mqd_t) -> Duration {
    let mut buf = [0u8; 64];
    let mut prio = 0;
    let t = Instant::now();
    for _ in 0..iters {
        // SAFETY: mqd is an open kernel queue; buffers are valid for their lengths.
        unsafe {
            assert_eq!(libc::mq_send(mqd, black_box(MSG.as_ptr().cast()), 64, 1), 0);
            assert_eq!(
                libc::mq_receive(mqd, buf.as_mut_ptr().cast(), 64, &mut prio),
                64
            );
        }
    }
    t.elapsed()
}

/// What this machine allows any queue that takes a lock per operation: the
/// lock word of a pair taken and released twice (a compare-and-swap and a
/// plain store, as shmq's lock does), with nothing in between.
fn lock_floor(iters: u64) -> Duration {
    static WORD: AtomicU32 = AtomicU32::new(0);
    let t = Instant::now();
    for _ in 0..iters {
        for _ in 0..2 {
            let w = black_box(&WORD);
            while w.compare_exchange(0, 1, Acquire, Relaxed).is_err() {}
            w.store(0, Release);
        }
    }
    t.elapsed()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (reps, shmq_iters, kernel_iters) = if quick {
        (3, 200_000, 20_000)
    } else {
        (7, 2_000_000, 200_000)
    };
    let dir = std::env::temp_dir().join(format!("shmq-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mq = shmq::OpenOptions::readwrite()
        .capacity(10)
        .max_msg_len(64)
        .create_new()
        .dir(&dir)
        .open("/bench-pair")
        .unwrap();
    let kname = CString::new(format!("/shmq-bench-pair-{}", std::process::id())).unwrap();
    let mut attr: libc::mq_attr = unsafe_zeroed_attr();
    attr.mq_maxmsg = 10;
    attr.mq_msgsize = 64;
    // SAFETY: valid name and attr pointers; variadic mode/attr passed as C expects.
    let mqd = unsafe {
        libc::mq_open(
            kname.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o600 as libc::c_uint,
            &mut attr as *mut libc::mq_attr,
        )
    };
    assert!(
        mqd >= 0,
        "kernel mq_open failed: {}",
        std::io::Error::last_os_error()
    );
    // Warm up both.
    shmq_pair(shmq_iters / 10, &mq);
    kernel_pair(kernel_iters / 10, mqd);
    shmq_ack_pair(shmq_iters / 10, &mq);
    let (mut s, mut k, mut f, mut a) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        s.push(shmq_pair(shmq_iters, &mq).as_nanos() as f64 / shmq_iters as f64);
        a.push(shmq_ack_pair(shmq_iters, &mq).as_nanos() as f64 / shmq_iters as f64);
        k.push(kernel_pair(kernel_iters, mqd).as_nanos() as f64 / kernel_iters as f64);
        f.push(lock_floor(shmq_iters).as_nanos() as f64 / shmq_iters as f64);
    }
    let (s, k, f, a) = (median(s), median(k), median(f), median(a));
    println!("uncontended send+receive pair, 64 B, median of {reps}:");
    println!("  shmq        {s:>9.1} ns");
    println!(
        "  shmq + ack  {a:>9.1} ns   (send, pending receive, ack: {:.2}x the plain pair)",
        a / s
    );
    println!("  kernel mq   {k:>9.1} ns");
    println!("  ratio       {:>9.1}x faster", k / s);
    println!(
        "  lock floor  {f:>9.1} ns   (lock taken and released twice, nothing else: {:.1}x the kernel at best)",
        k / f
    );
    // Cost against depth and priority spread: the same pair on a queue that
    // already holds many messages, of one or of all priorities.
    let per = |mq: &shmq::PosixMq, prio: u32| {
        let mut buf = [0u8; 64];
        let mut v = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            for _ in 0..shmq_iters {
                mq.send(prio, black_box(&MSG)).unwrap();
                black_box(mq.recv(&mut buf).unwrap());
            }
            v.push(t.elapsed().as_nanos() as f64 / shmq_iters as f64);
        }
        median(v)
    };
    let deep = shmq::OpenOptions::readwrite()
        .capacity(100_001)
        .max_msg_len(64)
        .create_new()
        .dir(&dir)
        .open("/bench-deep")
        .unwrap();
    for _ in 0..100_000 {
        deep.send(1, &MSG).unwrap();
    }
    let spread = shmq::OpenOptions::readwrite()
        .capacity(32_769)
        .max_msg_len(64)
        .create_new()
        .dir(&dir)
        .open("/bench-spread")
        .unwrap();
    for p in 0..32_768 {
        spread.send(p, &MSG).unwrap();
    }
    let shallow = per(&mq, 1);
    let d = per(&deep, 1);
    let sp = per(&spread, 16_384);
    println!("cost against depth and priorities (shmq pair, median of {reps}):");
    println!("  empty queue                 {shallow:>9.1} ns");
    println!(
        "  100,000 queued, FIFO        {d:>9.1} ns   {:.2}x",
        d / shallow
    );
    println!(
        "  32,768 priorities in use    {sp:>9.1} ns   {:.2}x",
        sp / shallow
    );
    drop((deep, spread));
    // SAFETY: closing and unlinking what we opened.
    unsafe {
        libc::mq_close(mqd);
        libc::mq_unlink(kname.as_ptr());
    }
    drop(mq);
    let _ = std::fs::remove_dir_all(&dir);
}

fn unsafe_zeroed_attr() -> libc::mq_attr {
    // SAFETY: mq_attr is plain integers; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
