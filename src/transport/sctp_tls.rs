//! TLS over kernel SCTP, in RFC 3436's model: one TLS session runs over the
//! association as an ordered byte stream. Each piece TLS writes goes out as one SCTP
//! user message on stream 0, ordered, with the protocol's PPID (11 ASAP, 12 ENRP: the
//! PPID stays what the association carries, as RFC 3436 leaves it unprotected); what
//! arrives is concatenated in order. Inside the session, ASAP and ENRP messages are cut
//! out by their length fields, as on the TCP mapping, so the carrier above is the TCP
//! mapping's (`tcp::run_session`).
//!
//! Every peer of such an endpoint speaks TLS: telling a plain SCTP peer apart would
//! need its first message held back and replayed, which nothing needs yet (rsplib,
//! the plain peer there is, speaks no TLS anyway: a deployment that must take it runs
//! SCTP without the `tls:` section).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::sctp::{Association, MAX_MESSAGE, Received};

type Pending<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

/// The largest SCTP message one write sends (a TLS record and its header fit).
const MAX_WRITE: usize = 16 * 1024 + 256;

/// An SCTP association seen as a byte stream.
pub(crate) struct SctpStream {
    association: Arc<Association>,
    ppid: u32,
    /// The rest of the last message received.
    unread: Vec<u8>,
    consumed: usize,
    receiving: Option<Pending<Received>>,
    /// A send under way and how many bytes of the caller's buffer it carries.
    sending: Option<(Pending<()>, usize)>,
    ended: bool,
}

impl SctpStream {
    pub(crate) fn new(association: Arc<Association>, ppid: u32) -> Self {
        Self {
            association,
            ppid,
            unread: Vec::new(),
            consumed: 0,
            receiving: None,
            sending: None,
            ended: false,
        }
    }
}

impl AsyncRead for SctpStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if let Some(rest) = this.unread.get(this.consumed..).filter(|r| !r.is_empty()) {
                let count = rest.len().min(buf.remaining());
                buf.put_slice(rest.get(..count).unwrap_or_default());
                this.consumed += count;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            let association = this.association.clone();
            let receiving = this.receiving.get_or_insert_with(|| {
                Box::pin(async move { association.receive(MAX_MESSAGE).await })
            });
            let received = ready!(receiving.as_mut().poll(cx));
            this.receiving = None;
            match received? {
                // Only the association's own protocol carries the session.
                Received::Message { ppid, payload } if ppid == this.ppid => {
                    this.unread = payload;
                    this.consumed = 0;
                }
                Received::Message { .. } => {}
                Received::Closed(_) => this.ended = true,
            }
        }
    }
}

impl AsyncWrite for SctpStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // A caller that got `Pending` writes the same bytes again: the send under way
        // carries them.
        let (sending, count) = this.sending.get_or_insert_with(|| {
            let count = buf.len().min(MAX_WRITE);
            let message = buf.get(..count).unwrap_or_default().to_vec();
            let association = this.association.clone();
            let ppid = this.ppid;
            let send: Pending<()> = Box::pin(async move { association.send(ppid, &message).await });
            (send, count)
        });
        let count = *count;
        let sent = ready!(sending.as_mut().poll(cx));
        this.sending = None;
        Poll::Ready(sent.map(|()| count))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Every write is a message handed to the kernel already.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.association.shutdown();
        Poll::Ready(Ok(()))
    }
}
