//! End-to-end tests: run the built `mqtool` binary, each test with its own
//! queue directory (never the default one).

use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mqtool");

/// A private queue directory, removed at the end of the test.
struct Env {
    dir: PathBuf,
}

impl Env {
    fn new(test: &str) -> Env {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "mqtool-test-{}-{}-{test}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Env { dir }
    }

    /// `mqtool ARGS` with `SHMQ_DIR` set to this test's directory.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("SHMQ_DIR", &self.dir)
            .env_remove("RUST_BACKTRACE");
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).stdin(Stdio::null()).output().unwrap())
    }

    fn run_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        Run::from(wait_with_watchdog(child))
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "mqtool {args:?}: {r:?}");
        r.stdout
    }

    fn json(&self, args: &[&str]) -> Vec<Value> {
        self.ok(args)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    }

    fn info(&self, name: &str) -> Value {
        self.json(&["--json", "info", name]).remove(0)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Exit 2 with `mqtool: SUBJECT: …(ERRNO)` and nothing that looks like a
    /// panic.
    fn assert_error(&self, subject: &str, errno: &str) {
        assert_eq!(self.code, 2, "{self:?}");
        let want = format!("mqtool: {subject}: ");
        assert!(
            self.stderr.starts_with(&want),
            "expected {want:?}: {self:?}"
        );
        assert!(
            self.stderr.contains(&format!("({errno})")),
            "expected {errno}: {self:?}"
        );
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("backtrace"),
            "{self:?}"
        );
        assert_eq!(self.stderr.lines().count(), 1, "one line: {self:?}");
    }
}

/// Waits for a child, killing it (and failing) if it hangs.
fn wait_with_watchdog(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("mqtool hung: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

/// Polls `f` until it is true (or fails the test after a while).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn message_crosses_processes() {
    let env = Env::new("cross");
    env.ok(&["create", "/jobs"]);
    env.ok(&["send", "/jobs", "hello"]);
    assert_eq!(env.ok(&["recv", "/jobs"]), "hello\n");

    // A receiver blocked in one process gets what another process sends;
    // info sees it waiting meanwhile.
    let receiver = env
        .cmd(&["recv", "jobs"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("a blocked receiver", || {
        env.info("/jobs")["blocked_receivers"] == 1
    });
    env.ok(&["send", "jobs", "wake up"]);
    let r = Run::from(wait_with_watchdog(receiver));
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "wake up\n", "")
    );

    // And a blocked sender.
    env.ok(&["create", "/small", "--capacity", "1"]);
    env.ok(&["send", "/small", "first"]);
    let sender = env
        .cmd(&["send", "/small", "second"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("a blocked sender", || {
        env.info("/small")["blocked_senders"] == 1
    });
    assert_eq!(env.ok(&["recv", "/small"]), "first\n");
    assert_eq!(Run::from(wait_with_watchdog(sender)).code, 0);
    assert_eq!(env.ok(&["recv", "/small"]), "second\n");
}

#[test]
fn quiet_on_success() {
    let env = Env::new("quiet");
    for args in [
        &["create", "/q"][..],
        &["send", "/q", "x"],
        &["purge", "/q"],
        &["unlink", "/q"],
    ] {
        let r = env.run(args);
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (0, "", ""),
            "{args:?}"
        );
    }
    let r = env.run(&["-v", "create", "/q"]);
    assert!(r.stderr.starts_with("mqtool: /q: created"), "{r:?}");
}

#[test]
fn priority_order() {
    let env = Env::new("prio");
    env.ok(&["create", "/p"]);
    env.ok(&["send", "/p", "-p", "1", "a"]);
    env.ok(&["send", "/p", "-p", "9", "b"]);
    env.ok(&["send", "/p", "-p", "5", "c"]);
    env.ok(&["send", "/p", "--priority", "9", "d", "e"]);
    env.ok(&["send", "/p", "-p", "32767", "top"]);
    assert_eq!(
        env.ok(&["recv", "/p", "--all", "-p"]),
        "32767\ttop\n9\tb\n9\td\n9\te\n5\tc\n1\ta\n"
    );
}

#[test]
fn payload_sources_and_formats() {
    let env = Env::new("payload");
    env.ok(&["create", "/m", "--max-msg-len", "64"]);
    // One message per line (the last one without a newline too), empty
    // lines are empty messages.
    let r = env.run_stdin(&["send", "/m"], b"one\n\ntwo\nthree");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(env.info("/m")["current_messages"], 4);
    assert_eq!(
        env.ok(&["recv", "/m", "--count", "4"]),
        "one\n\ntwo\nthree\n"
    );
    let r = env.run_stdin(&["send", "/m", "-"], b"x\ny\n");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(env.ok(&["recv", "/m", "-c", "2"]), "x\ny\n");

    let r = env.run_stdin(&["send", "/m", "--whole"], b"line 1\nline 2\n");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        env.ok(&["recv", "/m", "--format", "hex"]),
        "6c696e6520310a6c696e6520320a\n"
    );

    let file = env.dir.join("blob.bin");
    std::fs::write(&file, b"\xff\x00\x01binary").unwrap();
    env.ok(&["send", "/m", "--file", file.to_str().unwrap(), "-p", "3"]);
    let msgs = env.json(&["recv", "/m", "--format", "json"]);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["type"], "message");
    assert_eq!(msgs[0]["queue"], "/m");
    assert_eq!(msgs[0]["priority"], 3);
    assert_eq!(msgs[0]["len"], 9);
    assert_eq!(msgs[0]["data"]["bytes"], "/wABYmluYXJ5");

    env.ok(&["send", "/m", "héllo"]);
    let msgs = env.json(&["--json", "recv", "/m"]);
    assert_eq!(msgs[0]["data"], serde_json::json!({"text": "héllo"}));
}

#[test]
fn peek_does_not_consume() {
    let env = Env::new("peek");
    env.ok(&["create", "/q"]);
    env.ok(&["send", "/q", "-p", "2", "low"]);
    env.ok(&["send", "/q", "-p", "7", "high"]);
    let first = env.ok(&["peek", "/q", "-p"]);
    assert_eq!(first, "7\thigh\n2\tlow\n");
    assert_eq!(env.ok(&["peek", "/q", "-p"]), first);
    assert_eq!(env.ok(&["peek", "/q", "--count", "1"]), "high\n");
    let peeked = env.json(&["peek", "/q", "--json"]);
    assert_eq!(peeked.len(), 2);
    assert_eq!(peeked[1]["data"]["text"], "low");
    assert_eq!(env.info("/q")["current_messages"], 2);
    assert_eq!(env.ok(&["recv", "/q", "--all"]), "high\nlow\n");
    assert_eq!(env.ok(&["peek", "/q"]), "");
}

#[test]
fn info_json_numbers() {
    let env = Env::new("info");
    env.ok(&[
        "create",
        "/i",
        "--capacity",
        "20",
        "--max-msg-len",
        "128",
        "--mode",
        "0640",
    ]);
    for (p, n) in [("3", 2), ("100", 3), ("0", 1)] {
        for _ in 0..n {
            env.ok(&["send", "/i", "-p", p, "m"]);
        }
    }
    env.ok(&["recv", "/i"]); // one of priority 100
    let i = env.info("/i");
    assert_eq!(i["type"], "queue");
    assert_eq!(i["name"], "/i");
    assert_eq!(i["capacity"], 20);
    assert_eq!(i["max_msg_len"], 128);
    assert_eq!(i["current_messages"], 5);
    assert_eq!(
        i["per_priority"],
        serde_json::json!([{"priority": 100, "count": 2}, {"priority": 3, "count": 2}, {"priority": 0, "count": 1}])
    );
    assert_eq!(i["total_sent"], 6);
    assert_eq!(i["total_received"], 1);
    assert_eq!(i["blocked_senders"], 0);
    assert_eq!(i["blocked_receivers"], 0);
    assert_eq!(i["notify"], Value::Null);
    assert_eq!(i["mode"], format!("{:04o}", 0o640 & !umask()));
    assert_eq!(i["health"]["status"], "ok");
    assert_eq!(i["version"], "3.0");
    assert_eq!(
        i["lock"],
        serde_json::json!({"state": "free", "member": null})
    );
    let path = PathBuf::from(i["path"].as_str().unwrap());
    assert_eq!(path, env.dir.join("i"));
    assert_eq!(i["file_size"], std::fs::metadata(&path).unwrap().len());

    let text = env.ok(&["info", "/i"]);
    for want in [
        "messages:    5 of 20 (up to 128 bytes each)",
        "by priority: 100: 2, 3: 2, 0: 1",
        "health:      ok",
        "lock:        free",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
}

/// The process umask, from /proc.
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

/// Overwrites the state word of a queue file so that it no longer opens.
fn corrupt(path: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&0xdead_beef_u32.to_ne_bytes(), 12).unwrap();
}

#[test]
fn ls_lists_queues_hides_other_files_and_shows_corrupt_ones() {
    let env = Env::new("ls");
    assert_eq!(env.ok(&["ls"]), "");
    env.ok(&["create", "/a", "--capacity", "5"]);
    env.ok(&["create", "/b", "--capacity", "7", "--max-msg-len", "32"]);
    env.ok(&["create", "/bad"]);
    env.ok(&["send", "/b", "x", "y"]);
    std::fs::write(env.dir.join("notes.txt"), b"not a queue at all").unwrap();
    corrupt(&env.dir.join("bad"));

    let rows = env.json(&["ls", "--json"]);
    let names: Vec<_> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["/a", "/b", "/bad"]);
    assert_eq!(rows[1]["current_messages"], 2);
    assert_eq!(rows[1]["capacity"], 7);
    assert_eq!(rows[1]["max_msg_len"], 32);
    assert_eq!(rows[0]["mode"], format!("{:04o}", 0o600 & !umask()));
    assert_eq!(rows[2]["error"]["errno"], "EBADMSG");
    assert!(rows[2].get("capacity").is_none());

    let table = env.ok(&["ls"]);
    let lines: Vec<_> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header: Vec<_> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "DEPTH", "CAPACITY", "MSGSIZE", "MODE", "OWNER", "STATUS"
        ]
    );
    let b: Vec<_> = lines[2].split_whitespace().collect();
    assert_eq!(&b[..4], ["/b", "2", "7", "32"]);
    assert_eq!(b[6], "ok");
    assert!(
        lines[3].starts_with("/bad")
            && lines[3].contains("corrupted")
            && lines[3].contains("(EBADMSG)")
    );
    env.run(&["info", "/bad"]).assert_error("/bad", "EBADMSG");
}

#[test]
fn recv_nonblock_on_empty_exits_1_quietly() {
    let env = Env::new("empty");
    env.ok(&["create", "/e"]);
    let r = env.run(&["recv", "/e", "--nonblock"]);
    assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (1, "", ""));
    let r = env.run(&["recv", "/e", "--all"]);
    assert_eq!(r.code, 1, "{r:?}");
    // Fewer than asked for: what came is printed, the status says 1.
    env.ok(&["send", "/e", "a", "b"]);
    let r = env.run(&["recv", "/e", "-c", "3", "-n"]);
    assert_eq!((r.code, r.stdout.as_str()), (1, "a\nb\n"));
}

#[test]
fn recv_timeout_exits_1() {
    let env = Env::new("timeout");
    env.ok(&["create", "/t"]);
    let start = Instant::now();
    let r = env.run(&["recv", "/t", "--timeout", "200ms"]);
    assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (1, "", ""));
    assert!(
        start.elapsed() >= Duration::from_millis(190),
        "{:?}",
        start.elapsed()
    );
    let r = env.run(&["-v", "recv", "/t", "-t", "10ms"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("(ETIMEDOUT)"), "{r:?}");
    env.ok(&["send", "/t", "late"]);
    assert_eq!(env.ok(&["recv", "/t", "-t", "1s"]), "late\n");
}

#[test]
fn send_to_full_queue_exits_1_with_eagain() {
    let env = Env::new("full");
    env.ok(&["create", "/f", "--capacity", "2"]);
    let r = env.run(&["send", "/f", "--nonblock", "1", "2", "3"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        "mqtool: /f: queue is full, after 2 messages were sent (EAGAIN)\n"
    );
    let r = env.run(&["send", "/f", "--timeout", "50ms", "x"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .starts_with("mqtool: /f: queue still full after 50ms (ETIMEDOUT)"),
        "{r:?}"
    );
}

#[test]
fn errors_exit_2_naming_queue_and_errno() {
    let env = Env::new("errors");
    env.ok(&["create", "/q", "--max-msg-len", "8"]);
    env.run(&["info", "/missing"])
        .assert_error("/missing", "ENOENT");
    env.run(&["send", "/missing", "x"])
        .assert_error("/missing", "ENOENT");
    env.run(&["recv", "missing"])
        .assert_error("/missing", "ENOENT");
    env.run(&["peek", "/missing"])
        .assert_error("/missing", "ENOENT");
    env.run(&["purge", "/missing"])
        .assert_error("/missing", "ENOENT");
    env.run(&["watch", "/missing", "-c", "1"])
        .assert_error("/missing", "ENOENT");
    env.run(&["unlink", "/missing"])
        .assert_error("/missing", "ENOENT");
    assert_eq!(env.run(&["unlink", "-f", "/missing"]).code, 0);

    env.run(&["send", "/q", "-p", "32768", "x"])
        .assert_error("/q", "EINVAL");
    env.run(&["send", "/q", "-p", "4000000000", "x"])
        .assert_error("/q", "EINVAL");
    env.run(&["create", "/zero", "--capacity", "0"])
        .assert_error("/zero", "EINVAL");
    env.run(&["create", "/zero", "--max-msg-len", "0"])
        .assert_error("/zero", "EINVAL");
    env.run(&["send", "/q", "123456789"])
        .assert_error("/q", "EMSGSIZE");
    let r = env.run_stdin(&["send", "/q"], b"short\nmuch too long\n");
    r.assert_error("/q", "EMSGSIZE");
    assert!(r.stderr.contains("line 2: message of 13 bytes"), "{r:?}");
    env.run(&["create", "/q", "--exclusive"])
        .assert_error("/q", "EEXIST");

    env.run(&["info", "/a/b"]).assert_error("/a/b", "EACCES");
    env.run(&["create", ".."]).assert_error("/..", "EACCES");
    env.run(&["send", &"n".repeat(256), "x"])
        .assert_error(&format!("/{}", "n".repeat(256)), "ENAMETOOLONG");
    let r = env.run(&["info", "/"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("(ENOENT)"), "{r:?}");

    // A file in the queue directory that is not a queue.
    std::fs::write(env.dir.join("plain"), vec![b'x'; 100_000]).unwrap();
    env.run(&["info", "/plain"])
        .assert_error("/plain", "EBADMSG");
    env.run(&["send", "/plain", "x"])
        .assert_error("/plain", "EBADMSG");
    env.run(&["recv", "/plain"])
        .assert_error("/plain", "EBADMSG");
    env.run(&["peek", "/plain"])
        .assert_error("/plain", "EBADMSG");
    env.run(&["create", "/plain"])
        .assert_error("/plain", "EBADMSG");
    env.run(&["unlink", "/plain"])
        .assert_error("/plain", "EBADMSG");
    assert!(
        env.dir.join("plain").exists(),
        "unlink must not remove a file that is not a queue"
    );
    std::fs::create_dir(env.dir.join("sub")).unwrap();
    env.run(&["info", "/sub"]).assert_error("/sub", "EBADMSG");
    env.run(&["unlink", "/sub"]).assert_error("/sub", "EBADMSG");
    assert!(env.dir.join("sub").is_dir());

    // A file that is not a file at all, for --file.
    let r = env.run(&["send", "/q", "--file", "/nonexistent/file"]);
    r.assert_error("/nonexistent/file", "ENOENT");

    // A queue directory that does not exist.
    let r = Run::from(
        Command::new(BIN)
            .args(["--dir", "/nonexistent/dir", "info", "/q"])
            .output()
            .unwrap(),
    );
    r.assert_error("/q", "ENOENT");
    assert!(
        r.stderr
            .contains("queue directory /nonexistent/dir: /nonexistent does not exist (ENOENT)"),
        "{r:?}"
    );

    // Usage errors are clap's, with status 2 too.
    assert_eq!(env.run(&["recv"]).code, 2);
    assert_eq!(env.run(&["recv", "/q", "-n", "-t", "1s"]).code, 2);
    assert_eq!(env.run(&["send", "/q", "-t", "soon", "x"]).code, 2);
    assert_eq!(env.run(&["frobnicate"]).code, 2);
}

#[test]
fn permission_denied_for_another_user() {
    if !nix_is_root() {
        eprintln!(
            "SKIPPED permission_denied_for_another_user: needs root to run mqtool as uid 65534"
        );
        return;
    }
    use std::os::unix::process::CommandExt;
    let env = Env::new("perm");
    env.ok(&["create", "/private", "--mode", "0600"]);
    env.ok(&["send", "/private", "secret"]);
    // The binary may live where uid 65534 cannot reach: use a copy.
    let bin = env.dir.join("mqtool");
    std::fs::copy(BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = |args: &[&str]| -> Run {
        let mut c = Command::new(&bin);
        c.args(args)
            .env("SHMQ_DIR", &env.dir)
            .uid(65534)
            .gid(65534)
            .current_dir("/");
        Run::from(c.output().unwrap())
    };
    nobody(&["send", "/private", "x"]).assert_error("/private", "EACCES");
    nobody(&["recv", "/private", "-n"]).assert_error("/private", "EACCES");
    nobody(&["info", "/private"]).assert_error("/private", "EACCES");
    nobody(&["peek", "/private"]).assert_error("/private", "EACCES");
    nobody(&["purge", "/private"]).assert_error("/private", "EACCES");
    nobody(&["create", "/mine"]).assert_error("/mine", "EACCES");
    let ls = nobody(&["--json", "ls"]);
    assert_eq!(ls.code, 0, "{ls:?}");
    assert!(ls.stdout.contains("\"errno\":\"EACCES\""), "{ls:?}");
    assert_eq!(env.ok(&["recv", "/private"]), "secret\n");
}

fn nix_is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0")
}

#[test]
fn purge_and_unlink() {
    let env = Env::new("purge");
    env.ok(&["create", "/p"]);
    env.ok(&["send", "/p", "a", "b", "c"]);
    let purged = env.json(&["--json", "purge", "/p"]);
    assert_eq!(
        purged[0],
        serde_json::json!({"type": "purged", "queue": "/p", "messages": 3})
    );
    assert_eq!(env.info("/p")["current_messages"], 0);
    let r = env.run(&["-v", "purge", "/p"]);
    assert_eq!(r.stderr, "mqtool: /p: purged 0 messages\n");

    env.ok(&["create", "/other"]);
    env.ok(&["unlink", "/p", "other"]);
    assert_eq!(env.ok(&["ls"]), "");
    // One bad name does not stop the others.
    env.ok(&["create", "/x"]);
    let r = env.run(&["unlink", "/gone", "/x"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/gone: no such queue"), "{r:?}");
    assert!(!env.dir.join("x").exists());
}

/// `mqtool` with `args` and `SHMQ_DIR` as given (or unset), under a
/// watchdog.
fn run_with_env_dir(env_dir: Option<&str>, args: &[&str]) -> Run {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("SHMQ_DIR")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = env_dir {
        c.env("SHMQ_DIR", d);
    }
    Run::from(wait_with_watchdog(c.spawn().unwrap()))
}

#[test]
fn queue_directory_rules() {
    let env = Env::new("dir-rules");
    let d = |s: &str| env.dir.join(s).to_str().unwrap().to_string();
    let missing = d("missing");

    // A missing directory is called one, by every command; only create
    // makes it (0700, the caller's).
    let r = run_with_env_dir(None, &["--dir", &missing, "ls"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(
        r.stderr,
        format!("mqtool: queue directory {missing} does not exist (ENOENT)\n")
    );
    let r = run_with_env_dir(Some(&missing), &["send", "/q", "x"]);
    r.assert_error("/q", "ENOENT");
    assert!(
        r.stderr
            .contains(&format!("queue directory {missing} does not exist"))
    );
    assert!(!r.stderr.contains("no such queue"), "{r:?}");
    assert!(!env.dir.join("missing").exists());
    let r = run_with_env_dir(Some(&missing), &["create", "/q"]);
    assert_eq!(r.code, 0, "{r:?}");
    let meta = std::fs::metadata(env.dir.join("missing")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o700);
    assert!(env.dir.join("missing/q").is_file());

    // A relative directory is refused, from --dir and from SHMQ_DIR.
    for r in [
        run_with_env_dir(None, &["--dir", "rel/dir", "ls"]),
        run_with_env_dir(Some("rel/dir"), &["ls"]),
        run_with_env_dir(Some("rel/dir"), &["create", "/q"]),
    ] {
        assert_eq!(r.code, 2, "{r:?}");
        assert_eq!(
            r.stderr,
            "mqtool: queue directory rel/dir is a relative path; give an absolute one (EINVAL)\n"
        );
    }

    // Writable by everyone without the sticky bit; a symbolic link.
    std::fs::create_dir(env.dir.join("open")).unwrap();
    std::fs::set_permissions(env.dir.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(env.dir.join("missing"), env.dir.join("link")).unwrap();
    for (sub, what) in [
        ("open", "is world-writable without the sticky bit (EACCES)"),
        ("link", "is a symbolic link (EACCES)"),
    ] {
        let r = run_with_env_dir(None, &["--dir", &d(sub), "ls"]);
        assert_eq!(r.code, 2, "{r:?}");
        assert_eq!(
            r.stderr,
            format!("mqtool: queue directory {} {what}\n", d(sub))
        );
        let r = run_with_env_dir(Some(&d(sub)), &["create", "/q"]);
        r.assert_error("/q", "EACCES");
    }
    assert_eq!(std::fs::read_dir(env.dir.join("open")).unwrap().count(), 0);

    // ls neither follows a link to a queue nor waits on a FIFO.
    let good = d("missing");
    std::os::unix::fs::symlink(env.dir.join("missing/q"), env.dir.join("missing/alias")).unwrap();
    nix::unistd::mkfifo(
        &env.dir.join("missing/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let r = run_with_env_dir(Some(&good), &["--json", "ls"]);
    assert_eq!(r.code, 0, "{r:?}");
    let names: Vec<String> = r
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .into()
        })
        .collect();
    assert_eq!(names, ["/q"]);
}

#[test]
fn dir_option_wins_over_environment() {
    let env = Env::new("dir-env");
    let other = Env::new("dir-opt");
    let d = other.dir.to_str().unwrap();
    env.ok(&["--dir", d, "create", "/here"]);
    env.ok(&["send", "/here", "--dir", d, "hi"]);
    assert!(other.dir.join("here").exists());
    assert_eq!(env.ok(&["ls"]), "");
    assert_eq!(env.ok(&["recv", "/here", "--dir", d]), "hi\n");
}

#[test]
fn watch_prints_samples() {
    let env = Env::new("watch");
    env.ok(&["create", "/w", "--capacity", "50"]);
    env.ok(&["send", "/w", "a", "b", "c"]);
    let start = Instant::now();
    let out = env.ok(&["watch", "/w", "--count", "2", "--interval", "100ms"]);
    assert!(start.elapsed() >= Duration::from_millis(90));
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header: Vec<_> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ELAPSED",
            "DEPTH",
            "CAPACITY",
            "SENT/S",
            "RECEIVED/S",
            "SENDERS",
            "RECEIVERS",
            "PENDING"
        ]
    );
    let first: Vec<_> = lines[1].split_whitespace().collect();
    assert_eq!(&first[1..], ["3", "50", "-", "-", "0", "0", "0"]);
    let second: Vec<_> = lines[2].split_whitespace().collect();
    assert_eq!(second.len(), 8);
    assert!(
        second[3].parse::<f64>().is_ok() && second[4].parse::<f64>().is_ok(),
        "{out}"
    );

    // Rates come from the totals: send while watching.
    let watcher = env
        .cmd(&["--json", "watch", "/w", "-c", "3", "-i", "300ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    env.ok(&["send", "/w", "1", "2", "3", "4"]);
    env.ok(&["recv", "/w", "-c", "2"]);
    let r = Run::from(wait_with_watchdog(watcher));
    assert_eq!(r.code, 0, "{r:?}");
    let samples: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 3);
    assert_eq!(samples[0]["type"], "sample");
    assert_eq!(samples[0]["sent_per_sec"], Value::Null);
    let last = &samples[2];
    assert_eq!(last["current_messages"], 5);
    assert_eq!(last["total_sent"], 7);
    assert_eq!(last["total_received"], 2);
    let sent: f64 = samples[1..]
        .iter()
        .map(|s| s["sent_per_sec"].as_f64().unwrap())
        .sum();
    assert!(sent > 0.0, "{samples:?}");
}

/// `tmux` with a private server socket in the test's directory.
fn tmux(sock: &Path, args: &[&str]) -> String {
    let o = Command::new("tmux")
        .arg("-S")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "tmux {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn watch_redraws_in_place_on_a_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        // .ci/run installs tmux; elsewhere say loudly what was not checked.
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is required in CI for the terminal test of `mqtool watch`"
        );
        eprintln!("SKIPPED watch_redraws_in_place_on_a_terminal: tmux is not installed");
        return;
    }
    let env = Env::new("watch-tty");
    env.ok(&["create", "/tty", "--capacity", "20"]);
    let sock = env.dir.join("tmux.sock");
    let cmd = format!(
        "env SHMQ_DIR={} {BIN} watch /tty --interval 100ms",
        env.dir.display()
    );
    tmux(
        &sock,
        &[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "w",
            "-x",
            "100",
            "-y",
            "20",
        ],
    );
    tmux(&sock, &["set-option", "-t", "w", "remain-on-exit", "on"]);
    tmux(&sock, &["respawn-pane", "-k", "-t", "w", &cmd]);
    let screen = || tmux(&sock, &["capture-pane", "-p", "-t", "w"]);
    let kill = || {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .arg("kill-server")
            .status();
    };
    let check = std::panic::catch_unwind(|| {
        eventually("the first frame", || {
            screen().contains("depth          0 / 20")
        });
        env.ok(&["send", "/tty", "a", "b", "c"]);
        eventually("a redrawn frame", || {
            screen().contains("depth          3 / 20")
        });
        // Redrawn in place: one frame on screen, at the top, never scrolled.
        let s = screen();
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[0].starts_with("/tty   every 100ms"), "{s}");
        assert_eq!(s.matches("every 100ms").count(), 1, "{s}");
        assert_eq!(s.matches("depth ").count(), 1, "{s}");
        assert!(
            lines[2].starts_with("sent ") && lines[2].ends_with("total 3"),
            "{s}"
        );
        assert!(!s.contains("0 / 20"), "stale text left behind: {s}");
        // Ctrl-C ends it like any other terminal program.
        tmux(&sock, &["send-keys", "-t", "w", "C-c"]);
        eventually("watch to exit on Ctrl-C", || {
            tmux(&sock, &["display-message", "-p", "-t", "w", "#{pane_dead}"]).trim() == "1"
        });
    });
    kill();
    if let Err(e) = check {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn bench_quick_prints_the_table() {
    let env = Env::new("bench");
    let svg = env.dir.join("bench.svg");
    let r = env.run(&["bench", "--quick", "--svg", svg.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    let picture = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    assert!(picture.starts_with("<svg ") && picture.trim_end().ends_with("</svg>"));
    assert!(picture.contains("Latency") && picture.contains("Throughput"));
    // Two panels, shmq in each at least.
    assert!(picture.matches("<polyline").count() >= 2, "{picture}");
    assert!(picture.contains("64 KiB") && picture.contains("16 B"));
    let lines: Vec<_> = r.stdout.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("CASE"))
        .expect("a table header");
    for col in ["SHMQ", "KERNEL MQ", "SPEED-UP", "RANGE"] {
        assert!(lines[header].contains(col), "{col} in {}", lines[header]);
    }
    let cases = [
        "pair, 64 B",
        "pair, 16 B",
        "pair, 4 KiB",
        "pair, 64 KiB",
        "ping-pong across CPUs, median",
        "ping-pong across CPUs, p99",
        "ping-pong on one CPU, median",
        "ping-pong on one CPU, p99",
        "ping-pong on one CPU, late pinning, median",
        "ping-pong on one CPU, late pinning, p99",
        "64 B, depth 10",
        "64 B, depth 256",
        "16 B, depth 10",
        "16 B, depth 256",
        "4 KiB, depth 10",
        "4 KiB, depth 256",
        "64 KiB, depth 10",
        "4 producers -> 1 consumer, 64 B, depth 256",
        "4 producers -> 1 consumer, 64 B, depth 10",
    ];
    // With one usable CPU, there is no ping-pong across CPUs, nor late
    // pinning.
    let one_cpu = r.stdout.contains("ping-pong across CPUs did not run");
    let cases: Vec<_> = cases
        .into_iter()
        .filter(|c| !one_cpu || !(c.contains("across") || c.contains("late")))
        .collect();
    let rows = &lines[header + 1..header + 1 + cases.len()];
    for (row, case) in rows.iter().zip(&cases) {
        assert!(row.contains(case), "{case} in {row}");
        // The kernel may be unable to run a case (it then shows "-").
        assert!(row.ends_with('x') || row.ends_with('-'), "{row}");
        // A loaded machine can stretch a p99 to milliseconds, or more.
        assert!(
            ["ns", "µs", "ms", " s ", "msg/s"]
                .iter()
                .any(|u| row.contains(u)),
            "{row}"
        );
    }
    assert!(
        lines[header + 1 + cases.len()].starts_with("(speed-up"),
        "{}",
        r.stdout
    );
    let alone = lines
        .iter()
        .position(|l| l.starts_with("CASE") && l.contains("EMPTY QUEUE"))
        .expect("a table of shmq alone");
    for (row, case) in lines[alone + 1..alone + 3]
        .iter()
        .zip(["100,000 messages queued", "32,768 distinct priorities"])
    {
        assert!(row.contains(case) && row.ends_with('x'), "{case} in {row}");
    }
    assert!(
        r.stderr.contains("mqtool bench:"),
        "progress on stderr: {r:?}"
    );
    assert!(
        std::fs::read_dir(&env.dir).unwrap().next().is_none(),
        "bench leaves no queue behind"
    );

    // Each kernel row shows the range of the speed-up beside its median.
    for row in rows.iter().filter(|r| !r.ends_with('-')) {
        let range = row.split_whitespace().last().unwrap();
        let (lo, hi) = range.trim_end_matches('x').split_once('-').expect(range);
        let (lo, hi): (f64, f64) = (lo.parse().unwrap(), hi.parse().unwrap());
        assert!(lo <= hi, "{row}");
    }

    let mut rows = env.json(&["--json", "bench", "--quick", "--quiet", "--reps", "2"]);
    let summary = rows.pop().unwrap();
    assert_eq!(summary["type"], "bench-summary", "{summary}");
    assert!(summary["cpus"].as_u64().unwrap() >= 1);
    assert!(summary["warnings"].is_array());
    assert!(summary["loadavg_before"].as_f64().is_some(), "{summary}");
    let cases: Vec<_> = rows.iter().map(|r| r["case"].as_str().unwrap()).collect();
    let all = [
        "pair",
        "pair-16b",
        "pair-4kib",
        "pair-64kib",
        "pingpong",
        "pingpong-p99",
        "pingpong-1cpu",
        "pingpong-1cpu-p99",
        "pingpong-1cpu-late",
        "pingpong-1cpu-late-p99",
        "stream-10",
        "stream-256",
        "stream-16b-10",
        "stream-16b-256",
        "stream-4kib-10",
        "stream-4kib-256",
        "stream-64kib-10",
        "mpsc4-256",
        "mpsc4-10",
        "pair-100000-queued",
        "pair-32768-priorities",
        "pair-ack",
    ];
    let want: Vec<_> = all
        .into_iter()
        .filter(|c| {
            !one_cpu
                || !(c.starts_with("pingpong-1cpu-late")
                    || c.starts_with("pingpong-p")
                    || *c == "pingpong")
        })
        .collect();
    assert_eq!(cases, want);
    for row in &rows {
        assert_eq!(row["type"], "bench");
        assert!(row["shmq"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["msg_len"].as_u64().unwrap() > 0, "{row}");
        if !row["baseline"].is_null() {
            // shmq alone, against itself on an empty queue.
            assert!(row["baseline"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["kernel"].is_null() && row["ratio"].is_null(), "{row}");
        } else if row["kernel"].is_null() {
            // The kernel could not run the case here, and the note says why.
            assert!(row["ratio"].is_null() && row["note"].is_string(), "{row}");
        } else {
            assert!(row["kernel"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
            assert!(row["baseline"].is_null(), "{row}");
            let (lo, hi) = (row["ratio_min"].as_f64(), row["ratio_max"].as_f64());
            assert!(lo.unwrap() <= hi.unwrap(), "{row}");
            assert!(row["spread"].as_f64().unwrap() >= 1.0, "{row}");
        }
    }
}

#[test]
fn bench_processes_run_each_placement_beside_the_kernel() {
    let env = Env::new("bench-proc");
    let mut rows = env.json(&[
        "--json",
        "bench",
        "--shape",
        "processes",
        "--quick",
        "--quiet",
        "--reps",
        "1",
    ]);
    let summary = rows.pop().unwrap();
    assert_eq!(summary["type"], "bench-summary", "{summary}");
    let cpus = summary["cpus"].as_u64().unwrap();
    let cases: Vec<_> = rows.iter().map(|r| r["case"].as_str().unwrap()).collect();
    let mut want = Vec::new();
    let placements: &[&str] = if cpus > 1 {
        &["before", "after", "unpinned"]
    } else {
        &["unpinned"]
    };
    for p in placements {
        want.push(format!("proc-stream-10-{p}"));
        want.push(format!("proc-stream-256-{p}"));
        want.push(format!("proc-pingpong-{p}"));
        want.push(format!("proc-pingpong-{p}-p99"));
    }
    for p in ["before", "after"] {
        want.push(format!("proc-pingpong-1cpu-{p}"));
        want.push(format!("proc-pingpong-1cpu-{p}-p99"));
    }
    want.push("proc-mpsc4-256-unpinned".into());
    assert_eq!(cases, want);
    for row in &rows {
        assert_eq!(row["peer"], "rust-processes", "{row}");
        assert!(row["shmq"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["csw_shmq"].as_f64().unwrap() >= 0.0, "{row}");
        let (lo, hi) = (row["shmq_min"].as_f64(), row["shmq_max"].as_f64());
        assert!(lo.unwrap() <= hi.unwrap(), "{row}");
        if !row["kernel"].is_null() {
            assert!(row["csw_kernel"].as_f64().unwrap() >= 0.0, "{row}");
            assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
        }
    }
    assert!(
        std::fs::read_dir(&env.dir).unwrap().next().is_none(),
        "bench leaves no queue behind"
    );

    // The table: one row per case, the context switches beside the figures.
    let r = env.run(&[
        "bench",
        "--shape",
        "processes",
        "--quick",
        "--quiet",
        "--reps",
        "1",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let header = r.stdout.lines().find(|l| l.starts_with("CASE")).unwrap();
    assert!(
        header.contains("CS/MSG") && header.contains("RANGE"),
        "{header}"
    );
    assert!(
        r.stdout
            .contains("processes: 4 producers -> 1 consumer, 64 B, depth 256, unpinned")
    );
    if cpus == 1 {
        assert!(r.stdout.contains("cross-CPU cases"), "{}", r.stdout);
    } else {
        assert!(r.stdout.contains("pinned before open"), "{}", r.stdout);
    }
}

#[test]
fn bench_c_drives_the_program_through_each_door() {
    let env = Env::new("bench-c");
    // A stand-in for capi/bench/mqbench: no Boost; it says which door it
    // was run through in its figure.
    let prog = std::env::temp_dir().join(format!("fake-mqbench-{}", std::process::id()));
    std::fs::write(
        &prog,
        "#!/bin/sh\n\
         case \"$*\" in *'-a boost'*) echo 'no boost' >&2; exit 2;; esac\n\
         v=100\n\
         case \"$*\" in *'-a shmq'*) v=300;; esac\n\
         [ -n \"$LD_PRELOAD\" ] && v=200\n\
         echo \"$v 0 0.5 1000000\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let lib = std::env::temp_dir().join(format!("fake-preload-{}.so", std::process::id()));
    std::fs::write(&lib, "").unwrap();
    let mut rows = env.json(&[
        "--json",
        "bench",
        "--shape",
        "c",
        "--quick",
        "--quiet",
        "--reps",
        "1",
        "--c-prog",
        prog.to_str().unwrap(),
        "--preload",
        lib.to_str().unwrap(),
    ]);
    std::fs::remove_file(&prog).unwrap();
    std::fs::remove_file(&lib).unwrap();
    rows.pop().unwrap();
    assert!(!rows.is_empty());
    for row in &rows {
        let case = row["case"].as_str().unwrap();
        let (door, want) = match row["peer"].as_str().unwrap() {
            "c-api" => ("c-capi-", 300.0),
            "drop-in" => ("c-dropin-", 200.0),
            other => panic!("peer {other} in {row}"),
        };
        assert!(case.starts_with(door), "{row}");
        assert_eq!(row["csw_shmq"].as_f64(), Some(0.5), "{row}");
        if case.ends_with("-p99") {
            continue;
        }
        assert_eq!(row["shmq"].as_f64(), Some(want), "{row}");
        assert_eq!(row["kernel"].as_f64(), Some(100.0), "{row}");
    }
    assert!(rows.iter().any(|r| r["case"] == "c-capi-pair"));
    assert!(
        rows.iter()
            .any(|r| r["case"] == "c-dropin-mpsc4-256-unpinned")
    );

    // Without the program, --shape c is an error.
    let r = env.run(&["bench", "--shape", "c", "--quick"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--c-prog"), "{r:?}");
    // The hidden peer command is not in the help.
    assert!(!env.ok(&["--help"]).contains("bench-peer"));
}

#[test]
fn broken_pipe_exits_quietly() {
    let env = Env::new("pipe");
    env.ok(&[
        "create",
        "/big",
        "--capacity",
        "2000",
        "--max-msg-len",
        "100",
    ]);
    let many: String = (0..2000).map(|i| format!("message number {i}\n")).collect();
    assert_eq!(env.run_stdin(&["send", "/big"], many.as_bytes()).code, 0);
    for args in [
        &["peek", "/big"][..],
        &["recv", "/big", "--all"],
        &["--json", "ls"],
    ] {
        let mut child = env
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader goes away at once
        let r = Run::from(wait_with_watchdog(child));
        assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{args:?}");
    }
}

#[test]
fn help_completions_and_man_page() {
    let env = Env::new("help");
    let help = env.ok(&["--help"]);
    for want in [
        "Examples:",
        "Exit status:",
        "JSON Lines",
        "\"bytes\"",
        "--dir",
        "watch",
        "bench",
    ] {
        assert!(help.contains(want), "{want} in --help");
    }
    for sub in [
        "create", "send", "recv", "peek", "info", "ls", "unlink", "purge", "watch", "bench",
    ] {
        assert!(
            env.ok(&[sub, "--help"]).contains("Examples:"),
            "{sub} --help has examples"
        );
    }
    for (shell, want) in [
        ("bash", "_mqtool()"),
        ("zsh", "#compdef mqtool"),
        ("fish", "complete -c mqtool"),
    ] {
        let script = env.ok(&["completions", shell]);
        assert!(script.contains(want), "{shell}: {want}");
        assert!(script.contains("watch"), "{shell} completes subcommands");
    }
    let man = env.ok(&["man"]);
    assert!(man.contains(".TH mqtool 1") && man.contains(".SH NAME") && man.contains("JSON Lines"));
    assert!(env.ok(&["man", "recv"]).contains(".TH mqtool-recv 1"));
    env.run(&["man", "nope"]).assert_error_plain();
}

impl Run {
    fn assert_error_plain(&self) {
        assert_eq!(self.code, 2, "{self:?}");
        assert!(self.stderr.starts_with("mqtool: "), "{self:?}");
    }
}

/// `mqtool ARGS` where some arguments are raw bytes (names that are not
/// UTF-8).
fn run_os(env: &Env, args: &[&[u8]]) -> Run {
    use std::os::unix::ffi::OsStrExt;
    let mut c = env.cmd(&[]);
    c.args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)));
    Run::from(c.stdin(Stdio::null()).output().unwrap())
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn ls_escapes_names_and_json_keeps_their_bytes() {
    let env = Env::new("ls-escape");
    let evil: &[u8] = b"/a\x1b[31mred\nsecond line";
    let binary: &[u8] = b"/bin\xff\xfe";
    for name in [evil, binary] {
        let r = run_os(&env, &[b"create", name]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    env.ok(&["create", "/plain"]);

    let table = env.ok(&["ls"]);
    assert!(!table.contains('\x1b'), "raw escape sequence: {table:?}");
    let lines: Vec<_> = table.lines().collect();
    assert_eq!(lines.len(), 4, "one line per queue: {table:?}");
    assert!(table.contains("/a\\e[31mred\\nsecond line"), "{table:?}");
    assert!(table.contains("/bin\\xff\\xfe"), "{table:?}");

    let info = run_os(&env, &[b"info", evil]);
    assert_eq!(info.code, 0, "{info:?}");
    assert!(!info.stdout.contains('\x1b') && info.stdout.contains("\\e[31m"));

    let rows = env.json(&["--json", "ls"]);
    assert_eq!(rows.len(), 3);
    let mut got: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| unhex(r["name_bytes"].as_str().unwrap()))
        .collect();
    got.sort();
    let mut want = vec![evil.to_vec(), binary.to_vec(), b"/plain".to_vec()];
    want.sort();
    assert_eq!(got, want);
    let bin_row = rows
        .iter()
        .find(|r| r["name_bytes"] == "2f62696efffe")
        .unwrap();
    assert_eq!(bin_row["name"], "/bin\u{fffd}\u{fffd}");
    // The exact bytes work as a name again.
    let r = run_os(&env, &[b"unlink", &unhex("2f62696efffe")]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn send_without_input_is_an_error_and_sends_nothing() {
    let env = Env::new("no-input");
    env.ok(&["create", "/q"]);
    for args in [
        &["send", "/q", "--whole"][..],
        &["send", "/q"][..],
        &["send", "/q", "-"][..],
    ] {
        let r = env.run_stdin(&[args, &["-v"]].concat(), b"");
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("no message on standard input"),
            "{args:?}: {r:?}"
        );
        assert!(!r.stderr.contains("sent 1"), "{r:?}");
        // A closed standard input, not an empty pipe.
        let r = env.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
    }
    assert_eq!(env.info("/q")["current_messages"], 0);
    // An empty message is asked for explicitly.
    env.ok(&["send", "/q", ""]);
    let m = env.json(&["--json", "recv", "/q", "--nonblock"]);
    assert_eq!(m[0]["len"], 0);
    // One empty line is one empty message.
    let r = env.run_stdin(&["send", "/q"], b"\n");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(env.info("/q")["current_messages"], 1);
}

#[test]
fn negative_numbers_get_the_range_not_a_dash_tip() {
    let env = Env::new("negative");
    env.ok(&["create", "/q"]);
    env.run(&["send", "/q", "--priority", "-1", "x"])
        .assert_error("/q", "EINVAL");
    let r = env.run(&["send", "/q", "-p", "-1", "x"]);
    assert!(r.stderr.contains("0 to 32767"), "{r:?}");
    for (args, want) in [
        (&["send", "/q", "--timeout", "-1s", "x"][..], "negative"),
        (&["recv", "/q", "--timeout", "-1s"][..], "negative"),
        (&["recv", "/q", "--count", "-1"][..], "1 or more"),
        (&["peek", "/q", "--count", "-1"][..], "1 or more"),
        (&["watch", "/q", "--count", "-1"][..], "1 or more"),
        (&["watch", "/q", "--interval", "-1s"][..], "negative"),
    ] {
        let r = env.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("-- -1"), "{args:?}: {r:?}");
    }
    env.run(&["create", "/neg", "--capacity", "-1"])
        .assert_error("/neg", "EINVAL");
    env.run(&["create", "/neg", "--max-msg-len", "-1"])
        .assert_error("/neg", "EINVAL");
    assert_eq!(env.info("/q")["current_messages"], 0);
}

#[test]
fn peek_and_recv_agree_on_count() {
    let env = Env::new("peek-count");
    env.ok(&["create", "/q"]);
    env.ok(&["send", "/q", "a", "b", "c"]);
    for cmd in ["peek", "recv"] {
        let r = env.run(&[cmd, "/q", "--count", "0"]);
        assert_eq!(r.code, 2, "{cmd}: {r:?}");
        assert!(r.stderr.contains("1 or more"), "{cmd}: {r:?}");
    }
    assert_eq!(env.ok(&["peek", "/q", "--count", "2"]), "a\nb\n");
    assert_eq!(env.ok(&["recv", "/q", "--count", "2"]), "a\nb\n");
}

#[test]
fn capacity_limit_is_stated_and_checked() {
    let env = Env::new("capacity");
    let help = env.ok(&["create", "--help"]);
    assert!(help.contains("1 to 4294967294"), "{help}");
    assert!(!help.contains("9223372036854775807"), "{help}");
    let r = env.run(&["create", "/big", "--capacity", "1000000000000"]);
    r.assert_error("/big", "EOVERFLOW");
    assert!(r.stderr.contains("limit of 4294967294"), "{r:?}");
    let r = env.run(&[
        "create",
        "/big",
        "--capacity",
        "4294967294",
        "--max-msg-len",
        "9000000000000000",
    ]);
    r.assert_error("/big", "EOVERFLOW");
    assert!(r.stderr.contains("8 EiB"), "{r:?}");
    assert!(!env.dir.join("big").exists());
}

/// `mqtool ARGS` with its standard output as raw bytes.
fn stdout_bytes(env: &Env, args: &[&str]) -> (i32, Vec<u8>) {
    let o = env.cmd(args).stdin(Stdio::null()).output().unwrap();
    (o.status.code().unwrap_or(-1), o.stdout)
}

#[test]
fn raw_format_is_byte_exact_and_one_message() {
    let env = Env::new("raw");
    env.ok(&["create", "/q"]);
    let payload: Vec<u8> = (0..=255u8).chain(*b"no newline at the end").collect();
    let file = env.dir.join("payload.bin");
    std::fs::write(&file, &payload).unwrap();
    env.ok(&["send", "/q", "--file", file.to_str().unwrap()]);
    env.ok(&["send", "/q", "second"]);

    assert_eq!(
        stdout_bytes(&env, &["peek", "/q", "--count", "1", "--format", "raw"]),
        (0, payload.clone())
    );
    assert_eq!(
        stdout_bytes(&env, &["recv", "/q", "--format", "raw"]),
        (0, payload)
    );
    for args in [
        &["recv", "/q", "--format", "raw", "--all"][..],
        &["recv", "/q", "--format", "raw", "--count", "2"][..],
        &["recv", "/q", "--format", "raw", "-p"][..],
        &["peek", "/q", "--format", "raw"][..],
    ] {
        let r = env.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("raw"), "{args:?}: {r:?}");
        assert_eq!(r.stdout, "", "{args:?}");
    }
    // Nothing was taken by the refused commands.
    assert_eq!(env.info("/q")["current_messages"], 1);
    // The text format adds the newline, as documented.
    assert_eq!(
        stdout_bytes(&env, &["recv", "/q"]),
        (0, b"second\n".to_vec())
    );
}

#[test]
fn json_and_format_conflict() {
    let env = Env::new("json-format");
    env.ok(&["create", "/q"]);
    env.ok(&["send", "/q", "x"]);
    for args in [
        &["--json", "recv", "/q", "--format", "hex"][..],
        &["recv", "/q", "--format", "hex", "--json"][..],
        &["--json", "peek", "/q", "--format", "text"][..],
        &["peek", "/q", "--json", "--format", "hex"][..],
    ] {
        let r = env.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("--json") && r.stderr.contains("--format"),
            "{args:?}: {r:?}"
        );
        assert_eq!(r.stdout, "", "{args:?}");
    }
    assert_eq!(env.info("/q")["current_messages"], 1);
    assert_eq!(env.ok(&["peek", "/q", "--format", "hex"]), "78\n");
}

#[test]
fn health_has_one_shape_everywhere() {
    let env = Env::new("health");
    env.ok(&["create", "/h"]);
    let info = env.info("/h")["health"].clone();
    let ls = env.json(&["--json", "ls"])[0]["health"].clone();
    let watch = env.json(&["--json", "watch", "/h", "-c", "1"])[0]["health"].clone();
    let want = serde_json::json!({"status": "ok", "repairs": 0, "corrupted_slots": 0});
    assert_eq!(info, want);
    assert_eq!(ls, want);
    assert_eq!(watch, want);
}

#[test]
fn errors_are_json_with_json() {
    let env = Env::new("json-errors");
    let parse = |r: &Run| -> Value {
        assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
        serde_json::from_str(r.stderr.trim_end()).unwrap_or_else(|e| panic!("{e}: {r:?}"))
    };
    let r = env.run(&["--json", "info", "/missing"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    let j = parse(&r);
    assert_eq!(j["type"], "error");
    assert_eq!(j["subject"], "/missing");
    assert_eq!(j["errno"], "ENOENT");
    assert_eq!(j["status"], 2);
    assert!(j["message"].as_str().unwrap().contains("no such queue"));

    // Exit 1 (full queue) and usage errors too.
    env.ok(&["create", "/one", "--capacity", "1"]);
    env.ok(&["send", "/one", "x"]);
    let j = parse(&env.run(&["send", "/one", "--nonblock", "y", "--json"]));
    assert_eq!(
        (j["errno"].as_str(), j["status"].as_u64()),
        (Some("EAGAIN"), Some(1))
    );
    let r = env.run(&["--json", "recv", "/one", "--bogus"]);
    assert_eq!(r.code, 2);
    let j = parse(&r);
    assert_eq!(j["type"], "error");
    assert!(j["message"].as_str().unwrap().contains("--bogus"), "{j}");

    // Without --json: the plain line.
    let r = env.run(&["info", "/missing"]);
    assert!(r.stderr.starts_with("mqtool: /missing: "), "{r:?}");
}

#[test]
fn compound_durations() {
    let env = Env::new("durations");
    env.ok(&["create", "/q"]);
    env.ok(&["send", "/q", "--timeout", "1h30m", "x"]);
    assert_eq!(env.ok(&["recv", "/q", "--timeout", "1m 30s"]), "x\n");
    let start = Instant::now();
    let r = env.run(&["recv", "/q", "--timeout", "0m0s50ms"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(start.elapsed() >= Duration::from_millis(45));
    let r = env.run(&["recv", "/q", "--timeout", "1h30"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("without a unit"), "{r:?}");
}

#[test]
fn man_pages_have_the_usual_sections_and_every_page_they_name() {
    let env = Env::new("man");
    let man = env.ok(&["man"]);
    for section in [
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH \"SEE ALSO\"",
        ".SH \"JSON OUTPUT\"",
    ] {
        assert!(man.contains(section), "{section} missing");
    }
    assert!(!man.contains(".SH EXTRA"), "clap's catch-all section");
    assert!(man.contains("SHMQ_DIR"));
    let sub = env.ok(&["man", "send"]);
    assert!(sub.contains(".SH \"EXIT STATUS\"") && sub.contains(".SH \"SEE ALSO\""));
    assert!(sub.contains(".SH EXAMPLES") && !sub.contains(".SH EXTRA"));

    let out = env.dir.join("man1");
    std::fs::create_dir(&out).unwrap();
    env.ok(&["man", "--out-dir", out.to_str().unwrap()]);
    // Every mqtool-NAME(1) the main page refers to is written.
    let written = std::fs::read_to_string(out.join("mqtool.1")).unwrap();
    assert_eq!(written, man);
    let mut referred = 0;
    for word in man.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '\\')) {
        let word = word.replace("\\-", "-");
        if let Some(sub) = word.strip_prefix("mqtool-") {
            if !sub.is_empty() {
                referred += 1;
                let page = out.join(format!("mqtool-{sub}.1"));
                assert!(
                    page.is_file(),
                    "{} is referred to but not written",
                    page.display()
                );
            }
        }
    }
    assert!(referred >= 12, "{referred}");
    assert!(!out.join("mqtool-help.1").exists());
}

/// The queue `/acked` with `n` numbered messages at priorities 0..3.
fn numbered_queue(env: &Env, n: usize) -> Vec<String> {
    env.ok(&[
        "create",
        "/acked",
        "--capacity",
        "100",
        "--max-msg-len",
        "64",
    ]);
    let lines: Vec<String> = (0..n).map(|i| format!("message {i}")).collect();
    for (i, l) in lines.iter().enumerate() {
        let p = (i % 3).to_string();
        env.ok(&["send", "/acked", "--priority", &p, l]);
    }
    // Delivery order: priority 2 first, oldest first within one.
    let mut order: Vec<(usize, String)> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (i % 3, l.clone()))
        .collect();
    order.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
    order.into_iter().map(|(_, l)| l).collect()
}

/// Everything queued, in delivery order, and nothing pending.
fn assert_all_queued(env: &Env, want: &[String], what: &str) {
    let info = env.info("/acked");
    assert_eq!(info["current_messages"], want.len(), "{what}: {info}");
    assert_eq!(info["pending"], 0, "{what}: {info}");
    let peeked: Vec<String> = env
        .ok(&["peek", "/acked"])
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(peeked, want, "{what}");
}

#[test]
fn recv_write_failures_leave_the_messages_queued() {
    let modes: [&[&str]; 3] = [&[], &["--json"], &["--format", "hex"]];
    for mode in modes {
        let env = Env::new("ackfail");
        let want = numbered_queue(&env, 12);
        let mut args: Vec<&str> = Vec::new();
        let json = mode == ["--json"];
        if json {
            args.push("--json");
        }
        args.extend(["recv", "/acked", "--all"]);
        if !json {
            args.extend(mode);
        }

        // A full disk: exit 2, an error about standard output (not the
        // queue), every message still queued in order.
        let r = Run::from(
            env.cmd(&args)
                .stdout(std::fs::File::create("/dev/full").unwrap())
                .stderr(Stdio::piped())
                .output()
                .unwrap(),
        );
        assert_eq!(r.code, 2, "{mode:?} /dev/full: {r:?}");
        if json {
            let e: Value = serde_json::from_str(r.stderr.trim()).unwrap();
            assert_eq!(e["subject"], "standard output", "{r:?}");
            assert_eq!(e["errno"], "ENOSPC", "{r:?}");
        } else {
            assert!(
                r.stderr.starts_with("mqtool: standard output: ")
                    && r.stderr.contains("(ENOSPC)")
                    && !r.stderr.contains("queue"),
                "{mode:?}: {r:?}"
            );
        }
        assert_all_queued(&env, &want, "/dev/full");

        // Standard output closed (`>&-`): the same, with EBADF.
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("exec \"$0\" \"$@\" >&-")
            .arg(BIN)
            .args(&args)
            .env("SHMQ_DIR", &env.dir)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let r = Run::from(sh.output().unwrap());
        assert_eq!(r.code, 2, "{mode:?} >&-: {r:?}");
        assert!(r.stderr.contains("standard output"), "{r:?}");
        assert!(r.stderr.contains("EBADF"), "{r:?}");
        assert_all_queued(&env, &want, ">&-");

        // A reader gone before the first write (`| head -0`): quiet, and
        // nothing lost.
        let (rd, wr) = nix::unistd::pipe().unwrap();
        drop(rd);
        let r = Run::from(
            env.cmd(&args)
                .stdout(Stdio::from(wr))
                .stderr(Stdio::piped())
                .output()
                .unwrap(),
        );
        assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{mode:?} EPIPE");
        assert_all_queued(&env, &want, "| head -0");

        // Written out: acknowledged, gone.
        let r = env.run(&args);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.stdout.lines().count(), want.len());
        assert_all_queued(&env, &[], "received");

        // `> /dev/null` asks for them to be thrown away: they are.
        env.ok(&["send", "/acked", "gone"]);
        let r = Run::from(
            env.cmd(&args)
                .stdout(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/null")
                        .unwrap(),
                )
                .output()
                .unwrap(),
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert_all_queued(&env, &[], "> /dev/null");
    }
}

#[test]
fn info_peek_and_watch_show_pending_messages_and_their_holder() {
    let env = Env::new("pending");
    env.ok(&["create", "/held", "--max-msg-len", "64"]);
    for m in ["one", "two", "three"] {
        env.ok(&["send", "/held", m]);
    }
    let q = shmq::OpenOptions::readwrite()
        .dir(&env.dir)
        .open("/held")
        .unwrap();
    let (mut b1, mut b2) = ([0u8; 64], [0u8; 64]);
    let p1 = q.recv_pending(&mut b1).unwrap();
    let p2 = q.recv_pending(&mut b2).unwrap();
    let info = env.info("/held");
    assert_eq!(info["current_messages"], 1, "{info}");
    assert_eq!(info["pending"], 2, "{info}");
    let holders = info["pending_holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1, "{info}");
    assert_eq!(holders[0]["messages"], 2);
    assert_eq!(holders[0]["alive"], true);
    let member = holders[0]["member"].as_u64().unwrap();
    let text = env.ok(&["info", "/held"]);
    assert!(
        text.contains(&format!(
            "pending:     2 (received, not acknowledged; member {member}: 2)"
        )),
        "{text}"
    );
    assert_eq!(env.ok(&["peek", "/held"]), "three\n");
    let mut pending: Vec<String> = env
        .ok(&["peek", "/held", "--pending"])
        .lines()
        .map(String::from)
        .collect();
    pending.sort();
    assert_eq!(pending, ["one", "two"]);
    for m in env.json(&["--json", "peek", "/held", "--pending"]) {
        assert_eq!(m["holder"].as_u64(), Some(member), "{m}");
    }
    assert!(
        env.json(&["--json", "peek", "/held"])[0]
            .get("holder")
            .is_none()
    );
    let sample = env.json(&["--json", "watch", "/held", "--count", "1"]);
    assert_eq!(sample[0]["pending"], 2, "{:?}", sample);
    p1.ack().unwrap();
    drop(p2);
    let info = env.info("/held");
    assert_eq!(
        (&info["pending"], &info["current_messages"]),
        (&Value::from(0), &Value::from(2))
    );
    assert_eq!(env.ok(&["recv", "/held", "--all"]), "two\nthree\n");
}

#[test]
fn recv_stopped_mid_output_keeps_the_rest_queued_in_order() {
    let env = Env::new("ackpart");
    let want = numbered_queue(&env, 100);
    // A file size limit of 512 bytes (`ulimit -f 1`), SIGXFSZ ignored:
    // the writes fail with EFBIG part way through the queue.
    let out = env.dir.join(".out");
    let r = Run::from(
        Command::new("sh")
            .arg("-c")
            .arg("trap '' XFSZ; ulimit -f 1; exec \"$0\" recv /acked --all > \"$OUT\"")
            .arg(BIN)
            .env("SHMQ_DIR", &env.dir)
            .env("OUT", &out)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.starts_with("mqtool: standard output: ") && r.stderr.contains("(EFBIG)"),
        "{r:?}"
    );
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.len(), 512);
    let mut lines: Vec<&str> = written.split('\n').collect();
    // The message cut by the limit, if any, is delivered again.
    let cut = lines.pop().unwrap();
    let k = lines.len();
    assert!(k > 0 && k < want.len());
    assert_eq!(
        lines,
        want[..k].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(want[k].starts_with(cut), "{cut:?} / {:?}", want[k]);
    assert_all_queued(&env, &want[k..], "after EFBIG");
}
