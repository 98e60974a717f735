//! A minimum rate for request bodies: a client trickling its body (one byte every two
//! seconds) held a request, a connection slot and a PE connection for as long as it
//! liked. The body must bring at least `min_bytes` in every `window`, counted from the
//! request head; one that does not fails with [`TooSlow`] (the gateway answers 408).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::body::BoxError;

/// The body came slower than the minimum rate.
#[derive(Debug, thiserror::Error)]
#[error("request body slower than {min_bytes} bytes per {window:?}")]
pub(crate) struct TooSlow {
    min_bytes: u64,
    window: Duration,
}

/// A request body held to a minimum rate (`min_bytes` 0: no minimum).
pub(crate) struct MinRate<B> {
    inner: B,
    window: Duration,
    min_bytes: u64,
    /// Bytes in the current window, which ends when `timer` fires.
    received: u64,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> MinRate<B> {
    pub(crate) fn new(inner: B, min_bytes_per_second: u64, window: Duration) -> Self {
        let min_bytes = u64::try_from(u128::from(min_bytes_per_second) * window.as_millis() / 1000)
            .unwrap_or(u64::MAX);
        Self {
            inner,
            window,
            min_bytes,
            received: 0,
            timer: Box::pin(tokio::time::sleep(window)),
        }
    }

    /// A window ended: too little came, or the next window starts.
    fn window_ended(&mut self) -> Result<(), TooSlow> {
        if self.received < self.min_bytes {
            return Err(TooSlow {
                min_bytes: self.min_bytes,
                window: self.window,
            });
        }
        self.received = 0;
        let next = self.timer.deadline() + self.window;
        self.timer.as_mut().reset(next);
        Ok(())
    }
}

impl<B> Body for MinRate<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, |data| data.len() as u64);
                self.received = self.received.saturating_add(size);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|frame| frame.map_err(Into::into))),
            Poll::Pending if self.min_bytes == 0 => Poll::Pending,
            Poll::Pending => {
                while self.timer.as_mut().poll(cx).is_ready() {
                    if let Err(slow) = self.window_ended() {
                        return Poll::Ready(Some(Err(slow.into())));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields `chunk` bytes every `every`, forever.
    struct Trickle {
        chunk: usize,
        every: Duration,
        next: Pin<Box<tokio::time::Sleep>>,
    }

    fn trickle(chunk: usize, every: Duration) -> Trickle {
        Trickle {
            chunk,
            every,
            next: Box::pin(tokio::time::sleep(every)),
        }
    }

    impl Body for Trickle {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.next.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let at = self.next.deadline() + self.every;
            self.next.as_mut().reset(at);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.chunk])))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_fails_at_the_end_of_its_first_slow_window() {
        let mut body = MinRate::new(
            trickle(1, Duration::from_secs(2)),
            100,
            Duration::from_secs(10),
        );
        let started = tokio::time::Instant::now();
        let error = loop {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "a trickle passed"
            );
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(error)) => break error,
                None => panic!("the body ended"),
            }
        };
        assert!(error.is::<TooSlow>(), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_rate_passes_window_after_window() {
        let mut body = MinRate::new(
            trickle(600, Duration::from_secs(1)),
            500,
            Duration::from_secs(10),
        );
        let mut total = 0;
        while total < 60 * 600 {
            let frame = body.frame().await.unwrap().unwrap();
            total += frame.data_ref().map_or(0, Bytes::len);
        }
    }
}
