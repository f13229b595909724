//! `mqtool completions`: shell completion scripts from the clap definition.

use crate::cli::{Cli, CompletionsArgs};
use crate::exit::{Exit, Outcome};
use clap::CommandFactory;
use std::io::{self, Write};

pub fn run(a: &CompletionsArgs) -> Outcome {
    // Generated into memory first: clap_complete cannot report write errors.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "mqtool", &mut script);
    let mut out = io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(Exit::Success)
}
