//! The `tls:` section: TLS for ASAP and ENRP (RFC 5355), shared by every role of the
//! file. With it, every association this process opens or accepts is TLS with the
//! deployment CA, and the engines enforce what each peer's certificate grants.

use std::path::PathBuf;

use rserpool_proto::auth::PlainPeers;

use crate::transport::tls::TlsFiles;
use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ControlTlsSection {
    /// This role's certificate chain (PEM), leaf first (`rserpool cert issue`).
    pub(crate) cert: PathBuf,
    /// Its private key (PEM).
    pub(crate) key: PathBuf,
    /// The deployment CA's certificate (PEM): peers must chain to it.
    pub(crate) ca: PathBuf,
    /// What peers without a certificate may do: `refused` (the default),
    /// `pool_users` (resolve and report only) or `trusted` (everything: a downgrade for
    /// mixed deployments with peers that speak no TLS).
    #[serde(default = "refused", deserialize_with = "plain_peers")]
    pub(crate) plain: PlainPeers,
}

impl ControlTlsSection {
    /// A section for these files, with plain peers refused (the default).
    pub(crate) fn refusing_plain(files: TlsFiles) -> Self {
        Self {
            cert: files.cert,
            key: files.key,
            ca: files.ca,
            plain: PlainPeers::Refused,
        }
    }

    /// The files it names.
    pub(crate) fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
        }
    }
}

fn refused() -> PlainPeers {
    PlainPeers::Refused
}

pub(crate) fn parse_plain_peers(text: &str) -> Result<PlainPeers, String> {
    match text {
        "refused" => Ok(PlainPeers::Refused),
        "pool_users" => Ok(PlainPeers::PoolUsers),
        "trusted" => Ok(PlainPeers::Trusted),
        other => Err(format!(
            "plain {other:?}: use refused, pool_users or trusted"
        )),
    }
}

fn plain_peers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PlainPeers, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_plain_peers(&text).map_err(serde::de::Error::custom)
}
