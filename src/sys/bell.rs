//! Doorbells: how a process tells another that something happened in a
//! queue, without acting on it.
//!
//! A process that wants to be told (it registered with `mq_notify`) owns a
//! doorbell: a Unix datagram socket with a random name in the abstract
//! namespace (`\0shmq-bell-<16 hex digits>`), read by one helper thread of
//! that process. The queue file records only the doorbell's number. A
//! sender rings it with a 32-byte datagram and does nothing else: it never
//! signals a process or starts anything on the strength of what the file
//! says. The owner decides what a ring means: it checks the ring against
//! what it registered itself (the queue and a token), and the sender's pid
//! and uid come from the kernel (`SO_PASSCRED`), never from the file. The
//! worst a forged doorbell number can do is ring another shmq doorbell,
//! which ignores a ring it did not ask for.
#![allow(unsafe_code)]

use crate::sys::live::{self, ForkLock, LiveFd};
use nix::errno::Errno;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// What a ring carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    /// What happened (chosen by the caller of [`ring`]).
    pub kind: u32,
    /// Three words of detail.
    pub words: [u64; 3],
    /// The ringing process's pid, from the kernel (0 when it is not visible
    /// in this pid namespace).
    pub pid: i32,
    /// The ringing process's uid, from the kernel.
    pub uid: u32,
}

const MAGIC: u32 = u32::from_le_bytes(*b"SHBL");
/// The answer to a ring, once it was acted on.
const ACK: [u8; 4] = *b"SHAK";
/// How long a ringer waits for the answer: the owner of a doorbell that
/// is stopped (or gone) delays a ringer by this much, no more.
pub const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
const PREFIX: &[u8] = b"shmq-bell-";

/// This process's doorbell: (incarnation, number, socket).
/// A child made by a fork starts with none (its doorbell thread is not
/// there).
static MINE: ForkLock<Option<(u64, u64, LiveFd)>> = ForkLock::resetting(None, || None);

fn address(number: u64) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; zero is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let name = format!("{:016x}", number);
    // sun_path[0] stays 0: the abstract namespace.
    let bytes = PREFIX.iter().chain(name.as_bytes());
    for (dst, &b) in a.sun_path[1..].iter_mut().zip(bytes) {
        *dst = b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + 1 + PREFIX.len() + name.len();
    (a, len as libc::socklen_t)
}

fn socket() -> Result<OwnedFd, Errno> {
    // SAFETY: plain syscall; the result is a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// This process's doorbell number, creating the doorbell and its helper
/// thread on first use (in each incarnation: a forked child gets its own).
/// `handler` runs on the helper thread for every valid ring.
pub fn mine(handler: fn(Ring)) -> Result<u64, Errno> {
    let inc = live::incarnation();
    let mut m = MINE.lock();
    if let Some((i, n, _)) = &*m
        && *i == inc
    {
        return Ok(*n);
    }
    let sock = socket()?;
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid int option on our socket.
    if unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(Errno::last());
    }
    let mut number = 0;
    for _ in 0..16 {
        let n = crate::sys::random_u64() | 1;
        let (a, len) = address(n);
        // SAFETY: a is a valid sockaddr_un of length len.
        if unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&a as *const libc::sockaddr_un).cast(),
                len,
            )
        } == 0
        {
            number = n;
            break;
        }
        if Errno::last() != Errno::EADDRINUSE {
            return Err(Errno::last());
        }
    }
    if number == 0 {
        return Err(Errno::EADDRINUSE);
    }
    let fd = LiveFd::new(sock);
    let raw = fd.raw();
    // The thread starts with every signal blocked, and keeps them so (it
    // inherits the mask of this one): a signal for the process must never
    // land on it, from its first instant.
    // SAFETY: sigset_t is plain data, filled by sigfillset; the calling
    // thread's mask is restored right after the spawn.
    let spawned = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let spawned = std::thread::Builder::new()
            .name("shmq-bell".into())
            .spawn(move || listen(raw, handler));
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned
    };
    spawned.map_err(|_| Errno::EAGAIN)?;
    *m = Some((inc, number, fd));
    Ok(number)
}

/// This process's doorbell number, if it has one in this incarnation (and
/// nobody is making it right now: this may run in a signal handler).
pub fn own() -> Option<u64> {
    let inc = live::incarnation();
    let m = MINE.try_lock()?;
    match &*m {
        Some((i, n, _)) if *i == inc => Some(*n),
        _ => None,
    }
}

/// The helper thread: reads rings for ever (the socket lives as long as
/// the process; a forked child does not have this thread).
fn listen(fd: RawFd, handler: fn(Ring)) {
    // Every signal is blocked here since the thread started (see `mine`):
    // signals go to the process's other threads.
    loop {
        let mut buf = [0u8; 64];
        let mut cmsg = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: sockaddr_un and msghdr are plain data; zero is valid.
        let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_un).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: msg points to valid buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
        if n < 0 {
            match Errno::last() {
                Errno::EINTR | Errno::ENOBUFS | Errno::ENOMEM => continue,
                _ => return,
            }
        }
        if n != 32 {
            continue;
        }
        let word = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
        if u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) != MAGIC {
            continue;
        }
        let Some((pid, uid)) = credentials(&msg) else {
            continue;
        };
        handler(Ring {
            kind: u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")),
            words: [word(8), word(16), word(24)],
            pid,
            uid,
        });
        // Done: the ringer may go on (a signal raised by the handler is
        // queued already). A ringer without an address gets nothing.
        if msg.msg_namelen as usize > std::mem::size_of::<libc::sa_family_t>() {
            // SAFETY: ACK and `from` (as the kernel filled it) are valid for
            // the call.
            unsafe {
                libc::sendto(
                    fd,
                    ACK.as_ptr().cast(),
                    ACK.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    (&from as *const libc::sockaddr_un).cast(),
                    msg.msg_namelen,
                )
            };
        }
    }
}

/// The `SCM_CREDENTIALS` of a received message.
fn credentials(msg: &libc::msghdr) -> Option<(i32, u32)> {
    // SAFETY: the CMSG macros walk the control buffer the kernel filled in,
    // within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::ucred);
                return Some((cred.pid, cred.uid));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Rings doorbell `number` with `kind` and `words`, and waits until its
/// owner has acted on the ring, at most [`ANSWER_WAIT`]: a notification
/// signal is then queued to the registered process before the sender's
/// call returns, as the kernel does. Whether anyone hears it is not the
/// sender's business.
pub fn ring(number: u64, kind: u32, words: [u64; 3]) {
    use std::os::fd::AsRawFd;
    let Ok(sock) = socket() else { return };
    let fd = sock.as_raw_fd();
    // An address of our own (the kernel picks one), for the answer.
    // SAFETY: a sockaddr_un with only the family set, of that length:
    // autobind.
    let bound = unsafe {
        let mut me: libc::sockaddr_un = std::mem::zeroed();
        me.sun_family = libc::AF_UNIX as libc::sa_family_t;
        libc::bind(
            fd,
            (&me as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sa_family_t>() as libc::socklen_t,
        ) == 0
    };
    let mut buf = [0u8; 32];
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&kind.to_le_bytes());
    for (i, w) in words.iter().enumerate() {
        buf[8 + 8 * i..16 + 8 * i].copy_from_slice(&w.to_le_bytes());
    }
    let (a, len) = address(number);
    // SAFETY: buf and a are valid for the call.
    let sent = unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            (&a as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if sent != buf.len() as isize || !bound {
        return;
    }
    let until = std::time::Instant::now() + ANSWER_WAIT;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as libc::c_int) };
        if r < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if r <= 0 {
            return;
        }
        let mut ack = [0u8; 4];
        // SAFETY: ack is valid for its length.
        let n = unsafe { libc::recv(fd, ack.as_mut_ptr().cast(), ack.len(), libc::MSG_DONTWAIT) };
        if n == 4 && ack == ACK {
            return;
        }
        if n < 0 && Errno::last() != Errno::EINTR && Errno::last() != Errno::EAGAIN {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;

    static RINGS: Mutex<Option<mpsc::Sender<Ring>>> = Mutex::new(None);

    fn collect(r: Ring) {
        if let Some(tx) = &*RINGS.lock().unwrap() {
            let _ = tx.send(r);
        }
    }

    #[test]
    fn a_ring_arrives_with_the_kernel_s_credentials() {
        let (tx, rx) = mpsc::channel();
        *RINGS.lock().unwrap() = Some(tx);
        let n = mine(collect).unwrap();
        assert_eq!(mine(collect).unwrap(), n, "one doorbell per process");
        ring(n, 7, [1, 2, 3]);
        let r = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!((r.kind, r.words), (7, [1, 2, 3]));
        assert_eq!(r.pid, std::process::id() as i32);
        // SAFETY: getuid cannot fail.
        assert_eq!(r.uid, unsafe { libc::getuid() });
        // A ring to nobody is harmless.
        ring(n ^ 0xff00, 1, [0; 3]);
    }
}
