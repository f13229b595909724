//! Builds the C test programs of `tests/c/` four ways and runs each:
//!
//! 1. unmodified, against the kernel's queues (`-lrt`): they test POSIX, so
//!    they must pass there too;
//! 2. through the compatibility header, linked with `libshmq.a`;
//! 3. through the compatibility header, linked with `libshmq.so`;
//! 4. the unmodified binaries of (1) with `libshmq_preload.so` preloaded.
//!
//! Every program is compiled with `-Wall -Wextra -Werror`, and once more with
//! `_FORTIFY_SOURCE=2` for (2) and (4). Each prints `N passed, N failed`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Makes sure both libraries exist for this profile (a plain
/// `cargo test -p shmq-capi` does not build the preload crate).
fn build_libraries() -> PathBuf {
    let dir = target_dir();
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut c = Command::new(env!("CARGO"));
    c.args(["build", "-p", "shmq-capi", "-p", "shmq-preload"]);
    if release {
        c.arg("--release");
    }
    let st = c.current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
    assert!(st.success(), "cargo build of the C libraries failed");
    for lib in ["libshmq.so", "libshmq.a", "libshmq_preload.so"] {
        assert!(dir.join(lib).exists(), "{lib} missing in {}", dir.display());
    }
    dir
}

/// A private queue directory, mode 1777 like the default one (some C
/// tests drop to another uid and create queues there).
fn queue_dir(tag: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("shmq-c-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

fn sources() -> Vec<PathBuf> {
    sources_in("tests/c")
}

fn sources_in(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(sub);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no C tests in {}", dir.display());
    v
}

struct Variant {
    name: &'static str,
    flags: Vec<String>,
    libs: Vec<String>,
    preload: bool,
}

fn compile(src: &Path, out: &Path, v: &Variant) {
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let mut c = Command::new("gcc");
    c.args([
        "-std=c11",
        "-D_GNU_SOURCE",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O2",
        "-g",
    ])
    .arg(format!("-I{}", include.display()))
    .arg(format!("-I{}", src.parent().unwrap().display()))
    .args(&v.flags)
    .arg(src)
    .arg("-o")
    .arg(out)
    .args(&v.libs);
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{} ({}): compile failed:\n{}",
        src.display(),
        v.name,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Tells this test binary, run again, to be the lock holder.
const HOLDER_ROLE: &str = "SHMQ_TEST_ROLE";

/// The shell command a C test runs to get a process that holds a shmq
/// queue's lock (named in `SHMQ_TEST_QUEUE`, in `SHMQ_DIR`), for as long
/// as it lives: this binary, running [`c_test_lock_holder`].
fn holder_command() -> String {
    let exe = std::env::current_exe().unwrap();
    let exe = exe.display().to_string();
    assert!(!exe.contains('\''), "a path the shell can quote: {exe}");
    format!("exec '{exe}' c_test_lock_holder --exact --nocapture --test-threads=1")
}

/// Not a test of its own: the lock holder that C tests start through
/// `SHMQ_TEST_HOLDER` (see `tests/c/stopped_holder.c`). Takes the queue's
/// lock in the middle of a receive, prints `SHMQ-LOCKED` and waits to be
/// killed.
#[test]
fn c_test_lock_holder() {
    if std::env::var(HOLDER_ROLE).as_deref() != Ok("hold") {
        return;
    }
    let name = std::env::var("SHMQ_TEST_QUEUE").expect("SHMQ_TEST_QUEUE");
    let q = shmq::OpenOptions::readwrite().open(&name).unwrap();
    q.__die_holding_lock(true, &|| {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "\nSHMQ-LOCKED");
        let _ = out.flush();
    });
}

/// Runs one program; returns (passed, failed) from its summary line.
fn run(bin: &Path, v: &Variant, libdir: &Path, queue_dir: &Path) -> (u32, u32) {
    let mut c = Command::new(bin);
    c.env("SHMQ_DIR", queue_dir)
        .env("SHMQ_TEST_HOLDER", holder_command())
        .env(HOLDER_ROLE, "hold");
    if v.preload {
        c.env("LD_PRELOAD", libdir.join("libshmq_preload.so"));
    }
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let summary = out
        .lines()
        .rev()
        .find_map(|l| {
            let (p, f) = l.trim().split_once(" passed, ")?;
            let f = f.strip_suffix(" failed")?;
            Some((p.trim().parse().ok()?, f.trim().parse().ok()?))
        })
        .unwrap_or_else(|| {
            panic!(
                "{} ({}): no summary line; stdout:\n{out}\nstderr:\n{}",
                bin.display(),
                v.name,
                String::from_utf8_lossy(&o.stderr)
            )
        });
    assert!(
        o.status.success() && summary.1 == 0,
        "{} ({}): {} passed, {} failed, {}\nstdout:\n{out}\nstderr:\n{}",
        bin.display(),
        v.name,
        summary.0,
        summary.1,
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        summary.0 > 0,
        "{} ({}): nothing was checked",
        bin.display(),
        v.name
    );
    summary
}

#[test]
fn c_tests_pass_against_the_kernel_libshmq_the_compat_header_and_the_drop_in() {
    let libdir = build_libraries();
    let build = libdir.join("c-tests");
    std::fs::create_dir_all(&build).unwrap();
    let queue_dir = queue_dir("tests");
    let rpath = format!("-Wl,-rpath,{}", libdir.display());
    let shmq_a = libdir.join("libshmq.a").display().to_string();
    let sys = ["-lpthread", "-ldl", "-lm", "-lrt"].map(String::from);
    let variants = [
        Variant {
            name: "kernel",
            flags: vec![],
            libs: vec!["-lrt".into(), "-lpthread".into()],
            preload: false,
        },
        Variant {
            name: "libshmq.a + compat header",
            flags: vec!["-DSHMQ_COMPAT".into()],
            libs: [vec![shmq_a.clone()], sys.to_vec()].concat(),
            preload: false,
        },
        Variant {
            name: "libshmq.a + compat header, fortified",
            flags: vec!["-DSHMQ_COMPAT".into(), "-D_FORTIFY_SOURCE=2".into()],
            libs: [vec![shmq_a], sys.to_vec()].concat(),
            preload: false,
        },
        Variant {
            name: "libshmq.so + compat header",
            flags: vec!["-DSHMQ_COMPAT".into()],
            libs: [
                vec![format!("-L{}", libdir.display()), "-lshmq".into(), rpath],
                sys.to_vec(),
            ]
            .concat(),
            preload: false,
        },
        Variant {
            name: "unmodified + LD_PRELOAD",
            flags: vec![],
            libs: vec!["-lrt".into(), "-lpthread".into()],
            preload: true,
        },
        Variant {
            name: "unmodified, fortified + LD_PRELOAD",
            flags: vec!["-D_FORTIFY_SOURCE=2".into()],
            libs: vec!["-lrt".into(), "-lpthread".into()],
            preload: true,
        },
    ];
    let mut report = Vec::new();
    for v in &variants {
        let (mut passed, mut programs) = (0, 0);
        for src in sources() {
            let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
            let bin = build.join(format!(
                "{stem}-{}",
                v.name.replace([' ', '+', ',', '.'], "_")
            ));
            compile(&src, &bin, v);
            passed += run(&bin, v, &libdir, &queue_dir).0;
            programs += 1;
        }
        report.push(format!(
            "{}: {programs} programs, {passed} checks passed",
            v.name
        ));
    }
    let _ = std::fs::remove_dir_all(&queue_dir);
    eprintln!("{}", report.join("\n"));
}

/// shmq's own descriptor rules (`tests/c_shmq/`), which go beyond POSIX:
/// EBADF for ordinary file descriptors and arbitrary numbers, and
/// `shmq_close` never closing what it does not own. Calls the `shmq_*`
/// names; linked statically and dynamically.
#[test]
fn c_tests_of_shmq_descriptor_rules() {
    let libdir = build_libraries();
    let build = libdir.join("c-tests");
    std::fs::create_dir_all(&build).unwrap();
    let queue_dir = queue_dir("desc");
    let sys = ["-lpthread", "-ldl", "-lm", "-lrt"].map(String::from);
    let variants = [
        Variant {
            name: "libshmq.a",
            flags: vec![],
            libs: [
                vec![libdir.join("libshmq.a").display().to_string()],
                sys.to_vec(),
            ]
            .concat(),
            preload: false,
        },
        Variant {
            name: "libshmq.so",
            flags: vec![],
            libs: [
                vec![
                    format!("-L{}", libdir.display()),
                    "-lshmq".into(),
                    format!("-Wl,-rpath,{}", libdir.display()),
                ],
                sys.to_vec(),
            ]
            .concat(),
            preload: false,
        },
    ];
    for v in &variants {
        for src in sources_in("tests/c_shmq") {
            let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
            let bin = build.join(format!("{stem}-{}", v.name.replace('.', "_")));
            compile(&src, &bin, v);
            run(&bin, v, &libdir, &queue_dir);
        }
    }
    let _ = std::fs::remove_dir_all(&queue_dir);
}

/// An untrusted queue directory (`tests/c_dir/`): `mq_open` and `mq_unlink`
/// fail with `EACCES` (world-writable without the sticky bit, owned by
/// another uid, a symbolic link), `ENOENT` (missing) and `EINVAL`
/// (relative), through the compatibility header and libshmq.so and under
/// the drop-in.
#[test]
fn an_untrusted_queue_directory_gives_eacces_in_c_and_through_the_drop_in() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let queue_dir = queue_dir("dir-trust");
    // A directory just made is owned by the effective uid.
    if std::fs::metadata(&queue_dir).unwrap().uid() != 0 {
        eprintln!(
            "SKIPPED an_untrusted_queue_directory_gives_eacces_in_c_and_through_the_drop_in: \
             needs root to give a directory to uid 65534"
        );
        let _ = std::fs::remove_dir_all(&queue_dir);
        return;
    }
    let libdir = build_libraries();
    let build = libdir.join("c-tests");
    std::fs::create_dir_all(&build).unwrap();
    let sub = |s: &str| queue_dir.join(s);
    for d in ["open", "owned", "good"] {
        std::fs::create_dir_all(sub(d)).unwrap();
    }
    std::fs::set_permissions(sub("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(sub("owned"), Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(sub("good"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_file(sub("link"));
    std::os::unix::fs::symlink(sub("good"), sub("link")).unwrap();
    let tests_c = format!("-I{}/tests/c", env!("CARGO_MANIFEST_DIR"));
    let sys = ["-lpthread", "-ldl", "-lm", "-lrt"].map(String::from);
    let variants = [
        Variant {
            name: "libshmq.so + compat header",
            flags: vec!["-DSHMQ_COMPAT".into(), tests_c.clone()],
            libs: [
                vec![
                    format!("-L{}", libdir.display()),
                    "-lshmq".into(),
                    format!("-Wl,-rpath,{}", libdir.display()),
                ],
                sys.to_vec(),
            ]
            .concat(),
            preload: false,
        },
        Variant {
            name: "unmodified + LD_PRELOAD",
            flags: vec![tests_c],
            libs: vec!["-lrt".into(), "-lpthread".into()],
            preload: true,
        },
    ];
    for v in &variants {
        for src in sources_in("tests/c_dir") {
            let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
            let bin = build.join(format!(
                "{stem}-{}",
                v.name.replace([' ', '+', ',', '.'], "_")
            ));
            compile(&src, &bin, v);
            run(&bin, v, &libdir, &queue_dir);
        }
    }
    for d in ["open", "owned", "good"] {
        let n = std::fs::read_dir(sub(d)).unwrap().count();
        assert_eq!(n, 0, "a file was left in {d}");
    }
    let _ = std::fs::remove_dir_all(&queue_dir);
}

/// The drop-in really replaces the kernel: a queue of 1000 messages, which
/// the kernel refuses here (its default `msg_max` is 10), opens under the
/// preload, and its file appears in the shmq directory; both with a plain
/// and with a fortified build (which calls `__mq_open_2` for two-argument
/// opens).
#[test]
fn the_drop_in_interposes_on_glibc() {
    let libdir = build_libraries();
    let build = libdir.join("c-tests");
    std::fs::create_dir_all(&build).unwrap();
    let src = build.join("interpose.c");
    std::fs::write(
        &src,
        r#"#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <unistd.h>
int main(void) {
    char name[64];
    snprintf(name, sizeof name, "/shmq-interpose-%d", (int)getpid());
    struct mq_attr a = {0};
    a.mq_maxmsg = 1000;
    a.mq_msgsize = 64;
    mqd_t q = mq_open(name, O_CREAT | O_EXCL | O_RDWR, 0600, &a);
    if (q == (mqd_t)-1) { perror("mq_open"); return 3; }
    mqd_t again = mq_open(name, O_RDONLY);
    if (again == (mqd_t)-1) { perror("mq_open 2 args"); return 4; }
    printf("%s\n", name + 1);
    fflush(stdout);
    return 0;
}
"#,
    )
    .unwrap();
    for fortify in [false, true] {
        let bin = build.join(if fortify {
            "interpose-fortified"
        } else {
            "interpose"
        });
        let mut c = Command::new("gcc");
        c.args(["-O2", "-Wall", "-Werror"]);
        if fortify {
            c.arg("-D_FORTIFY_SOURCE=2");
        }
        assert!(
            c.arg(&src)
                .arg("-o")
                .arg(&bin)
                .arg("-lrt")
                .status()
                .unwrap()
                .success()
        );
        let plain = Command::new(&bin).output().unwrap();
        assert_eq!(
            plain.status.code(),
            Some(3),
            "the kernel refuses 1000 messages: {plain:?}"
        );
        let queue_dir = queue_dir(if fortify { "interpose-f" } else { "interpose" });
        let pre = Command::new(&bin)
            .env("LD_PRELOAD", libdir.join("libshmq_preload.so"))
            .env("SHMQ_DIR", &queue_dir)
            .output()
            .unwrap();
        assert!(pre.status.success(), "{pre:?}");
        let name = String::from_utf8(pre.stdout).unwrap();
        assert!(
            queue_dir.join(name.trim()).exists(),
            "queue file in SHMQ_DIR"
        );
        let _ = std::fs::remove_dir_all(&queue_dir);
    }
}

/// A queue file truncated under an unmodified C program that uses the
/// drop-in (`tests/c_preload/`): its calls fail with `EBADMSG`, it does not
/// die of `SIGBUS`.
#[test]
fn the_drop_in_survives_a_truncated_queue() {
    let libdir = build_libraries();
    let build = libdir.join("c-tests");
    std::fs::create_dir_all(&build).unwrap();
    let queue_dir = queue_dir("sigbus");
    let v = Variant {
        name: "unmodified + LD_PRELOAD",
        flags: vec![],
        libs: vec!["-lrt".into(), "-lpthread".into()],
        preload: true,
    };
    for src in sources_in("tests/c_preload") {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let bin = build.join(format!("{stem}-preload"));
        compile(&src, &bin, &v);
        run(&bin, &v, &libdir, &queue_dir);
    }
    let _ = std::fs::remove_dir_all(&queue_dir);
}

/// capi/bench/mqbench (the C program of `mqtool bench --shape c`) builds
/// and runs every case through the kernel, libshmq's C API and the drop-in,
/// with a tiny count: its output has the shape mqtool reads. Speed is not
/// checked.
#[test]
fn mqbench_runs_through_each_door() {
    let libs = build_libraries();
    let out = std::env::temp_dir().join(format!("shmq-mqbench-{}", std::process::id()));
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench");
    let st = Command::new("make")
        .arg("-C")
        .arg(&bench)
        .arg(format!("BUILD={}", out.display()))
        .arg(format!("SHMQ_LIBDIR={}", libs.display()))
        .status()
        .unwrap();
    assert!(st.success(), "make -C capi/bench failed");
    let prog = out.join("mqbench");
    let dir = queue_dir("mqbench");
    let cases: [&[&str]; 4] = [
        &["pair", "200"],
        &["pingpong", "200"],
        &["-p", "after", "-c", "0,0", "stream", "2000"],
        &["-P", "4", "stream", "2000"],
    ];
    for (door, api, preload) in [
        ("kernel", "kernel", false),
        ("C API", "shmq", false),
        ("drop-in", "kernel", true),
    ] {
        for case in cases {
            let name = format!("/mqbench-test-{}", std::process::id());
            let mut c = Command::new(&prog);
            c.env("SHMQ_DIR", &dir)
                .args(["-a", api, "-n", &name])
                .args(case);
            if preload {
                c.env("LD_PRELOAD", libs.join("libshmq_preload.so"));
            }
            let o = c.output().unwrap();
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "{door} {case:?}: {}{}",
                text,
                String::from_utf8_lossy(&o.stderr)
            );
            let f: Vec<f64> = text
                .split_whitespace()
                .map(|w| {
                    w.parse()
                        .unwrap_or_else(|_| panic!("{door} {case:?}: {text:?}"))
                })
                .collect();
            assert_eq!(f.len(), 4, "{door} {case:?}: {text:?}");
            assert!(
                f[0] > 0.0 && f[2] >= 0.0 && f[3] > 0.0,
                "{door} {case:?}: {text:?}"
            );
        }
    }
    // Nothing left behind, in either namespace.
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
    std::fs::remove_dir(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&out);
}
