//! `mqtool man`: the manual pages in roff, from the clap definition, with
//! the sections a man page is expected to have (EXIT STATUS, ENVIRONMENT,
//! FILES, SEE ALSO) written here rather than left in clap's "EXTRA".

use crate::cli::{Cli, EXAMPLES_TEXT, EXIT_STATUS_TEXT, JSON_TEXT, ManArgs, NAMES_TEXT};
use crate::exit::{Exit, Failure, Outcome};
use clap::{Command, CommandFactory};
use clap_mangen::Man;
use roff::{Roff, bold, roman};
use std::io::{self, Write};

pub fn run(ctx: &super::Ctx, a: &ManArgs) -> Outcome {
    let root = root();
    if let Some(dir) = &a.out_dir {
        let io_err = |e: io::Error| Failure::new(dir.display().to_string(), super::io_message(&e));
        let mut pages = vec![("mqtool.1".to_string(), page(&root, None)?)];
        for sub in root.get_subcommands() {
            pages.push((
                format!("mqtool-{}.1", sub.get_name()),
                page(&root, Some(sub))?,
            ));
        }
        for (file, roff) in pages {
            let path = dir.join(&file);
            std::fs::write(&path, roff).map_err(io_err)?;
            if ctx.verbose {
                eprintln!("mqtool: wrote {}", path.display());
            }
        }
        return Ok(Exit::Success);
    }
    let roff = match &a.subcommand {
        None => page(&root, None)?,
        Some(name) => {
            let sub = root.find_subcommand(name).ok_or_else(|| {
                let names: Vec<_> = root.get_subcommands().map(|c| c.get_name()).collect();
                Failure::plain(format!(
                    "no subcommand '{name}' (there are: {})",
                    names.join(", ")
                ))
            })?;
            page(&root, Some(sub))?
        }
    };
    let mut out = io::stdout().lock();
    out.write_all(&roff)?;
    out.flush()?;
    Ok(Exit::Success)
}

/// The command line as the pages show it: built (so that subcommands have
/// their `mqtool-NAME` display names and the global options), without
/// clap's `help` subcommand, which has no page.
fn root() -> Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The page of `mqtool`, or of one of its subcommands.
fn page(root: &Command, sub: Option<&Command>) -> Result<Vec<u8>, Failure> {
    let cmd = match sub {
        None => root.clone(),
        Some(s) => s.clone().version(env!("CARGO_PKG_VERSION")),
    };
    let man = Man::new(cmd.clone());
    let mut w = Vec::new();
    man.render_title(&mut w)?;
    man.render_name_section(&mut w)?;
    man.render_synopsis_section(&mut w)?;
    man.render_description_section(&mut w)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut w)?;
    }
    let mut r = Roff::new();
    match sub {
        None => {
            man.render_subcommands_section(&mut w)?;
            section(&mut r, "QUEUE NAMES", NAMES_TEXT, false);
            section(&mut r, "JSON OUTPUT", JSON_TEXT, true);
            section(&mut r, "EXIT STATUS", EXIT_STATUS_TEXT, true);
        }
        Some(s) => {
            if let Some(examples) = s.get_after_help() {
                let text = examples.to_string();
                let text = text
                    .strip_prefix("Examples:\n")
                    .unwrap_or(&text)
                    .to_string();
                section(&mut r, "EXAMPLES", &text, true);
            }
            section(
                &mut r,
                "EXIT STATUS",
                "0 success, 1 nothing happened, 2 error: see mqtool(1).",
                false,
            );
        }
    }
    section(
        &mut r,
        "ENVIRONMENT",
        "SHMQ_DIR: the directory holding the queue files, when --dir is not given.",
        false,
    );
    section(
        &mut r,
        "FILES",
        "/dev/shm/shmq/NAME: the file of queue /NAME, when neither --dir nor \
         SHMQ_DIR say otherwise.\n\
         /proc/sys/fs/mqueue/msg_max, msgsize_max: the kernel's queue limits, \
         which mqtool bench reads (and, as root, raises for a moment).",
        false,
    );
    if sub.is_none() {
        section(&mut r, "EXAMPLES", EXAMPLES_TEXT, true);
    }
    let mut see_also: Vec<String> = match sub {
        None => root
            .get_subcommands()
            .map(|c| format!("mqtool-{}(1)", c.get_name()))
            .collect(),
        Some(_) => vec!["mqtool(1)".into()],
    };
    see_also.extend(
        [
            "mq_overview(7)",
            "mq_open(3)",
            "mq_send(3)",
            "mq_receive(3)",
            "mq_getattr(3)",
            "mq_notify(3)",
        ]
        .map(String::from),
    );
    r.control("SH", ["SEE ALSO"]);
    r.text(
        see_also
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                let (name, section) = s.split_once('(').expect("NAME(N)");
                let sep = if i + 1 < see_also.len() { ", " } else { "" };
                [bold(name), roman(format!("({section}{sep}"))]
            })
            .collect::<Vec<_>>(),
    );
    r.to_writer(&mut w)?;
    man.render_version_section(&mut w)?;
    Ok(w)
}

/// A section of plain text: one paragraph per line, or kept as it is
/// (`preformatted`, for tables and examples).
fn section(r: &mut Roff, title: &str, text: &str, preformatted: bool) {
    r.control("SH", [title]);
    if preformatted {
        // Indented as a block, as the first line's indentation would be lost.
        let indent = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        r.control("nf", []);
        for line in text.lines() {
            r.text([roman(line.get(indent..).unwrap_or(""))]);
        }
        r.control("fi", []);
    } else {
        for (i, line) in text.lines().enumerate() {
            if i > 0 {
                r.control("PP", []);
            }
            r.text([roman(line)]);
        }
    }
}
