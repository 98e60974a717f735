//! A connection to a PE as the HTTP gateway's client uses it: plain TCP, or TLS over
//! it for routes with `pe_tls`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A PE connection's byte stream.
pub(crate) enum PeStream {
    Plain(TcpStream),
    /// Boxed: a TLS session's state is large, and most routes are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl PeStream {
    /// False when an idle connection can no longer carry a request: the PE closed it
    /// or sent bytes nobody asked for. A plain socket is judged by the readiness the
    /// runtime already has (no system call); a TLS one is read without waiting, which
    /// also takes in what TLS sends on its own (session tickets) and a close_notify.
    pub(crate) fn still_open(&mut self) -> bool {
        let mut context = Context::from_waker(Waker::noop());
        match self {
            Self::Plain(stream) => stream.poll_read_ready(&mut context).is_pending(),
            Self::Tls(stream) => {
                let mut byte = [0u8; 1];
                let mut buffer = ReadBuf::new(&mut byte);
                Pin::new(stream)
                    .poll_read(&mut context, &mut buffer)
                    .is_pending()
            }
        }
    }
}

impl AsyncRead for PeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}
