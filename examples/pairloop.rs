//! Tight send+receive loop, for instruction-count profiling (callgrind).
fn main() {
    let dir = std::env::temp_dir().join(format!("shmq-pairloop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mq = shmq::OpenOptions::readwrite()
        .capacity(10)
        .max_msg_len(64)
        .create_new()
        .dir(&dir)
        .open("/loop")
        .unwrap();
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    for _ in 0..n {
        // black_box: lengths unknown at compile time, as for a real caller.
        mq.send(1, std::hint::black_box(&msg)).unwrap();
        std::hint::black_box(mq.recv(&mut buf).unwrap());
    }
    drop(mq);
    std::fs::remove_dir_all(&dir).unwrap();
}
