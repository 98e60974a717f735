//! Identities in certificates: what a peer's certificate says it may do, written as
//! URI subject alternative names (a deployment convention; RFC 5355 leaves the form to
//! the deployment; docs/security.md):
//!
//! | URI | grants |
//! | --- | --- |
//! | `rserpool:registrar:0x0000abcd` | a registrar, speaking only as that registrar ID |
//! | `rserpool:pe:WebPool` (or `rserpool:pe:*`) | registering PEs into that pool (any pool) |
//! | `rserpool:pu:WebPool` (or `rserpool:pu:*`) | resolving that pool (any pool) |
//! | `rserpool:observer` | reading a registrar's handle table (`rserpool dump`) |
//!
//! Pool handles are percent-encoded where they hold bytes other than letters, digits
//! and `-._~`. The subject common name is the identity's name in logs.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use rserpool_proto::auth::{PeerIdentity, PoolGrant};
use rserpool_proto::wire::{PoolHandle, RegistrarId};
use x509_parser::extensions::GeneralName;

/// The scheme of every identity URI.
const SCHEME: &str = "rserpool:";

/// Why a certificate's identity cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("not an X.509 certificate: {0}")]
    Certificate(String),
    #[error("identity {uri:?}: {reason}")]
    Uri { uri: String, reason: String },
    #[error("the certificate names two registrar IDs ({0} and {1})")]
    TwoRegistrarIds(RegistrarId, RegistrarId),
}

fn uri_error(uri: &str, reason: impl Into<String>) -> IdentityError {
    IdentityError::Uri {
        uri: uri.to_owned(),
        reason: reason.into(),
    }
}

/// The identity a certificate (DER) proves, read from its `rserpool:` URIs.
pub(crate) fn identity_of(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Certificate(e.to_string()))?;
    let name = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("(no common name)")
        .to_owned();
    let mut identity = PeerIdentity {
        name,
        registrar: None,
        pool_element: None,
        pool_user: None,
        observer: false,
    };
    let names = certificate
        .subject_alternative_name()
        .map_err(|e| IdentityError::Certificate(e.to_string()))?;
    let uris = names.iter().flat_map(|extension| {
        extension
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
    });
    for uri in uris {
        if let Some(grant) = uri.strip_prefix(SCHEME) {
            apply(&mut identity, uri, grant)?;
        }
    }
    Ok(identity)
}

fn apply(identity: &mut PeerIdentity, uri: &str, grant: &str) -> Result<(), IdentityError> {
    let (kind, value) = grant.split_once(':').unwrap_or((grant, ""));
    match kind {
        "registrar" => {
            let id = crate::config::parse_id(value).map_err(|e| uri_error(uri, e))?;
            if let Some(other) = identity.registrar.filter(|other| *other != id) {
                return Err(IdentityError::TwoRegistrarIds(other, id));
            }
            identity.registrar = Some(id);
        }
        "pe" => add_pool(&mut identity.pool_element, value).map_err(|e| uri_error(uri, e))?,
        "pu" => add_pool(&mut identity.pool_user, value).map_err(|e| uri_error(uri, e))?,
        "observer" if value.is_empty() => identity.observer = true,
        _ => {
            return Err(uri_error(
                uri,
                "unknown grant (use registrar:ID, pe:POOL, pu:POOL or observer)",
            ));
        }
    }
    Ok(())
}

fn add_pool(grant: &mut Option<PoolGrant>, value: &str) -> Result<(), String> {
    if value == "*" {
        *grant = Some(PoolGrant::Any);
        return Ok(());
    }
    let handle = PoolHandle::new(&percent_decode(value)?).map_err(|e| e.to_string())?;
    match grant {
        Some(PoolGrant::Any) => {}
        Some(PoolGrant::Pools(pools)) => {
            pools.insert(handle);
        }
        None => *grant = Some(PoolGrant::Pools(BTreeSet::from([handle]))),
    }
    Ok(())
}

/// The URIs that grant an identity's roles (for issuing certificates).
pub(crate) fn uris(identity: &PeerIdentity) -> Vec<String> {
    let mut uris = Vec::new();
    if let Some(id) = identity.registrar {
        uris.push(format!("{SCHEME}registrar:{id}"));
    }
    for (kind, grant) in [("pe", &identity.pool_element), ("pu", &identity.pool_user)] {
        match grant {
            None => {}
            Some(PoolGrant::Any) => uris.push(format!("{SCHEME}{kind}:*")),
            Some(PoolGrant::Pools(pools)) => uris.extend(
                pools
                    .iter()
                    .map(|pool| format!("{SCHEME}{kind}:{}", percent_encode(pool.as_bytes()))),
            ),
        }
    }
    if identity.observer {
        uris.push(format!("{SCHEME}observer"));
    }
    uris
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            text.push(char::from(byte));
        } else {
            text.push_str(&format!("%{byte:02X}"));
        }
    }
    text
}

fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let digits = tail
                .get(..2)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {text:?}"))?;
            bytes.push(digits);
            rest = tail.get(2..).unwrap_or_default();
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    Ok(bytes)
}

/// When a certificate (DER) is valid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Validity {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

pub(crate) fn validity(der: &[u8]) -> Result<Validity, IdentityError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Certificate(e.to_string()))?;
    let at = |seconds: i64| {
        let offset = Duration::from_secs(seconds.unsigned_abs());
        if seconds >= 0 {
            SystemTime::UNIX_EPOCH + offset
        } else {
            SystemTime::UNIX_EPOCH - offset
        }
    };
    let validity = certificate.validity();
    Ok(Validity {
        not_before: at(validity.not_before.timestamp()),
        not_after: at(validity.not_after.timestamp()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_handles_survive_percent_encoding() {
        for handle in [&b"WebPool"[..], b"a b/c%", &[0, 255, 7]] {
            let encoded = percent_encode(handle);
            assert!(encoded.bytes().all(|b| b.is_ascii_graphic()), "{encoded}");
            assert_eq!(percent_decode(&encoded).ok().as_deref(), Some(handle));
        }
        assert!(percent_decode("%G1").is_err());
        assert!(percent_decode("abc%4").is_err());
    }
}
