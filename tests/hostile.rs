//! Files that are not healthy queues: each gives a clear error, never a crash,
//! a hang or an out-of-bounds access.

mod common;

use common::TestDir;
use shmq::inspect::{Health, Inspector};
use shmq::{Error, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn open_err(dir: &Path, name: &str) -> std::io::Error {
    OpenOptions::readwrite().dir(dir).open(name).unwrap_err()
}

fn shmq_err(e: &std::io::Error) -> &Error {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("not a shmq error: {e:?}"))
}

fn make_queue(dir: &Path, name: &str) -> std::path::PathBuf {
    let q = OpenOptions::readwrite()
        .capacity(4)
        .max_msg_len(64)
        .create_new()
        .dir(dir)
        .open(name)
        .unwrap();
    q.send(3, b"three").unwrap();
    q.send(9, b"nine").unwrap();
    q.path().to_path_buf()
}

#[test]
fn not_a_queue_at_all() {
    let d = TestDir::new("notq");
    let dir = d.path();
    std::fs::write(dir.join("text"), b"hello, I am a text file\n").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(
        dir.join("random"),
        (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::create_dir(dir.join("adir")).unwrap();
    std::os::unix::fs::symlink(dir.join("text"), dir.join("alink")).unwrap();
    nix::unistd::mkfifo(&dir.join("afifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for name in ["/text", "/empty", "/random", "/adir", "/alink", "/afifo"] {
        let e = open_err(dir, name);
        assert_eq!(e.kind(), ErrorKind::InvalidData, "{name}: {e}");
        assert!(matches!(shmq_err(&e), Error::NotAQueue(_)), "{name}: {e}");
        assert_eq!(shmq_err(&e).errno(), nix::errno::Errno::EBADMSG);
        assert!(e.to_string().contains("not a shmq queue"), "{name}: {e}");
        assert!(
            matches!(Inspector::open(name, Some(dir)), Err(Error::NotAQueue(_))),
            "{name}"
        );
    }
    // `ls` hides them.
    assert!(shmq::inspect::list(Some(dir)).unwrap().is_empty());
}

#[test]
fn truncated_and_resized_queues_are_refused() {
    let d = TestDir::new("trunc");
    let path = make_queue(d.path(), "/t");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    let e = open_err(d.path(), "/t");
    assert!(matches!(shmq_err(&e), Error::Corrupted(_)), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    f.set_len(len + 4096).unwrap();
    let e = open_err(d.path(), "/t");
    assert!(e.to_string().contains("file size"), "{e}");
    f.set_len(100).unwrap();
    assert!(matches!(
        shmq_err(&open_err(d.path(), "/t")),
        Error::Corrupted(_)
    ));
    // Listed as damaged, not hidden.
    let l = shmq::inspect::list(Some(d.path())).unwrap();
    assert_eq!(l.len(), 1);
    assert!(matches!(l[0].info, Err(Error::Corrupted(_))));
    // Too short to carry the magic number: just a file, not listed.
    f.set_len(4).unwrap();
    assert!(matches!(
        shmq_err(&open_err(d.path(), "/t")),
        Error::NotAQueue(_)
    ));
    assert!(shmq::inspect::list(Some(d.path())).unwrap().is_empty());
}

#[test]
fn another_layout_version_is_refused() {
    let d = TestDir::new("version");
    let path = make_queue(d.path(), "/v");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&(4u32 << 16).to_le_bytes(), 8).unwrap();
    let e = open_err(d.path(), "/v");
    assert_eq!(
        shmq_err(&e),
        &Error::Incompatible {
            found: 4 << 16,
            expected: 3 << 16 // this library writes 3.0
        }
    );
    assert_eq!(shmq_err(&e).errno(), nix::errno::Errno::EPROTO);
    assert!(e.to_string().contains("version 4.0"), "{e}");
    // Layouts 1 and 2 shared their lock through glibc and their liveness
    // through pids: refused too.
    for v in [(2u32 << 16) | 7, (1 << 16) | 1] {
        f.write_all_at(&v.to_le_bytes(), 8).unwrap();
        let e = open_err(d.path(), "/v");
        assert_eq!(shmq_err(&e).errno(), nix::errno::Errno::EPROTO, "{e}");
    }
    // A newer minor version of the same major opens.
    f.write_all_at(&((3u32 << 16) | 7).to_le_bytes(), 8)
        .unwrap();
    let q = OpenOptions::readwrite().dir(d.path()).open("/v").unwrap();
    q.send(20, b"still").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(q.recv(&mut buf).unwrap(), (20, 5));
}

#[test]
fn header_fields_that_disagree_are_refused() {
    let d = TestDir::new("fields");
    let path = make_queue(d.path(), "/f");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // maxmsg (offset 24) no longer matches the file size.
    f.write_all_at(&1000u64.to_le_bytes(), 24).unwrap();
    assert!(matches!(
        shmq_err(&open_err(d.path(), "/f")),
        Error::Corrupted(_)
    ));
    // An absurd size that would overflow.
    f.write_all_at(&u64::MAX.to_le_bytes(), 24).unwrap();
    assert!(matches!(
        shmq_err(&open_err(d.path(), "/f")),
        Error::Corrupted(_)
    ));
    // State word neither ready nor poisoned.
    f.write_all_at(&4u64.to_le_bytes(), 24).unwrap();
    f.write_all_at(&0u32.to_le_bytes(), 12).unwrap();
    assert!(matches!(
        shmq_err(&open_err(d.path(), "/f")),
        Error::Corrupted(_)
    ));
}

#[test]
fn scribbled_lists_are_repaired_or_reported_never_followed() {
    let d = TestDir::new("scribble");
    let path = make_queue(d.path(), "/s");
    let q = OpenOptions::readwrite().dir(d.path()).open("/s").unwrap();
    // 4 slots of 48 + 64 bytes rounded to 128: the header is the rest.
    let header_size = std::fs::metadata(&path).unwrap().len() as usize - 4 * 128;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Garbage over the free-list head, the bitmap levels and every priority
    // tail: indices far outside the queue.
    let mut seed = 0x1234_5678u32;
    let mut junk = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect()
    };
    // Offsets of layout 3.0: free_head at 88; the bitmap and the tails from
    // 576 to 135872.
    f.write_all_at(&junk(4), 88).unwrap();
    f.write_all_at(&junk(135_872 - 576), 576).unwrap();
    let mut buf = [0u8; 64];
    // Every call returns: a message, a clean error, or EAGAIN; never a crash.
    q.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    for _ in 0..10 {
        match q.recv(&mut buf) {
            Ok((p, n)) => got.push((p, buf[..n].to_vec())),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => {
                assert!(matches!(shmq_err(&e), Error::Corrupted(_)), "{e}");
            }
        }
    }
    // The slot states were intact, so the repair recovered both messages.
    assert_eq!(got, vec![(9, b"nine".to_vec()), (3, b"three".to_vec())]);
    q.send(1, b"after").unwrap();
    assert_eq!(q.recv(&mut buf).unwrap(), (1, 5));
    let info = Inspector::open("/s", Some(d.path()))
        .unwrap()
        .info()
        .unwrap();
    assert_ne!(info.health, Health::Ok);
    // Now scribble over the slots themselves (states, lengths, priorities).
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    f.write_all_at(&junk(len - header_size), header_size as u64)
        .unwrap();
    for _ in 0..10 {
        match q.recv(&mut buf) {
            Ok((p, n)) => assert!(p < 32768 && n <= 64),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => assert!(matches!(shmq_err(&e), Error::Corrupted(_)), "{e}"),
        }
    }
    // The next send meets the damaged slots, repairs, and goes through.
    q.send(2, b"fresh").unwrap();
    let (p, n) = q.recv(&mut buf).unwrap();
    assert_eq!((p, &buf[..n]), (2, &b"fresh"[..]));
    let info = Inspector::open("/s", Some(d.path()))
        .unwrap()
        .info()
        .unwrap();
    assert!(
        matches!(info.health, Health::Damaged { .. }),
        "{:?}",
        info.health
    );
}

/// A queue file written by layout version 3.0, checked in: it must keep
/// opening, with its messages, in every later 3.x version.
#[test]
fn golden_v3_file_still_opens() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/queue-v3.0.bin");
    let d = TestDir::new("golden");
    if std::env::var_os("SHMQ_REGEN_FIXTURES").is_some() {
        let q = OpenOptions::readwrite()
            .capacity(3)
            .max_msg_len(32)
            .create_new()
            .dir(d.path())
            .open("/golden")
            .unwrap();
        q.send(1, b"one").unwrap();
        q.send(32767, b"top").unwrap();
        q.send(1, b"one again").unwrap();
        std::fs::copy(q.path(), &fixture).unwrap();
    }
    std::fs::copy(&fixture, d.path().join("golden")).unwrap();
    let q = OpenOptions::readwrite()
        .dir(d.path())
        .open("/golden")
        .unwrap();
    let a = q.attributes().unwrap();
    assert_eq!((a.capacity, a.max_msg_len, a.current_messages), (3, 32, 3));
    let mut buf = [0u8; 32];
    let mut got = Vec::new();
    q.set_nonblocking(true).unwrap();
    while let Ok((p, n)) = q.recv(&mut buf) {
        got.push((p, String::from_utf8_lossy(&buf[..n]).into_owned()));
    }
    assert_eq!(
        got,
        [
            (32767, "top".into()),
            (1, "one".into()),
            (1, "one again".into())
        ]
    );
}

/// Files of layouts 1 and 2 used a glibc robust mutex and pid-based
/// liveness that layout 3 replaced; processes with those libraries may
/// still share them, so they are refused, clearly, not half used.
#[test]
fn a_version_1_file_is_refused_with_eproto() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/queue-v1.0.bin");
    let d = TestDir::new("golden1");
    std::fs::copy(&fixture, d.path().join("old")).unwrap();
    let e = open_err(d.path(), "/old");
    assert_eq!(shmq_err(&e).errno(), nix::errno::Errno::EPROTO, "{e}");
    assert!(e.to_string().contains("1.0"), "{e}");
}
