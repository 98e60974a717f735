//! The command line (clap derive). Only subcommands that are built are listed.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rserpool_proto::engine::TimerProfile;

use crate::config::HostPort;

/// rserpool: Reliable Server Pooling (RFC 5351-5356) in Rust.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a registrar (ENRP server): PEs register with it, pool users resolve at it.
    Registrar(RegistrarArgs),
    /// Register an existing TCP/HTTP service as a pool element, health-checked.
    Pe(PeArgs),
    /// Run the gateway: legacy TCP, HTTP and DNS clients reach pool elements, with failover.
    Gateway(GatewayArgs),
    /// Resolve a pool handle at a registrar and print its pool elements.
    Resolve(ResolveArgs),
    /// Print a registrar's handlespace (like rsplib's hsdump).
    Dump(DumpArgs),
    /// Decode one ASAP or ENRP message given as hex, and print it.
    Decode(DecodeArgs),
    /// Run everything on loopback: 3 registrars, demo PEs and a gateway; Ctrl-C stops.
    Demo(DemoArgs),
    /// Create a deployment CA and issue certificates for TLS on ASAP and ENRP.
    #[command(subcommand)]
    Cert(CertCommand),
}

/// `rserpool cert`.
#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Create the deployment CA: DIR/ca.pem and DIR/ca-key.pem (keep the key offline).
    Ca(CertCaArgs),
    /// Issue a certificate signed by the CA in DIR: DIR/NAME.pem and DIR/NAME-key.pem.
    Issue(CertIssueArgs),
}

/// `rserpool cert ca`.
#[derive(Debug, Args)]
pub(crate) struct CertCaArgs {
    /// Where the CA's files go (created if missing; existing CA files are not replaced).
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "rserpool deployment CA")]
    pub(crate) name: String,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650)]
    pub(crate) days: u32,
}

/// `rserpool cert issue`.
#[derive(Debug, Args)]
pub(crate) struct CertIssueArgs {
    /// The directory holding the CA (`rserpool cert ca`); the certificate goes there too.
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// The identity's name (the certificate's common name and file name).
    #[arg(long)]
    pub(crate) name: String,
    /// A registrar, with the one registrar ID it may use (0x... or decimal).
    #[arg(long)]
    pub(crate) registrar_id: Option<String>,
    /// A pool element that may register into this pool (repeatable; `*` for any).
    #[arg(long = "pe")]
    pub(crate) pe_pools: Vec<String>,
    /// A pool user that may resolve this pool (repeatable; `*` for any).
    #[arg(long = "pu")]
    pub(crate) pu_pools: Vec<String>,
    /// May read a registrar's whole handle table (`rserpool dump`).
    #[arg(long)]
    pub(crate) observer: bool,
    /// A DNS name the holder serves under, for TLS servers such as PEs behind the HTTP
    /// gateway's `pe_tls` (repeatable).
    #[arg(long = "dns")]
    pub(crate) dns_names: Vec<String>,
    /// An IP address the holder serves at (repeatable).
    #[arg(long = "ip")]
    pub(crate) ip_addresses: Vec<std::net::IpAddr>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    pub(crate) days: u32,
}

/// TLS for ASAP and ENRP, over TCP or SCTP (overrides the file's `tls:` section).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct TlsArgs {
    /// This role's certificate chain (PEM, from `rserpool cert issue`); with --tls-key
    /// and --tls-ca it turns TLS on.
    #[arg(long, env = "RSERPOOL_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "RSERPOOL_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub(crate) tls_key: Option<PathBuf>,
    /// The deployment CA's certificate (PEM).
    #[arg(long, env = "RSERPOOL_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub(crate) tls_ca: Option<PathBuf>,
    /// What peers without a certificate may do: refused (default), pool_users or
    /// trusted.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_plain: Option<String>,
}

/// The admin listener (over the file's `admin:` section).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct AdminArgs {
    /// Serve /metrics, /healthz, /readyz and /api/ on this address (e.g.
    /// 127.0.0.1:9102; no authentication: keep it on loopback or a management network).
    #[arg(id = "admin", long = "admin", value_name = "ADMIN")]
    pub(crate) listen: Option<SocketAddr>,
    /// A file holding the bearer token the admin listener's /log and /api/ require.
    #[arg(
        long = "admin-token-file",
        requires = "admin",
        value_name = "ADMIN_TOKEN_FILE"
    )]
    pub(crate) token_file: Option<PathBuf>,
}

impl AdminArgs {
    /// The flags over the file's section.
    pub(crate) fn apply(&self, section: &mut crate::config::AdminSection) {
        if self.listen.is_some() {
            section.listen = self.listen;
        }
    }
}

/// Status reports to an rsplib `cspmonitor` (over the file's `csp:` section; rsplib's
/// environment variables work too).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct CspArgs {
    /// Send CSP status reports to this monitor, ADDRESS[:PORT] or HOST[:PORT] (port
    /// 2960 when left out).
    #[arg(long, env = "CSP_SERVER", value_parser = crate::config::parse_csp_monitor)]
    pub(crate) csp_server: Option<HostPort>,
    /// Time between CSP reports: milliseconds, as rsplib's -cspinterval, or a duration
    /// with a unit (250 ms to 60 s; default 1 s).
    #[arg(long, env = "CSP_INTERVAL", value_parser = crate::config::parse_csp_interval)]
    pub(crate) csp_interval: Option<std::time::Duration>,
}

impl CspArgs {
    /// The flags over the file's section.
    pub(crate) fn apply(&self, section: &mut crate::config::CspSection) {
        if let Some(server) = self.csp_server.clone() {
            section.server = Some(server);
        }
        if let Some(interval) = self.csp_interval {
            section.interval = interval;
        }
    }
}

/// `rserpool demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Ports used: BASE+1..3 ASAP, BASE+11..13 ENRP, BASE+20/21 TCP, BASE+80 HTTP,
    /// BASE+53 DNS, BASE+90 gateway admin, BASE+91..93 registrar admin.
    #[arg(long, default_value_t = 17000)]
    pub(crate) base_port: u16,
    /// Run ASAP and ENRP in plain TCP, unauthenticated (as rsplib does), instead of TLS
    /// with a CA made for the demo.
    #[arg(long)]
    pub(crate) plain: bool,
}

/// Logging options shared by the long-running roles.
#[derive(Debug, Clone, Args)]
pub(crate) struct LogArgs {
    /// Log filter (overrides the file's log.level), e.g. `debug` or `rserpool=debug`.
    #[arg(long, env = "RSERPOOL_LOG")]
    pub(crate) log_level: Option<String>,
    /// Log format (overrides log.format): `json` writes one JSON object per event, the
    /// "ready" event with every listener's bound address among its fields.
    #[arg(long, value_enum, env = "RSERPOOL_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormatArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormatArg {
    Text,
    Json,
}

/// The demo services of `rserpool pe --serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ServeKind {
    /// Line counter with cookies (control channel).
    Counter,
    /// Echo (plain byte stream).
    Echo,
    /// A small web service with per-session counts (HTTP cookie mapping).
    Http,
    /// rsplib's PingPong (PPID 33, cookies `<PP-TD1>` and the reply number).
    Pingpong,
    /// rsplib's CalcApp (PPID 34: jobs, cookies, keep-alives).
    Calcapp,
}

/// Options of `pe --serve pingpong|calcapp` (rsplib's `rspserver` options in brackets).
#[derive(Debug, Clone, Args)]
pub(crate) struct RsplibServiceArgs {
    /// `pingpong`: close a session after this many replies on this PE, so that the
    /// client fails over (`-pppfailureafter`).
    #[arg(long, requires = "serve", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) failure_after: Option<u32>,
    /// `calcapp`: calculations per second, shared equally by the running jobs
    /// (`-capcapacity`).
    #[arg(long, requires = "serve", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) calculations_per_second: u64,
    /// `calcapp`: a cookie after this many calculations of a job
    /// (`-capcookiemaxcalculations`).
    #[arg(long, requires = "serve", default_value_t = 5_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) cookie_max_calculations: u64,
    /// `calcapp`: a cookie at least this often while a job runs (`-capcookiemaxtime`).
    #[arg(long, requires = "serve", default_value = "5s", value_parser = crate::config::parse_duration)]
    pub(crate) cookie_max_time: std::time::Duration,
}

/// How ASAP and ENRP travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransportArg {
    /// Kernel SCTP (the standard; what rsplib speaks).
    Sctp,
    /// The TCP mapping (hosts without kernel SCTP).
    Tcp,
}

impl From<TransportArg> for rserpool_proto::engine::TransportKind {
    fn from(transport: TransportArg) -> Self {
        match transport {
            TransportArg::Sctp => Self::Sctp,
            TransportArg::Tcp => Self::Tcp,
        }
    }
}

/// The `--profile` values, with what each means.
fn timer_profiles() -> impl clap::builder::TypedValueParser<Value = TimerProfile> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};
    PossibleValuesParser::new([
        PossibleValue::new("rfc").help("RFC 5352/5353 timers"),
        PossibleValue::new("rsplib").help("rsplib's faster timers (for mixing with rsplib peers)"),
    ])
    .try_map(|name| name.parse::<TimerProfile>())
}

/// `rserpool registrar`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RegistrarArgs {
    /// YAML configuration (section `registrar`); flags override it.
    #[arg(long, short, env = "RSERPOOL_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// ASAP listening address (default 0.0.0.0:3863, with TLS 0.0.0.0:3864).
    #[arg(long)]
    pub(crate) asap: Option<SocketAddr>,
    /// ENRP listening address (default 0.0.0.0:9901, with TLS 0.0.0.0:9902).
    #[arg(long)]
    pub(crate) enrp: Option<SocketAddr>,
    /// ASAP/ENRP transport (default tcp; sctp to work with rsplib).
    #[arg(long, value_enum)]
    pub(crate) transport: Option<TransportArg>,
    /// Another address of this host for SCTP multi-homing (repeatable).
    #[arg(long)]
    pub(crate) multihome: Vec<std::net::IpAddr>,
    /// Registrar ID (0x... or decimal; random by default).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// Timer profile.
    #[arg(long, value_parser = timer_profiles())]
    pub(crate) profile: Option<TimerProfile>,
    /// Announce group GROUP:PORT, or `off` (default 239.0.0.50:3863 on the ASAP
    /// address's interface).
    #[arg(long)]
    pub(crate) announce: Option<String>,
    /// A peer registrar's ENRP address, ADDRESS:PORT or HOST:PORT (repeatable).
    #[arg(long = "peer")]
    pub(crate) peers: Vec<HostPort>,
    /// ENRP presence multicast group GROUP:PORT, or `off` (default 239.0.0.51:9901 on
    /// the ENRP address's interface).
    #[arg(long)]
    pub(crate) enrp_multicast: Option<String>,
    /// Write the process ID here once serving (removed at exit unless a newer
    /// process wrote its own): scripts find the registrar, and the new process after
    /// a binary upgrade (SIGUSR2).
    #[arg(long)]
    pub(crate) pid_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) csp: CspArgs,
    #[command(flatten)]
    pub(crate) log: LogArgs,
}

/// `rserpool pe`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PeArgs {
    /// YAML configuration (section `pe`); with --pool/--backend, one more service.
    #[arg(long, short, env = "RSERPOOL_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// The pool handle to register into.
    #[arg(long)]
    pub(crate) pool: Option<String>,
    /// The service's address (a concrete IP, which pool users will connect to).
    #[arg(long, requires = "pool", conflicts_with = "serve")]
    pub(crate) backend: Option<SocketAddr>,
    /// Run a demo service in the agent itself instead of fronting a backend: `counter`
    /// (a control channel; each line is answered with the session's line count, which
    /// survives failover through cookies), `echo` (a plain byte stream; over SCTP with a
    /// control channel, as rsplib's echo PEs), `http`, or rsplib's `pingpong` and
    /// `calcapp`.
    #[arg(long, value_enum, requires = "pool")]
    pub(crate) serve: Option<ServeKind>,
    /// Where the demo service listens (default 127.0.0.1:0).
    #[arg(long, requires = "serve")]
    pub(crate) listen: Option<SocketAddr>,
    /// The open sessions a demo service counts as full load: it reports open sessions
    /// / this as its load (for the load-based policies, e.g. `--policy LeastUsed`);
    /// `calcapp`: the jobs it runs at once (more are rejected), and its load is jobs /
    /// this.
    #[arg(long, requires = "serve", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_sessions: u32,
    /// `--serve counter`: follow each count with the PE that counted (`3 pe=0x0badcafe`),
    /// so a failover shows (`rserpool demo` sets it).
    #[arg(long, requires = "serve")]
    pub(crate) show_pe: bool,
    /// A demo service registers load 0 whatever it has open (the load-based policies
    /// then see every PE idle): for comparisons, such as bench/adaptive.sh's.
    #[arg(long, requires = "serve")]
    pub(crate) no_load_reports: bool,
    #[command(flatten)]
    pub(crate) rsplib_service: RsplibServiceArgs,
    /// Policy in rsplib's syntax: RoundRobin, WeightedRoundRobin:3,
    /// LeastUsedDegradation:0.1, Priority:5, ...
    #[arg(long, default_value = "RoundRobin")]
    pub(crate) policy: String,
    /// A registrar's ASAP address, ADDRESS:PORT or HOST:PORT (repeatable; default
    /// 127.0.0.1:3863).
    #[arg(long = "registrar")]
    pub(crate) registrars: Vec<HostPort>,
    /// Health check: tcp (the default), http:/PATH or none.
    #[arg(long, value_parser = crate::config::parse_health)]
    pub(crate) health: Option<crate::config::HealthCheck>,
    /// Time between health checks (default 2s).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub(crate) health_interval: Option<std::time::Duration>,
    /// Time between re-registrations (default 30s; registration life is 3 times this).
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub(crate) reregistration_interval: Option<std::time::Duration>,
    /// Where the backend's load comes from, for the load-based policies (LeastUsed
    /// ...): connections (its established connections; the default), http:/PATH (a
    /// number it answers) or command:PROGRAM [ARGS] (a number it prints).
    #[arg(long, requires = "backend", value_parser = crate::config::parse_source)]
    pub(crate) load: Option<crate::config::LoadSource>,
    /// The backend's connections that count as full load (with `--load connections`).
    #[arg(long, requires = "backend", default_value_t = crate::config::DEFAULT_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) capacity: u32,
    /// The agent's ASAP endpoint, where registrars reach it (default 0.0.0.0:0). A
    /// `--serve` PE has none of its own: registrars reach it on `--listen`.
    #[arg(long, conflicts_with = "serve")]
    pub(crate) asap: Option<SocketAddr>,
    /// ASAP transport to registrars, and of `--serve` services (default tcp).
    #[arg(long, value_enum)]
    pub(crate) transport: Option<TransportArg>,
    /// Another address of this host for SCTP multi-homing (repeatable).
    #[arg(long)]
    pub(crate) multihome: Vec<std::net::IpAddr>,
    /// Timer profile.
    #[arg(long, value_parser = timer_profiles())]
    pub(crate) profile: Option<TimerProfile>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) csp: CspArgs,
    #[command(flatten)]
    pub(crate) log: LogArgs,
}

/// `rserpool gateway`.
#[derive(Debug, Clone, Args)]
pub(crate) struct GatewayArgs {
    /// YAML configuration (sections `gateway` and `pool_user`); flags add to it.
    #[arg(long, short, env = "RSERPOOL_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// A registrar's ASAP address, ADDRESS:PORT or HOST:PORT (repeatable; default
    /// 127.0.0.1:3863).
    #[arg(long = "registrar")]
    pub(crate) registrars: Vec<HostPort>,
    /// ASAP transport to registrars (default tcp).
    #[arg(long, value_enum)]
    pub(crate) transport: Option<TransportArg>,
    /// A TCP listener: LISTEN_ADDR:PORT=POOL_HANDLE (repeatable).
    #[arg(long = "tcp")]
    pub(crate) tcp: Vec<String>,
    /// An HTTP listener with one route for every host and path:
    /// LISTEN_ADDR:PORT=POOL_HANDLE (repeatable).
    #[arg(long = "http")]
    pub(crate) http: Vec<String>,
    /// A DNS listener (UDP and TCP) for the zone of --zone: LISTEN_ADDR:PORT.
    #[arg(long, requires = "zone")]
    pub(crate) dns: Option<SocketAddr>,
    /// The zone the DNS listener serves (e.g. pool.example.).
    #[arg(long, requires = "dns")]
    pub(crate) zone: Option<String>,
    /// Timer profile of the pool user.
    #[arg(long, value_parser = timer_profiles())]
    pub(crate) profile: Option<TimerProfile>,
    /// Write the process ID here once serving (removed at exit unless a newer
    /// process wrote its own): scripts find the gateway, and the new process after a
    /// binary upgrade (SIGUSR2).
    #[arg(long)]
    pub(crate) pid_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    #[command(flatten)]
    pub(crate) csp: CspArgs,
    #[command(flatten)]
    pub(crate) log: LogArgs,
}

/// `rserpool resolve`.
#[derive(Debug, Args)]
pub(crate) struct ResolveArgs {
    /// The pool handle.
    pub(crate) pool_handle: String,
    /// A registrar's ASAP address, ADDRESS:PORT or HOST:PORT (repeatable; default
    /// 127.0.0.1:3863).
    #[arg(long = "registrar")]
    pub(crate) registrars: Vec<HostPort>,
    /// ASAP transport to registrars (default tcp).
    #[arg(long, value_enum)]
    pub(crate) transport: Option<TransportArg>,
    /// How many pool elements to ask for (default: the registrar's choice).
    #[arg(long)]
    pub(crate) count: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Give up after this long.
    #[arg(long, default_value = "10s")]
    pub(crate) timeout: String,
    /// YAML configuration (section `pool_user`).
    #[arg(long, short, env = "RSERPOOL_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

/// `rserpool dump`.
#[derive(Debug, Args)]
pub(crate) struct DumpArgs {
    /// The registrar's ENRP address, ADDRESS:PORT or HOST:PORT (default 127.0.0.1:9901,
    /// with TLS 127.0.0.1:9902; not its ASAP address: dump speaks ENRP).
    /// `--registrar` is accepted for it too.
    #[arg(long = "enrp", alias = "registrar")]
    pub(crate) registrar: Option<HostPort>,
    /// ENRP transport (default tcp).
    #[arg(long, value_enum, default_value = "tcp")]
    pub(crate) transport: TransportArg,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Give up after this long.
    #[arg(long, default_value = "10s")]
    pub(crate) timeout: String,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
}

/// `rserpool decode`.
#[derive(Debug, Args)]
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
