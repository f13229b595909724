//! Fuzzing the C API's arguments: null pointers, huge lengths, bad
//! descriptors, bad attributes, bad timeouts and `sigevent`s, first a table
//! of known cases, then random combinations. Each call must return -1 with
//! a clean errno (never `EIO`, which is what an internal panic turns into)
//! or succeed, never crash, never block, and never close a file descriptor
//! that is not its own.
//!
//! The calls run in a child (this binary again, with `libshmq.so` loaded
//! through `dlopen`), so that a crash is reported with the case that caused
//! it. `SHMQ_FUZZ_CASES` sets the number of random calls (default 2000).

use libc::{c_char, c_int, c_uint, mq_attr, mqd_t, size_t, ssize_t, timespec};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ROLE: &str = "SHMQ_FUZZ_ARGS_ROLE";
const MSGSIZE: usize = 1024;

type Open4 = unsafe extern "C" fn(*const c_char, c_int, libc::mode_t, *const mq_attr) -> mqd_t;
type Close = unsafe extern "C" fn(mqd_t) -> c_int;
type Unlink = unsafe extern "C" fn(*const c_char) -> c_int;
type GetAttr = unsafe extern "C" fn(mqd_t, *mut mq_attr) -> c_int;
type SetAttr = unsafe extern "C" fn(mqd_t, *const mq_attr, *mut mq_attr) -> c_int;
type Send = unsafe extern "C-unwind" fn(mqd_t, *const c_char, size_t, c_uint) -> c_int;
type TimedSend =
    unsafe extern "C-unwind" fn(mqd_t, *const c_char, size_t, c_uint, *const timespec) -> c_int;
type Receive = unsafe extern "C-unwind" fn(mqd_t, *mut c_char, size_t, *mut c_uint) -> ssize_t;
type TimedReceive = unsafe extern "C-unwind" fn(
    mqd_t,
    *mut c_char,
    size_t,
    *mut c_uint,
    *const timespec,
) -> ssize_t;
type Notify = unsafe extern "C" fn(mqd_t, *const libc::sigevent) -> c_int;

struct Api {
    open4: Open4,
    close: Close,
    unlink: Unlink,
    getattr: GetAttr,
    setattr: SetAttr,
    send: Send,
    timedsend: TimedSend,
    receive: Receive,
    timedreceive: TimedReceive,
    notify: Notify,
}

fn load(lib: &Path) -> Api {
    let path = CString::new(lib.to_str().unwrap()).unwrap();
    // SAFETY: a path to a shared library; RTLD_NOW resolves it all now.
    let h = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!h.is_null(), "dlopen {}", lib.display());
    let sym = |name: &str| {
        let n = CString::new(name).unwrap();
        // SAFETY: h is a live handle; n is a C string.
        let p = unsafe { libc::dlsym(h, n.as_ptr()) };
        assert!(!p.is_null(), "{name} missing");
        p
    };
    // SAFETY: each symbol is the function of that name in shmq.h, with the
    // signature written here.
    unsafe {
        Api {
            open4: std::mem::transmute::<*mut libc::c_void, Open4>(sym("shmq_open4")),
            close: std::mem::transmute::<*mut libc::c_void, Close>(sym("shmq_close")),
            unlink: std::mem::transmute::<*mut libc::c_void, Unlink>(sym("shmq_unlink")),
            getattr: std::mem::transmute::<*mut libc::c_void, GetAttr>(sym("shmq_getattr")),
            setattr: std::mem::transmute::<*mut libc::c_void, SetAttr>(sym("shmq_setattr")),
            send: std::mem::transmute::<*mut libc::c_void, Send>(sym("shmq_send")),
            timedsend: std::mem::transmute::<*mut libc::c_void, TimedSend>(sym("shmq_timedsend")),
            receive: std::mem::transmute::<*mut libc::c_void, Receive>(sym("shmq_receive")),
            timedreceive: std::mem::transmute::<*mut libc::c_void, TimedReceive>(sym(
                "shmq_timedreceive",
            )),
            notify: std::mem::transmute::<*mut libc::c_void, Notify>(sym("shmq_notify")),
        }
    }
}

fn mk_attr(flags: i64, maxmsg: i64, msgsize: i64) -> mq_attr {
    // SAFETY: mq_attr is plain integers; zero is valid.
    let mut a: mq_attr = unsafe { std::mem::zeroed() };
    a.mq_flags = flags as _;
    a.mq_maxmsg = maxmsg as _;
    a.mq_msgsize = msgsize as _;
    a
}

fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn set_errno(v: c_int) {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = v };
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize]
    }
}

/// The child: runs every case, saying which before it starts.
fn run_cases(dir: &Path, lib: &Path, random: u32, seed: u64) {
    let api = load(lib);
    let mut out = std::io::stdout();
    let mut n = 0u32;
    let mut case = |what: &str| {
        n += 1;
        writeln!(out, "@@ case {n}: {what}").unwrap();
        out.flush().unwrap();
        set_errno(0);
    };
    // A result: success, or -1 with an errno that is neither 0 nor EIO.
    let check = |what: &str, r: i64, want: Option<c_int>| {
        if r == -1 {
            let e = errno();
            assert!(e != 0 && e != libc::EIO, "{what}: errno {e}");
            if let Some(w) = want {
                assert_eq!(e, w, "{what}");
            }
        } else {
            assert!(want.is_none(), "{what}: succeeded, expected errno {want:?}");
        }
    };
    let name = CString::new("/fuzz").unwrap();
    let attr = mk_attr(0, 4, MSGSIZE as i64);
    // The calls below pass pointers that are null, or valid for what the
    // function may touch: buffers are larger than the message size, which
    // bounds every copy; lengths beyond them are refused or never used.
    // SAFETY: as just said.
    let fd = unsafe { (api.open4)(name.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600, &attr) };
    assert!(fd >= 0, "open: errno {}", errno());
    // SAFETY: as above.
    let nb = unsafe {
        (api.open4)(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK,
            0,
            std::ptr::null(),
        )
    };
    assert!(nb >= 0);
    // SAFETY: as above.
    let closed = unsafe { (api.open4)(name.as_ptr(), libc::O_RDONLY, 0, std::ptr::null()) };
    // SAFETY: as above.
    assert_eq!(unsafe { (api.close)(closed) }, 0);
    let mut buf = vec![0u8; 4 * MSGSIZE];
    let bufp = buf.as_mut_ptr().cast::<c_char>();
    let mut prio: c_uint = 0;
    let past = timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let far = timespec {
        tv_sec: libc::time_t::MAX,
        tv_nsec: 999_999_999,
    };
    let bad_ns = timespec {
        tv_sec: 1,
        tv_nsec: -1,
    };
    let big_ns = timespec {
        tv_sec: 1,
        tv_nsec: 1_000_000_000,
    };
    let neg = timespec {
        tv_sec: -1,
        tv_nsec: 0,
    };
    let null = std::ptr::null::<c_char>();

    // Known cases.
    // SAFETY: as above.
    unsafe {
        case("open NULL name");
        check(
            "open NULL",
            (api.open4)(null, libc::O_RDWR, 0, std::ptr::null()) as i64,
            Some(libc::EFAULT),
        );
        case("open, access mode 3");
        check(
            "open O_ACCMODE",
            (api.open4)(name.as_ptr(), 3, 0, std::ptr::null()) as i64,
            Some(libc::EINVAL),
        );
        for (mx, ms) in [
            (0i64, 8i64),
            (8, 0),
            (-1, 8),
            (8, -1),
            (i64::MAX, i64::MAX),
            (1 << 40, 1 << 40),
        ] {
            case("create with bad attributes");
            let a = mk_attr(0, mx, ms);
            let n2 = CString::new("/fuzz-attr").unwrap();
            let r = (api.open4)(
                n2.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                0o600,
                &a,
            );
            check("create bad attr", r as i64, None);
            if r >= 0 {
                (api.close)(r);
                (api.unlink)(n2.as_ptr());
            }
        }
        case("unlink NULL");
        check("unlink NULL", (api.unlink)(null) as i64, Some(libc::EFAULT));
        let long = CString::new(format!("/{}", "x".repeat(300))).unwrap();
        case("unlink a long name");
        check(
            "unlink long",
            (api.unlink)(long.as_ptr()) as i64,
            Some(libc::ENAMETOOLONG),
        );
        for bad in [-1, closed, 0, 1, 2, c_int::MAX, c_int::MIN] {
            case("close a bad descriptor");
            check("close bad", (api.close)(bad) as i64, Some(libc::EBADF));
            case("getattr on a bad descriptor");
            let mut a = attr;
            check(
                "getattr bad",
                (api.getattr)(bad, &mut a) as i64,
                Some(libc::EBADF),
            );
            case("send on a bad descriptor");
            check(
                "send bad",
                (api.send)(bad, bufp, 1, 0) as i64,
                Some(libc::EBADF),
            );
            case("receive on a bad descriptor");
            check(
                "receive bad",
                (api.receive)(bad, bufp, MSGSIZE, &mut prio) as i64,
                Some(libc::EBADF),
            );
            case("notify on a bad descriptor");
            check(
                "notify bad",
                (api.notify)(bad, std::ptr::null()) as i64,
                Some(libc::EBADF),
            );
        }
        for std_fd in 0..3 {
            assert_ne!(
                libc::fcntl(std_fd, libc::F_GETFD),
                -1,
                "fd {std_fd} was closed"
            );
        }
        case("getattr NULL");
        check(
            "getattr NULL",
            (api.getattr)(fd, std::ptr::null_mut()) as i64,
            Some(libc::EFAULT),
        );
        case("setattr NULL NULL");
        check(
            "setattr NULL",
            (api.setattr)(fd, std::ptr::null(), std::ptr::null_mut()) as i64,
            None,
        );
        case("setattr with stray flags");
        let a = mk_attr(!0, 4, MSGSIZE as i64);
        check(
            "setattr flags",
            (api.setattr)(fd, &a, std::ptr::null_mut()) as i64,
            Some(libc::EINVAL),
        );
        case("send NULL");
        check(
            "send NULL",
            (api.send)(nb, null, 5, 0) as i64,
            Some(libc::EFAULT),
        );
        case("send priority 32768");
        check(
            "send prio",
            (api.send)(nb, bufp, 1, 32768) as i64,
            Some(libc::EINVAL),
        );
        case("send priority u32::MAX");
        check(
            "send prio",
            (api.send)(nb, bufp, 1, c_uint::MAX) as i64,
            Some(libc::EINVAL),
        );
        for len in [
            MSGSIZE + 1,
            isize::MAX as usize,
            isize::MAX as usize + 1,
            usize::MAX,
        ] {
            case(&format!("send length {len}"));
            check(
                "send len",
                (api.send)(nb, bufp, len, 0) as i64,
                Some(libc::EMSGSIZE),
            );
            case(&format!("timed send length {len}"));
            check(
                "timedsend len",
                (api.timedsend)(nb, bufp, len, 0, &past) as i64,
                Some(libc::EMSGSIZE),
            );
        }
        for ts in [&bad_ns, &big_ns, &neg] {
            case("timed send, bad timespec");
            check(
                "timedsend ts",
                (api.timedsend)(fd, bufp, 1, 0, ts) as i64,
                Some(libc::EINVAL),
            );
            case("timed receive, bad timespec");
            check(
                "timedreceive ts",
                (api.timedreceive)(fd, bufp, MSGSIZE, &mut prio, ts) as i64,
                Some(libc::EINVAL),
            );
        }
        case("timed send, NULL timespec");
        check(
            "timedsend NULL",
            (api.timedsend)(fd, bufp, 1, 0, std::ptr::null()) as i64,
            Some(libc::EFAULT),
        );
        case("timed send, far deadline");
        check(
            "timedsend far",
            (api.timedsend)(fd, bufp, 1, 0, &far) as i64,
            None,
        );
        case("receive NULL");
        check(
            "receive NULL",
            (api.receive)(nb, std::ptr::null_mut(), MSGSIZE, &mut prio) as i64,
            Some(libc::EFAULT),
        );
        case("receive, short buffer");
        check(
            "receive short",
            (api.receive)(nb, bufp, MSGSIZE - 1, &mut prio) as i64,
            Some(libc::EMSGSIZE),
        );
        for len in [isize::MAX as usize, isize::MAX as usize + 1, usize::MAX] {
            (api.send)(nb, bufp, 3, 1);
            case(&format!("receive length {len}"));
            check(
                "receive huge",
                (api.receive)(nb, bufp, len, std::ptr::null_mut()) as i64,
                None,
            );
            (api.send)(nb, bufp, 3, 1);
            case(&format!("timed receive length {len}"));
            check(
                "timedreceive huge",
                (api.timedreceive)(nb, bufp, len, &mut prio, &past) as i64,
                None,
            );
        }
        let mut ev: libc::sigevent = std::mem::zeroed();
        for (notify, signo) in [
            (12345, 0),
            (libc::SIGEV_SIGNAL, 1000),
            (libc::SIGEV_SIGNAL, -1),
            (libc::SIGEV_THREAD, 0),
        ] {
            ev.sigev_notify = notify;
            ev.sigev_signo = signo;
            case(&format!("notify {notify} signal {signo}"));
            check(
                "notify bad",
                (api.notify)(fd, &ev) as i64,
                Some(libc::EINVAL),
            );
        }
    }

    // Random combinations.
    let mut rng = Rng(seed | 1);
    let fds = [fd, nb, closed, -1, 0, 1, 2, c_int::MAX, c_int::MIN, 1000];
    let lens = [
        0,
        1,
        MSGSIZE - 1,
        MSGSIZE,
        MSGSIZE + 1,
        isize::MAX as usize,
        isize::MAX as usize + 1,
        usize::MAX,
    ];
    let prios = [0, 1, 32767, 32768, c_uint::MAX];
    let times: [*const timespec; 5] = [&past, &far, &bad_ns, &big_ns, &neg];
    for _ in 0..random {
        let f = rng.pick(&fds);
        let len = rng.pick(&lens);
        let p = rng.pick(&prios);
        let ts: *const timespec = if rng.next().is_multiple_of(8) {
            std::ptr::null()
        } else {
            rng.pick(&times)
        };
        let ptr = if rng.next().is_multiple_of(6) {
            std::ptr::null_mut()
        } else {
            bufp
        };
        // A blocking call on the blocking descriptor only with a deadline
        // that cannot make it wait.
        let f_untimed = if f == fd { nb } else { f };
        let ts_safe = if f == fd && std::ptr::eq(ts, &far) {
            &past as *const timespec
        } else {
            ts
        };
        let which = rng.next() % 8;
        let what =
            format!("random call {which}: fd {f}, len {len}, prio {p}, ptr {ptr:?}, ts {ts:?}");
        case(&what);
        // SAFETY: as above.
        let r = unsafe {
            match which {
                0 => (api.send)(f_untimed, ptr, len, p) as i64,
                1 => (api.timedsend)(f, ptr, len, p, ts_safe) as i64,
                2 => (api.receive)(
                    f_untimed,
                    ptr,
                    len,
                    if rng.next().is_multiple_of(2) {
                        &mut prio
                    } else {
                        std::ptr::null_mut()
                    },
                ) as i64,
                3 => (api.timedreceive)(f, ptr, len, &mut prio, ts_safe) as i64,
                4 => {
                    let mut a = attr;
                    (api.getattr)(
                        f,
                        if ptr.is_null() {
                            std::ptr::null_mut()
                        } else {
                            &mut a
                        },
                    ) as i64
                }
                5 => {
                    let a = mk_attr(
                        rng.pick(&[0, libc::O_NONBLOCK as i64, -1, 1 << 40]),
                        4,
                        MSGSIZE as i64,
                    );
                    let mut old = attr;
                    let r = (api.setattr)(
                        f,
                        if ptr.is_null() { std::ptr::null() } else { &a },
                        &mut old,
                    ) as i64;
                    // Keep the two descriptors as they were.
                    let keep = mk_attr(
                        if f == nb { libc::O_NONBLOCK as i64 } else { 0 },
                        4,
                        MSGSIZE as i64,
                    );
                    if f == fd || f == nb {
                        (api.setattr)(f, &keep, std::ptr::null_mut());
                    }
                    r
                }
                6 => {
                    let mut ev: libc::sigevent = std::mem::zeroed();
                    ev.sigev_notify = rng.pick(&[
                        libc::SIGEV_NONE,
                        libc::SIGEV_SIGNAL,
                        libc::SIGEV_THREAD,
                        77,
                        -1,
                    ]);
                    ev.sigev_signo = rng.pick(&[0, libc::SIGUSR2, 64, 65, -1]);
                    if ev.sigev_notify == libc::SIGEV_SIGNAL && ev.sigev_signo != 0 {
                        // A signal this process would die of is not the point.
                        ev.sigev_signo = 0;
                    }
                    let r =
                        (api.notify)(f, if ptr.is_null() { std::ptr::null() } else { &ev }) as i64;
                    (api.notify)(f, std::ptr::null());
                    r
                }
                _ => {
                    let oflag = rng.next() as c_int
                        & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NONBLOCK)
                        | libc::O_NONBLOCK;
                    let r = (api.open4)(
                        if ptr.is_null() { null } else { name.as_ptr() },
                        oflag,
                        rng.next() as _,
                        &attr,
                    );
                    if r >= 0 {
                        (api.close)(r);
                    }
                    r as i64
                }
            }
        };
        check(&what, r, None);
    }
    for std_fd in 0..3 {
        // SAFETY: fcntl only asks.
        let r = unsafe { libc::fcntl(std_fd, libc::F_GETFD) };
        assert_ne!(r, -1, "fd {std_fd} was closed");
    }
    let _ = dir;
    writeln!(out, "@@ done").unwrap();
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

#[test]
fn c_api_arguments_fuzz() {
    let lib = target_dir().join("libshmq.so");
    if let Ok(role) = std::env::var(ROLE) {
        let dir = PathBuf::from(std::env::var("SHMQ_DIR").unwrap());
        let random = std::env::var("SHMQ_FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        run_cases(&dir, &lib, random, role.parse().unwrap());
        return;
    }
    let release = target_dir().file_name().is_some_and(|n| n == "release");
    let mut c = Command::new(env!("CARGO"));
    c.args(["build", "-p", "shmq-capi"]);
    if release {
        c.arg("--release");
    }
    let st = c.current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
    assert!(st.success(), "cargo build of the C library failed");
    let dir = std::env::temp_dir().join(format!("shmq-c-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let seed = std::env::var("SHMQ_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "c_api_arguments_fuzz",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, seed.to_string())
        .env("SHMQ_DIR", &dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let start = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = reader.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let last = out
        .lines()
        .filter_map(|l| l.find("@@").map(|i| &l[i + 2..]))
        .next_back()
        .unwrap_or("(nothing)");
    assert!(
        st.success() && last.trim() == "done",
        "seed {seed} (SHMQ_FUZZ_SEED replays it): the child ended with {st} (signal {:?}) at: {last}",
        st.signal()
    );
}
