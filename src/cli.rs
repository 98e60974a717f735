//! The command line (clap derive). Only subcommands that are built are listed.

use clap::{Parser, Subcommand, ValueEnum};

/// rserpool: Reliable Server Pooling (RFC 5351-5356) in Rust.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Decode one ASAP or ENRP message given as hex, and print it.
    Decode(DecodeArgs),
}

/// Arguments of `rserpool decode`.
#[derive(Debug, clap::Args)]
pub(crate) struct DecodeArgs {
    /// Which protocol the bytes are (ASAP and ENRP reuse message type numbers).
    #[arg(long, value_enum)]
    pub(crate) protocol: ProtocolArg,
    /// The message as hex; whitespace and colons are ignored (as tshark and Wireshark
    /// copy it). `-` or nothing reads it from standard input.
    pub(crate) hex: Option<String>,
    /// Print JSON instead of the readable form.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also print the re-encoded message as hex on a line of its own.
    #[arg(long)]
    pub(crate) reencode: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum ProtocolArg {
    Asap,
    Enrp,
}
