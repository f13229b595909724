//! Exit statuses and the one error type of `mqtool`.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | nothing happened: no message arrived (`recv --nonblock` on an empty queue, `--timeout` expired), or `send` found the queue full |
//! | 2 | error: bad arguments, bad name, missing queue, permission denied, message too long, not a queue … |
//!
//! A broken pipe on standard output is not an error: the reader went away,
//! so `mqtool` stops quietly with status 0, as `head` expects.
//!
//! Errors go to standard error, as `mqtool: SUBJECT: MESSAGE (ERRNO)`; with
//! `--json`, as one JSON object on one line there instead (standard output
//! keeps only data):
//! `{"type":"error","subject":"/jobs","message":"no such queue in /dev/shm/shmq (ENOENT)","errno":"ENOENT","status":2}`
//! (`subject` and `errno` are `null` when there is none). Usage errors
//! found by the argument parser are reported the same way when `--json` is
//! on the command line.

use nix::errno::Errno;
use std::fmt;
use std::io;
use std::process::ExitCode;

/// How `mqtool` ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: success.
    Success,
    /// 1: nothing to do: no message, a timeout, a full queue.
    Nothing,
    /// 2: an error.
    Error,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Nothing => 1,
            Exit::Error => 2,
        }
    }

    /// The more serious of two statuses.
    pub fn worst(self, other: Exit) -> Exit {
        if self.code() >= other.code() {
            self
        } else {
            other
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// Why a command stopped early.
#[derive(Debug)]
pub enum Failure {
    /// Writing to standard output failed. A broken pipe ends quietly with
    /// status 0; anything else is an error.
    Output(io::Error),
    /// Printed as `mqtool: SUBJECT: MESSAGE`; `message` ends with the errno
    /// name in parentheses when there is one.
    Message {
        /// The queue name or path the message is about, if any.
        subject: Option<String>,
        /// What went wrong.
        message: String,
        /// The exit status.
        status: Exit,
    },
}

/// Result of a command: the exit status, or why it stopped.
pub type Outcome = Result<Exit, Failure>;

impl Failure {
    /// An error (status 2) about `subject`.
    pub fn new(subject: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure::Message {
            subject: Some(subject.into()),
            message: message.into(),
            status: Exit::Error,
        }
    }

    /// An error (status 2) about nothing in particular.
    pub fn plain(message: impl Into<String>) -> Failure {
        Failure::Message {
            subject: None,
            message: message.into(),
            status: Exit::Error,
        }
    }

    /// Changes the exit status.
    pub fn with_status(mut self, new: Exit) -> Failure {
        if let Failure::Message { status, .. } = &mut self {
            *status = new;
        }
        self
    }

    /// The exit status, after printing the message to standard error (as
    /// a JSON object with `json`).
    pub fn report(&self, json: bool) -> Exit {
        let (status, subject, message) = match self {
            Failure::Output(e) if e.kind() == io::ErrorKind::BrokenPipe => return Exit::Success,
            Failure::Output(e) => (Exit::Error, Some("standard output"), describe_output(e)),
            Failure::Message {
                status,
                subject,
                message,
            } => (*status, subject.as_deref(), message.clone()),
        };
        if json {
            eprintln!("{}", error_json(subject, &message, status));
        } else {
            eprintln!("mqtool: {self}");
        }
        status
    }
}

/// An error as one line of JSON: `{"type":"error","subject":…,"message":…,
/// "errno":…,"status":…}`; `errno` is the name that ends `message` in
/// parentheses, if any.
pub fn error_json(subject: Option<&str>, message: &str, status: Exit) -> String {
    let errno = message
        .strip_suffix(')')
        .and_then(|m| m.rsplit_once('('))
        .map(|(_, e)| e)
        .filter(|e| {
            e.len() > 1
                && e.starts_with('E')
                && e.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        });
    #[derive(serde::Serialize)]
    struct ErrorLine<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        subject: Option<&'a str>,
        message: &'a str,
        errno: Option<&'a str>,
        status: u8,
    }
    serde_json::to_string(&ErrorLine {
        kind: "error",
        subject,
        message,
        errno,
        status: status.code(),
    })
    .expect("strings and numbers serialize")
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Output(e) => write!(f, "standard output: {}", describe_output(e)),
            Failure::Message {
                subject: Some(s),
                message,
                ..
            } => write!(f, "{s}: {message}"),
            Failure::Message {
                subject: None,
                message,
                ..
            } => f.write_str(message),
        }
    }
}

impl From<io::Error> for Failure {
    /// Errors from writing the output.
    fn from(e: io::Error) -> Failure {
        Failure::Output(e)
    }
}

/// The errno behind an error from the library, if it has one: either a raw
/// OS error or a [`shmq::Error`] inside.
pub fn errno_of(e: &io::Error) -> Option<Errno> {
    if let Some(n) = e.raw_os_error() {
        return Some(Errno::from_raw(n));
    }
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<shmq::Error>())
        .map(shmq::Error::errno)
}

/// A failure to write the output in words, ending with the errno name: the
/// system's words, not the library's (which speak of the queue).
pub fn describe_output(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let errno = Errno::from_raw(n);
            format!("write failed: {} ({errno:?})", errno.desc())
        }
        None => format!("write failed: {e}"),
    }
}

/// An error from the library in words, ending with the errno name.
pub fn describe_io(e: &io::Error) -> String {
    if let Some(n) = e.raw_os_error() {
        let errno = Errno::from_raw(n);
        let s = shmq::Error::Os(errno).to_string();
        // The library names the errnos queues produce; name the rest here.
        return match s.strip_suffix("(errno)") {
            Some(head) => format!("{head}({errno:?})"),
            None => s,
        };
    }
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<shmq::Error>())
    {
        Some(se) => se.to_string(),
        None if e.kind() == io::ErrorKind::InvalidInput => format!("{e} (EINVAL)"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_statuses() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Nothing.code(), 1);
        assert_eq!(Exit::Error.code(), 2);
        assert_eq!(Exit::Nothing.worst(Exit::Error), Exit::Error);
        assert_eq!(Exit::Nothing.worst(Exit::Success), Exit::Nothing);
    }

    #[test]
    fn broken_pipe_is_quiet_success() {
        let f = Failure::Output(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!(f.report(false), Exit::Success);
        assert_eq!(f.report(true), Exit::Success);
        let f = Failure::Output(io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(f.report(false), Exit::Error);
    }

    #[test]
    fn json_errors() {
        let j = error_json(Some("/q"), "no such queue (ENOENT)", Exit::Error);
        assert_eq!(
            j,
            r#"{"type":"error","subject":"/q","message":"no such queue (ENOENT)","errno":"ENOENT","status":2}"#
        );
        let j: serde_json::Value =
            serde_json::from_str(&error_json(None, "bad (thing)", Exit::Nothing)).unwrap();
        assert_eq!(j["errno"], serde_json::Value::Null);
        assert_eq!(j["subject"], serde_json::Value::Null);
        assert_eq!(j["status"], 1);
    }

    #[test]
    fn messages_name_subject_and_errno() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(errno_of(&e), Some(Errno::ENOENT));
        let f = Failure::new("/jobs", describe_io(&e));
        assert_eq!(f.to_string(), "/jobs: no such queue (ENOENT)");
        let e: io::Error = shmq::Error::NotAQueue("no shmq magic number".into()).into();
        assert_eq!(errno_of(&e), Some(Errno::EBADMSG));
        assert!(
            describe_io(&e).ends_with("(EBADMSG)"),
            "{}",
            describe_io(&e)
        );
        let e = io::Error::from_raw_os_error(libc::EXDEV);
        assert!(describe_io(&e).ends_with("(EXDEV)"), "{}", describe_io(&e));
        let f = Failure::plain("x").with_status(Exit::Nothing);
        assert!(matches!(
            f,
            Failure::Message {
                status: Exit::Nothing,
                ..
            }
        ));
    }
}
