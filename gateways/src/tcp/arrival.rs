//! A session that the previous process handed over (a binary upgrade) taken on by this
//! one: its record thawed, its sockets taken, and driven on as if it had started here.

use std::io;

use tokio_util::sync::CancellationToken;

use super::framing::FramingCheck;
use super::handover::DriverState;
use super::session::{Driven, Ends, Listener, drive};
use super::side::{Side, Stream};
use crate::handover::Handed;
use crate::{Directory, SctpConnector};
use rserpool_proto::session::Session;

/// Runs a session the previous process handed over, on this listener.
pub(super) async fn run_arrived<D: Directory + SctpConnector>(
    handed: Handed,
    listener: &Listener<D>,
    shutdown: CancellationToken,
    table: &crate::SessionTable,
) {
    let (mut driven, state) = match thaw(handed, listener) {
        Ok(thawed) => thawed,
        Err(error) => {
            listener.meters.handover_failures.increment(1);
            tracing::warn!(pool = %listener.pool, %error, "upgrade: a session handed over could not be taken on: closing it");
            return;
        }
    };
    listener.meters.arrived.increment(1);
    let started = (state.started(crate::now()), state.failovers);
    let pool = driven.session.pool_handle();
    let entry = table.open_since(listener.config.listen, pool, state.peer, started);
    if let Some(pe) = driven.session.current_pe() {
        entry.started(pe);
        driven.ends.place = listener.open_sessions.as_ref().map(|s| s.open(pe));
    }
    // Unconstrained as in `run_session`.
    tokio::task::unconstrained(drive(driven, state.peer, listener, shutdown, &entry)).await;
}

/// A handed-over session made ready to drive here.
fn thaw<'a, D>(
    handed: Handed,
    listener: &'a Listener<D>,
) -> Result<(Box<Driven<'a>>, DriverState), ThawError> {
    let mut state = DriverState::decode(&handed.record)?;
    let config = &listener.config;
    let session = Session::thaw(&state.session, config.session.clone(), crate::now())?;
    let [client, pe] = <[_; 2]>::try_from(handed.sockets).map_err(|_| ThawError::Sockets)?;
    let mut ends = Ends::new(crate::handover::tcp_stream(client)?);
    let mut pe = Side::new(Stream::Tcp(crate::handover::tcp_stream(pe)?));
    std::mem::take(&mut state.client).restore(&mut ends.client);
    std::mem::take(&mut state.pe).restore(&mut pe);
    ends.pe = Some(pe);
    ends.pe_answered = state.pe_answered;
    ends.offered = usize::try_from(state.offered).unwrap_or(0);
    let framing = config.sctp.framing.map(|framing| {
        let mut check = FramingCheck::new(framing);
        if let Some((header, remaining)) = state.framing.take()
            && header.len() < framing.header()
            && remaining <= framing.max_message as u64
        {
            check.header = header;
            check.remaining = remaining as usize;
        }
        check
    });
    let driven = Box::new(Driven {
        session,
        ends,
        framing,
    });
    Ok((driven, state))
}

/// Why a handed-over session could not be taken on.
#[derive(Debug, thiserror::Error)]
enum ThawError {
    #[error(transparent)]
    Record(#[from] rserpool_proto::snapshot::SnapshotError),
    #[error("its socket: {0}")]
    Socket(#[from] io::Error),
    #[error("not the two sockets of a session")]
    Sockets,
}
