//! Shared helpers for the integration tests: private queue directories and
//! child processes made by re-running the test binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Environment variable that tells a re-run test binary which role to play.
pub const ROLE: &str = "SHMQ_TEST_ROLE";
/// Environment variable carrying the queue directory to a child.
pub const DIR: &str = "SHMQ_TEST_DIR";

/// A private queue directory on tmpfs, mode 1777, removed on drop.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "shmq-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o1777)).unwrap();
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The role this process plays, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// The queue directory passed to a child.
pub fn child_dir() -> PathBuf {
    PathBuf::from(std::env::var(DIR).expect("child without a directory"))
}

thread_local! {
    /// The output files of the children this test (thread) started.
    static CHILD_LOGS: std::cell::RefCell<Vec<(String, PathBuf)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A command re-running this test binary as `role` of test `test`.
///
/// The child's standard output and error (its own test harness lines
/// included) go to a file in `dir`, not to the parent's output, where they
/// would interleave with the other tests'; [`wait_ok`] prints them when
/// the child fails, and [`print_child_output`] on demand. A caller may
/// still take the child's standard output as a pipe.
pub fn child(test: &str, role: &str, dir: &Path) -> Command {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir)
        .stdin(Stdio::null());
    // Hidden, and not a queue: queue listings leave it out.
    let log = dir.join(format!(
        ".child-{role}-{}.log",
        N.fetch_add(1, Ordering::Relaxed)
    ));
    match std::fs::File::create(&log).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((out, err)) => {
            c.stdout(out).stderr(err);
            CHILD_LOGS.with(|l| l.borrow_mut().push((role.to_string(), log)));
        }
        Err(_) => {
            c.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    c
}

/// Prints (to the test's captured output) what the children this test
/// started wrote, to explain a failure.
pub fn print_child_output() {
    CHILD_LOGS.with(|l| {
        for (role, path) in l.borrow().iter() {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
            println!("---- child {role} ({}) ----\n{text}", path.display());
        }
    });
}

/// Waits for `child` to exit, failing the test after `limit` (a watchdog
/// against deadlock, not a timing assertion).
pub fn wait_ok(child: &mut Child, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            if !st.success() {
                print_child_output();
                panic!("child failed: {st}");
            }
            return;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            print_child_output();
            panic!("child did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` until it holds, failing after `limit` (watchdog).
pub fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `kill -9` and reap.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether the tests run as root (needed to switch uid or mount tmpfs).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Appends `rec` to the file at `path`: a few bytes written with `O_APPEND`
/// land whole and survive a `kill -9` (records of the crash tests).
pub fn append(path: &Path, rec: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(rec)
        .unwrap();
}

/// The little-endian `u32`s of the file at `path` (none if it is missing).
pub fn read_u32s(path: &Path) -> Vec<u32> {
    std::fs::read(path)
        .map(|b| {
            b.chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}
