//! One module per subcommand, and what they share: the resolved queue
//! directory, queue-name checks, and errors worded for the shell.

mod bench;
mod completions;
mod create;
mod info;
mod ls;
mod man;
mod peek;
mod purge;
mod recv;
mod send;
mod unlink;
mod watch;

use crate::cli::{Cli, Command};
use crate::exit::{Failure, Outcome, describe_io, errno_of};
use nix::errno::Errno;
use std::cell::OnceCell;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Runs the command line.
pub fn run(cli: Cli) -> Outcome {
    let ctx = Ctx {
        dir_arg: cli.dir,
        dir: OnceCell::new(),
        json: cli.json,
        verbose: cli.verbose,
    };
    match &cli.command {
        Command::Create(a) => create::run(&ctx, a),
        Command::Send(a) => send::run(&ctx, a),
        Command::Recv(a) => recv::run(&ctx, a),
        Command::Peek(a) => peek::run(&ctx, a),
        Command::Info(a) => info::run(&ctx, a),
        Command::Ls(a) => ls::run(&ctx, a),
        Command::Unlink(a) => unlink::run(&ctx, a),
        Command::Purge(a) => purge::run(&ctx, a),
        Command::Watch(a) => watch::run(&ctx, a),
        Command::Bench(a) => bench::run(&ctx, a),
        Command::BenchPeer(a) => bench::peer(&ctx, a),
        Command::Completions(a) => completions::run(a),
        Command::Man(a) => man::run(&ctx, a),
    }
}

/// What every command gets from the global options.
pub struct Ctx {
    dir_arg: Option<PathBuf>,
    dir: OnceCell<PathBuf>,
    /// `--json`.
    pub json: bool,
    /// `--verbose`.
    pub verbose: bool,
}

impl Ctx {
    /// The queue directory: `--dir`, else `SHMQ_DIR`, else the default.
    /// Only which one: the library checks it (and creates it, when it may)
    /// at every use.
    pub fn dir(&self) -> Result<&Path, Failure> {
        if let Some(d) = self.dir.get() {
            return Ok(d);
        }
        let d = shmq::name::chosen_dir(self.dir_arg.as_deref())
            .map_err(|e| Failure::plain(e.to_string()))?;
        Ok(self.dir.get_or_init(|| d))
    }

    /// Says `what` on standard error with `--verbose`.
    pub fn note(&self, name: &QueueName, what: std::fmt::Arguments<'_>) {
        if self.verbose {
            eprintln!("mqtool: {name}: {what}");
        }
    }

    /// An error from opening or using queue `name`, in words.
    pub fn queue_error(&self, name: &QueueName, e: &io::Error) -> Failure {
        let dir_problem = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<shmq::Error>())
            .is_some_and(|se| matches!(se, shmq::Error::Dir { .. }));
        let msg = match errno_of(e) {
            // The library's words name the directory and what is wrong.
            _ if dir_problem => describe_io(e),
            Some(Errno::ENOENT) => match self.dir() {
                Ok(d) => format!("no such queue in {} (ENOENT)", d.display()),
                Err(_) => describe_io(e),
            },
            Some(Errno::EEXIST) => "queue exists already (EEXIST)".into(),
            Some(Errno::EACCES) => "permission denied (EACCES)".into(),
            _ => describe_io(e),
        };
        Failure::new(name.to_string(), msg)
    }

    /// As [`Ctx::queue_error`], for the inspection API's errors.
    pub fn inspect_error(&self, name: &QueueName, e: shmq::Error) -> Failure {
        self.queue_error(name, &io::Error::from(e))
    }

    /// Opens `name` for inspection in the queue directory.
    pub fn inspector(&self, name: &QueueName) -> Result<shmq::inspect::Inspector, Failure> {
        shmq::inspect::Inspector::open(name.bytes(), Some(self.dir()?))
            .map_err(|e| self.inspect_error(name, e))
    }
}

/// The format of `recv` and `peek`: `--json` or `--format` (default
/// text). The global `--json` given before the subcommand escapes clap's
/// conflict check, so it is checked here too.
pub fn output_format(
    ctx: &Ctx,
    format: Option<crate::cli::Format>,
) -> Result<crate::cli::Format, Failure> {
    match (ctx.json, format) {
        (true, Some(_)) => Err(Failure::plain(
            "--json and --format cannot be used together (--json is --format json)",
        )),
        (true, None) => Ok(crate::cli::Format::Json),
        (false, f) => Ok(f.unwrap_or(crate::cli::Format::Text)),
    }
}

/// A checked queue name, always with its leading `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueName {
    bytes: Vec<u8>,
}

impl QueueName {
    /// The name as bytes, `/…`.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl QueueName {
    /// The name for JSON: U+FFFD for bytes that are not UTF-8.
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// For text output and messages: control characters and bytes that are not
/// UTF-8 escaped ([`crate::output::escape`]).
impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::output::escape(&self.bytes))
    }
}

/// Checks a queue name from the command line (a missing leading `/` is
/// added) against the rules of `mq_open`, with the errno Linux gives.
pub fn queue_name(arg: &OsStr) -> Result<QueueName, Failure> {
    let raw = arg.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len() + 1);
    if raw.first() != Some(&b'/') {
        bytes.push(b'/');
    }
    bytes.extend_from_slice(raw);
    let name = QueueName { bytes };
    let Err(e) = shmq::name::file_name(name.bytes()) else {
        return Ok(name);
    };
    let rest = &name.bytes[1..];
    let why = match e.errno() {
        Errno::ENOENT => "a queue name needs a character after the '/'",
        Errno::ENAMETOOLONG => "longer than 255 bytes",
        Errno::EACCES if rest.contains(&b'/') => "'/' may only come first",
        Errno::EACCES => "'.' and '..' are not queue names",
        Errno::EINVAL if rest.contains(&0) => "contains a NUL byte",
        _ => "not a queue name",
    };
    Err(Failure::new(
        name.to_string(),
        format!("invalid queue name: {why} ({})", e.errno_name()),
    ))
}

/// An I/O error on a file that is not a queue, in words with the errno
/// name: `No such file or directory (ENOENT)`.
pub fn io_message(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let errno = Errno::from_raw(n);
            format!("{} ({errno:?})", errno.desc())
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        queue_name(OsStr::new(s)).unwrap_err().to_string()
    }

    #[test]
    fn names() {
        assert_eq!(queue_name(OsStr::new("jobs")).unwrap().to_string(), "/jobs");
        assert_eq!(queue_name(OsStr::new("/jobs")).unwrap().bytes(), b"/jobs");
        assert!(
            err("/a/b").ends_with("'/' may only come first (EACCES)"),
            "{}",
            err("/a/b")
        );
        assert!(err("..").ends_with("(EACCES)"));
        assert!(err("/").ends_with("(ENOENT)"), "{}", err("/"));
        assert!(err("").ends_with("(ENOENT)"));
        assert!(err(&"x".repeat(256)).ends_with("(ENAMETOOLONG)"));
        assert!(queue_name(OsStr::new(&"x".repeat(255))).is_ok());
    }

    #[test]
    fn io_messages_carry_errno_names() {
        let e = io::Error::from_raw_os_error(libc::EXDEV);
        assert!(io_message(&e).ends_with("(EXDEV)"), "{}", io_message(&e));
    }
}
