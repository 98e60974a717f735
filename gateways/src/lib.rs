//! Legacy-facing front ends (the pool-user side of rserpool): the TCP, HTTP and DNS
//! gateways. They see pools only through the pool user, never through sockets of
//! their own to registrars (../shared/ARCHITECTURE.md §1).
//!
//! The gateways themselves are not built yet; this package holds their place in the
//! dependency graph (`rserpool -> rserpool-gateways -> rserpool-proto`).
