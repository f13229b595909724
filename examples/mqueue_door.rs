//! The `nix::mqueue`-shaped front door, with no `nix` dependency: every
//! type its functions take or return is re-exported by `shmq::mqueue`.
//!
//! `cargo run --example mqueue_door`
use shmq::mqueue::{
    Errno, MQ_OFlag, Mode, MqAttr, TimeSpec, TimeValLike, mq_close, mq_getattr, mq_open,
    mq_receive, mq_send, mq_timedreceive, mq_unlink,
};

fn main() -> Result<(), Errno> {
    let attr = MqAttr::new(0, 10, 64, 0); // flags, capacity, message size, (ignored)
    let oflag = MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_RDWR;
    let mq = mq_open(
        "/nix-door",
        oflag,
        Mode::S_IRUSR | Mode::S_IWUSR,
        Some(&attr),
    )?;

    mq_send(&mq, b"hello", 7)?;
    let mut buf = [0u8; 64];
    let mut prio = 0;
    let n = mq_receive(&mq, &mut buf, &mut prio)?;
    assert_eq!((&buf[..n], prio), (&b"hello"[..], 7));

    // Timed calls take an absolute CLOCK_REALTIME deadline.
    let now = nix_now();
    let deadline = now + TimeSpec::milliseconds(10);
    assert_eq!(
        mq_timedreceive(&mq, &mut buf, &mut prio, &deadline),
        Err(Errno::ETIMEDOUT)
    );
    assert_eq!(mq_getattr(&mq)?.curmsgs(), 0);

    mq_close(mq)?;
    mq_unlink("/nix-door")?; // without it, the next run fails with EEXIST
    println!("sent and received 1 message");
    Ok(())
}

/// The current `CLOCK_REALTIME` time.
fn nix_now() -> TimeSpec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    TimeSpec::from_duration(d)
}
