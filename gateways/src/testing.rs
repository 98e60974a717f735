//! What the crate's unit tests share.

use std::io;

use rserpool_proto::wire::{PoolElement, PoolElementId, PoolHandle};
use tokio::net::UnixStream;

use crate::tcp::SctpUpstream;
use crate::{Directory, DirectoryError, SctpConnector};

/// A directory that knows no pool and reaches no SCTP PE.
pub(crate) struct NoPool;

impl Directory for NoPool {
    async fn resolve(
        &self,
        _: PoolHandle,
        _: Option<u32>,
    ) -> Result<Vec<PoolElement>, DirectoryError> {
        Err(DirectoryError::UnknownPool)
    }

    async fn report_unreachable(&self, _: PoolHandle, _: PoolElementId) {}
}

impl SctpConnector for NoPool {
    async fn connect_sctp(&self, _: &PoolElement, _: SctpUpstream) -> io::Result<UnixStream> {
        Err(io::Error::other("no SCTP here"))
    }
}
