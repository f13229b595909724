//! Looking inside a queue without taking anything: attributes,
//! per-priority counts, health, and the queued messages in delivery order.
//!
//! `cargo run --example inspect`
use shmq::OpenOptions;
use shmq::inspect::Inspector;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mq = OpenOptions::readwrite().create_new().open("/inspected")?;
    mq.send(3, b"three")?;
    mq.send(7, b"seven")?;
    mq.send(3, b"three again")?;

    let q = Inspector::open("/inspected", None)?; // None: $SHMQ_DIR, else /dev/shm/shmq
    println!("{q:?}");
    let info = q.info()?;
    println!(
        "{} of {} messages queued, per priority {:?}, health {}",
        info.current_messages,
        info.capacity,
        info.per_priority,
        info.health.as_str()
    );
    assert_eq!(info.per_priority, vec![(7, 1), (3, 2)]);
    for m in q.peek(None)? {
        println!("  {:>2}  {}", m.priority, String::from_utf8_lossy(&m.data));
    }
    assert_eq!(mq.attributes()?.current_messages, 3); // peek took nothing

    shmq::remove_queue("/inspected")?;
    Ok(())
}
