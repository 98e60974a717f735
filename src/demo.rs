//! `rserpool demo`: the whole suite on loopback with no configuration: three registrars
//! peering over ENRP, demo PEs (stateful `counter`, `echo`, `http`) and one gateway with a
//! TCP, an HTTP and a DNS listener. Each runs as a child process of this one (this
//! binary with the role's flags, logs in a directory it prints), so killing one shows
//! the failover. Ctrl-C (or SIGTERM) stops them all gracefully.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};

use crate::RunError;
use crate::cli::DemoArgs;
use crate::signals::{Request, Signals};

/// A started role: its name, process and log file.
struct Role {
    name: String,
    child: Child,
    log: PathBuf,
}

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
        let log = self.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).map_err(RunError::Io)?;
        let binary = std::env::current_exe().map_err(RunError::Io)?;
        let child = Command::new(binary)
            .args(args)
            .env("RSERPOOL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(RunError::Io)?;
        self.roles.push(Role {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(())
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

pub(crate) async fn run(args: DemoArgs) -> Result<String, RunError> {
    let base = args.base_port;
    let port = |offset: u16| -> Result<SocketAddr, RunError> {
        let port = base
            .checked_add(offset)
            .ok_or_else(|| RunError::Usage(format!("--base-port {base}: too high")))?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let asap: Vec<SocketAddr> = (1..=3).map(port).collect::<Result<_, _>>()?;
    let enrp: Vec<SocketAddr> = (11..=13).map(port).collect::<Result<_, _>>()?;
    let (counter_gw, echo_gw, http_gw, dns_gw, admin) =
        (port(20)?, port(21)?, port(80)?, port(53)?, port(90)?);
    let logs = std::env::temp_dir().join(format!("rserpool-demo-{}", std::process::id()));
    std::fs::create_dir_all(&logs).map_err(RunError::Io)?;
    let mut fleet = Fleet {
        roles: Vec::new(),
        logs: logs.clone(),
    };
    let mut signals = Signals::install().map_err(RunError::Io)?;

    for (index, (own_asap, own_enrp)) in asap.iter().zip(&enrp).enumerate() {
        let mut role = strings(&["registrar", "--announce", "off", "--enrp-multicast", "off"]);
        role.extend(["--asap".into(), own_asap.to_string()]);
        role.extend(["--enrp".into(), own_enrp.to_string()]);
        let offset = 91 + u16::try_from(index).unwrap_or(0);
        role.extend(["--admin".into(), port(offset)?.to_string()]);
        for peer in enrp.iter().filter(|peer| *peer != own_enrp) {
            role.extend(["--peer".into(), peer.to_string()]);
        }
        fleet.start(&format!("registrar-{}", index + 1), &role)?;
    }
    fleet.wait_ready().await?;
    let registrar_flags: Vec<String> = asap
        .iter()
        .flat_map(|a| ["--registrar".to_owned(), a.to_string()])
        .collect();
    for (kind, pool) in [
        ("counter", "CounterPool"),
        ("echo", "EchoPool"),
        ("http", "WebPool"),
    ] {
        for index in 1..=2 {
            let mut role = strings(&["pe", "--serve", kind, "--pool", pool]);
            role.extend(registrar_flags.iter().cloned());
            fleet.start(&format!("{kind}-pe-{index}"), &role)?;
        }
    }
    let mut gateway = strings(&["gateway", "--zone", "pool.example."]);
    gateway.extend(registrar_flags.iter().cloned());
    gateway.extend(["--tcp".into(), format!("{counter_gw}=CounterPool")]);
    gateway.extend(["--tcp".into(), format!("{echo_gw}=EchoPool")]);
    gateway.extend(["--http".into(), format!("{http_gw}=WebPool")]);
    gateway.extend(["--dns".into(), dns_gw.to_string()]);
    gateway.extend(["--admin".into(), admin.to_string()]);
    fleet.start("gateway", &gateway)?;
    fleet.wait_ready().await?;

    let mut banner = String::new();
    let _ = writeln!(
        banner,
        "rserpool demo: running on loopback (logs in {})",
        logs.display()
    );
    let _ = writeln!(
        banner,
        "  registrars  ASAP {} / ENRP {}  (pids {})",
        join(&asap),
        join(&enrp),
        fleet.pids("registrar")
    );
    for (kind, pool) in [
        ("counter", "CounterPool"),
        ("echo", "EchoPool"),
        ("http", "WebPool"),
    ] {
        let _ = writeln!(
            banner,
            "  {pool:<11} 2 `{kind}` PEs  (pids {})",
            fleet.pids(&format!("{kind}-pe"))
        );
    }
    let _ = writeln!(
        banner,
        "  gateway     TCP {counter_gw} (CounterPool), {echo_gw} (EchoPool); HTTP {http_gw} (WebPool); DNS {dns_gw} (zone pool.example.); admin {admin}  (pid {})",
        fleet.pids("gateway")
    );
    let _ = writeln!(banner, "\nTry:");
    let _ = writeln!(
        banner,
        "  nc {} {}        # (netcat) type lines; each answer is the running count",
        counter_gw.ip(),
        counter_gw.port()
    );
    let _ = writeln!(
        banner,
        "  kill -9 PID     # PID: one of the counter PEs ({}): the count goes on, no reset",
        fleet.pids("counter-pe")
    );
    let _ = writeln!(banner, "  curl -s http://{http_gw}/hello");
    let _ = writeln!(
        banner,
        "  dig @{} -p {} +short WebPool.pool.example A    (also SRV _http._tcp.WebPool..., TXT)",
        dns_gw.ip(),
        dns_gw.port()
    );
    let _ = writeln!(
        banner,
        "  rserpool resolve WebPool --registrar {}",
        port(1)?
    );
    let _ = writeln!(banner, "  rserpool dump --registrar {}", port(12)?);
    let _ = writeln!(banner, "  curl -s http://{admin}/metrics | grep rserpool_");
    let _ = writeln!(
        banner,
        "  kill {}   # registrar 1 stops: its PEs re-register elsewhere (or a peer takes them over)",
        fleet.pids("registrar-1")
    );
    let _ = writeln!(
        banner,
        "Status pages: http://{admin}/ (gateway), http://{}/ .. http://{}/ (registrars). Ctrl-C stops everything.",
        port(91)?,
        port(93)?
    );
    print!("{banner}");
    println!("demo ready");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();

    while signals.next().await != Request::Stop {}
    println!("demo: stopping");
    fleet.stop().await;
    Ok(format!("demo: stopped (logs kept in {})\n", logs.display()))
}

fn join(addresses: &[SocketAddr]) -> String {
    let text: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    text.join(",")
}
