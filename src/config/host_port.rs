//! Addresses as a configuration or a command line gives them: `ADDRESS:PORT`, or
//! `HOST:PORT` that the system resolver turns into an address when the role starts.
//! Reading a file or a flag never waits for a resolver; a role that starts resolves
//! with a bounded retry (in Kubernetes, a StatefulSet's other pods get their names as
//! they start).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// How long a name that does not resolve yet is retried when a role starts.
pub(crate) const NAME_RESOLUTION_WAIT: Duration = Duration::from_secs(30);

/// The pause between two tries, and the longest one lookup may take.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// An address as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostPort {
    Address(SocketAddr),
    Name { host: String, port: u16 },
}

impl HostPort {
    /// `text` as `ADDRESS[:PORT]` or `HOST[:PORT]`, with `port` when it names none.
    pub(crate) fn with_default_port(text: &str, port: u16) -> Result<Self, String> {
        if let Ok(parsed) = text.parse() {
            return Ok(parsed);
        }
        if let Ok(ip) = text.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            return Ok(Self::Address(SocketAddr::new(ip, port)));
        }
        match text.rsplit_once(':') {
            Some((_, given)) if given.parse::<u16>().is_ok() => text.parse(),
            _ => format!("{text}:{port}").parse(),
        }
    }

    /// The first address the name resolves to, retried for [`NAME_RESOLUTION_WAIT`].
    pub(crate) async fn resolve(&self) -> Result<SocketAddr, String> {
        self.resolve_within(NAME_RESOLUTION_WAIT).await
    }

    async fn resolve_within(&self, wait: Duration) -> Result<SocketAddr, String> {
        let (host, port) = match self {
            Self::Address(address) => return Ok(*address),
            Self::Name { host, port } => (host.as_str(), *port),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let last =
                match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
                    .await
                {
                    Ok(Ok(mut found)) => match found.next() {
                        Some(address) => return Ok(address),
                        None => "no address".to_owned(),
                    },
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer within {LOOKUP_TIMEOUT:?}"),
                };
            if tokio::time::Instant::now() + RETRY_PAUSE > deadline {
                return Err(format!(
                    "{self}: the name does not resolve after {wait:?} ({last})"
                ));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Every address of `list`, resolved in order within one [`NAME_RESOLUTION_WAIT`] for
/// the whole list (the first failure ends it).
pub(crate) async fn resolve_all(list: &[HostPort]) -> Result<Vec<SocketAddr>, String> {
    let deadline = tokio::time::Instant::now() + NAME_RESOLUTION_WAIT;
    let mut addresses = Vec::with_capacity(list.len());
    for entry in list {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        addresses.push(entry.resolve_within(left).await?);
    }
    Ok(addresses)
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(address) = text.parse() {
            return Ok(Self::Address(address));
        }
        let (host, port) = text
            .rsplit_once(':')
            .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            .ok_or_else(|| format!("{text:?} is not ADDRESS:PORT or HOST:PORT"))?;
        let valid_host = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !valid_host {
            return Err(format!("{text:?}: {host:?} is not a host name"));
        }
        Ok(Self::Name {
            host: host.to_owned(),
            port: port.parse().map_err(|_| format!("{text:?}: bad port"))?,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(address) => address.fmt(f),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for HostPort {
    fn from(address: SocketAddr) -> Self {
        Self::Address(address)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_parse_without_a_resolver() {
        assert_eq!(
            "127.0.0.1:3863".parse::<HostPort>(),
            Ok(HostPort::Address("127.0.0.1:3863".parse().unwrap()))
        );
        assert_eq!(
            "registrar-1.pool.svc:3863".parse::<HostPort>(),
            Ok(HostPort::Name {
                host: "registrar-1.pool.svc".into(),
                port: 3863
            })
        );
        assert!("no-port".parse::<HostPort>().is_err());
        assert!(":3863".parse::<HostPort>().is_err());
        assert!("bad host:3863".parse::<HostPort>().is_err());
        assert_eq!(
            HostPort::with_default_port("monitor", 2960).map(|h| h.to_string()),
            Ok("monitor:2960".to_owned())
        );
        assert_eq!(
            HostPort::with_default_port("::1", 2960),
            Ok(HostPort::Address("[::1]:2960".parse().unwrap()))
        );
    }

    /// Real time: the system resolver runs on a blocking thread, which paused time
    /// does not govern.
    #[tokio::test]
    async fn a_name_is_retried_for_the_wait_then_given_up() {
        let wait = Duration::from_millis(1200);
        let started = tokio::time::Instant::now();
        let name = HostPort::Name {
            host: "no-such-host.invalid".into(),
            port: 1,
        };
        let error = name.resolve_within(wait).await.unwrap_err();
        assert!(error.contains("does not resolve after 1.2s"), "{error}");
        assert!(
            started.elapsed() >= wait - RETRY_PAUSE,
            "retried until the wait ran out"
        );
        assert!(started.elapsed() <= wait + LOOKUP_TIMEOUT);
        let local = HostPort::Name {
            host: "localhost".into(),
            port: 3863,
        };
        let address = local.resolve_within(wait).await.unwrap();
        assert!(address.ip().is_loopback() && address.port() == 3863);
    }
}
