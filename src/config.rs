//! The configuration file: YAML, strict (an unknown key is an error naming its path),
//! validated once into typed settings. This is the only module that names the YAML
//! crate. Every key has a default, so an empty file (or none) is a working setup, and
//! command-line flags override the file.
//!
//! Durations are written with a unit: `250ms`, `5s`, `2m`, `1h`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use rserpool_proto::engine::TransportKind;
use serde::Deserialize;

mod control_tls;
mod csp;
mod gateway;
mod host_port;
mod pe;
mod registrar;
mod values;

pub(crate) use control_tls::{ControlTlsSection, parse_plain_peers};
pub(crate) use csp::{
    CspSection, parse_interval as parse_csp_interval, parse_monitor as parse_csp_monitor,
};
pub(crate) use gateway::{
    CertificateSection, DnsSection, GatewaySection, HttpListenerSection, HttpRouteSection,
    OutlierSection, PeProtocol, PeTlsSection, StickySection, TcpListenerSection, sticky_keys,
};
pub(crate) use host_port::{HostPort, resolve_all};
pub(crate) use pe::{
    DEFAULT_CAPACITY, HealthCheck, LoadSource, PeSection, PoolUserSection, ServiceConfig,
    parse_health, parse_source,
};
pub(crate) use registrar::{RegistrarSection, asap_port, enrp_port};
pub(crate) use values::{ConfigError, Multicast, parse_duration, parse_id, parse_multicast};

/// The whole file: one optional section per role.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConfigFile {
    pub(crate) log: LogConfig,
    pub(crate) registrar: RegistrarSection,
    pub(crate) pe: PeSection,
    pub(crate) pool_user: PoolUserSection,
    pub(crate) gateway: GatewaySection,
    pub(crate) admin: AdminSection,
    /// TLS for ASAP and ENRP; absent: plain, unauthenticated (as rsplib).
    pub(crate) tls: Option<ControlTlsSection>,
    /// Status reports to an rsplib `cspmonitor`; off unless a monitor is named.
    pub(crate) csp: CspSection,
}

/// The admin HTTP listener (`/metrics`, `/healthz`); off unless `listen` is set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AdminSection {
    pub(crate) listen: Option<SocketAddr>,
    /// A file holding the bearer token that `/log` and `/api/` require (none: open).
    pub(crate) token_file: Option<std::path::PathBuf>,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    pub(crate) tls: Option<AdminTlsSection>,
}

/// The admin listener's own certificate (any CA: clients such as Prometheus check it).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminTlsSection {
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LogConfig {
    /// A tracing filter: `info`, `debug`, `rserpool=debug,warn`, ...
    pub(crate) level: String,
    pub(crate) format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The configuration of a pool-user command (`resolve`, `gateway`): the file if given,
/// with `--registrar` flags replacing its registrars, and the default registrar when
/// neither names one.
pub(crate) fn load_pool_user(
    path: Option<&Path>,
    registrars: &[HostPort],
    transport: Option<TransportKind>,
) -> Result<ConfigFile, ConfigError> {
    let mut file = match path {
        Some(path) => load(path)?,
        None => ConfigFile::default(),
    };
    if !registrars.is_empty() {
        file.pool_user.registrars = registrars.to_vec();
    }
    if let Some(transport) = transport {
        file.pool_user.transport = transport;
    }
    Ok(file)
}

/// A section built from command-line values (`--tcp`, `--http`, `--dns`) with every
/// other key at its default: the values go in as data, not as configuration text, so a
/// pool handle such as `Web #1` stays whole.
pub(crate) fn section_from<T: serde::de::DeserializeOwned>(
    fields: serde_json::Value,
    flag: &str,
) -> Result<T, ConfigError> {
    serde_json::from_value(fields).map_err(|error| ConfigError::Parse {
        path: flag.to_owned(),
        key: ".".to_owned(),
        reason: error.to_string(),
    })
}

/// Reads and validates a configuration file.
pub(crate) fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.display().to_string(),
        error,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses configuration text; `origin` names it in errors.
pub(crate) fn parse(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
    let mut failed_at = None;
    let result = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
        let mut track = serde_path_to_error::Track::new();
        let result = ConfigFile::deserialize(serde_path_to_error::Deserializer::new(
            deserializer,
            &mut track,
        ));
        if result.is_err() {
            failed_at = Some(track.path().to_string());
        }
        result
    });
    let config = result.map_err(|error| {
        // The library's message spans several lines (a source snippet); keep the first.
        let message = error.to_string();
        let first = message.lines().next().unwrap_or_default();
        ConfigError::Parse {
            path: origin.to_owned(),
            key: failed_at.unwrap_or_else(|| ".".into()),
            reason: first.trim_start_matches("error: ").to_owned(),
        }
    })?;
    validate(&config)?;
    Ok(config)
}

fn validate(config: &ConfigFile) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .map_err(|e| ConfigError::Invalid(format!("log.level {:?}: {e}", config.log.level)))?;
    let r = &config.registrar;
    if r.keepalive_interval.is_zero() || r.keepalive_timeout.is_zero() {
        return Err(ConfigError::Invalid(
            "registrar.keepalive_interval and keepalive_timeout must be above 0".into(),
        ));
    }
    let l = &r.limits;
    if l.max_connections == 0
        || l.max_connections_per_host == 0
        || l.first_message_timeout.is_zero()
        || l.message_timeout.is_zero()
        || l.max_unfinished_message_bytes < rserpool_proto::wire::MAX_FRAME
    {
        return Err(ConfigError::Invalid(format!(
            "registrar.limits: max_connections, max_connections_per_host, first_message_timeout and message_timeout must be above 0, max_unfinished_message_bytes at least one message ({} bytes)",
            rserpool_proto::wire::MAX_FRAME
        )));
    }
    if l.max_pool_elements_per_host == 0 || l.max_pools_per_host == 0 {
        return Err(ConfigError::Invalid(
            "registrar.limits: max_pool_elements_per_host and max_pools_per_host must be above 0 (every PE would be refused)".into(),
        ));
    }
    if r.max_items == 0 || r.default_items == 0 || r.handle_table_page_size == 0 {
        return Err(ConfigError::Invalid(
            "registrar.default_items, max_items and handle_table_page_size must be above 0".into(),
        ));
    }
    if config
        .pool_user
        .registrar_silence
        .is_some_and(|silence| silence.is_zero())
    {
        return Err(ConfigError::Invalid(
            "pool_user.registrar_silence must be above 0".into(),
        ));
    }
    if config.pool_user.stale_answer_after.is_zero() {
        return Err(ConfigError::Invalid(
            "pool_user.stale_answer_after must be above 0 (a registrar's answer would never be waited for)".into(),
        ));
    }

    for (section, group, interface) in [
        ("pe", &config.pe.announce, config.pe.announce_interface),
        (
            "pool_user",
            &config.pool_user.announce,
            config.pool_user.announce_interface,
        ),
    ] {
        if matches!(group, Multicast::Group(_)) && interface.is_none() {
            return Err(ConfigError::Invalid(format!(
                "{section}.announce needs {section}.announce_interface (the address of the interface to listen on)"
            )));
        }
    }
    for (i, service) in config.pe.services.iter().enumerate() {
        if service.backend.port() == 0 {
            return Err(ConfigError::Invalid(format!(
                "pe.services[{i}].backend needs a port"
            )));
        }
        if service.fall == 0 || service.rise == 0 || service.health_interval.is_zero() {
            return Err(ConfigError::Invalid(format!(
                "pe.services[{i}]: fall, rise and health_interval must be above 0"
            )));
        }
    }
    for (section, transport, multihome) in [
        (
            "registrar",
            config.registrar.transport,
            &config.registrar.multihome,
        ),
        ("pe", config.pe.transport, &config.pe.multihome),
    ] {
        if transport == TransportKind::Tcp && !multihome.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{section}.multihome needs {section}.transport: sctp (TCP has one address)"
            )));
        }
    }
    Ok(())
}

/// The address a multicast channel should use, given the socket's bind address.
pub(crate) fn multicast_interface(bind: IpAddr, configured: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    configured.or(match bind {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use rserpool_proto::pool_element::HomeChanges;
    use rserpool_proto::wire::RegistrarId;
    use std::net::SocketAddr;
    use std::time::Duration;

    /// Every example in config/ and deploy/config/ parses (ARCHITECTURE.md house style
    /// 11).
    #[test]
    fn rate_limits_are_on_by_default_and_null_turns_them_off() {
        let default = parse("", "empty.yaml").unwrap().registrar.limits;
        assert_eq!(default.max_handle_resolutions_per_second, Some(2_000));
        assert_eq!(default.max_unreachable_reports_per_second, Some(100));
        let off = parse(
            "registrar:\n  limits:\n    max_handle_resolutions_per_second: null\n",
            "off.yaml",
        )
        .unwrap()
        .registrar
        .limits;
        assert_eq!(off.max_handle_resolutions_per_second, None);
        assert_eq!(off.max_unreachable_reports_per_second, Some(100));
    }

    #[test]
    fn home_changes_are_known_registrars_unless_any_is_asked_for() {
        let pe = |yaml: &str| parse(yaml, "pe.yaml").map(|c| c.pe.home_changes);
        assert_eq!(pe("").unwrap(), HomeChanges::KnownRegistrars);
        assert_eq!(
            pe("pe:\n  home_changes: known\n").unwrap(),
            HomeChanges::KnownRegistrars
        );
        assert_eq!(pe("pe:\n  home_changes: any\n").unwrap(), HomeChanges::Any);
        assert!(pe("pe:\n  home_changes: anyone\n").is_err());
    }

    /// `config/registrar.yaml`, `pe.yaml` and `gateway.yaml` run side by side on one
    /// host: no two of their listeners, nor a listener and one of the PE's backends
    /// (other programs listen there), share an address and port.
    #[test]
    fn the_role_examples_run_side_by_side_without_port_clashes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let example = |name: &str| load(&root.join(name)).unwrap();
        let registrar = example("registrar.yaml");
        let pe = example("pe.yaml");
        let gateway = example("gateway.yaml");
        let mut bound: Vec<(&str, SocketAddr)> = Vec::new();
        bound.extend(registrar.registrar.asap.map(|a| ("registrar asap", a)));
        bound.extend(registrar.registrar.enrp.map(|a| ("registrar enrp", a)));
        for (role, file) in [
            ("registrar", &registrar),
            ("pe", &pe),
            ("gateway", &gateway),
        ] {
            bound.extend(file.admin.listen.map(|a| (role, a)));
        }
        if pe.pe.asap.port() != 0 {
            bound.push(("pe asap", pe.pe.asap));
        }
        let listeners = gateway.gateway.tcp.iter().map(|l| l.listen);
        let listeners = listeners
            .chain(gateway.gateway.http.iter().map(|l| l.listen))
            .chain(gateway.gateway.dns.iter().map(|l| l.listen));
        bound.extend(listeners.map(|a| ("gateway listener", a)));
        bound.extend(pe.pe.services.iter().map(|s| ("pe backend", s.backend)));
        let clash = |a: SocketAddr, b: SocketAddr| {
            a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        for (i, (what, address)) in bound.iter().enumerate() {
            for (other, other_address) in bound.iter().skip(i + 1) {
                assert!(
                    !clash(*address, *other_address),
                    "{what} {address} and {other} {other_address}"
                );
            }
        }
        assert!(bound.len() >= 8, "{bound:?}");
    }

    #[test]
    fn every_example_parses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut count = 0;
        for dir in [root.join("config"), root.join("deploy/config")] {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    if let Err(error) = load(&path) {
                        panic!("{error}");
                    }
                    count += 1;
                }
            }
        }
        assert!(count >= 7, "examples found: {count}");
    }

    /// Every key the configuration structs accept is shown (set or commented out) in an
    /// example file: config/ is the reference the README points to.
    #[test]
    fn every_key_is_documented_in_an_example() {
        let source = [
            include_str!("config.rs"),
            include_str!("config/control_tls.rs"),
            include_str!("config/csp.rs"),
            include_str!("config/gateway.rs"),
            include_str!("config/pe.rs"),
            include_str!("config/registrar.rs"),
        ]
        .concat();
        let mut fields = std::collections::BTreeSet::new();
        let mut in_struct = false;
        let mut deserialized = false;
        for line in source.lines() {
            let line = line.trim();
            if line.starts_with("#[derive(") {
                deserialized = line.contains("Deserialize");
            } else if line.starts_with("pub(crate) struct ") && line.ends_with('{') {
                in_struct = deserialized;
            } else if line == "}" {
                in_struct = false;
            } else if in_struct
                && let Some(field) = line.strip_prefix("pub(crate) ")
                && let Some((name, _)) = field.split_once(':')
            {
                fields.insert(name.to_owned());
            }
        }
        assert!(fields.len() > 40, "fields found: {fields:?}");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut examples = String::new();
        for dir in [root.join("config"), root.join("deploy/config")] {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                examples.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        let documented = |name: &str| {
            examples.lines().any(|line| {
                let line = line.trim_start().trim_start_matches('#').trim_start();
                let line = line.trim_start_matches("- ").trim_start_matches('{');
                line.starts_with(&format!("{name}:"))
                    || line.contains(&format!("{{{name}:"))
                    || line.contains(&format!(", {name}:"))
            })
        };
        let missing: Vec<&String> = fields.iter().filter(|f| !documented(f)).collect();
        assert!(
            missing.is_empty(),
            "keys missing from config/*.yaml: {missing:?}"
        );
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn unknown_keys_name_their_path() {
        let error = parse("registrar:\n  limits:\n    max_pol: 3\n", "test.yaml").unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with(
                "test.yaml: registrar.limits.max_pol: line 3 column 5: unknown field `max_pol`"
            ),
            "{text}"
        );
        assert!(!text.contains('\n'), "one line: {text}");
        let error = parse(
            "pe:\n  services:\n    - pool: P\n      backend: 127.0.0.1:80\n      helth: tcp\n",
            "x",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("pe.services[0].helth"),
            "{error}"
        );
    }

    #[test]
    fn values_are_validated() {
        assert!(parse("registrar:\n  keepalive_interval: 5\n", "x").is_err());
        assert!(parse("registrar:\n  announce:\n    group: 10.0.0.1:3863\n", "x").is_err());
        assert!(parse("registrar:\n  id: 0\n", "x").is_err());
        assert!(parse("log:\n  level: \"rserpool=loud\"\n", "x").is_err());
        let config = parse(
            "registrar:\n  id: 0x11223344\n  announce:\n    group: \"off\"\n",
            "x",
        )
        .unwrap_or_default();
        assert_eq!(config.registrar.id, Some(RegistrarId(0x1122_3344)));
        assert_eq!(config.registrar.announce.group, Multicast::Off);
        assert_eq!(parse("", "x").unwrap(), ConfigFile::default());
    }
}
