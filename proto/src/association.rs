//! Association identifiers: the one type the handlespace (which records where a PE
//! registered) and the engines share, at the bottom of the crate so that the
//! handlespace need not reach up into the engine contract.

use std::fmt;

/// An association as the driver numbers it: an SCTP association, or one connection of
/// the TCP mapping.
///
/// The driver numbers the associations it accepts from 1 upwards; an engine numbers the
/// ones it asks the driver to open from [`AssocId::FIRST_OUTGOING`] upwards, so the two
/// never collide.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssocId(pub u64);

impl AssocId {
    /// The first identifier an engine gives to an association it opens.
    pub const FIRST_OUTGOING: u64 = 1 << 63;
}

impl fmt::Debug for AssocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssocId({})", self.0)
    }
}

impl fmt::Display for AssocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= Self::FIRST_OUTGOING {
            write!(f, "assoc#out{}", self.0 - Self::FIRST_OUTGOING)
        } else {
            write!(f, "assoc#{}", self.0)
        }
    }
}

/// Hands out identifiers for outgoing associations.
#[derive(Debug, Clone)]
pub(crate) struct AssocIds(u64);

impl Default for AssocIds {
    fn default() -> Self {
        Self(AssocId::FIRST_OUTGOING)
    }
}

impl AssocIds {
    pub(crate) fn next(&mut self) -> AssocId {
        let id = AssocId(self.0);
        self.0 = self.0.wrapping_add(1).max(AssocId::FIRST_OUTGOING);
        id
    }
}
