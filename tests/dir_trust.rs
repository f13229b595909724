//! The queue directory is used only if nobody but root and the caller could
//! have prepared it (`shmq::name`): hostile directories made by another uid
//! are refused with words and errnos that say why, a swap of the directory
//! during opens never redirects a queue, and the default directory is made
//! and checked the same way (in a private mount namespace with its own
//! tmpfs on `/dev/shm`, never the real one).

mod common;

use common::TestDir;
use nix::errno::Errno;
use shmq::{DirProblem, Error, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const NOBODY: u32 = 65534;

/// Runs `script` with `sh -c` as uid/gid 65534, failing the test if it fails.
fn as_nobody(script: &str) {
    let st = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .status()
        .expect("setpriv");
    assert!(st.success(), "as uid 65534: {script}: {st}");
}

/// Whether this test can switch uid; says so loudly when it cannot.
fn can_switch(test: &str) -> bool {
    if !common::is_root() {
        eprintln!("SKIPPED {test}: needs root to act as uid 65534");
        return false;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED {test}: setpriv is missing");
        return false;
    }
    true
}

fn shmq_err(e: &std::io::Error) -> &Error {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("not a shmq error: {e:?}"))
}

/// Opening `/jobs` in `dir` (creating it) fails with a directory problem:
/// returns the problem, the offending path and the message, after checking
/// the errno of both front doors.
fn refused(dir: &Path) -> (DirProblem, PathBuf, String) {
    let e = OpenOptions::readwrite()
        .create()
        .mode(0o600)
        .dir(dir)
        .open("/jobs")
        .expect_err("an untrusted directory was used");
    let (problem, path) = match shmq_err(&e) {
        Error::Dir {
            dir: d,
            path,
            problem,
        } => {
            assert_eq!(d, dir);
            (*problem, path.clone())
        }
        other => panic!("{}: not a directory error: {other}", dir.display()),
    };
    assert_eq!(
        e.kind(),
        std::io::Error::from_raw_os_error(problem.errno() as i32).kind()
    );
    // The same for the inspection API and unlink.
    assert_eq!(
        shmq::inspect::list(Some(dir)).unwrap_err().errno(),
        problem.errno()
    );
    assert_eq!(
        shmq_err(&shmq::remove_queue_in(dir, "/jobs").unwrap_err()).errno(),
        problem.errno()
    );
    (problem, path, e.to_string())
}

#[test]
fn directories_another_uid_could_have_prepared_are_refused() {
    if !can_switch("directories_another_uid_could_have_prepared_are_refused") {
        return;
    }
    // A parent set up like /dev/shm: root's, mode 1777.
    let d = TestDir::new("trust");
    let p = d.path();
    std::fs::create_dir(p.join("good")).unwrap();
    std::fs::create_dir(p.join("good/sub")).unwrap();
    as_nobody(&format!(
        "cd {} && mkdir open && chmod 0777 open && mkdir sticky && chmod 1777 sticky \
         && ln -s {}/good link && ln -s {}/good nlink",
        p.display(),
        p.display(),
        p.display()
    ));

    // The report: uid 65534 made the directory, mode 0777.
    let (problem, path, msg) = refused(&p.join("open"));
    assert_eq!(problem, DirProblem::Owner { uid: NOBODY });
    assert_eq!(path, p.join("open"));
    assert_eq!(
        msg,
        format!(
            "queue directory {} is owned by uid 65534, not by root or you (EACCES)",
            p.join("open").display()
        )
    );
    // Sticky does not help a directory someone else owns.
    assert_eq!(
        refused(&p.join("sticky")).0,
        DirProblem::Owner { uid: NOBODY }
    );
    // A link, even to a good directory.
    let (problem, _, msg) = refused(&p.join("link"));
    assert_eq!(problem, DirProblem::SymbolicLink);
    assert!(msg.ends_with("link is a symbolic link (EACCES)"), "{msg}");
    // Another uid's link on the way.
    let (problem, path, msg) = refused(&p.join("nlink/sub"));
    assert_eq!(problem, DirProblem::LinkOwner { uid: NOBODY });
    assert_eq!(path, p.join("nlink"));
    assert!(
        msg.contains(&format!(
            ": {} is a symbolic link owned by uid 65534",
            p.join("nlink").display()
        )),
        "{msg}"
    );
    // Root's own, but writable by others without the sticky bit.
    std::fs::create_dir(p.join("ww")).unwrap();
    std::fs::set_permissions(p.join("ww"), PermissionsExt::from_mode(0o777)).unwrap();
    let (problem, _, msg) = refused(&p.join("ww"));
    assert_eq!(problem, DirProblem::WorldWritable);
    assert!(
        msg.ends_with("ww is world-writable without the sticky bit (EACCES)"),
        "{msg}"
    );
    std::fs::create_dir(p.join("gw")).unwrap();
    std::os::unix::fs::chown(p.join("gw"), None, Some(NOBODY)).unwrap();
    std::fs::set_permissions(p.join("gw"), PermissionsExt::from_mode(0o775)).unwrap();
    let (problem, _, msg) = refused(&p.join("gw"));
    assert_eq!(problem, DirProblem::GroupWritable { gid: NOBODY });
    assert!(
        msg.ends_with("gw is writable by group 65534 without the sticky bit (EACCES)"),
        "{msg}"
    );
    // ... and under such a directory, whatever the last one is like.
    std::fs::create_dir(p.join("ww/inner")).unwrap();
    let (problem, path, _) = refused(&p.join("ww/inner"));
    assert_eq!((problem, path), (DirProblem::WorldWritable, p.join("ww")));
    // Not a directory.
    std::fs::write(p.join("file"), b"").unwrap();
    assert_eq!(refused(&p.join("file")).0, DirProblem::NotADirectory);
    // Nothing was created in any of them.
    for sub in ["open", "sticky", "good", "ww", "gw"] {
        let n = std::fs::read_dir(p.join(sub))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
            .count();
        assert_eq!(n, 0, "a file appeared in {sub}");
    }

    // What passes: root's link on the way, a sticky world-writable
    // directory of root's, and (for uid 65534) a directory of its own.
    std::os::unix::fs::symlink(p.join("good"), p.join("rlink")).unwrap();
    let q = OpenOptions::readwrite()
        .create_new()
        .dir(p.join("rlink/sub"))
        .open("/ok")
        .unwrap();
    q.send(1, b"via root's link").unwrap();
    assert!(p.join("good/sub/ok").exists());
    OpenOptions::readwrite()
        .create_new()
        .dir(p)
        .open("/in-sticky")
        .unwrap();
    as_nobody(&format!(
        "test -d {0}/sticky && ! test -e {0}/sticky/x",
        p.display()
    ));
}

/// A user's own directory below directories it may only search (mode
/// 0711, root's) is reached and used: the walk needs no read permission on
/// the way, as a path would not.
#[test]
fn a_user_reaches_its_own_directory_through_search_only_ones() {
    const TEST: &str = "a_user_reaches_its_own_directory_through_search_only_ones";
    if common::role().as_deref() == Some("nobody") {
        let dir = common::child_dir();
        let q = OpenOptions::readwrite()
            .create_new()
            .mode(0o600)
            .dir(&dir)
            .open("/mine")
            .unwrap();
        q.send(1, b"mine").unwrap();
        let l = shmq::inspect::list(Some(&dir)).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].info.as_ref().unwrap().current_messages, 1);
        shmq::remove_queue_in(&dir, "/mine").unwrap();
        // Beside it, in root's directory, it cannot make one.
        let beside = dir.parent().unwrap().join("new");
        let e = OpenOptions::readwrite()
            .create()
            .dir(&beside)
            .open("/q")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "queue directory {} does not exist and cannot be created: Permission denied (EACCES)",
                beside.display()
            )
        );
        return;
    }
    if !can_switch(TEST) {
        return;
    }
    let d = TestDir::new("search");
    let x = d.path().join("x");
    let home = x.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&x, PermissionsExt::from_mode(0o711)).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&home, PermissionsExt::from_mode(0o700)).unwrap();
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(common::ROLE, "nobody")
        .env(common::DIR, &home)
        .env_remove("SHMQ_DIR");
    common::wait_ok(&mut c.spawn().unwrap(), Duration::from_secs(60));
}

#[test]
fn shmq_dir_gets_the_same_checks_and_mq_open_says_eacces() {
    if let Some(role) = common::role() {
        // SHMQ_DIR was set by the parent; no builder option.
        let e = shmq::mqueue::mq_open(
            "/jobs",
            nix::mqueue::MQ_OFlag::O_CREAT | nix::mqueue::MQ_OFlag::O_RDWR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            None,
        )
        .expect_err("untrusted SHMQ_DIR was used");
        let want = match role.as_str() {
            "untrusted" => Errno::EACCES,
            "relative" => Errno::EINVAL,
            _ => unreachable!(),
        };
        assert_eq!(e, want);
        let e = OpenOptions::readwrite().open("/jobs").unwrap_err();
        assert_eq!(shmq_err(&e).errno(), want, "{e}");
        return;
    }
    if !can_switch("shmq_dir_gets_the_same_checks_and_mq_open_says_eacces") {
        return;
    }
    let d = TestDir::new("env");
    as_nobody(&format!(
        "mkdir -m 0777 {0}/open && chmod 0777 {0}/open",
        d.path().display()
    ));
    let test = "shmq_dir_gets_the_same_checks_and_mq_open_says_eacces";
    for (role, dir) in [
        ("untrusted", d.path().join("open").into_os_string()),
        ("relative", "relative/dir".into()),
    ] {
        let mut c = common::child(test, role, d.path());
        c.env("SHMQ_DIR", dir);
        common::wait_ok(&mut c.spawn().unwrap(), Duration::from_secs(60));
    }
    assert_eq!(std::fs::read_dir(d.path().join("open")).unwrap().count(), 0);
}

#[test]
fn a_missing_directory_is_called_one_and_made_only_by_a_create() {
    let d = TestDir::new("missing");
    let dir = d.path().join("new");
    for e in [
        shmq_err(&OpenOptions::readwrite().dir(&dir).open("/q").unwrap_err()).clone(),
        shmq::inspect::list(Some(&dir)).unwrap_err(),
        shmq::inspect::Inspector::open("/q", Some(&dir))
            .err()
            .unwrap(),
    ] {
        assert_eq!(e.errno(), Errno::ENOENT);
        assert_eq!(
            e.to_string(),
            format!("queue directory {} does not exist (ENOENT)", dir.display())
        );
    }
    assert!(!dir.exists());
    // A missing directory further up is not made.
    let deep = d.path().join("a/b");
    let e = OpenOptions::readwrite()
        .create()
        .dir(&deep)
        .open("/q")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "queue directory {}: {} does not exist (ENOENT)",
            deep.display(),
            d.path().join("a").display()
        )
    );
    // O_CREAT makes the last one, 0700, the caller's, whatever the umask.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o277));
    let made = OpenOptions::readwrite().create().dir(&dir).open("/q");
    nix::sys::stat::umask(old);
    let q = made.unwrap();
    let m = std::fs::metadata(&dir).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o700);
    assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
    q.send(0, b"here").unwrap();
    assert!(dir.join("q").is_file());
    // No temporary directory is left behind.
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["new"]);
}

#[test]
fn a_directory_renamed_after_open_does_not_move_the_queue() {
    let d = TestDir::new("rename");
    let dir = d.path().join("q");
    std::fs::create_dir(&dir).unwrap();
    let q = OpenOptions::readwrite()
        .create_new()
        .dir(&dir)
        .open("/jobs")
        .unwrap();
    std::fs::rename(&dir, d.path().join("moved")).unwrap();
    std::fs::create_dir(&dir).unwrap();
    let other = OpenOptions::readwrite()
        .create_new()
        .dir(&dir)
        .open("/jobs")
        .unwrap();
    q.send(1, b"to the original").unwrap();
    assert_eq!(other.attributes().unwrap().current_messages, 0);
    let moved = OpenOptions::readonly()
        .dir(d.path().join("moved"))
        .open("/jobs")
        .unwrap();
    let mut buf = [0; 8192];
    assert_eq!(moved.recv(&mut buf).unwrap(), (1, 15));
    assert_eq!(&buf[..15], b"to the original");
}

/// While another thread keeps exchanging the queue directory with a
/// symbolic link to a directory of uid 65534 (and then with such a
/// directory itself), opens that create a queue either fail with a
/// directory error or create it in the real directory: never in the other.
#[test]
fn a_directory_swapped_during_opens_never_redirects_them() {
    if !can_switch("a_directory_swapped_during_opens_never_redirects_them") {
        return;
    }
    let d = TestDir::new("swap");
    let p = d.path().to_path_buf();
    std::fs::create_dir(p.join("q")).unwrap();
    as_nobody(&format!(
        "mkdir -m 0777 {0}/evil && chmod 0777 {0}/evil && mkdir -m 0777 {0}/evil2 && chmod 0777 {0}/evil2",
        p.display()
    ));
    std::os::unix::fs::symlink(p.join("evil"), p.join("alt")).unwrap();
    let (mut created, mut refused) = (0, 0);
    for round in 0..2 {
        if round == 1 {
            // Now the other side of the exchange is a hostile directory.
            std::fs::remove_file(p.join("alt")).unwrap();
            std::fs::rename(p.join("evil2"), p.join("alt")).unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, p) = (stop.clone(), p.clone());
            std::thread::spawn(move || {
                let dir = nix::fcntl::AT_FDCWD;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    nix::fcntl::renameat2(
                        dir,
                        &p.join("q"),
                        dir,
                        &p.join("alt"),
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .unwrap();
                    n += 1;
                }
                n
            })
        };
        for i in 0..400 {
            match OpenOptions::readwrite()
                .create_new()
                .capacity(1)
                .max_msg_len(8)
                .dir(p.join("q"))
                .open(&format!("/r{round}-{i}"))
            {
                Ok(_) => created += 1,
                Err(e) => {
                    match shmq_err(&e) {
                        Error::Dir {
                            problem: DirProblem::SymbolicLink | DirProblem::Owner { .. },
                            ..
                        } => {}
                        other => panic!("unexpected: {other}"),
                    }
                    refused += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        assert!(swaps > 0);
        // Put the real directory back at q.
        if std::fs::symlink_metadata(p.join("q")).unwrap().uid() != 0
            || std::fs::symlink_metadata(p.join("q"))
                .unwrap()
                .file_type()
                .is_symlink()
        {
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &p.join("q"),
                nix::fcntl::AT_FDCWD,
                &p.join("alt"),
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .unwrap();
        }
    }
    eprintln!("swap: {created} created, {refused} refused");
    for evil in ["evil", "alt"] {
        let files: Vec<_> = std::fs::read_dir(p.join(evil))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(files.is_empty(), "queues landed in {evil}: {files:?}");
    }
    let real = std::fs::read_dir(p.join("q")).unwrap().count();
    assert_eq!(
        real, created,
        "every created queue is in the real directory"
    );
    assert!(
        created > 0 && refused > 0,
        "{created} created, {refused} refused"
    );
}

/// The default directory, `/dev/shm/shmq`, in a private mount namespace
/// whose `/dev/shm` is a fresh tmpfs (mode 1777, root's, like the real one).
#[test]
fn the_default_directory_is_made_and_checked() {
    const TEST: &str = "the_default_directory_is_made_and_checked";
    if common::role().as_deref() == Some("namespace") {
        default_directory_cases();
        return;
    }
    if !can_switch(TEST) {
        return;
    }
    let probe = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs -o mode=1777 tmpfs /dev/shm",
        ])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED {TEST}: cannot make a private mount namespace with a tmpfs on /dev/shm \
             (unshare -m): {probe:?}"
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs -o mode=1777 tmpfs /dev/shm && exec \"$0\" \"$@\"",
    ])
    .arg(&exe)
    .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
    .env(common::ROLE, "namespace")
    .env_remove("SHMQ_DIR");
    common::wait_ok(&mut c.spawn().unwrap(), Duration::from_secs(120));
}

fn default_directory_cases() {
    let shm = Path::new("/dev/shm");
    let dir = Path::new(shmq::name::DEFAULT_DIR);
    // Our own tmpfs, not the real /dev/shm.
    assert_eq!(std::fs::read_dir(shm).unwrap().count(), 0);
    assert!(std::env::var_os("SHMQ_DIR").is_none());
    let reset = || {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(dir);
    };

    // Missing: made 1777, root's, by several racing creators at once; no
    // temporary directory is left behind.
    let threads: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                OpenOptions::readwrite()
                    .create_new()
                    .open(&format!("/race{i}"))
                    .map(drop)
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    let m = std::fs::symlink_metadata(dir).unwrap();
    assert!(m.is_dir());
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o1777, 0));
    assert_eq!(std::fs::read_dir(shm).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 4);
    // Another uid cannot move it away (root's, in a sticky /dev/shm).
    let moved = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "mv"])
        .arg(dir)
        .arg(shm.join("away"))
        .status()
        .unwrap();
    assert!(!moved.success());

    // The report: uid 65534 made it first, 0777.
    reset();
    as_nobody("mkdir /dev/shm/shmq && chmod 0777 /dev/shm/shmq");
    let e = OpenOptions::readwrite()
        .create()
        .mode(0o600)
        .open("/jobs")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "queue directory /dev/shm/shmq is owned by uid 65534, not by root or you (EACCES)"
    );
    assert_eq!(
        shmq::mqueue::mq_open(
            "/jobs",
            nix::mqueue::MQ_OFlag::O_CREAT | nix::mqueue::MQ_OFlag::O_WRONLY,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            None,
        )
        .unwrap_err(),
        Errno::EACCES
    );
    assert_eq!(
        shmq::inspect::list(None).unwrap_err().errno(),
        Errno::EACCES
    );
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);

    // A link to a directory of its own.
    reset();
    as_nobody("mkdir -m 1777 /dev/shm/evil && ln -s /dev/shm/evil /dev/shm/shmq");
    let e = OpenOptions::readwrite().create().open("/jobs").unwrap_err();
    assert_eq!(
        e.to_string(),
        "queue directory /dev/shm/shmq is a symbolic link (EACCES)"
    );
    assert_eq!(std::fs::read_dir("/dev/shm/evil").unwrap().count(), 0);

    // Root's, but 0777 without the sticky bit.
    reset();
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, PermissionsExt::from_mode(0o777)).unwrap();
    let e = OpenOptions::readwrite().create().open("/jobs").unwrap_err();
    assert_eq!(
        e.to_string(),
        "queue directory /dev/shm/shmq is world-writable without the sticky bit (EACCES)"
    );
    reset();
}
