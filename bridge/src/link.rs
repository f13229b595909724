//! The two directions of a bridge, each on a thread of its own: the local
//! queue calls block, the AMQP client's futures run on the shared tokio
//! runtime, and each bridged queue has its own connection, which it makes
//! again (with backoff) whenever it is lost.
//!
//! `out` (local → broker): a message is received *pending* from the local
//! queue, published persistent to a durable broker queue, and acknowledged
//! locally only once the broker confirmed it (publisher confirms). Up to
//! `window` messages are in flight at once. When the connection is lost,
//! or the broker refuses a message, every unconfirmed message goes back to
//! the local queue (at its place) and is published again after
//! reconnecting: the broker may then hold it twice.
//!
//! `in` (broker → local): deliveries come with a prefetch window; each is
//! sent to the local queue, waiting as long as the queue is full, and
//! acknowledged to the broker only after the send returned. A connection
//! lost before the acknowledgement makes the broker deliver it again: the
//! local queue may then hold it twice.

use crate::prio::PrioMap;
use crate::status::{Stats, redact};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use lapin::{Confirmation, PublisherConfirm};
use shmq::{OpenOptions, Pending, PosixMq};
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// The header that carries a message's exact POSIX priority.
pub const PRIO_HEADER: &str = "x-shmq-priority";

/// How long a stop request may wait to be noticed.
const POLL: Duration = Duration::from_millis(100);
/// The longest wait for a publisher confirm before the connection is
/// deemed dead.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often confirms are looked at while messages are in flight and the
/// local queue is empty.
const CONFIRM_POLL: Duration = Duration::from_millis(1);
/// Backoff between connection attempts: from the first to the last, doubling.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Which way a bridge carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local queue → broker queue.
    Out,
    /// Broker queue → local queue.
    In,
}

/// One bridged queue.
#[derive(Debug, Clone)]
pub struct Link {
    /// Which way.
    pub direction: Direction,
    /// The local queue's name (`/name`).
    pub local: String,
    /// The broker queue's name.
    pub remote: String,
    /// The local queue directory (None: `SHMQ_DIR`, else `/dev/shm/shmq`).
    pub dir: Option<PathBuf>,
    /// Messages in flight at most: unconfirmed publishes (`out`) or the
    /// prefetch count (`in`).
    pub window: u16,
    /// The priority map.
    pub prio: PrioMap,
    /// `in`: restore the exact POSIX priority from the header when present.
    pub exact_priority: bool,
    /// Create the local queue if missing, with these attributes
    /// (capacity, max message length; 0: the library's default).
    pub create: Option<(usize, usize)>,
}

impl Link {
    /// `out LOCAL -> REMOTE` or `in REMOTE -> LOCAL`.
    pub fn name(&self) -> String {
        match self.direction {
            Direction::Out => format!("out {} -> {}", self.local, self.remote),
            Direction::In => format!("in {} -> {}", self.remote, self.local),
        }
    }

    fn open_local(&self) -> io::Result<PosixMq> {
        let mut o = OpenOptions::readwrite();
        if let Some(dir) = &self.dir {
            o.dir(dir);
        }
        match self.create {
            Some((cap, len)) => {
                o.create();
                if cap > 0 {
                    o.capacity(cap);
                }
                if len > 0 {
                    o.max_msg_len(len);
                }
            }
            None => {
                o.existing();
            }
        }
        o.open(&self.local)
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-max-priority".into(),
            AMQPValue::ShortShortUInt(self.prio.max_amqp()),
        );
        args
    }
}

/// What a session ended with.
type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Runs `link` until `stop` is set: opens the local queue, then connects,
/// carries messages, and reconnects with backoff whenever the connection
/// is lost. Returns when stopped (after settling what is in flight), or on
/// a local error that no reconnection can cure.
pub fn run(link: &Link, url: &str, rt: &Handle, stop: &AtomicBool, stats: &Stats) -> Res<()> {
    let mq = link
        .open_local()
        .map_err(|e| format!("local queue {}: {e}", link.local))?;
    let mut backoff = BACKOFF_FIRST;
    let mut first = true;
    while !stop.load(Relaxed) {
        if !first {
            stats.reconnects.fetch_add(1, Relaxed);
        }
        first = false;
        let mut connected = false;
        let r = match link.direction {
            Direction::Out => session_out(link, &mq, url, rt, stop, stats, &mut connected),
            Direction::In => session_in(link, &mq, url, rt, stop, stats, &mut connected),
        };
        stats.connected.store(false, Relaxed);
        stats.in_flight.store(0, Relaxed);
        match r {
            Ok(()) => return Ok(()),
            Err(Fatal(e)) => {
                stats.error(redact(url, &e));
                return Err(redact(url, &e));
            }
            Err(Retry(e)) => {
                let e = redact(url, &e);
                eprintln!("shmq-bridge: {}: {e}", link.name());
                stats.error(e);
            }
        }
        if connected {
            backoff = BACKOFF_FIRST;
        }
        let until = Instant::now() + backoff;
        while !stop.load(Relaxed) && Instant::now() < until {
            std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    Ok(())
}

/// Why a session ended.
enum End {
    /// The broker or the connection failed: connect again.
    Retry(String),
    /// The local queue failed: give up.
    Fatal(String),
}
use End::{Fatal, Retry};

impl From<String> for End {
    fn from(e: String) -> Self {
        Retry(e)
    }
}

fn connect(link: &Link, url: &str, rt: &Handle) -> Res<(Connection, Channel)> {
    rt.block_on(async {
        let props = ConnectionProperties::default().with_connection_name(
            format!("shmq-bridge {} pid {}", link.name(), std::process::id()).into(),
        );
        let conn = tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, props))
            .await
            .map_err(|_| "connect: timed out".to_string())?
            .map_err(err("connect"))?;
        let ch = conn.create_channel().await.map_err(err("channel"))?;
        ch.queue_declare(
            link.remote.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            link.queue_args(),
        )
        .await
        .map_err(err("queue.declare"))?;
        Ok((conn, ch))
    })
}

fn close(rt: &Handle, conn: Connection) {
    let _ = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), conn.close(200, "shutdown".into())).await
    });
}

fn session_out(
    link: &Link,
    mq: &PosixMq,
    url: &str,
    rt: &Handle,
    stop: &AtomicBool,
    stats: &Stats,
    connected: &mut bool,
) -> Result<(), End> {
    let (conn, ch) = connect(link, url, rt)?;
    rt.block_on(ch.confirm_select(ConfirmSelectOptions::default()))
        .map_err(err("confirm.select"))?;
    *connected = true;
    stats.connected.store(true, Relaxed);
    let window = usize::from(link.window.max(1));
    let len = mq
        .attributes()
        .map_err(|e| Fatal(format!("local queue {}: {e}", link.local)))?
        .max_msg_len;
    let mut buf = vec![0u8; len];
    // In publish order: the local hold, the broker's confirm, the size,
    // when it was published.
    let mut inflight: VecDeque<(Pending<'_>, PublisherConfirm, usize, Instant)> = VecDeque::new();
    let routing = link.remote.as_str();
    let r = loop {
        // Settle, in order, every message the broker has answered for.
        let mut settled = Ok(());
        loop {
            let must_wait = inflight.len() >= window || stop.load(Relaxed);
            let Some((_, c, _, at)) = inflight.front_mut() else {
                break;
            };
            let ready = if must_wait {
                // Nothing else to do: wait for it.
                let left = CONFIRM_TIMEOUT.saturating_sub(at.elapsed());
                rt.block_on(async { tokio::time::timeout(left, c).await })
                    .map_err(|_| Retry("no confirm from the broker in 30 s".into()))
            } else {
                match rt.block_on(futures_lite::future::poll_once(c)) {
                    Some(r) => Ok(r),
                    None if at.elapsed() >= CONFIRM_TIMEOUT => {
                        Err(Retry("no confirm from the broker in 30 s".into()))
                    }
                    None => break,
                }
            };
            let Some((p, _, n, _)) = inflight.pop_front() else {
                break;
            };
            settled = match ready {
                Ok(Ok(Confirmation::Ack(None))) => match p.ack() {
                    Ok(()) => {
                        stats.messages.fetch_add(1, Relaxed);
                        stats.bytes.fetch_add(n as u64, Relaxed);
                        Ok(())
                    }
                    Err(e) => Err(Fatal(format!("local ack {}: {e}", link.local))),
                },
                Ok(Ok(Confirmation::Ack(Some(_)))) => {
                    Err(Retry(format!("broker queue {} not found", link.remote)))
                }
                Ok(Ok(Confirmation::Nack(_))) => Err(Retry("the broker refused a message".into())),
                Ok(Ok(Confirmation::NotRequested)) => {
                    Err(Retry("publisher confirms not in force".into()))
                }
                Ok(Err(e)) => Err(Retry(format!("confirm: {e}"))),
                Err(e) => Err(e),
            };
            // Not confirmed: back to the local queue (dropping returns it).
            stats.in_flight.store(inflight.len() as u64, Relaxed);
            if settled.is_err() {
                break;
            }
        }
        if let Err(e) = settled {
            break Err(e);
        }
        if stop.load(Relaxed) {
            if inflight.is_empty() {
                break Ok(());
            }
            continue;
        }
        if inflight.len() >= window {
            continue;
        }
        // Wait long for a message when nothing is in flight; else briefly,
        // to look at the confirms again soon.
        let wait = if inflight.is_empty() {
            POLL
        } else {
            CONFIRM_POLL
        };
        match mq.recv_pending_timeout(&mut buf, wait) {
            Ok(p) => {
                let n = p.len();
                let prio = p.priority();
                let mut headers = FieldTable::default();
                headers.insert(
                    PRIO_HEADER.into(),
                    AMQPValue::LongInt(i32::try_from(prio).unwrap_or(i32::MAX)),
                );
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_priority(link.prio.to_amqp(prio))
                    .with_headers(headers);
                let c = rt.block_on(ch.basic_publish(
                    "".into(),
                    routing.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &buf[..n],
                    props,
                ));
                match c {
                    Ok(c) => {
                        inflight.push_back((p, c, n, Instant::now()));
                        stats.in_flight.store(inflight.len() as u64, Relaxed);
                    }
                    Err(e) => break Err(Retry(format!("publish: {e}"))),
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                if inflight.is_empty() && !conn.status().connected() {
                    break Err(Retry("connection lost".into()));
                }
            }
            Err(e) => break Err(Fatal(format!("local queue {}: {e}", link.local))),
        }
    };
    // Whatever was not confirmed goes back to the local queue, at its place.
    drop(inflight);
    if r.is_ok() {
        close(rt, conn);
    }
    r
}

fn posix_priority(link: &Link, props: &BasicProperties) -> u32 {
    if link.exact_priority
        && let Some(h) = props.headers()
    {
        let p = match h.inner().get(PRIO_HEADER) {
            Some(AMQPValue::LongInt(v)) => u32::try_from(*v).ok(),
            Some(AMQPValue::LongLongInt(v)) => u32::try_from(*v).ok(),
            Some(AMQPValue::ShortInt(v)) => u32::try_from(*v).ok(),
            Some(AMQPValue::ShortUInt(v)) => Some(u32::from(*v)),
            Some(AMQPValue::LongUInt(v)) => Some(*v),
            Some(AMQPValue::ShortShortUInt(v)) => Some(u32::from(*v)),
            _ => None,
        };
        if let Some(p) = p.filter(|&p| p < crate::prio::POSIX_PRIO_MAX) {
            return p;
        }
    }
    link.prio.to_posix(props.priority().unwrap_or(0))
}

fn session_in(
    link: &Link,
    mq: &PosixMq,
    url: &str,
    rt: &Handle,
    stop: &AtomicBool,
    stats: &Stats,
    connected: &mut bool,
) -> Result<(), End> {
    let (conn, ch) = connect(link, url, rt)?;
    let mut consumer = rt.block_on(async {
        ch.basic_qos(link.window.max(1), BasicQosOptions::default())
            .await
            .map_err(err("basic.qos"))?;
        ch.basic_consume(
            link.remote.as_str().into(),
            format!("shmq-bridge-{}", std::process::id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("basic.consume"))
    })?;
    *connected = true;
    stats.connected.store(true, Relaxed);
    let r = loop {
        if stop.load(Relaxed) {
            break Ok(());
        }
        // The stream, not a delegate: deliveries in the broker's order.
        let next = rt.block_on(async { tokio::time::timeout(POLL, consumer.next()).await });
        let d = match next {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => break Err(Retry(format!("consume: {e}"))),
            Ok(None) => break Err(Retry("the broker cancelled the consumer".into())),
            Err(_) => {
                if !conn.status().connected() {
                    break Err(Retry("connection lost".into()));
                }
                continue;
            }
        };
        stats.in_flight.fetch_add(1, Relaxed);
        if d.redelivered {
            stats.redelivered.fetch_add(1, Relaxed);
        }
        let prio = posix_priority(link, &d.properties);
        // Back-pressure: wait as long as the local queue is full; the
        // broker holds the rest, up to the prefetch window here.
        let sent = loop {
            match mq.send_timeout(prio, &d.data, POLL) {
                Ok(()) => break Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) =>
                {
                    if stop.load(Relaxed) {
                        // Not sent, not acknowledged: the broker keeps it.
                        break Ok(false);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match sent {
            Ok(true) => {
                if let Err(e) = rt.block_on(d.acker.ack(BasicAckOptions::default())) {
                    break Err(Retry(format!("ack: {e}")));
                }
                stats.messages.fetch_add(1, Relaxed);
                stats.bytes.fetch_add(d.data.len() as u64, Relaxed);
                stats.in_flight.fetch_sub(1, Relaxed);
            }
            Ok(false) => break Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                // It can never fit: dead-lettered by the broker if its
                // queue has a dead-letter exchange, else dropped.
                let msg = format!(
                    "a {}-byte message does not fit {}: rejected",
                    d.data.len(),
                    link.local
                );
                eprintln!("shmq-bridge: {}: {msg}", link.name());
                stats.error(msg);
                stats.rejected.fetch_add(1, Relaxed);
                stats.in_flight.fetch_sub(1, Relaxed);
                if let Err(e) = rt.block_on(d.acker.reject(BasicRejectOptions { requeue: false })) {
                    break Err(Retry(format!("reject: {e}")));
                }
            }
            Err(e) => break Err(Fatal(format!("local queue {}: {e}", link.local))),
        }
    };
    if r.is_ok() {
        // Deliveries not acknowledged go back to the broker's queue.
        close(rt, conn);
    }
    r
}

/// Runs each link on a thread of its own until `stop`; returns the links'
/// fatal errors.
pub fn run_all(
    links: Vec<Link>,
    url: Arc<String>,
    rt: Handle,
    stop: Arc<AtomicBool>,
    stats: Vec<Arc<Stats>>,
) -> Vec<std::thread::JoinHandle<Res<()>>> {
    links
        .into_iter()
        .zip(stats)
        .map(|(link, stats)| {
            let (url, rt, stop) = (url.clone(), rt.clone(), stop.clone());
            std::thread::Builder::new()
                .name(link.name())
                .spawn(move || run(&link, &url, &rt, &stop, &stats))
                .expect("spawn a bridge thread")
        })
        .collect()
}
