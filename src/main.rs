//! The `rserpool` binary: parses the command line, runs one subcommand, and maps its
//! failure to an exit status.

mod cli;
mod decode;

use std::process::ExitCode;

use clap::Parser;

/// Exit status for input that could not be processed (a malformed message).
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Decode(args) => match decode::run(&args) {
            Ok(output) => {
                print!("{output}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("rserpool decode: {error}");
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}
