//! Two processes, one queue: this program starts a copy of itself as the
//! sender, which sends messages of several priorities; the parent receives
//! them and prints what each side saw, highest priority first.
//!
//! `cargo run --example two_processes`

use std::process::Command;
use std::time::Duration;

const QUEUE: &str = "/shmq-example-two-processes";

fn sender() -> std::io::Result<()> {
    let mq = shmq::OpenOptions::writeonly().open(QUEUE)?;
    let messages = [
        (1, "routine log line"),
        (10, "user request"),
        (31, "ALERT: disk full"),
        (10, "another request"),
        (0, "background job"),
    ];
    for (prio, text) in messages {
        mq.send(prio, text.as_bytes())?;
        println!(
            "[sender   pid {}] sent     prio {prio:>2}: {text}",
            std::process::id()
        );
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--sender") {
        return sender();
    }
    let _ = shmq::remove_queue(QUEUE);
    let mq = shmq::OpenOptions::readonly()
        .capacity(16)
        .max_msg_len(128)
        .create_new()
        .open(QUEUE)?;
    println!("queue {QUEUE} at {}", mq.path().display());
    let status = Command::new(std::env::current_exe()?)
        .arg("--sender")
        .status()?;
    assert!(status.success(), "sender failed: {status}");
    let mut buf = [0u8; 128];
    // The sender has finished: everything is queued, so the receiver sees
    // strict priority order (FIFO within a priority).
    while let Ok((prio, len)) = mq.recv_timeout(&mut buf, Duration::from_millis(100)) {
        let text = String::from_utf8_lossy(&buf[..len]);
        println!(
            "[receiver pid {}] received prio {prio:>2}: {text}",
            std::process::id()
        );
    }
    shmq::remove_queue(QUEUE)?;
    Ok(())
}
