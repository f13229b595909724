//! The README's first example, as a whole program: create a queue, send two
//! messages, receive them highest priority first, remove the queue. It can
//! be run again and again: the queue is gone when it ends.
//!
//! `cargo run --example jobs`
use shmq::{OpenOptions, PosixMq};
use std::time::Duration;

fn main() -> std::io::Result<()> {
    let mq: PosixMq = OpenOptions::readwrite()
        .capacity(100_000) // no kernel limit: 10 by default on Linux
        .max_msg_len(256)
        .mode(0o640)
        .create_new() // EEXIST (io::ErrorKind::AlreadyExists) if it exists
        .open("/jobs")?; // the file /dev/shm/shmq/jobs, or $SHMQ_DIR/jobs

    mq.send(1, b"routine")?;
    mq.send(9, b"urgent")?;

    let mut buf = vec![0; 256];
    let (prio, len) = mq.recv(&mut buf)?; // highest priority first
    assert_eq!((prio, &buf[..len]), (9, &b"urgent"[..]));
    let (prio, _) = mq.recv_timeout(&mut buf, Duration::from_secs(1))?;
    assert_eq!(prio, 1);
    assert_eq!(mq.attributes()?.current_messages, 0);

    // A queue outlives its processes until it is removed, like mq_unlink.
    // Processes that have it open keep using it.
    shmq::remove_queue("/jobs")?;
    println!("sent and received 2 messages");
    Ok(())
}
