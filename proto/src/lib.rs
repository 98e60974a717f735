//! The sans-IO RSerPool core (RFC 5351-5356).
//!
//! No sockets, no clock, no threads, no global randomness: callers pass bytes, time and
//! a seed in, and take bytes and timeouts out. See docs/architecture.md.

#![forbid(unsafe_code)]
#![warn(clippy::indexing_slicing, missing_docs)]

mod association;
pub mod auth;
mod client;
pub mod csp;
pub mod engine;
pub mod handlespace;
pub mod hunt;
pub mod policy;
pub mod pool_element;
pub mod pool_user;
pub mod rate;
pub mod registrar;
mod resolution_cache;
pub mod rng;
pub mod session;
pub mod snapshot;
pub mod wire;

pub use engine::AssocId;
pub use handlespace::{Handlespace, PoolElementKey};
pub use rng::SeededRng;
pub use wire::{PoolElementId, PoolHandle, RegistrarId};
