//! rserpool: Reliable Server Pooling (RFC 5351-5356). The `rserpool` binary's roles and
//! tools live here; the public API is [`service`], the library for native pool
//! elements, and [`sctp`], a kernel SCTP association for tools (the benchmarks' load
//! generator). `main.rs` only calls [`run`].

mod admin;
mod cert;
mod cli;
mod config;
mod csp;
mod decode;
mod demo;
mod demo_http;
mod driver;
mod dump;
mod gateway;
pub mod idempotency;
mod logging;
mod pe_runtime;
mod pool_element;
mod pool_user;
mod registrar;
mod resolve;
mod rsplib_services;
mod serve;
pub mod service;

/// One kernel SCTP association (a one-to-one socket, Linux) that sends and receives
/// whole messages with their payload protocol identifier: what `bench/`'s load
/// generator speaks to registrars over SCTP, so that the project's only `unsafe` code
/// stays in one module.
pub mod sctp {
    pub use crate::transport::sctp::{Association, Received};
}
mod signals;
mod systemd;
mod transport;
mod upgrade;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use rustix::process::Pid;

/// Where tools look for a registrar when none is given: this host, on the IANA ASAP
/// port (of the TLS variant with TLS).
pub(crate) fn default_registrar(tls: bool) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), config::asap_port(tls))
}

/// A pool user's configuration (`resolve`, the gateway): the file, the flags over it,
/// and this host's registrar when none is given.
pub(crate) fn pool_user_settings(
    path: Option<&std::path::Path>,
    registrars: &[config::HostPort],
    transport: Option<rserpool_proto::engine::TransportKind>,
    tls: &cli::TlsArgs,
) -> Result<config::ConfigFile, RunError> {
    let mut file = config::load_pool_user(path, registrars, transport)?;
    apply_tls_args(&mut file.tls, tls)?;
    if file.pool_user.registrars.is_empty() {
        file.pool_user.registrars = vec![default_registrar(file.tls.is_some()).into()];
    }
    Ok(file)
}

/// Applies the `--tls-*` flags over the file's `tls:` section.
pub(crate) fn apply_tls_args(
    tls: &mut Option<config::ControlTlsSection>,
    args: &cli::TlsArgs,
) -> Result<(), RunError> {
    if let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        *tls = Some(config::ControlTlsSection::refusing_plain(
            transport::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
        ));
    }
    if let (Some(plain), Some(tls)) = (&args.tls_plain, tls.as_mut()) {
        tls.plain = config::parse_plain_peers(plain).map_err(RunError::Usage)?;
    }
    Ok(())
}

/// The role's TLS for ASAP and ENRP (`None` without a `tls:` section: plain and
/// unauthenticated, as rsplib): over the TCP mapping, or over kernel SCTP (RFC 3436).
pub(crate) fn control_tls(
    section: Option<&config::ControlTlsSection>,
    transport: rserpool_proto::engine::TransportKind,
) -> Result<Option<std::sync::Arc<transport::tls::ControlTls>>, RunError> {
    let Some(section) = section else {
        return Ok(None);
    };
    if transport == rserpool_proto::engine::TransportKind::Sctp
        && section.plain != rserpool_proto::auth::PlainPeers::Refused
    {
        return Err(RunError::Usage(
            "tls.plain: over SCTP every peer of a TLS endpoint speaks TLS (RFC 3436); plain \
             peers are let in beside TLS ones on the TCP mapping only. Use `plain: refused`, \
             or SCTP without a `tls:` section for rsplib (plain and unauthenticated)"
                .into(),
        ));
    }
    transport::tls::ControlTls::load(section.files(), section.plain)
        .map(|tls| Some(std::sync::Arc::new(tls)))
        .map_err(|e| RunError::Usage(format!("tls: {e}")))
}

/// Why a command failed, and its exit status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    /// Bad arguments or configuration (exit 64, EX_USAGE).
    #[error("{0}")]
    Usage(String),
    /// A configuration file that cannot be used (exit 64).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The request could not be served (exit 1): malformed input, unknown pool.
    #[error("{0}")]
    Failed(String),
    /// No registrar could be reached (exit 69, EX_UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// A socket could not be bound (exit 71, EX_OSERR).
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// Another system error (exit 71).
    #[error("{0}")]
    Io(std::io::Error),
}

impl RunError {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) => 64,
            Self::Failed(_) => 1,
            Self::Unavailable(_) => 69,
            Self::Bind(..) | Self::Io(_) => 71,
        }
    }
}

/// A seed for the engines' generators: `RSERPOOL_SEED` if set (to reproduce a run),
/// else fresh randomness from the kernel.
pub(crate) fn seed() -> u64 {
    if let Some(seed) = std::env::var("RSERPOOL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed;
    }
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if random.is_err() {
        // No /dev/urandom: the hasher's per-process random keys.
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        return hasher.finish();
    }
    u64::from_le_bytes(bytes)
}

pub(crate) fn apply_log_args(log: &mut config::LogConfig, args: &cli::LogArgs) {
    if let Some(level) = &args.log_level {
        log.level.clone_from(level);
    }
    if let Some(format) = args.log_format {
        log.format = match format {
            cli::LogFormatArg::Text => config::LogFormat::Text,
            cli::LogFormatArg::Json => config::LogFormat::Json,
        };
    }
}

/// SIGHUP's TLS step: new associations use the files as they are now; on an error the
/// material in use stays.
pub(crate) fn reload_tls(tls: &transport::tls::ControlTls) {
    match tls.reload() {
        Ok(()) => tracing::info!(cert = %tls.files().cert.display(), "TLS certificate reloaded"),
        Err(error) => {
            tracing::error!(%error, "SIGHUP: TLS certificate not reloaded; the one in use stays");
        }
    }
}

/// Tools that print a result: their output, or the failure.
async fn tool(command: cli::Command) -> Result<String, RunError> {
    match command {
        cli::Command::Resolve(args) => resolve::run(args).await,
        cli::Command::Dump(args) => dump::run(args).await,
        cli::Command::Decode(args) => {
            decode::run(&args).map_err(|e| RunError::Failed(e.to_string()))
        }
        cli::Command::Registrar(args) => registrar::run(args).await.map(|()| String::new()),
        cli::Command::Pe(args) => match args.serve {
            Some(kind) => serve::run_demo(kind, args).await,
            None => pool_element::run(args).await,
        }
        .map(|()| String::new()),
        cli::Command::Gateway(args) => gateway::run(args).await.map(|()| String::new()),
        cli::Command::Demo(args) => demo::run(args).await,
        cli::Command::Cert(command) => cert::run(&command),
    }
}

/// Parses the command line, runs the command, and returns its exit status.
/// The environment variable `rserpool demo` gives its children: its own PID.
pub(crate) const PARENT_PID_VARIABLE: &str = "RSERPOOL_PARENT_PID";

/// A child of `rserpool demo` ends with it, even when the demo is killed with -9: the
/// kernel sends it SIGTERM when its parent dies (PR_SET_PDEATHSIG), so its PEs
/// deregister and its ports are free for the next demo. Not the new process of a
/// binary upgrade: its parent is the old process, which exits once it serves (the
/// signal would stop it then); it ends with the demo's Ctrl-C (its process group) or
/// by its own SIGTERM.
fn end_with_parent() {
    if std::env::var_os(upgrade::FROM_VARIABLE).is_some() {
        return;
    }
    let Some(parent) = std::env::var(PARENT_PID_VARIABLE)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok())
    else {
        return;
    };
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM));
    // The parent may have died before the signal was armed.
    if rustix::process::getppid()
        .map(Pid::as_raw_nonzero)
        .map(|pid| pid.get())
        != Some(parent)
    {
        std::process::exit(0);
    }
}

pub fn run() -> ExitCode {
    end_with_parent();
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are no errors; every other command-line error is a usage
        // error like a bad configuration (64, EX_USAGE), not clap's own 2.
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let name = match &cli.command {
        cli::Command::Registrar(_) => "registrar",
        cli::Command::Pe(_) => "pe",
        cli::Command::Gateway(_) => "gateway",
        cli::Command::Resolve(_) => "resolve",
        cli::Command::Dump(_) => "dump",
        cli::Command::Decode(_) => "decode",
        cli::Command::Demo(_) => "demo",
        cli::Command::Cert(_) => "cert",
    };
    // TOKIO_WORKER_THREADS (tokio's own setting) picks the worker count; with 1 the
    // whole process runs on one thread, without the work-stealing scheduler's
    // cross-thread wake-ups (about a quarter more HTTP requests per core).
    let single = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if single {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rserpool {name}: cannot start the runtime: {error}");
            return ExitCode::from(71);
        }
    };
    match runtime.block_on(tool(cli.command)) {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("rserpool {name}: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
