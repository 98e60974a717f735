//! How the TCP gateway reaches a PE whose user transport is SCTP. This crate holds no
//! SCTP socket code: whoever runs the gateway supplies the connector (the daemon's
//! opens the association and translates on a task of its own); without one, SCTP PEs
//! are unreachable. Resolving pools ([`Directory`](crate::Directory)) is a separate
//! trait: the HTTP and DNS gateways need only that.
//!
//! The stream handed over is a local socket: the TCP session relays with readiness
//! and non-blocking socket calls (no extra task on the fast path), which needs a file
//! descriptor on both sides; an SCTP session, which exists for interoperability, pays
//! a socket pair for keeping that one code path.

use std::future::Future;

use rserpool_proto::wire::PoolElement;
use tokio::net::UnixStream;

use crate::tcp::SctpUpstream;

/// Opens sessions to SCTP pool elements.
pub trait SctpConnector: Send + Sync + 'static {
    /// Opens an association to `pe` and hands it over as a local byte stream in
    /// the session layer's TCP encoding (control-channel frames when the PE registered
    /// "data plus control", else the plain data), cutting client bytes into messages
    /// as `upstream` says.
    fn connect_sctp(
        &self,
        pe: &PoolElement,
        upstream: SctpUpstream,
    ) -> impl Future<Output = std::io::Result<UnixStream>> + Send {
        let _ = (pe, upstream);
        async {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "this gateway cannot reach SCTP pool elements",
            ))
        }
    }
}
