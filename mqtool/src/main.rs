//! `mqtool`: create, use, inspect, watch and benchmark shmq message queues.
//!
//! Run `mqtool --help` or `mqtool man | man -l -`. The exit statuses are in
//! [`exit`], the JSON Lines schema of `--json` in [`output`].
#![deny(unsafe_code)]

mod cli;
mod cmd;
mod exit;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        // A bug, not a usage error: say where, without a backtrace hint.
        eprintln!("mqtool: internal error: {info}");
        std::process::exit(2);
    }));
    let json_asked = std::env::args_os().skip(1).any(|a| a == "--json");
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if json_asked && e.use_stderr() => {
            // A usage error: the first line of clap's message, as JSON.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("usage error");
            let message = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("{}", exit::error_json(None, message, exit::Exit::Error));
            return exit::Exit::Error.into();
        }
        Err(e) => e.exit(),
    };
    let json = cli.json;
    match cmd::run(cli) {
        Ok(status) => status.into(),
        Err(failure) => failure.report(json).into(),
    }
}
