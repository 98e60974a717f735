//! Time limits for the client connections hyper serves (HTTP/2, and HTTP/1 requests
//! the fast path hands over): a connection must bring its first request within the
//! header timeout (a partial HTTP/2 preface, or a preface and nothing else, is
//! closed), and one with no byte either way and no request waiting for its response
//! head for the idle timeout is closed (GOAWAY first). hyper's own HTTP/2 keep-alive
//! only detects dead peers: a live client that never sends a request keeps its slot.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection has done, shared by its byte stream, its request handler and its
/// watchdog.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    /// Nanoseconds after `start` of the last byte read or written.
    last_byte: AtomicU64,
    /// Requests received so far.
    requests: AtomicU64,
    /// Requests waiting for their response head.
    waiting: AtomicUsize,
}

/// Why a connection is to be closed, or when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Live {
        check_at: Instant,
    },
    /// No request within the header timeout.
    NoRequest,
    /// Nothing either way for the idle timeout.
    Idle,
}

impl Activity {
    pub(crate) fn new(now: Instant) -> Arc<Self> {
        Arc::new(Self {
            start: now,
            last_byte: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let since_start = crate::now().saturating_duration_since(self.start);
        let nanos = u64::try_from(since_start.as_nanos()).unwrap_or(u64::MAX);
        self.last_byte.store(nanos, Ordering::Relaxed);
    }

    /// When a byte last went either way (or the connection began).
    pub(crate) fn last_byte(&self) -> Instant {
        self.start + Duration::from_nanos(self.last_byte.load(Ordering::Relaxed))
    }

    /// A request arrived; the guard marks it waiting until its response head is out.
    pub(crate) fn request(self: &Arc<Self>) -> WaitingRequest {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingRequest(self.clone())
    }

    pub(crate) fn verdict(
        &self,
        now: Instant,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Verdict {
        if self.requests.load(Ordering::Relaxed) == 0 {
            let deadline = self.start + header_timeout;
            return if now >= deadline {
                Verdict::NoRequest
            } else {
                Verdict::Live { check_at: deadline }
            };
        }
        if self.waiting.load(Ordering::Relaxed) > 0 {
            return Verdict::Live {
                check_at: now + idle_timeout,
            };
        }
        let deadline = self.last_byte() + idle_timeout;
        if now >= deadline {
            Verdict::Idle
        } else {
            Verdict::Live { check_at: deadline }
        }
    }
}

/// A request waiting for its response head; dropping it ends the wait (and counts as
/// activity: the response starts now).
pub(crate) struct WaitingRequest(Arc<Activity>);

impl Drop for WaitingRequest {
    fn drop(&mut self) {
        self.0.touch();
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A byte stream that records when bytes move.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn a_connection_without_a_request_ends_at_the_header_timeout() {
        let start = crate::now();
        let activity = Activity::new(start);
        activity.touch();
        assert_eq!(
            activity.verdict(start + Duration::from_secs(5), HEADER, IDLE),
            Verdict::Live {
                check_at: start + HEADER
            }
        );
        assert_eq!(
            activity.verdict(start + HEADER, HEADER, IDLE),
            Verdict::NoRequest
        );
    }

    #[test]
    fn idle_counts_from_the_last_byte_and_not_while_a_request_waits() {
        let start = crate::now();
        let activity = Activity::new(start);
        let waiting = activity.request();
        let later = start + Duration::from_secs(300);
        assert!(matches!(
            activity.verdict(later, HEADER, IDLE),
            Verdict::Live { .. }
        ));
        drop(waiting);
        let after_response = crate::now();
        assert!(matches!(
            activity.verdict(after_response + IDLE - Duration::from_secs(1), HEADER, IDLE),
            Verdict::Live { .. }
        ));
        assert_eq!(
            activity.verdict(after_response + IDLE + Duration::from_secs(1), HEADER, IDLE),
            Verdict::Idle
        );
    }
}
