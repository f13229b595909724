//! Ping-pong between two processes through two queues, and an idle blocked
//! receiver's CPU use: a quick manual check of the waiting strategy.
//!
//! `cargo run --release --example pingpong [ROUNDS]`
use std::process::Command;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::env::temp_dir().join("shmq-pingpong");
    if args.get(1).map(String::as_str) == Some("--pong") {
        let ping = shmq::OpenOptions::readonly()
            .dir(&dir)
            .open("/ping")
            .unwrap();
        let pong = shmq::OpenOptions::writeonly()
            .dir(&dir)
            .open("/pong")
            .unwrap();
        let mut buf = [0u8; 64];
        loop {
            let (prio, len) = ping.recv(&mut buf).unwrap();
            if prio == 0 {
                return;
            }
            pong.send(1, &buf[..len]).unwrap();
        }
    }
    let rounds: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    std::fs::create_dir_all(&dir).unwrap();
    let _ = shmq::remove_queue_in(&dir, "/ping");
    let _ = shmq::remove_queue_in(&dir, "/pong");
    let open = |n| {
        shmq::OpenOptions::readwrite()
            .capacity(10)
            .max_msg_len(64)
            .create_new()
            .dir(&dir)
            .open(n)
            .unwrap()
    };
    let (ping, pong) = (open("/ping"), open("/pong"));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--pong")
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let mut rtts = Vec::with_capacity(rounds as usize);
    for _ in 0..rounds {
        let t = Instant::now();
        ping.send(1, &[7; 64]).unwrap();
        pong.recv(&mut buf).unwrap();
        rtts.push(t.elapsed());
    }
    rtts.sort();
    println!(
        "ping-pong round trip: median {:?}, p99 {:?}",
        rtts[rtts.len() / 2],
        rtts[rtts.len() * 99 / 100]
    );
    // Idle: the child is blocked in recv now; measure its CPU time over 1 s.
    let stat = |pid: u32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    std::thread::sleep(Duration::from_millis(100));
    let before = stat(child.id());
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "idle blocked receiver: {} clock ticks of CPU in 1 s",
        stat(child.id()) - before
    );
    ping.send(0, b"").unwrap();
    child.wait().unwrap();
}
