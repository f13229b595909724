//! Fuzzing the queue file: arbitrary bytes written over a valid queue
//! image, then every operation on it in a child process (this binary run
//! again), so that a crash is a failed case rather than a dead harness.
//! A case passes when the child exits normally: no signal, no panic, no
//! call that outlives its deadline by more than a second (the child
//! checks), no hang (a watchdog here).
//!
//! `tests/fixtures/fuzz/*.txt` holds cases worth keeping (each one a list
//! of mutations of the same base image, in the format of [`Mutation`]'s
//! `parse`); `fuzz_corpus_replays` runs them all. `SHMQ_FUZZ_CASES` sets
//! the number of random cases (default 300).

mod common;
mod hostile_support;

use common::TestDir;
use hostile_support::{Rng, crashed, off, stride, timed};
use proptest::prelude::*;
use shmq::OpenOptions;
use shmq::inspect::Inspector;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const CAPACITY: usize = 8;
/// Above the size copied under the lock (2 KiB), so that the copy outside
/// the lock is exercised too.
const MSGSIZE: usize = 3000;
const WATCHDOG: Duration = Duration::from_secs(20);

/// One change to the image.
#[derive(Clone, Debug)]
enum Mutation {
    /// `len` pseudo-random bytes (from `seed`) at `off`.
    Bytes { off: usize, seed: u64, len: usize },
    /// A little-endian value of `width` bytes at `off`.
    Word {
        off: usize,
        width: usize,
        value: u64,
    },
    /// Random bytes over the whole header after its identity block (magic,
    /// version, state, geometry: what opening checks).
    Header { seed: u64 },
    /// Exact bytes at `off`.
    Raw { off: usize, bytes: Vec<u8> },
}

impl Mutation {
    fn apply(&self, img: &mut [u8]) {
        let mut put = |off: usize, bytes: &[u8]| {
            for (i, b) in bytes.iter().enumerate() {
                if let Some(x) = img.get_mut(off + i) {
                    *x = *b;
                }
            }
        };
        match self {
            Mutation::Bytes { off, seed, len } => put(*off, &Rng::new(*seed).bytes(*len)),
            Mutation::Word { off, width, value } => put(*off, &value.to_le_bytes()[..*width]),
            Mutation::Header { seed } => {
                put(64, &Rng::new(*seed).bytes(off::HEADER_END - 64));
            }
            Mutation::Raw { off, bytes } => put(*off, bytes),
        }
    }

    /// Parses a line of a corpus file: `bytes OFF SEED LEN`, `word OFF
    /// WIDTH VALUE`, `header SEED`, `raw OFF HEX`. Numbers are decimal or
    /// `0x` hexadecimal; an offset may be `slot:N+K` (byte K of slot N).
    fn parse(line: &str) -> Mutation {
        let num = |s: &str| -> u64 {
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).unwrap(),
                None => s.parse().unwrap(),
            }
        };
        let offset = |s: &str| -> usize {
            match s.strip_prefix("slot:") {
                Some(rest) => {
                    let (n, k) = rest.split_once('+').unwrap_or((rest, "0"));
                    off::SLOTS + num(n) as usize * stride(MSGSIZE) + num(k) as usize
                }
                None => num(s) as usize,
            }
        };
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["bytes", o, s, l] => Mutation::Bytes {
                off: offset(o),
                seed: num(s),
                len: num(l) as usize,
            },
            ["word", o, w, v] => Mutation::Word {
                off: offset(o),
                width: num(w) as usize,
                value: num(v),
            },
            ["header", s] => Mutation::Header { seed: num(s) },
            ["raw", o, hex] => Mutation::Raw {
                off: offset(o),
                bytes: (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect(),
            },
            _ => panic!("bad corpus line: {line}"),
        }
    }
}

/// The image every case starts from: a queue of 8 slots with five
/// messages of four priorities, one of them longer than 2 KiB, built the
/// same way every time.
fn base_image() -> &'static [u8] {
    static IMG: OnceLock<Vec<u8>> = OnceLock::new();
    IMG.get_or_init(|| {
        let d = TestDir::new("fuzz-base");
        let q = OpenOptions::readwrite()
            .capacity(CAPACITY)
            .max_msg_len(MSGSIZE)
            .mode(0o600)
            .create_new()
            .dir(d.path())
            .open("/base")
            .unwrap();
        for (p, m) in [
            (5, b"a".to_vec()),
            (5, b"b".to_vec()),
            (9, b"c".to_vec()),
            (0, vec![b'x'; 2500]),
            (32767, b"top".to_vec()),
        ] {
            q.send(p, &m).unwrap();
        }
        std::fs::read(q.path()).unwrap()
    })
}

/// Where the interesting bytes are: each region as (start, length).
fn regions() -> Vec<(usize, usize)> {
    let tail = |p: usize| off::TAILS + 4 * p;
    let mut v = vec![
        (off::LOCK_WORD, 64),     // lock word and counters
        (off::SENT, 128),         // sequence numbers, stale bit
        (off::INFLIGHT_HEAD, 64), // in-flight head, sleepers, members
        (off::NOT_EMPTY, 128),    // futex words
        (off::NOTIFY, 64),        // registration
        (off::BITMAP_TOP, 72),    // bitmap top and middle
        (648, 8),                 // leaf of priorities 0..63
        (648 + 8 * 511, 8),       // leaf of 32704..32767
        (tail(0), 4),
        (tail(5), 8),
        (tail(32767), 4),
        (0, 64), // identity: mostly refused at open
    ];
    for s in 0..CAPACITY {
        v.push((off::SLOTS + s * stride(MSGSIZE), off::SLOT_HEADER + 16));
    }
    v
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let regions = regions();
    let n = regions.len();
    let r2 = regions.clone();
    prop_oneof![
        4 => (0..n, any::<u16>(), any::<u64>(), 1usize..24).prop_map(move |(r, at, seed, len)| {
            let (start, size) = regions[r];
            Mutation::Bytes { off: start + at as usize % size, seed, len }
        }),
        4 => (0..n, any::<u16>(), prop_oneof![Just(4usize), Just(8usize)], any::<u64>())
            .prop_map(move |(r, at, width, seed)| {
                let (start, size) = r2[r];
                let off = (start + at as usize % size) / width * width;
                let mut rng = Rng::new(seed);
                let value = u64::from_le_bytes(
                    rng.nasty(8, CAPACITY as u64 + 1).try_into().unwrap(),
                );
                Mutation::Word { off, width, value }
            }),
        1 => any::<u64>().prop_map(|seed| Mutation::Header { seed }),
        1 => (0usize..(off::SLOTS + CAPACITY * stride(MSGSIZE)), any::<u64>(), 1usize..64)
            .prop_map(|(off, seed, len)| Mutation::Bytes { off, seed, len }),
    ]
}

/// Writes the mutated image as queue `/f` of a fresh directory and runs
/// the child on it; `Err` says how the child failed.
fn run_case(muts: &[Mutation]) -> Result<(), String> {
    let mut img = base_image().to_vec();
    for m in muts {
        m.apply(&mut img);
    }
    let d = TestDir::new("fuzz");
    std::fs::write(d.path().join("f"), &img).unwrap();
    let mut c = common::child("fuzz_child", "exercise", d.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let st = loop {
        if let Some(st) = c.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > WATCHDOG {
            let _ = c.kill();
            let _ = c.wait();
            return Err(format!("still running after {WATCHDOG:?}: a hang"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(why) = crashed(&st) {
        return Err(why);
    }
    match st.code() {
        Some(0) => Ok(()),
        _ => Err(format!("child failed: {st}")),
    }
}

/// The child: opens the queue and calls everything, each call with a
/// limit, checking that none outlives it.
#[test]
fn fuzz_child() {
    if common::role().as_deref() != Some("exercise") {
        return;
    }
    exercise(&common::child_dir());
}

fn exercise(dir: &Path) {
    let short = Duration::from_millis(20);
    let none = Duration::ZERO;
    let inspect = |what: &str| {
        timed(what, Duration::from_millis(500), || {
            if let Ok(i) = Inspector::open("/f", Some(dir)) {
                let _ = i.info();
                let _ = i.peek(Some(3));
                let _ = i.peek(None);
            }
            let _ = shmq::inspect::list(Some(dir));
        })
    };
    inspect("first inspection");
    let q = match timed("open", none, || {
        OpenOptions::readwrite().dir(dir).open("/f")
    }) {
        Ok(q) => q,
        Err(_) => return,
    };
    let mut buf = vec![0u8; MSGSIZE];
    let big = vec![0x5a; 2500];
    timed("attributes", none, || q.attributes().map(drop)).ok();
    q.set_nonblocking(true).unwrap();
    for i in 0..CAPACITY + 4 {
        if timed("non-blocking receive", none, || q.recv(&mut buf)).is_err() && i > 2 {
            break;
        }
    }
    for (p, m) in [(1u32, &b"small"[..]), (7, &big[..]), (32767, &b"t"[..])] {
        let _ = timed("non-blocking send", none, || q.send(p, m));
    }
    inspect("inspection after sends");
    q.set_nonblocking(false).unwrap();
    for _ in 0..3 {
        let _ = timed("timed receive", short, || q.recv_timeout(&mut buf, short));
    }
    let _ = timed("timed send", short, || q.send_timeout(3, &big, short));
    let _ = timed("timed send", short, || q.send_timeout(3, b"s", short));
    let _ = timed("attributes", none, || q.attributes());
    if let Ok(i) = Inspector::open("/f", Some(dir)) {
        let _ = timed("purge", none, || i.purge());
    }
    drop(q);
    inspect("last inspection");
    let _ = timed("reopen", none, || {
        OpenOptions::readwrite().dir(dir).open("/f").map(drop)
    });
}

fn cases() -> u32 {
    std::env::var("SHMQ_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fuzz_queue_image(muts in proptest::collection::vec(mutation(), 1..6)) {
        if common::role().is_some() {
            return Ok(());
        }
        if let Err(why) = run_case(&muts) {
            prop_assert!(false, "{why}\nmutations: {muts:#?}");
        }
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz")
}

/// Every case kept in the corpus passes.
#[test]
fn fuzz_corpus_replays() {
    if common::role().is_some() {
        return;
    }
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus is empty");
    let mut failed = Vec::new();
    for f in &files {
        let muts: Vec<Mutation> = std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(Mutation::parse)
            .collect();
        if let Err(why) = run_case(&muts) {
            failed.push(format!("{}: {why}", f.display()));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
