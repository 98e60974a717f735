//! The sans-IO RSerPool core (RFC 5351-5356).
//!
//! No sockets, no clock, no threads, no global randomness: callers pass bytes and
//! time in, and take bytes and timeouts out. See ../shared/ARCHITECTURE.md §2.

#![warn(clippy::indexing_slicing, missing_docs)]

pub mod wire;

pub use wire::{PoolElementId, PoolHandle, RegistrarId};
