//! `mqtool man`: the manual page in roff, from the clap definition.

use crate::cli::{Cli, ManArgs};
use crate::exit::{Exit, Failure, Outcome};
use clap::CommandFactory;
use std::io::{self, Write};

pub fn run(a: &ManArgs) -> Outcome {
    let mut cmd = Cli::command();
    cmd.build();
    let page = match &a.subcommand {
        None => cmd,
        Some(sub) => cmd
            .find_subcommand(sub)
            .map(|c| c.clone().version(env!("CARGO_PKG_VERSION")))
            .ok_or_else(|| {
                let names: Vec<_> = Cli::command()
                    .get_subcommands()
                    .map(|c| c.get_name().to_string())
                    .collect();
                Failure::plain(format!(
                    "no subcommand '{sub}' (there are: {})",
                    names.join(", ")
                ))
            })?,
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).render(&mut roff)?;
    let mut out = io::stdout().lock();
    out.write_all(&roff)?;
    out.flush()?;
    Ok(Exit::Success)
}
