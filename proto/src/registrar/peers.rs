//! The ENRP peer table: which registrars this one peers with, and where each stands
//! (RFC 5353 §3.4-3.5).
//!
//! A registrar named by someone else (a LIST_RESPONSE, a multicast presence) is only a
//! *candidate*: it is not listed to other registrars, not waited for in a takeover, and
//! it is forgotten if it never answers over an association. A candidate becomes *up*
//! when its own presence arrives over an association; silence makes an up peer
//! *probed*, and a probe without an answer starts a takeover (if it owned PEs) or
//! forgets it. The table is bounded, but a registrar that speaks over an association is
//! never refused for the sake of candidates or silent entries: those are evicted first.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::engine::{AssocId, Endpoint};
use crate::handlespace::PoolElementKey;
use crate::wire::RegistrarId;

/// Where a peer stands, as reported to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStanding {
    /// Configured or named by another registrar, not heard from yet.
    Candidate,
    /// Heard recently.
    Up,
    /// Silent: asked to answer.
    Probing,
    /// Being taken over by this registrar.
    TakingOver,
    /// Being taken over by another registrar.
    TakenOverByOther,
}

impl PeerStanding {
    /// The name used in status pages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Candidate => "candidate",
            Self::Up => "up",
            Self::Probing => "probing",
            Self::TakingOver => "taking_over",
            Self::TakenOverByOther => "taken_over_by_other",
        }
    }
}

/// A peer as reported to operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its ID (0: a configured peer not heard from yet).
    pub id: RegistrarId,
    /// Its ENRP endpoint, if known.
    pub endpoint: Option<Endpoint>,
    /// Configured (never forgotten) or discovered.
    pub is_static: bool,
    /// Where it stands.
    pub standing: PeerStanding,
    /// An association to it is up.
    pub connected: bool,
    /// PEs it owns in this handlespace.
    pub pool_elements: usize,
}

impl From<&Standing> for PeerStanding {
    fn from(standing: &Standing) -> Self {
        match standing {
            Standing::Candidate { .. } => Self::Candidate,
            Standing::Up { .. } => Self::Up,
            Standing::Probing { .. } => Self::Probing,
            Standing::TakingOver { .. } => Self::TakingOver,
            Standing::TakenOverBy { .. } => Self::TakenOverByOther,
        }
    }
}

/// Where a peer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Standing {
    /// Not heard from over an association yet. Configured peers never expire
    /// (`expires` None); named ones are dropped at `expires`.
    Candidate { expires: Option<Instant> },
    /// Heard; silence until `probe_at` turns into a probe (MAX-TIME-LAST-HEARD).
    Up { probe_at: Instant },
    /// Sent a presence with the R flag; no answer by `deadline` (MAX-TIME-NO-RESPONSE)
    /// starts a takeover or forgets the peer.
    Probing { deadline: Instant },
    /// This registrar is taking the peer over; `waiting` have not acknowledged. At
    /// `expires` the takeover is abandoned and the peer probed again, so a takeover
    /// that stalled is retried while the peer stays silent.
    TakingOver {
        waiting: BTreeSet<RegistrarId>,
        expires: Instant,
    },
    /// Another registrar is taking the peer over (this one acknowledged). If its
    /// TAKEOVER_SERVER has not come by `deadline`, this registrar probes again itself.
    TakenOverBy {
        initiator: RegistrarId,
        deadline: Instant,
    },
}

impl Standing {
    /// The next time this standing changes by itself.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Self::Candidate { expires } => *expires,
            Self::Up { probe_at } => Some(*probe_at),
            Self::Probing { deadline } | Self::TakenOverBy { deadline, .. } => Some(*deadline),
            Self::TakingOver { expires, .. } => Some(*expires),
        }
    }

    pub(super) fn is_takeover(&self) -> bool {
        matches!(self, Self::TakingOver { .. } | Self::TakenOverBy { .. })
    }

    /// Up or being probed: a registrar that answered over an association and is not
    /// known to be dead; the only peers listed to others.
    pub(super) fn is_live(&self) -> bool {
        matches!(self, Self::Up { .. } | Self::Probing { .. })
    }
}

/// The association messages to a peer go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    None,
    /// Being opened by this registrar.
    Connecting(AssocId),
    /// Up: the association the peer's presence came over, or the one opened to it.
    Bound(AssocId),
}

impl Link {
    pub(super) fn bound(self) -> Option<AssocId> {
        match self {
            Self::Bound(assoc) => Some(assoc),
            Self::None | Self::Connecting(_) => None,
        }
    }
}

/// Whether the peer's list of registrars was asked for; a LIST_RESPONSE nobody asked
/// for is ignored (it would make this registrar connect to whatever it names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ListExchange {
    NotAsked,
    Asked,
    Answered,
}

/// A running W = 1 download of a peer's own PEs (audit).
#[derive(Debug, Clone)]
pub(super) struct Audit {
    /// PEs the peer owned here when the audit began and has not listed yet.
    pub(super) marked: BTreeSet<PoolElementKey>,
    pub(super) deadline: Instant,
}

/// One registrar this one peers with.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    /// [`RegistrarId::UNKNOWN`] until heard from (configured peers).
    pub(super) id: RegistrarId,
    pub(super) endpoint: Option<Endpoint>,
    pub(super) is_static: bool,
    pub(super) link: Link,
    pub(super) standing: Standing,
    pub(super) list: ListExchange,
    pub(super) audit: Option<Audit>,
}

impl Peer {
    /// A configured peer (never expires, its ID learned when it answers).
    pub(super) fn configured(endpoint: Endpoint) -> Self {
        Self::new(
            RegistrarId::UNKNOWN,
            Some(endpoint),
            true,
            Standing::Candidate { expires: None },
        )
    }

    /// A registrar named by another, or heard by multicast, until `expires`.
    pub(super) fn candidate(id: RegistrarId, endpoint: Option<Endpoint>, expires: Instant) -> Self {
        Self::new(
            id,
            endpoint,
            false,
            Standing::Candidate {
                expires: Some(expires),
            },
        )
    }

    /// A registrar whose presence came over an association.
    pub(super) fn heard(id: RegistrarId, endpoint: Option<Endpoint>, probe_at: Instant) -> Self {
        Self::new(id, endpoint, false, Standing::Up { probe_at })
    }

    fn new(
        id: RegistrarId,
        endpoint: Option<Endpoint>,
        is_static: bool,
        standing: Standing,
    ) -> Self {
        Self {
            id,
            endpoint,
            is_static,
            link: Link::None,
            standing,
            list: ListExchange::NotAsked,
            audit: None,
        }
    }

    /// Back to what it was before it was ever heard (a configured peer that died).
    pub(super) fn reset(&mut self) {
        self.standing = Standing::Candidate { expires: None };
        self.list = ListExchange::NotAsked;
        self.audit = None;
    }
}

/// The entry a registrar that just spoke over an association may replace in a full
/// table: a named candidate first (the oldest named), then a silent discovered peer
/// without an association that owns nothing here. None: every entry is configured, up
/// or holds PEs, and the newcomer is refused.
pub(super) fn evictable(
    peers: &[Peer],
    owns_pool_elements: impl Fn(RegistrarId) -> bool,
) -> Option<usize> {
    let candidate = peers
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_static)
        .filter_map(|(index, p)| match p.standing {
            Standing::Candidate { expires: Some(at) } => Some((at, index)),
            _ => None,
        })
        .min()
        .map(|(_, index)| index);
    candidate.or_else(|| {
        peers.iter().position(|p| {
            !p.is_static
                && p.link == Link::None
                && matches!(p.standing, Standing::Probing { .. })
                && !owns_pool_elements(p.id)
        })
    })
}

/// The peers a takeover of `target` waits for: up, with an association, and neither
/// the target nor `me`.
pub(super) fn takeover_witnesses(
    peers: &[Peer],
    target: RegistrarId,
    me: RegistrarId,
) -> BTreeSet<RegistrarId> {
    peers
        .iter()
        .filter(|p| matches!(p.standing, Standing::Up { .. }) && p.link.bound().is_some())
        .map(|p| p.id)
        .filter(|id| *id != RegistrarId::UNKNOWN && *id != target && *id != me)
        .collect()
}
