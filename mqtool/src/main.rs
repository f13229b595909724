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
    let cli = cli::Cli::parse();
    match cmd::run(cli) {
        Ok(status) => status.into(),
        Err(failure) => failure.report().into(),
    }
}
