//! The gateway's configuration, checked once before anything is bound: each section
//! becomes the gateway library's own configuration, and what a section leaves out
//! takes the library's default (`Route::new`, `HttpListenerConfig::new`,
//! `ListenerConfig::new`, `DnsConfig::new`), so a default lives in one place.

use std::sync::Arc;
use std::time::Duration;

use rserpool_gateways::dns::{DnsConfig, TcpLimits, hickory_name};
use rserpool_gateways::health::{OutlierConfig, SuccessRateConfig};
use rserpool_gateways::http::pe_tls::{PeTls, PeTlsSource};
use rserpool_gateways::http::sticky::{self, CookieSealer};
use rserpool_gateways::http::tls::{CertificateResolver, CertificateSource};
use rserpool_gateways::http::{HttpListenerConfig, Route, StatusSet};
use rserpool_gateways::tcp::{Framing, ListenerConfig, SctpUpstream};
use rserpool_proto::session::SessionConfig;
use rserpool_proto::wire::PoolHandle;

use super::bind;
use crate::RunError;
use crate::config::{
    self, CertificateSection, DnsSection, HttpListenerSection, HttpRouteSection, OutlierSection,
    PeProtocol, PeTlsSection, StickySection, TcpListenerSection,
};

fn dns_config(section: &DnsSection) -> Result<DnsConfig, RunError> {
    let context = format!("gateway.dns {}", section.listen);
    let mut zone = hickory_name(&section.zone)
        .map_err(|e| RunError::Usage(format!("{context}: zone {:?}: {e}", section.zone)))?;
    zone.set_fqdn(true);
    let mut config = DnsConfig::new(zone);
    config.ttl = section.ttl.unwrap_or(config.ttl);
    config.answer_count = section.answer_count.unwrap_or(config.answer_count).max(1);
    config.negative_ttl = section.negative_ttl.unwrap_or(config.negative_ttl);
    config.rate_limit = section.rate_limit.unwrap_or(config.rate_limit);
    config.tcp = TcpLimits {
        max_connections: section
            .tcp_max_connections
            .unwrap_or(config.tcp.max_connections),
        idle_timeout: section.tcp_idle_timeout.unwrap_or(config.tcp.idle_timeout),
    };
    for (label, pool) in &section.names {
        let valid = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid {
            return Err(RunError::Usage(format!(
                "{context}: names: {label:?} is not a DNS label (letters, digits, -)"
            )));
        }
        let handle = PoolHandle::new(pool.as_bytes())
            .map_err(|e| RunError::Usage(format!("{context}: names.{label}: {e}")))?;
        config.names.insert(label.to_ascii_lowercase(), handle);
    }
    Ok(config)
}

fn certificate_resolver(
    context: &str,
    certificates: &[CertificateSection],
) -> Result<Arc<CertificateResolver>, RunError> {
    let sources = certificates
        .iter()
        .map(|c| CertificateSource {
            cert: c.cert.clone(),
            key: c.key.clone(),
            names: c.names.clone(),
        })
        .collect();
    CertificateResolver::new(sources)
        .map(Arc::new)
        .map_err(|e| RunError::Usage(format!("{context}: tls: {e}")))
}

pub(super) fn http_listener_config(
    section: &HttpListenerSection,
) -> Result<HttpListenerConfig, RunError> {
    let context = format!("gateway.http {}", section.listen);
    let first = section
        .routes
        .first()
        .ok_or_else(|| RunError::Usage(format!("{context}: give at least one route")))?;
    let defaults = HttpListenerConfig::new(section.listen, first.pool);
    let retry_ratio = section.retry_ratio.unwrap_or(defaults.retry_ratio);
    if !(0.0..=10.0).contains(&retry_ratio) {
        return Err(RunError::Usage(format!(
            "{context}: retry_ratio must be between 0 and 10"
        )));
    }
    let h2_max_concurrent_streams = section
        .h2_max_concurrent_streams
        .unwrap_or(defaults.h2_max_concurrent_streams);
    if h2_max_concurrent_streams == 0 {
        return Err(RunError::Usage(format!(
            "{context}: h2_max_concurrent_streams must be above 0"
        )));
    }
    let routes = section
        .routes
        .iter()
        .map(|route| route_config(route, &context))
        .collect::<Result<_, _>>()?;
    let sticky = section
        .sticky
        .as_ref()
        .map(|sticky| cookie_sealer(sticky, &context))
        .transpose()?
        .flatten();
    let tls = section
        .tls
        .as_ref()
        .map(|tls| certificate_resolver(&context, &tls.certificates))
        .transpose()?;
    Ok(HttpListenerConfig {
        listen: section.listen,
        tls,
        routes,
        max_connections: section.max_connections.unwrap_or(defaults.max_connections),
        header_timeout: section.header_timeout.unwrap_or(defaults.header_timeout),
        client_idle_timeout: section
            .client_idle_timeout
            .unwrap_or(defaults.client_idle_timeout),
        tunnel_idle_timeout: section
            .tunnel_idle_timeout
            .unwrap_or(defaults.tunnel_idle_timeout),
        max_header_bytes: section
            .max_header_bytes
            .unwrap_or(defaults.max_header_bytes),
        sticky,
        retry_ratio,
        max_held_body_bytes: section
            .max_held_body_bytes
            .unwrap_or(defaults.max_held_body_bytes),
        max_held_body_bytes_per_connection: section
            .max_held_body_bytes_per_connection
            .unwrap_or(defaults.max_held_body_bytes_per_connection),
        h2_max_concurrent_streams,
    })
}

/// One route of an HTTP listener: what the section leaves out is [`Route::new`]'s.
fn route_config(route: &HttpRouteSection, context: &str) -> Result<Route, RunError> {
    let defaults = Route::new(route.pool);
    let path_prefix = route.path.clone().unwrap_or(defaults.path_prefix);
    if !path_prefix.starts_with('/') {
        return Err(RunError::Usage(format!(
            "{context}: route path {path_prefix:?} must start with /"
        )));
    }
    let retry_on = match &route.retry_on {
        None => defaults.retry_on,
        Some(statuses) => StatusSet::new(statuses).ok_or_else(|| {
            RunError::Usage(format!(
                "{context}: route retry_on {statuses:?}: only 4xx and 5xx statuses can be retried"
            ))
        })?,
    };
    Ok(Route {
        host: route.host.as_ref().map(|h| h.to_ascii_lowercase()),
        path_prefix,
        pool_handle: route.pool,
        connect_timeout: route.connect_timeout.unwrap_or(defaults.connect_timeout),
        first_byte_timeout: route
            .first_byte_timeout
            .unwrap_or(defaults.first_byte_timeout),
        idle_timeout: route.idle_timeout.unwrap_or(defaults.idle_timeout),
        max_body: route.max_body.unwrap_or(defaults.max_body),
        replay_buffer: route.replay_buffer.unwrap_or(defaults.replay_buffer),
        max_attempts: route.max_attempts.unwrap_or(defaults.max_attempts).max(1),
        min_body_rate: route.min_body_rate.unwrap_or(defaults.min_body_rate),
        retry_on,
        outliers: outlier_config(&route.outlier_detection, context)?,
        slow_start: route.slow_start.unwrap_or(defaults.slow_start),
        max_requests_per_pe: route
            .max_requests_per_pe
            .unwrap_or(defaults.max_requests_per_pe),
        queue_timeout: route.queue_timeout.unwrap_or(defaults.queue_timeout),
        hedge: route.hedge_after.unwrap_or(defaults.hedge),
        resume_cut_gets: route.resume_cut_gets.unwrap_or(defaults.resume_cut_gets),
        idempotency_keys: route.idempotency_keys.unwrap_or(defaults.idempotency_keys),
        least_requests: route.least_requests.unwrap_or(defaults.least_requests),
        pe_tls: route
            .pe_tls
            .as_ref()
            .map(|section| pe_tls(section, route.pool, context))
            .transpose()?,
        pe_http2: route.pe_protocol == PeProtocol::Http2,
    })
}

/// A route's TLS towards its PEs, its files read.
fn pe_tls(section: &PeTlsSection, pool: PoolHandle, context: &str) -> Result<Arc<PeTls>, RunError> {
    let client_certificate = match (&section.cert, &section.key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => {
            return Err(RunError::Usage(format!(
                "{context}: route {pool}: pe_tls: cert and key go together"
            )));
        }
    };
    let source = PeTlsSource {
        ca: section.ca.clone(),
        server_name: section.server_name.clone(),
        client_certificate,
    };
    PeTls::new(source, &pool.to_string())
        .map(Arc::new)
        .map_err(|e| RunError::Usage(format!("{context}: route {pool}: pe_tls: {e}")))
}

/// A listener's sticky sessions: the cookie's name checked, the keys read.
fn cookie_sealer(sticky: &StickySection, context: &str) -> Result<Option<CookieSealer>, RunError> {
    let name = sticky.cookie.as_deref().unwrap_or(sticky::DEFAULT_COOKIE);
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if !valid_name {
        return Err(RunError::Usage(format!(
            "{context}: sticky cookie name {name:?}: use letters, digits, _ - ."
        )));
    }
    let keys = config::sticky_keys(sticky)?;
    let max_age = sticky.max_age.unwrap_or(sticky::DEFAULT_MAX_AGE);
    Ok(CookieSealer::new(name, &keys, max_age))
}

/// A route's or TCP listener's passive health, checked.
fn outlier_config(section: &OutlierSection, context: &str) -> Result<OutlierConfig, RunError> {
    if section.max_ejected_percent > 100
        || section.failure_percentage > 100
        || section.base_ejection > section.max_ejection
    {
        return Err(RunError::Usage(format!(
            "{context}: outlier_detection: max_ejected_percent and failure_percentage are at most 100 and base_ejection at most max_ejection"
        )));
    }
    if !(0.0..=10.0).contains(&section.success_rate_stdev_factor) {
        return Err(RunError::Usage(format!(
            "{context}: outlier_detection: success_rate_stdev_factor must be between 0 and 10"
        )));
    }
    Ok(OutlierConfig {
        consecutive_failures: section.consecutive_failures,
        base_ejection: section.base_ejection,
        max_ejection: section.max_ejection,
        max_ejected_percent: section.max_ejected_percent,
        success_rate: SuccessRateConfig {
            interval: section.interval,
            request_volume: section.success_rate_request_volume,
            failure_percentage: section.failure_percentage,
            minimum_hosts: section.success_rate_minimum_hosts,
            stdev_factor_permille: (section.success_rate_stdev_factor * 1000.0).round() as u32,
        },
    })
}

/// One TCP listener: what the section leaves out is [`ListenerConfig::new`]'s.
/// A TCP listener's settings, checked.
pub(super) fn tcp_listener_config(
    section: &TcpListenerSection,
) -> Result<ListenerConfig, RunError> {
    let context = format!("gateway.tcp {}", section.listen);
    let defaults = ListenerConfig::new(section.listen, section.pool);
    let session = session_config(section, &defaults.session, &context)?;
    let buffer = section.buffer.unwrap_or(defaults.buffer);
    let max_connections = section.max_connections.unwrap_or(defaults.max_connections);
    if buffer == 0 || max_connections == 0 {
        return Err(RunError::Usage(format!(
            "{context}: buffer and max_connections must be above 0"
        )));
    }
    let framing = section.framing.map(|f| Framing {
        offset: f.offset,
        size: f.size,
        adjust: f.adjust,
        max_message: f.max_message.unwrap_or(Framing::DEFAULT_MAX_MESSAGE),
    });
    if let Some(framing) = framing
        && (![1, 2, 4].contains(&framing.size) || framing.max_message == 0)
    {
        return Err(RunError::Usage(format!(
            "{context}: framing: size must be 1, 2 or 4 and max_message above 0"
        )));
    }
    Ok(ListenerConfig {
        sctp: SctpUpstream {
            ppid: section.ppid.unwrap_or(defaults.sctp.ppid),
            framing,
        },
        listen: section.listen,
        pool_handle: section.pool,
        session: session.into(),
        max_connections,
        buffer,
        outliers: outlier_config(&section.outlier_detection, &context)?,
        slow_start: section.slow_start.unwrap_or(defaults.slow_start),
        least_sessions: section.least_sessions.unwrap_or(defaults.least_sessions),
    })
}

/// A TCP listener's session layer: what the section leaves out is the session layer's
/// default.
fn session_config(
    section: &TcpListenerSection,
    defaults: &SessionConfig,
    context: &str,
) -> Result<SessionConfig, RunError> {
    let heartbeat_interval = section
        .heartbeat_interval
        .unwrap_or(defaults.heartbeat_interval);
    // Our PE library gives up a gateway silent for 3 s (and answers each heartbeat).
    if !(Duration::from_millis(100)..=Duration::from_secs(2)).contains(&heartbeat_interval) {
        return Err(RunError::Usage(format!(
            "{context}: heartbeat_interval must be between 100ms and 2s"
        )));
    }
    let idle_timeout = match section.idle_timeout {
        Some(idle) if idle.is_zero() => None,
        Some(idle) => Some(idle),
        None => defaults.idle_timeout,
    };
    Ok(SessionConfig {
        replay_limit: section.replay_buffer.unwrap_or(defaults.replay_limit),
        connect_timeout: section.connect_timeout.unwrap_or(defaults.connect_timeout),
        response_timeout: section
            .response_timeout
            .unwrap_or(defaults.response_timeout),
        failover_deadline: section
            .failover_deadline
            .unwrap_or(defaults.failover_deadline),
        half_close_timeout: section
            .half_close_timeout
            .unwrap_or(defaults.half_close_timeout),
        heartbeat_interval,
        idle_timeout,
        ..*defaults
    })
}

/// A DNS listener's settings and DNS-over-TLS certificates, checked before anything
/// is bound.
pub(super) fn dns_start(section: &DnsSection) -> Result<bind::DnsStart, RunError> {
    let dot = section
        .tls
        .as_ref()
        .map(|tls| {
            let context = format!("gateway.dns {}", section.listen);
            Ok::<_, RunError>((
                tls.listen,
                certificate_resolver(&context, &tls.certificates)?,
            ))
        })
        .transpose()?;
    Ok((section.listen, dns_config(section)?, dot))
}
