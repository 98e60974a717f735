//! The contract between the protocol engines and the driver that runs them
//! (ARCHITECTURE.md §2).

use std::fmt;

/// An association as the driver numbers it: an SCTP association, or one connection of
/// the TCP mapping. The engines only compare and store these; the driver maps them to
/// sockets.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssocId(pub u64);

impl fmt::Debug for AssocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssocId({})", self.0)
    }
}

impl fmt::Display for AssocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "assoc#{}", self.0)
    }
}
