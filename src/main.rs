//! The `lbmanager` binary: parse the flags and hand them to the library's commands ([`lbmanager::commands`]).

use std::process::ExitCode;

use clap::Parser;

use lbmanager::cli::{Cli, Command, MemberCommand};
use lbmanager::commands::{explain, member, plan, run, status};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let system = actix_rt::System::new();
    match cli.command {
        Command::Run(args) => {
            system.block_on(async { run::run(args, lbmanager::signal::on_signals()).await })
        }
        Command::Plan(args) => system.block_on(plan::plan(args)),
        Command::Member(MemberCommand::Add(args)) => {
            system.block_on(async { member::add(args, lbmanager::signal::on_signals()).await })
        }
        Command::Member(MemberCommand::Remove(args)) => {
            system.block_on(async { member::remove(args, lbmanager::signal::on_signals()).await })
        }
        Command::Status(args) => system.block_on(status::status(args)),
        Command::Explain(args) => system.block_on(explain::explain(args)),
        Command::Completions { shell } => {
            lbmanager::cli::completions(shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Manpages { dir } => match lbmanager::cli::manpages(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "lbmanager: cannot write the man pages to {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        },
    }
}
