//! End-to-end throughput and latency through the bridge, beside the same
//! messages published and consumed directly with the AMQP client crate,
//! on one private broker (`tests/broker.sh`).
//!
//! Direct: publisher (persistent, publisher confirms, `WINDOW` unconfirmed)
//! → broker queue → consumer (prefetch `WINDOW`, one ack a message).
//! Bridged: `send` on host A's queue → `shmq-bridge out` → broker queue →
//! `shmq-bridge in` → `recv` on host B's queue, the same windows.
//!
//! Two runs each: bulk (as fast as it goes: throughput; latency then is
//! mostly time spent queued) and paced (`PACED_RATE` messages a second:
//! latency of a message that finds no queue).
//!
//! `cargo bench -p shmq-bridge` (`SHMQ_BRIDGE_BENCH_N` sets the bulk count).

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::VecDeque;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_shmq-bridge");
const WINDOW: u16 = 256;
const SIZE: usize = 64;
const PACED_N: u64 = 2000;
const PACED_RATE: u64 = 1000;
const PRIOS: [u32; 3] = [0, 3, 7];

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn payload() -> [u8; SIZE] {
    let mut m = [0u8; SIZE];
    m[..8].copy_from_slice(&now_ns().to_le_bytes());
    m
}

fn latency_us(m: &[u8]) -> f64 {
    let sent = u64::from_le_bytes(m[..8].try_into().unwrap());
    now_ns().saturating_sub(sent) as f64 / 1e3
}

struct Result {
    rate: f64,
    p50: f64,
    p99: f64,
}

fn summarize(n: u64, took: Duration, mut lat: Vec<f64>) -> Result {
    lat.sort_by(f64::total_cmp);
    let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)];
    Result {
        rate: n as f64 / took.as_secs_f64(),
        p50: q(0.5),
        p99: q(0.99),
    }
}

/// Sleeps until message `i` of a run paced at `rate` a second is due.
fn pace(t0: Instant, i: u64, rate: Option<u64>) {
    if let Some(r) = rate {
        let due = t0 + Duration::from_nanos(i * 1_000_000_000 / r);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

fn queue_args() -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    a
}

async fn direct(url: &str, queue: &str, n: u64, rate: Option<u64>) -> Result {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let pubch = conn.create_channel().await.unwrap();
    let subch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    pubch
        .queue_declare(queue.into(), durable, queue_args())
        .await
        .unwrap();
    pubch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    subch
        .basic_qos(WINDOW, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = subch
        .basic_consume(
            queue.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let t0 = Instant::now();
    let reader = tokio::spawn(async move {
        use futures_lite::StreamExt;
        let mut lat = Vec::with_capacity(n as usize);
        while (lat.len() as u64) < n {
            let d = consumer.next().await.unwrap().unwrap();
            lat.push(latency_us(&d.data));
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
        }
        lat
    });
    let mut inflight = VecDeque::new();
    for i in 0..n {
        if let Some(r) = rate {
            let due = t0 + Duration::from_nanos(i * 1_000_000_000 / r);
            tokio::time::sleep_until(due.into()).await;
        }
        if inflight.len() >= usize::from(WINDOW) {
            let c: lapin::PublisherConfirm = inflight.pop_front().unwrap();
            assert!(c.await.unwrap().is_ack());
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(PRIOS[(i % 3) as usize] as u8);
        let c = pubch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &payload(),
                props,
            )
            .await
            .unwrap();
        inflight.push_back(c);
    }
    for c in inflight {
        assert!(c.await.unwrap().is_ack());
    }
    let lat = reader.await.unwrap();
    let took = t0.elapsed();
    let _ = conn.close(200, "done".into()).await;
    summarize(n, took, lat)
}

fn spawn_bridge(url: &str, dir: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("run")
        .arg("--url-env")
        .arg("BENCH_URL")
        .arg("--dir")
        .arg(dir)
        .arg("--window")
        .arg(WINDOW.to_string())
        .arg("--report")
        .arg("3600")
        .args(args)
        .env("BENCH_URL", url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn bridged(url: &str, work: &Path, tag: &str, n: u64, rate: Option<u64>) -> Result {
    let (da, db) = (work.join(format!("{tag}-a")), work.join(format!("{tag}-b")));
    let open = |d: &Path| {
        std::fs::create_dir_all(d).unwrap();
        shmq::OpenOptions::readwrite()
            .create()
            .capacity(1024)
            .max_msg_len(SIZE)
            .dir(d)
            .open("/bench")
            .unwrap()
    };
    let (a, b) = (open(&da), open(&db));
    let remote = format!("{tag}-remote");
    let mut out = spawn_bridge(url, &da, &["--out", &format!("/bench={remote}")]);
    let mut inb = spawn_bridge(url, &db, &["--in", &format!("{remote}=/bench")]);
    // Both connected: one message through first.
    a.send(0, &payload()).unwrap();
    let mut buf = [0u8; SIZE];
    b.recv_timeout(&mut buf, Duration::from_secs(30)).unwrap();
    let t0 = Instant::now();
    let producer = std::thread::spawn(move || {
        for i in 0..n {
            pace(t0, i, rate);
            a.send(PRIOS[(i % 3) as usize], &payload()).unwrap();
        }
    });
    let mut lat = Vec::with_capacity(n as usize);
    while (lat.len() as u64) < n {
        let (_, len) = b.recv_timeout(&mut buf, Duration::from_secs(60)).unwrap();
        lat.push(latency_us(&buf[..len]));
    }
    let took = t0.elapsed();
    producer.join().unwrap();
    for c in [&mut out, &mut inb] {
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap();
    }
    summarize(n, took, lat)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches`: nothing to check without a broker
    }
    let n: u64 = std::env::var("SHMQ_BRIDGE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let work = std::env::temp_dir().join(format!("shmq-bridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broker.sh");
    let port = 23000 + (std::process::id() % 1000) as u16 * 2;
    let broker_dir = work.join("broker");
    let ok = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&broker_dir)
        .arg(port.to_string())
        .status()
        .unwrap()
        .success();
    let stop = || {
        let _ = Command::new("bash")
            .arg(&script)
            .arg("stop")
            .arg(&broker_dir)
            .status();
    };
    if !ok {
        stop();
        panic!("could not start the broker (tests/broker.sh)");
    }
    let url = format!("amqp://bridge:bridge@127.0.0.1:{port}/%2f");
    let r = std::panic::catch_unwind(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        println!(
            "{n} bulk and {PACED_N} paced ({PACED_RATE}/s) messages of {SIZE} bytes, priorities 0/3/7, window {WINDOW}, persistent, confirmed, acked one by one"
        );
        println!(
            "{:<28} {:>10} {:>10} {:>10}",
            "", "msgs/s", "p50 µs", "p99 µs"
        );
        let rows = [
            (
                "direct (client crate), bulk",
                rt.block_on(direct(&url, "direct-bulk", n, None)),
            ),
            (
                "bridged A→broker→B, bulk",
                bridged(&url, &work, "bulk", n, None),
            ),
            (
                "direct (client crate), paced",
                rt.block_on(direct(&url, "direct-paced", PACED_N, Some(PACED_RATE))),
            ),
            (
                "bridged A→broker→B, paced",
                bridged(&url, &work, "paced", PACED_N, Some(PACED_RATE)),
            ),
        ];
        for (name, r) in rows {
            println!(
                "{name:<28} {:>10.0} {:>10.0} {:>10.0}",
                r.rate, r.p50, r.p99
            );
        }
    });
    stop();
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
