//! Process identity: pid plus start time, so that a reused pid is never
//! mistaken for the process that once had it.

use std::sync::Once;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::Relaxed};

static MY_PID: AtomicI32 = AtomicI32::new(0);
static MY_START: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn forget_identity() {
    // Runs in the child after fork: only async-signal-safe atomic stores.
    MY_PID.store(0, Relaxed);
}

/// This process's `(pid, start time)`, cached until the next `fork`.
pub fn me() -> (i32, u64) {
    let pid = MY_PID.load(Relaxed);
    if pid != 0 {
        return (pid, MY_START.load(Relaxed));
    }
    ATFORK.call_once(|| {
        // SAFETY: registering a handler that only stores to an atomic.
        unsafe { libc::pthread_atfork(None, None, Some(forget_identity)) };
    });
    let pid = std::process::id() as i32;
    let start = stat(pid).map_or(0, |s| s.start);
    MY_START.store(start, Relaxed);
    MY_PID.store(pid, Relaxed);
    (pid, start)
}

/// Fields of `/proc/<pid>/stat` that matter here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Process state letter (`R`, `S`, `Z`, ...).
    pub state: u8,
    /// Start time in clock ticks after boot.
    pub start: u64,
}

/// Reads `/proc/<pid>/stat`.
pub fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &[u8]) -> Option<Stat> {
    // The command name may contain spaces and parentheses: skip to the last ')'.
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    // Field 22 overall (starttime) is the 20th after the command name.
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

/// Whether the process `(pid, start)` still runs. A zombie counts as dead, as
/// does a pid now used by a process with another start time. When `/proc`
/// cannot be read, only `kill(pid, 0)` decides.
pub fn alive(pid: i32, start: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    if pid == me().0 {
        return start == 0 || start == me().1;
    }
    if let Err(nix::errno::Errno::ESRCH) =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
    {
        return false;
    }
    match stat(pid) {
        Some(s) => !matches!(s.state, b'Z' | b'X' | b'x') && (start == 0 || s.start == start),
        // No stat for a pid that kill() says exists: it exited meanwhile,
        // unless /proc is not there at all.
        None => !std::path::Path::new("/proc/self/stat").exists(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_odd_command_names() {
        let s = b"123 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
        assert_eq!(
            parse_stat(s),
            Some(Stat {
                state: b'S',
                start: 987654
            })
        );
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn me_is_alive_and_others_are_told_apart() {
        let (pid, start) = me();
        assert_eq!(pid, std::process::id() as i32);
        assert!(start > 0);
        assert!(alive(pid, start));
        assert!(!alive(pid, start + 1));
        assert!(!alive(0, 0));
        assert!(!alive(-5, 0));
        // pid 1 exists; a wrong start time means "another process".
        let init = stat(1).unwrap();
        assert!(alive(1, init.start));
        assert!(!alive(1, init.start + 12345));
    }
}
