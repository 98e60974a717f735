//! The registrar ("ENRP server"): the ASAP server side (RFC 5352 §3.1-3.5, §3.7) and the
//! handle-table responder of ENRP (RFC 5353 §3.2.3).
//!
//! It owns a [`Handlespace`](crate::handlespace::Handlespace). PEs register over an association; the registrar checks
//! them (security.md §3), supervises the PEs it owns with keep-alives, answers handle
//! resolutions with the pool's policy, counts unreachability reports, announces itself,
//! and drops everything registered over an association that goes down.

mod asap;
mod carry;
mod config;
mod discovery;
mod engine;
mod enrp;
mod events;
mod peers;
mod quota;
mod stats;
mod sync;
mod takeover;

pub use carry::Adopted;
pub use config::RegistrarConfig;
pub use engine::RegistrarEngine;
pub use events::{RegistrarEvent, RemovalReason};
pub use peers::{PeerStanding, PeerStatus};
pub use stats::{ENRP_TYPE_NAMES, RegistrarStats};
