//! The gateway's listeners: checking, binding and starting each TCP, HTTP and DNS
//! listener, and following a new configuration on SIGHUP. A listener is known by its
//! kind and configured address. On SIGHUP new ones open; removed ones stop accepting
//! and their sessions get `drain_timeout`; changed ones go on with the same listening
//! socket and the new settings (clients connecting meanwhile wait in its backlog; open
//! TCP sessions keep the settings they started with; HTTP keep-alive connections close
//! at their next request boundary), except a DNS listener, which is bound again; an
//! HTTP listener whose routes or sticky keys alone changed keeps its connections. All
//! that can fail (settings, binding new addresses) is done before anything changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rserpool_gateways::Lifecycle;
use rserpool_gateways::dns::{self, DnsConfig};
use rserpool_gateways::handover::Handover;
use rserpool_gateways::http::tls::CertificateResolver;
use rserpool_gateways::http::{self, HttpListenerConfig};
use rserpool_gateways::tcp::{self, ListenerConfig};
use rserpool_proto::wire::PoolHandle;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::admin::{self, ListenerView};
use super::bind::{Checked, DnsSockets, Prepared, adopt, local_address, prepare};
use super::settings::{dns_start, http_listener_config, tcp_listener_config};
use crate::RunError;
use crate::config::{ConfigFile, DnsSection, HttpListenerSection, TcpListenerSection};
use crate::pool_user::PoolUser;
use crate::upgrade::{Inherited, Sockets};

/// What every listener's task gets.
pub(super) struct Shared {
    pub(super) pool_user: Arc<PoolUser>,
    pub(super) lifecycle: Lifecycle,
    pub(super) view: ListenerView,
    /// How long a removed listener's sessions may go on.
    pub(super) drain_timeout: Duration,
}

/// A listener as configured: what SIGHUP compares.
#[derive(Debug, Clone, PartialEq)]
enum Section {
    Tcp(TcpListenerSection),
    Http(HttpListenerSection),
    Dns(DnsSection),
}

impl Section {
    /// The file's listeners: TCP, HTTP, then DNS, each in the file's order.
    fn all(file: &ConfigFile) -> Vec<Self> {
        let tcp = file.gateway.tcp.iter().cloned().map(Self::Tcp);
        let http = file.gateway.http.iter().cloned().map(Self::Http);
        let dns = file.gateway.dns.iter().cloned().map(Self::Dns);
        tcp.chain(http).chain(dns).collect()
    }

    /// `kind address #n` for each of `sections` (n counts those with the same kind
    /// and address): how an upgrade names the sockets it hands over.
    fn names<'a>(sections: impl Iterator<Item = &'a Self>) -> Vec<String> {
        let mut seen: BTreeMap<(&'static str, SocketAddr), usize> = BTreeMap::new();
        sections
            .map(|section| {
                let (kind, listen) = section.key();
                let n = seen.entry((kind, listen)).or_default();
                *n += 1;
                format!("{kind} {listen} #{}", *n - 1)
            })
            .collect()
    }

    /// Kind and configured address: what makes two configurations' listeners one.
    fn key(&self) -> (&'static str, SocketAddr) {
        match self {
            Self::Tcp(section) => ("tcp", section.listen),
            Self::Http(section) => ("http", section.listen),
            Self::Dns(section) => ("dns", section.listen),
        }
    }

    /// The settings the gateway library takes, checked.
    fn check(&self) -> Result<Checked, RunError> {
        Ok(match self {
            Self::Tcp(section) => Checked::Tcp(tcp_listener_config(section)?),
            Self::Http(section) => Checked::Http(http_listener_config(section)?),
            Self::Dns(section) => Checked::Dns(dns_start(section)?),
        })
    }

    /// Whether `new` differs from this HTTP listener in its routes and sticky keys
    /// only (which a running listener takes without a restart).
    fn routes_only(&self, new: &Self) -> bool {
        let (Self::Http(old), Self::Http(new)) = (self, new) else {
            return false;
        };
        let mut same = new.clone();
        same.routes.clone_from(&old.routes);
        same.sticky.clone_from(&old.sticky);
        same == *old
    }
}

/// A running listener.
struct Running {
    section: Section,
    /// Where it listens (the real port for a 0 in the configuration).
    bound: SocketAddr,
    /// `ADDRESS=POOL` (or `=ZONE`) texts for the ready line.
    named: Vec<String>,
    /// Its entries in `/api/gateway`.
    view: Vec<Value>,
    /// Cancelled: it stops accepting (a child of the gateway's `stop_accepting`).
    stop: CancellationToken,
    /// Cancelled: its sessions are closed (a child of `close_sessions`).
    close: CancellationToken,
    /// Gives the listening socket back when stopped (TCP and HTTP).
    task: JoinHandle<Option<TcpListener>>,
    reloader: Option<http::Reloader>,
    certificates: Vec<(SocketAddr, Arc<CertificateResolver>)>,
    /// Its listening sockets (duplicates), to hand over in an upgrade.
    sockets: Vec<OwnedFd>,
    /// Its sessions' way to and from another process in an upgrade (TCP, plain HTTP).
    handover: Option<Handover>,
}

/// What one SIGHUP changed.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub(super) added: usize,
    pub(super) removed: usize,
    pub(super) replaced: usize,
    pub(super) routes_reloaded: usize,
}

/// What SIGHUP does to one listener of the new configuration (by the index of the
/// running listener it continues).
enum Step {
    Keep(usize),
    Routes(usize, Section, HttpListenerConfig),
    Replace(usize, Section, Checked),
    Add(Section, Prepared),
}

impl Step {
    /// The running listener it continues.
    fn running(&self) -> Option<usize> {
        match self {
            Self::Keep(at) | Self::Routes(at, ..) | Self::Replace(at, ..) => Some(*at),
            Self::Add(..) => None,
        }
    }
}

/// The running listeners.
pub(super) struct ListenerSet {
    running: Vec<Running>,
    shared: Shared,
}

/// Checks every listener of `file` (before anything is bound).
pub(super) fn check(file: &ConfigFile) -> Result<(), RunError> {
    Section::all(file)
        .iter()
        .try_for_each(|s| s.check().map(drop))
}

impl ListenerSet {
    /// Starts the listeners of `file`: on the sockets an upgrade handed over, else
    /// bound here; a failure to bind is an error.
    pub(super) async fn start(
        file: &ConfigFile,
        shared: Shared,
        mut inherited: Option<&mut Inherited>,
    ) -> Result<Self, RunError> {
        let mut set = Self {
            running: Vec::new(),
            shared,
        };
        let sections = Section::all(file);
        for (name, section) in Section::names(sections.iter()).into_iter().zip(sections) {
            let checked = section.check()?;
            let prepared = match inherited.as_deref_mut().and_then(|i| i.take(&name)) {
                Some(sockets) => adopt(checked, sockets, &name)?,
                None => prepare(checked, None, None).await?,
            };
            let running = set.launch(section, prepared);
            set.running.push(running);
        }
        set.publish(file);
        Ok(set)
    }

    /// Duplicates of every listening socket, by name, for an upgrade.
    pub(super) fn sockets(&self) -> std::io::Result<Sockets> {
        let names = Section::names(self.running.iter().map(|r| &r.section));
        names
            .into_iter()
            .zip(&self.running)
            .map(|(name, running)| {
                let sockets = running
                    .sockets
                    .iter()
                    .map(OwnedFd::try_clone)
                    .collect::<Result<_, _>>()?;
                Ok((name, sockets))
            })
            .collect()
    }

    /// The TCP and plain HTTP listeners' ways for sessions and connections in an
    /// upgrade, by name.
    pub(super) fn handovers(&self) -> Vec<(String, Handover)> {
        let names = Section::names(self.running.iter().map(|r| &r.section));
        names
            .into_iter()
            .zip(&self.running)
            .filter_map(|(name, running)| Some((name, running.handover.clone()?)))
            .collect()
    }

    /// The ready line's `tcp`, `http` and `dns` fields.
    pub(super) fn ready_fields(&self) -> [String; 3] {
        ["tcp", "http", "dns"].map(|kind| {
            let named: Vec<&str> = self
                .running
                .iter()
                .filter(|r| r.section.key().0 == kind)
                .flat_map(|r| r.named.iter().map(String::as_str))
                .collect();
            named.join(",")
        })
    }

    /// How long sessions may go on when the gateway stops (the latest configuration's).
    pub(super) fn drain_timeout(&self) -> Duration {
        self.shared.drain_timeout
    }

    /// The HTTPS and DNS-over-TLS listeners' certificates (read again on SIGHUP).
    pub(super) fn certificates(&self) -> Vec<(SocketAddr, Arc<CertificateResolver>)> {
        self.running
            .iter()
            .flat_map(|r| r.certificates.iter().cloned())
            .collect()
    }

    /// SIGHUP: the HTTP routes' TLS towards PEs is read again; files that do not load
    /// leave the ones in use.
    pub(super) fn reload_pe_tls(&self) {
        for running in &self.running {
            let Some(reloader) = &running.reloader else {
                continue;
            };
            for (pool, outcome) in reloader.reload_pe_tls() {
                match outcome {
                    Ok(()) => {
                        tracing::info!(listener = %running.bound, %pool, "SIGHUP: TLS towards PEs reloaded");
                    }
                    Err(error) => {
                        tracing::error!(listener = %running.bound, %pool, %error, "SIGHUP: TLS towards PEs not reloaded; the old files stay");
                    }
                }
            }
        }
    }

    /// Follows `file`'s listeners (SIGHUP). On an error (settings, an address that
    /// cannot be bound) nothing has changed.
    pub(super) async fn apply(&mut self, file: &ConfigFile) -> Result<Changes, RunError> {
        let steps = self.plan(file).await?;
        self.shared.drain_timeout = file.gateway.drain_timeout;
        let mut old: Vec<Option<Running>> = std::mem::take(&mut self.running)
            .into_iter()
            .map(Some)
            .collect();
        let kept: BTreeSet<usize> = steps.iter().filter_map(Step::running).collect();
        let mut changes = Changes::default();
        for (at, slot) in old.iter_mut().enumerate() {
            if let Some(removed) = slot.take_if(|_| !kept.contains(&at)) {
                tracing::info!(listener = %removed.bound, kind = removed.section.key().0, drain = ?self.shared.drain_timeout, "SIGHUP: listener removed; its sessions drain");
                self.retire(removed).await;
                changes.removed += 1;
            }
        }
        let mut take = |at: usize| old.get_mut(at).and_then(Option::take);
        for step in steps {
            let running = match step {
                Step::Keep(at) => take(at),
                Step::Routes(at, section, config) => take(at).map(|mut running| {
                    if let Some(reloader) = &running.reloader {
                        reloader.reload(&config);
                    }
                    tracing::info!(listener = %running.bound, "SIGHUP: HTTP routes and sticky keys reloaded");
                    running.section = section;
                    changes.routes_reloaded += 1;
                    running
                }),
                Step::Replace(at, section, checked) => match take(at) {
                    Some(running) => {
                        changes.replaced += 1;
                        self.replace(running, section, checked).await
                    }
                    None => None,
                },
                Step::Add(section, prepared) => {
                    changes.added += 1;
                    let running = self.launch(section, prepared);
                    tracing::info!(listener = %running.bound, kind = running.section.key().0, "SIGHUP: listener added");
                    Some(running)
                }
            };
            self.running.extend(running);
        }
        self.publish(file);
        Ok(changes)
    }

    /// What each listener of `file` needs, by the running listener (its index) it
    /// continues; new addresses are bound here. Changes nothing: on an error the
    /// sockets bound close.
    async fn plan(&self, file: &ConfigFile) -> Result<Vec<Step>, RunError> {
        let mut taken = vec![false; self.running.len()];
        let mut steps = Vec::new();
        for section in Section::all(file) {
            let found = self.running.iter().enumerate().find(|(at, running)| {
                !taken.get(*at).copied().unwrap_or(true) && running.section.key() == section.key()
            });
            let step = match found {
                Some((at, running)) => {
                    if let Some(slot) = taken.get_mut(at) {
                        *slot = true;
                    }
                    if running.section == section {
                        Step::Keep(at)
                    } else {
                        match section.check()? {
                            Checked::Http(config) if running.section.routes_only(&section) => {
                                Step::Routes(at, section, config)
                            }
                            checked => Step::Replace(at, section, checked),
                        }
                    }
                }
                None => {
                    let prepared = prepare(section.check()?, None, None).await?;
                    Step::Add(section, prepared)
                }
            };
            steps.push(step);
        }
        Ok(steps)
    }

    /// Stops `old` and starts `section` in its place: on the same listening socket
    /// (TCP, HTTP), or bound again at the same address (DNS; if that fails, `old`'s
    /// settings are bound again, and if that fails too the listener is gone until a
    /// SIGHUP finds it as new).
    async fn replace(&self, old: Running, section: Section, checked: Checked) -> Option<Running> {
        let (bound, previous) = (old.bound, old.section.clone());
        old.stop.cancel();
        let socket = old.task.await.ok().flatten();
        tracing::info!(listener = %bound, kind = section.key().0, "SIGHUP: listener replaced; its open sessions keep their settings");
        let error = match prepare(checked, socket, Some(bound)).await {
            Ok(prepared) => return Some(self.launch(section, prepared)),
            Err(error) => error,
        };
        tracing::error!(listener = %bound, %error, "SIGHUP: the changed listener could not be bound again; starting its previous settings");
        let restored = match previous.check() {
            Ok(checked) => prepare(checked, None, Some(bound)).await,
            Err(error) => Err(error),
        };
        match restored {
            Ok(prepared) => Some(self.launch(previous, prepared)),
            Err(error) => {
                tracing::error!(listener = %bound, %error, "SIGHUP: listener lost; fix the configuration and send SIGHUP again");
                None
            }
        }
    }

    /// Stops accepting and closes the listening socket at once; the listener's open
    /// sessions are closed after `drain_timeout` if they have not ended by then.
    async fn retire(&self, running: Running) {
        running.stop.cancel();
        let _ = running.task.await;
        let (close, drain) = (running.close, self.shared.drain_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            close.cancel();
        });
    }

    /// Starts a listener's task on its sockets.
    fn launch(&self, section: Section, prepared: Prepared) -> Running {
        let lifecycle = Lifecycle {
            stop_accepting: self.shared.lifecycle.stop_accepting.child_token(),
            close_sessions: self.shared.lifecycle.close_sessions.child_token(),
            ..self.shared.lifecycle.clone()
        };
        let (stop, close) = (
            lifecycle.stop_accepting.clone(),
            lifecycle.close_sessions.clone(),
        );
        let sockets = prepared.duplicates();
        let mut running = match prepared {
            Prepared::Tcp(config, socket) => self.launch_tcp(section, config, socket, lifecycle),
            Prepared::Http(config, socket) => self.launch_http(section, config, socket, lifecycle),
            Prepared::Dns((_, config, dot), sockets) => {
                self.launch_dns(section, (config, dot), sockets, lifecycle)
            }
        };
        running.stop = stop;
        running.close = close;
        running.sockets = sockets;
        running
    }

    fn launch_tcp(
        &self,
        section: Section,
        config: ListenerConfig,
        socket: TcpListener,
        lifecycle: Lifecycle,
    ) -> Running {
        let bound = local_address(&socket, config.listen);
        let config = ListenerConfig {
            listen: bound,
            ..config
        };
        let pool = config.pool_handle;
        let pool_user = self.shared.pool_user.clone();
        let handover = Handover::default();
        let sessions = (lifecycle, handover.clone());
        let task =
            tokio::spawn(
                async move { Some(tcp::serve(socket, config, pool_user, sessions).await) },
            );
        let mut running = Running::new(section, bound, task, vec![format!("{bound}={pool}")])
            .with_view(admin::tcp_entry(bound, pool));
        running.handover = Some(handover);
        running
    }

    fn launch_http(
        &self,
        section: Section,
        config: HttpListenerConfig,
        socket: TcpListener,
        lifecycle: Lifecycle,
    ) -> Running {
        let bound = local_address(&socket, config.listen);
        let reloader = http::Reloader::new(&config, self.shared.lifecycle.ejections.clone());
        let config = HttpListenerConfig {
            listen: bound,
            ..config
        };
        let pools: Vec<String> = config
            .routes
            .iter()
            .map(|r| r.pool_handle.to_string())
            .collect();
        let view = admin::http_entry(bound, &config);
        let certificates: Vec<_> = config.tls.iter().map(|t| (bound, t.clone())).collect();
        let (routing, pool_user) = (reloader.clone(), self.shared.pool_user.clone());
        // Idle plain connections go over in an upgrade; TLS ones cannot.
        let handover = config.tls.is_none().then(Handover::default);
        let connections = (lifecycle, handover.clone().unwrap_or_default());
        let task = tokio::spawn(async move {
            Some(http::serve(socket, config, (routing, pool_user), connections).await)
        });
        let named = vec![format!("{bound}={}", pools.join("+"))];
        let mut running = Running::new(section, bound, task, named).with_view(view);
        running.reloader = Some(reloader);
        running.certificates = certificates;
        running.handover = handover;
        running
    }

    fn launch_dns(
        &self,
        section: Section,
        (config, dot): (DnsConfig, Option<(SocketAddr, Arc<CertificateResolver>)>),
        sockets: DnsSockets,
        lifecycle: Lifecycle,
    ) -> Running {
        let DnsSockets {
            udp,
            tcp,
            dot: dot_socket,
        } = sockets;
        let bound = udp
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let zone = config.zone.to_string();
        let mut named = vec![format!("{bound}={zone}")];
        let mut view = vec![admin::dns_entry(format!("{bound} (UDP, TCP)"), &zone)];
        let mut certificates = Vec::new();
        let dot = match (dot, dot_socket) {
            (Some((listen, resolver)), Some(listener)) => {
                let dot_bound = local_address(&listener, listen);
                named.push(format!("{dot_bound}=tls:{zone}"));
                view.push(admin::dns_entry(
                    format!("{dot_bound} (DNS over TLS)"),
                    &zone,
                ));
                certificates.push((dot_bound, resolver.clone()));
                Some(dns::DotListener {
                    listener,
                    certificates: resolver,
                })
            }
            _ => None,
        };
        let pool_user = self.shared.pool_user.clone();
        let task = tokio::spawn(async move {
            dns::serve(udp, tcp, dot, config, pool_user, lifecycle.stop_accepting).await;
            None
        });
        let mut running = Running::new(section, bound, task, named);
        running.view = view;
        running.certificates = certificates;
        running
    }

    /// Tells `/api/gateway` the listeners and the pools they use.
    fn publish(&self, file: &ConfigFile) {
        let entries = self.running.iter().flat_map(|r| r.view.iter().cloned());
        self.shared
            .view
            .set(entries.collect(), configured_pools(file));
    }
}

impl Running {
    fn new(
        section: Section,
        bound: SocketAddr,
        task: JoinHandle<Option<TcpListener>>,
        named: Vec<String>,
    ) -> Self {
        Self {
            section,
            bound,
            named,
            view: Vec::new(),
            stop: CancellationToken::new(),
            close: CancellationToken::new(),
            task,
            reloader: None,
            certificates: Vec::new(),
            sockets: Vec::new(),
            handover: None,
        }
    }

    fn with_view(mut self, entry: Value) -> Self {
        self.view.push(entry);
        self
    }
}

/// The pools the TCP listeners and HTTP routes send to.
pub(super) fn configured_pools(file: &ConfigFile) -> BTreeSet<PoolHandle> {
    let tcp = file.gateway.tcp.iter().map(|listener| listener.pool);
    let http = file
        .gateway
        .http
        .iter()
        .flat_map(|listener| listener.routes.iter().map(|route| route.pool));
    tcp.chain(http).collect()
}
