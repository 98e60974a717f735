//! `rserpool demo`: the whole suite on loopback with no configuration: three registrars
//! peering over ENRP, demo PEs (stateful `counter`, `echo`, `http`) and one gateway with a
//! TCP, an HTTP and a DNS listener. Each runs as a child process of this one (this
//! binary with the role's flags, logs in a directory it prints), so killing one shows
//! the failover. Ctrl-C (or SIGTERM) stops them all gracefully.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use crate::RunError;
use crate::cert;
use crate::cli::{CertCaArgs, CertIssueArgs, DemoArgs};
use crate::signals::{Request, Signals};

/// A started role: its name, process, log file and command line (to restart it).
struct Role {
    name: String,
    child: Child,
    log: PathBuf,
    args: Vec<String>,
    /// When it was seen gone (a PE is restarted [`RESTART_AFTER`] later).
    exited: Option<Instant>,
}

/// A killed PE is started again after this long: long enough to watch the gateway
/// move its sessions, short enough that the second kill finds a pool with two PEs.
const RESTART_AFTER: Duration = Duration::from_secs(3);

impl Role {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The demo's processes; dropping it stops them (SIGTERM, then SIGKILL after 10 s).
struct Fleet {
    roles: Vec<Role>,
    logs: PathBuf,
}

impl Fleet {
    fn start(&mut self, name: &str, args: &[String]) -> Result<(), RunError> {
        let role = Self::spawn(&self.logs, name, args)?;
        self.roles.push(role);
        Ok(())
    }

    fn spawn(logs: &Path, name: &str, args: &[String]) -> Result<Role, RunError> {
        let log = logs.join(format!("{name}.log"));
        // Appended: a restarted PE's log follows its predecessor's.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(RunError::Io)?;
        let binary = std::env::current_exe().map_err(RunError::Io)?;
        let child = Command::new(binary)
            .args(args)
            .env("RSERPOOL_LOG", "info")
            // The child ends when the demo does, however it ends (lib.rs).
            .env(crate::PARENT_PID_VARIABLE, std::process::id().to_string())
            // The demo names every role's TLS files (or none) itself.
            .env_remove("RSERPOOL_TLS_CERT")
            .env_remove("RSERPOOL_TLS_KEY")
            .env_remove("RSERPOOL_TLS_CA")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(RunError::Io)?;
        Ok(Role {
            name: name.to_owned(),
            child,
            log,
            args: args.to_vec(),
            exited: None,
        })
    }

    /// Says when a PE has gone and starts it again [`RESTART_AFTER`] later (with the
    /// same command line: a new PE identifier, the same pool), saying so.
    fn restart_exited_pes(&mut self) {
        let now = crate::driver::now();
        for role in self.roles.iter_mut().filter(|r| r.name.contains("-pe-")) {
            match (role.exited, role.child.try_wait()) {
                (None, Ok(Some(status))) => {
                    role.exited = Some(now);
                    println!(
                        "demo: {} (pid {}) exited ({status}); starting it again in {} s",
                        role.name,
                        role.pid(),
                        RESTART_AFTER.as_secs()
                    );
                }
                (Some(since), _) if now.duration_since(since) >= RESTART_AFTER => {
                    match Self::spawn(&self.logs, &role.name, &role.args) {
                        Ok(new) => {
                            println!("demo: {} started again (pid {})", new.name, new.pid());
                            *role = new;
                        }
                        Err(error) => {
                            role.exited = Some(now);
                            println!("demo: {} could not be started again: {error}", role.name);
                        }
                    }
                }
                _ => {}
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }

    /// Waits (20 s) until every role logged its ready line.
    async fn wait_ready(&mut self) -> Result<(), RunError> {
        for _ in 0..200 {
            let mut all = true;
            for role in &mut self.roles {
                if let Ok(Some(status)) = role.child.try_wait() {
                    return Err(RunError::Failed(format!(
                        "demo: {} exited ({status}) while starting:\n{}",
                        role.name,
                        tail(&role.log)
                    )));
                }
                all &= std::fs::read_to_string(&role.log).is_ok_and(|t| t.contains(" ready "));
            }
            if all {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let slow: Vec<&str> = self
            .roles
            .iter()
            .filter(|r| !std::fs::read_to_string(&r.log).is_ok_and(|t| t.contains(" ready ")))
            .map(|r| r.name.as_str())
            .collect();
        Err(RunError::Failed(format!(
            "demo: not ready after 20 s: {} (logs in {})",
            slow.join(", "),
            self.logs.display()
        )))
    }

    fn pids(&self, prefix: &str) -> String {
        let pids: Vec<String> = self
            .roles
            .iter()
            .filter(|r| r.name.starts_with(prefix))
            .map(|r| r.pid().to_string())
            .collect();
        pids.join(" ")
    }

    /// Stops the roles in the reverse order of their start (the gateway, then the PEs,
    /// which deregister while the registrars still run, then the registrars): SIGTERM,
    /// and SIGKILL to a group not gone in 10 s.
    async fn stop(&mut self) {
        for group in ["gateway", "-pe-", "registrar"] {
            let mut members: Vec<&mut Role> = self
                .roles
                .iter_mut()
                .filter(|r| r.name.contains(group))
                .collect();
            for role in &mut members {
                if matches!(role.child.try_wait(), Ok(None))
                    && let Some(pid) = i32::try_from(role.pid()).ok().and_then(Pid::from_raw)
                {
                    let _ = kill_process(pid, Signal::TERM);
                }
            }
            for _ in 0..100 {
                if members
                    .iter_mut()
                    .all(|r| !matches!(r.child.try_wait(), Ok(None)))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for role in &mut members {
                if matches!(role.child.try_wait(), Ok(None)) {
                    let _ = role.child.kill();
                    let _ = role.child.wait();
                }
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Only reached with roles still running on an error path: do not leave them.
        for role in &mut self.roles {
            if matches!(role.child.try_wait(), Ok(None)) {
                let _ = role.child.kill();
                let _ = role.child.wait();
            }
        }
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(10)..)
        .unwrap_or_default()
        .join("\n")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// The demo's registrar IDs (their certificates grant exactly these).
const REGISTRAR_IDS: [&str; 3] = ["0x0000d001", "0x0000d002", "0x0000d003"];

/// The demo's CA and the certificate of every role in `dir`: each registrar (its ID),
/// the PEs of each pool (that pool only), the gateway (every pool) and the tools
/// (`resolve`, `dump`: every pool, and the handle table).
fn issue_certificates(dir: &Path) -> Result<(), RunError> {
    cert::create_ca(&CertCaArgs {
        dir: dir.to_owned(),
        name: "rserpool demo CA".into(),
        days: 30,
    })?;
    let issue = |name: &str, registrar: Option<&str>, pe: &[&str], pu: &[&str], observer| {
        cert::issue(&CertIssueArgs {
            dir: dir.to_owned(),
            name: name.into(),
            registrar_id: registrar.map(str::to_owned),
            pe_pools: strings(pe),
            pu_pools: strings(pu),
            observer,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            days: 30,
        })
    };
    for (index, id) in REGISTRAR_IDS.iter().enumerate() {
        issue(
            &format!("registrar-{}", index + 1),
            Some(id),
            &[],
            &[],
            false,
        )?;
    }
    for (kind, pool) in DEMO_POOLS {
        issue(&format!("{kind}-pe"), None, &[pool], &[], false)?;
    }
    issue("gateway", None, &[], &["*"], false)?;
    issue("tools", None, &[], &["*"], true)?;
    Ok(())
}

/// The `--tls-*` flags of identity `name` (none in a plain demo).
fn tls_flags(pki: Option<&Path>, name: &str) -> Vec<String> {
    let Some(dir) = pki else {
        return Vec::new();
    };
    let (cert, key) = cert::files(dir, name);
    let (ca, _) = cert::ca_files(dir);
    vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--tls-ca".into(),
        ca.display().to_string(),
    ]
}

/// The demo services and their pools.
const DEMO_POOLS: [(&str, &str); 3] = [
    ("counter", "CounterPool"),
    ("echo", "EchoPool"),
    ("http", "WebPool"),
];

pub(crate) async fn run(args: DemoArgs) -> Result<String, RunError> {
    let ports = Ports::new(args.base_port)?;
    let logs = std::env::temp_dir().join(format!("rserpool-demo-{}", std::process::id()));
    std::fs::create_dir_all(&logs).map_err(RunError::Io)?;
    let mut fleet = Fleet {
        roles: Vec::new(),
        logs: logs.clone(),
    };
    let mut signals = Signals::install().map_err(RunError::Io)?;
    let pki = (!args.plain).then(|| logs.join("pki"));
    if let Some(dir) = &pki {
        issue_certificates(dir)?;
    }
    let pki = pki.as_deref();
    let (token_file, token) = admin_token(&logs)?;
    let admin_flags = || {
        [
            "--admin-token-file".to_owned(),
            token_file.display().to_string(),
        ]
    };

    for (index, ((own_asap, own_enrp), own_admin)) in ports
        .asap
        .iter()
        .zip(&ports.enrp)
        .zip(&ports.registrar_admin)
        .enumerate()
    {
        let name = format!("registrar-{}", index + 1);
        let mut role = strings(&["registrar", "--announce", "off", "--enrp-multicast", "off"]);
        role.extend(tls_flags(pki, &name));
        role.extend(["--asap".into(), own_asap.to_string()]);
        role.extend(["--enrp".into(), own_enrp.to_string()]);
        role.extend(["--admin".into(), own_admin.to_string()]);
        role.extend(admin_flags());
        for peer in ports.enrp.iter().filter(|peer| *peer != own_enrp) {
            role.extend(["--peer".into(), peer.to_string()]);
        }
        fleet.start(&name, &role)?;
    }
    fleet.wait_ready().await?;
    let registrar_flags: Vec<String> = ports
        .asap
        .iter()
        .flat_map(|a| ["--registrar".to_owned(), a.to_string()])
        .collect();
    for (kind, pool) in DEMO_POOLS {
        for index in 1..=2 {
            let mut role = strings(&["pe", "--serve", kind, "--pool", pool]);
            if kind == "counter" {
                role.push("--show-pe".into());
            }
            role.extend(registrar_flags.iter().cloned());
            role.extend(tls_flags(pki, &format!("{kind}-pe")));
            fleet.start(&format!("{kind}-pe-{index}"), &role)?;
        }
    }
    let mut gateway = strings(&["gateway", "--zone", "pool.example."]);
    gateway.extend(registrar_flags.iter().cloned());
    gateway.extend(["--tcp".into(), format!("{}=CounterPool", ports.counter)]);
    gateway.extend(["--tcp".into(), format!("{}=EchoPool", ports.echo)]);
    gateway.extend(["--config".into(), http_config(&logs, ports.http)?]);
    gateway.extend(["--dns".into(), ports.dns.to_string()]);
    gateway.extend(["--admin".into(), ports.admin.to_string()]);
    gateway.extend(admin_flags());
    gateway.extend(tls_flags(pki, "gateway"));
    fleet.start("gateway", &gateway)?;
    fleet.wait_ready().await?;

    let banner = banner(&ports, &fleet, pki, &logs, &token);
    print!("{banner}");
    println!("demo ready");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    let mut watch = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            request = signals.next() => if request == Request::Stop { break },
            _ = watch.tick() => fleet.restart_exited_pes(),
        }
    }
    println!("demo: stopping");
    fleet.stop().await;
    Ok(format!("demo: stopped (logs kept in {})\n", logs.display()))
}

/// `count` random bytes in hex.
fn random_hex(count: usize) -> Result<String, RunError> {
    use std::io::Read as _;
    let mut bytes = vec![0u8; count];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(RunError::Io)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A fresh admin token in `dir` (mode 0600): the demo's admin listeners guard `/log`
/// and `/api/` with it.
fn admin_token(dir: &Path) -> Result<(PathBuf, String), RunError> {
    let token = random_hex(24)?;
    let path = dir.join("admin-token");
    cert::write(&path, &token, true)?;
    Ok((path, token))
}

/// The gateway's HTTP listener at `listen`, written to `dir` (mode 0600: it holds the
/// sticky key): WebPool with sticky sessions (a fresh key) and idempotency keys, so a
/// session's count and a POST survive the death of their PE. Its path, for `--config`.
fn http_config(dir: &Path, listen: SocketAddr) -> Result<String, RunError> {
    let key = random_hex(32)?;
    let text = format!(
        "gateway:\n  http:\n    - listen: {listen}\n      sticky:\n        keys: [\"{key}\"]\n      routes:\n        - pool: WebPool\n          idempotency_keys: true\n"
    );
    let path = dir.join("gateway-http.yaml");
    cert::write(&path, &text, true)?;
    Ok(path.to_string_lossy().into_owned())
}

/// The demo's addresses.
struct Ports {
    asap: Vec<SocketAddr>,
    enrp: Vec<SocketAddr>,
    registrar_admin: Vec<SocketAddr>,
    counter: SocketAddr,
    echo: SocketAddr,
    http: SocketAddr,
    dns: SocketAddr,
    admin: SocketAddr,
}

impl Ports {
    /// BASE+1..3 ASAP, BASE+11..13 ENRP, BASE+20/21 TCP, BASE+80 HTTP, BASE+53 DNS,
    /// BASE+90 gateway admin, BASE+91..93 registrar admin.
    fn new(base: u16) -> Result<Self, RunError> {
        let port = |offset: u16| -> Result<SocketAddr, RunError> {
            let port = base
                .checked_add(offset)
                .ok_or_else(|| RunError::Usage(format!("--base-port {base}: too high")))?;
            Ok(SocketAddr::from(([127, 0, 0, 1], port)))
        };
        let many = |offsets: std::ops::RangeInclusive<u16>| -> Result<Vec<SocketAddr>, RunError> {
            offsets.map(port).collect()
        };
        Ok(Self {
            asap: many(1..=3)?,
            enrp: many(11..=13)?,
            registrar_admin: many(91..=93)?,
            counter: port(20)?,
            echo: port(21)?,
            http: port(80)?,
            dns: port(53)?,
            admin: port(90)?,
        })
    }
}

/// What the demo prints once everything is up: where things are and what to try.
fn banner(ports: &Ports, fleet: &Fleet, pki: Option<&Path>, logs: &Path, token: &str) -> String {
    let mut banner = String::new();
    let _ = writeln!(
        banner,
        "rserpool demo: running on loopback (logs in {})",
        logs.display()
    );
    let _ = writeln!(
        banner,
        "  registrars  ASAP {} / ENRP {}  (pids {})",
        join(&ports.asap),
        join(&ports.enrp),
        fleet.pids("registrar")
    );
    let _ = writeln!(
        banner,
        "  ASAP/ENRP   {}",
        match pki {
            Some(dir) => format!(
                "TLS with mutual authentication; CA and certificates in {}",
                dir.display()
            ),
            None => "plain TCP, unauthenticated (--plain)".to_owned(),
        }
    );
    for (kind, pool) in DEMO_POOLS {
        let _ = writeln!(
            banner,
            "  {pool:<11} 2 `{kind}` PEs  (pids {})",
            fleet.pids(&format!("{kind}-pe"))
        );
    }
    let _ = writeln!(
        banner,
        "  gateway     TCP {} (CounterPool), {} (EchoPool); HTTP {} (WebPool); DNS {} (zone pool.example.); admin {}  (pid {})",
        ports.counter,
        ports.echo,
        ports.http,
        ports.dns,
        ports.admin,
        fleet.pids("gateway")
    );
    banner.push_str(&try_these(ports, fleet, pki, token));
    banner
}

/// The banner's "Try:" part: commands to run against the demo.
fn try_these(ports: &Ports, fleet: &Fleet, pki: Option<&Path>, token: &str) -> String {
    let mut banner = String::new();
    let _ = writeln!(banner, "\nTry:");
    if let Some(dir) = pki {
        let flags = tls_flags(Some(dir), "tools");
        let _ = writeln!(
            banner,
            "  export RSERPOOL_TLS_CERT={} RSERPOOL_TLS_KEY={} RSERPOOL_TLS_CA={}   # for resolve and dump",
            flags.get(1).map_or("", String::as_str),
            flags.get(3).map_or("", String::as_str),
            flags.get(5).map_or("", String::as_str),
        );
    }
    let _ = writeln!(
        banner,
        "  nc {} {}        # (netcat) type lines; each answer is the running count and the PE that counted",
        ports.counter.ip(),
        ports.counter.port()
    );
    let _ = writeln!(
        banner,
        "  kill -9 PID     # PID: one of the counter PEs ({}): the count goes on on the other PE, no reset; the demo starts a new PE 3 s later",
        fleet.pids("counter-pe")
    );
    let _ = writeln!(banner, "  curl -s http://{}/hello", ports.http);
    let _ = writeln!(
        banner,
        "  dig @{} -p {} +short WebPool.pool.example A    (also SRV _http._tcp.WebPool..., TXT)",
        ports.dns.ip(),
        ports.dns.port()
    );
    let _ = writeln!(
        banner,
        "  rserpool resolve WebPool --registrar {}",
        ports
            .asap
            .first()
            .map_or(String::new(), ToString::to_string)
    );
    let _ = writeln!(
        banner,
        "  rserpool dump --registrar {}",
        ports.enrp.get(1).map_or(String::new(), ToString::to_string)
    );
    let _ = writeln!(
        banner,
        "  curl -s http://{}/metrics | grep rserpool_",
        ports.admin
    );
    let _ = writeln!(
        banner,
        "  kill {}   # registrar 1 stops: its PEs re-register elsewhere (or a peer takes them over)",
        fleet.pids("registrar-1")
    );
    let _ = writeln!(
        banner,
        "Status pages (/log and /api/ need the admin token): http://{}/#token={token} (gateway), http://{}/ .. http://{}/ (registrars, with the same #token=). Ctrl-C stops everything.",
        ports.admin,
        ports
            .registrar_admin
            .first()
            .map_or(String::new(), ToString::to_string),
        ports
            .registrar_admin
            .get(2)
            .map_or(String::new(), ToString::to_string)
    );
    banner
}

fn join(addresses: &[SocketAddr]) -> String {
    let text: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    text.join(",")
}
