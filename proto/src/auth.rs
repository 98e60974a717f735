//! Who the peer of an association proved to be, and what that lets it do (RFC 5355;
//! the threats of RFC 5355 §3 are numbered as in docs/security.md).
//!
//! RSerPool messages carry no authentication of their own: a registrar ID, a PE
//! identifier or an H flag is believed only as far as the association it arrives on is
//! authenticated. The transport (mutual TLS in the daemon) proves an identity and hands
//! it to the engine with the association ([`crate::engine::PeerInfo`]); the engines ask
//! an [`Access`] whether that identity may do what a message asks.

use std::collections::BTreeSet;
use std::fmt;

use crate::wire::{PoolHandle, RegistrarId};

/// Pools an identity is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolGrant {
    /// Every pool.
    Any,
    /// These pools only.
    Pools(BTreeSet<PoolHandle>),
}

impl PoolGrant {
    /// Is `pool` granted?
    pub fn allows(&self, pool: &PoolHandle) -> bool {
        match self {
            Self::Any => true,
            Self::Pools(pools) => pools.contains(pool),
        }
    }
}

/// An authenticated identity: its name and the roles its certificate grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// A name for logs (the certificate's subject common name).
    pub name: String,
    /// A registrar, and the only registrar ID it may use (T5, T6, T7, T14).
    pub registrar: Option<RegistrarId>,
    /// A pool element, and the pools it may register into (T1, T2, T4).
    pub pool_element: Option<PoolGrant>,
    /// A pool user, and the pools it may resolve and report on (T13, T15).
    pub pool_user: Option<PoolGrant>,
    /// May read a registrar's whole handle table (ENRP HANDLE_TABLE_REQUEST and
    /// LIST_REQUEST, as `rserpool dump` and rsplib's hsdump send them) without being a
    /// registrar (T11: the table lists every PE's addresses).
    pub observer: bool,
}

/// What the transport proved about an association's peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Authentication {
    /// No certificate: a plain association (rsplib speaks no TLS).
    #[default]
    Unauthenticated,
    /// A certificate that chains to the deployment's CA.
    Authenticated(PeerIdentity),
}

impl Authentication {
    fn identity(&self) -> Option<&PeerIdentity> {
        match self {
            Self::Unauthenticated => None,
            Self::Authenticated(identity) => Some(identity),
        }
    }

    /// The identity's name, or `None` for a plain peer.
    pub fn name(&self) -> Option<&str> {
        self.identity().map(|identity| identity.name.as_str())
    }
}

impl fmt::Display for Authentication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthenticated => f.write_str("unauthenticated peer"),
            Self::Authenticated(identity) => write!(f, "{:?}", identity.name),
        }
    }
}

/// What peers without a certificate may do where identities are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum PlainPeers {
    /// Nothing: every peer needs a certificate.
    Refused,
    /// Resolve handles and report unreachable PEs (rsplib pool users), nothing else.
    PoolUsers,
    /// Everything, as without authentication (rsplib PEs and registrars): a security
    /// downgrade, for mixed deployments only. Identities still bind what they registered.
    Trusted,
}

/// Whether an engine enforces identities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "snake_case")
)]
pub enum Access {
    /// Every peer may do what the protocol allows (no TLS; RFC 5355's threats stand).
    #[default]
    Open,
    /// Every action needs an identity granted it; `plain` says what peers without one
    /// may do.
    Enforced {
        /// Peers without a certificate.
        plain: PlainPeers,
    },
}

/// Why an action was refused: a reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Access {
    /// What a plain peer may do, or `None` where identities are not enforced.
    fn plain(self, peer: &Authentication) -> Option<Result<(), PlainPeers>> {
        match (self, peer) {
            (Self::Open, _) => Some(Ok(())),
            (Self::Enforced { plain }, Authentication::Unauthenticated) => Some(Err(plain)),
            (Self::Enforced { .. }, Authentication::Authenticated(_)) => None,
        }
    }

    /// May `peer` register a PE into `pool` (T2, T4)?
    pub fn may_register(self, peer: &Authentication, pool: &PoolHandle) -> Result<(), Denied> {
        match self.plain(peer) {
            Some(Ok(()) | Err(PlainPeers::Trusted)) => Ok(()),
            Some(Err(_)) => Err(Denied("a PE needs a certificate".into())),
            None => match peer.identity().and_then(|i| i.pool_element.as_ref()) {
                Some(grant) if grant.allows(pool) => Ok(()),
                Some(_) => Err(Denied(format!("{peer} is not granted pool {pool}"))),
                None => Err(Denied(format!("{peer} is not a pool element"))),
            },
        }
    }

    /// May `peer` resolve `pool` and report its PEs unreachable (T13, T15)? PEs and
    /// registrars may: a PE resolves its own pool, rsplib registrars resolve too.
    pub fn may_resolve(self, peer: &Authentication, pool: &PoolHandle) -> Result<(), Denied> {
        match self.plain(peer) {
            Some(Ok(()) | Err(PlainPeers::Trusted | PlainPeers::PoolUsers)) => Ok(()),
            Some(Err(PlainPeers::Refused)) => Err(Denied("a pool user needs a certificate".into())),
            None => {
                let Some(identity) = peer.identity() else {
                    return Err(Denied("no identity".into()));
                };
                let granted = identity.registrar.is_some()
                    || [&identity.pool_user, &identity.pool_element]
                        .into_iter()
                        .flatten()
                        .any(|grant| grant.allows(pool));
                if granted {
                    Ok(())
                } else {
                    Err(Denied(format!("{peer} may not resolve pool {pool}")))
                }
            }
        }
    }

    /// May `peer` send ENRP messages as registrar `sender` (T5, T17)? Only a registrar
    /// whose certificate names that ID may.
    pub fn may_speak_for(self, peer: &Authentication, sender: RegistrarId) -> Result<(), Denied> {
        match self.plain(peer) {
            Some(Ok(()) | Err(PlainPeers::Trusted)) => Ok(()),
            Some(Err(_)) => Err(Denied("a registrar needs a certificate".into())),
            None => match peer.identity().and_then(|i| i.registrar) {
                Some(id) if id == sender => Ok(()),
                Some(id) => Err(Denied(format!("{peer} is registrar {id}, not {sender}"))),
                None => Err(Denied(format!("{peer} is not a registrar"))),
            },
        }
    }

    /// May `peer` read the handle table and the peer list (a registrar, or an
    /// observer such as `rserpool dump`)?
    pub fn may_read_table(self, peer: &Authentication, sender: RegistrarId) -> Result<(), Denied> {
        if peer.identity().is_some_and(|identity| identity.observer) {
            return Ok(());
        }
        self.may_speak_for(peer, sender)
    }

    /// Is `peer` a registrar (and, when `expected` is known, that one)? Asked by PEs
    /// and pool users of the registrars they reach and of a registrar that claims to be
    /// a PE's new home with the H flag (T6, T7, T14).
    pub fn is_registrar(
        self,
        peer: &Authentication,
        expected: Option<RegistrarId>,
    ) -> Result<(), Denied> {
        match self.plain(peer) {
            Some(Ok(()) | Err(PlainPeers::Trusted)) => Ok(()),
            Some(Err(_)) => Err(Denied("the registrar has no certificate".into())),
            None => match (peer.identity().and_then(|i| i.registrar), expected) {
                (None, _) => Err(Denied(format!("{peer} is not a registrar"))),
                (Some(id), Some(expected))
                    if id != expected && expected != RegistrarId::UNKNOWN =>
                {
                    Err(Denied(format!("{peer} is registrar {id}, not {expected}")))
                }
                (Some(_), _) => Ok(()),
            },
        }
    }

    /// May `peer` re-register a PE identifier that `registered_by` holds over another
    /// live association (T3, T8; security.md §3.1 item 6)? Between identities, only the
    /// same one may (from any host: a PE that moved); a plain peer never takes over an
    /// authenticated PE; between plain peers (and without identities), only from the
    /// same endpoint, address and port (the same PE on a new association).
    pub fn may_reregister(
        self,
        registered_by: &Authentication,
        peer: &Authentication,
        same_endpoint: bool,
    ) -> bool {
        match (self, registered_by.name(), peer.name()) {
            (Self::Enforced { .. }, Some(owner), Some(name)) => owner == name,
            (Self::Enforced { .. }, Some(_), None) => false,
            _ => same_endpoint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str) -> PoolHandle {
        PoolHandle::new(name.as_bytes()).unwrap_or(PoolHandle::MIN)
    }

    fn identity(name: &str) -> PeerIdentity {
        PeerIdentity {
            name: name.into(),
            registrar: None,
            pool_element: None,
            pool_user: None,
            observer: false,
        }
    }

    const ENFORCED: Access = Access::Enforced {
        plain: PlainPeers::Refused,
    };

    #[test]
    fn a_pe_registers_only_into_granted_pools() {
        let pe = Authentication::Authenticated(PeerIdentity {
            pool_element: Some(PoolGrant::Pools([pool("A")].into())),
            ..identity("pe-1")
        });
        assert!(ENFORCED.may_register(&pe, &pool("A")).is_ok());
        assert!(ENFORCED.may_register(&pe, &pool("B")).is_err());
        let user = Authentication::Authenticated(PeerIdentity {
            pool_user: Some(PoolGrant::Any),
            ..identity("gw")
        });
        assert!(ENFORCED.may_register(&user, &pool("A")).is_err());
        assert!(
            ENFORCED
                .may_register(&Authentication::Unauthenticated, &pool("A"))
                .is_err()
        );
        assert!(
            Access::Open
                .may_register(&Authentication::Unauthenticated, &pool("A"))
                .is_ok()
        );
    }

    #[test]
    fn a_registrar_speaks_only_for_the_id_in_its_certificate() {
        let registrar = Authentication::Authenticated(PeerIdentity {
            registrar: Some(RegistrarId(7)),
            ..identity("r7")
        });
        assert!(ENFORCED.may_speak_for(&registrar, RegistrarId(7)).is_ok());
        assert!(ENFORCED.may_speak_for(&registrar, RegistrarId(8)).is_err());
        let pe = Authentication::Authenticated(PeerIdentity {
            pool_element: Some(PoolGrant::Any),
            ..identity("pe")
        });
        assert!(ENFORCED.may_speak_for(&pe, RegistrarId(7)).is_err());
        assert!(ENFORCED.is_registrar(&pe, None).is_err());
        assert!(
            ENFORCED
                .is_registrar(&registrar, Some(RegistrarId(8)))
                .is_err()
        );
        assert!(ENFORCED.is_registrar(&registrar, None).is_ok());
    }

    #[test]
    fn plain_peers_get_what_the_deployment_allows() {
        let plain = Authentication::Unauthenticated;
        let users = Access::Enforced {
            plain: PlainPeers::PoolUsers,
        };
        assert!(users.may_resolve(&plain, &pool("A")).is_ok());
        assert!(users.may_register(&plain, &pool("A")).is_err());
        assert!(users.may_speak_for(&plain, RegistrarId(1)).is_err());
        assert!(ENFORCED.may_resolve(&plain, &pool("A")).is_err());
    }

    #[test]
    fn only_the_registering_identity_owns_a_pe() {
        let a = Authentication::Authenticated(identity("a"));
        let b = Authentication::Authenticated(identity("b"));
        let plain = Authentication::Unauthenticated;
        assert!(ENFORCED.may_reregister(&a, &a, false));
        assert!(!ENFORCED.may_reregister(&a, &b, true));
        assert!(!ENFORCED.may_reregister(&a, &plain, true));
        assert!(ENFORCED.may_reregister(&plain, &plain, true));
        assert!(!ENFORCED.may_reregister(&plain, &a, false));
        assert!(Access::Open.may_reregister(&plain, &plain, true));
        assert!(!Access::Open.may_reregister(&plain, &plain, false));
    }
}
