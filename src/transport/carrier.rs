//! The contract between carrier tasks and the driver: the events a carrier reports
//! ([`Incoming`]), the driver's end of an association ([`Link`]), and the write loop
//! every carrier runs for an association's outgoing messages.

use std::io;
use std::net::SocketAddr;

use rserpool_proto::engine::{AssocId, PeerInfo};
use rserpool_proto::wire::Protocol;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Messages queued for one association before it counts as stuck and is closed.
pub(crate) const SEND_QUEUE: usize = 1024;

/// What carrier tasks tell the driver.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// An association is up (accepted, or one the engine asked for).
    Opened {
        assoc: AssocId,
        peer: PeerInfo,
        link: Link,
    },
    /// An association the engine asked for could not be opened.
    Failed { assoc: AssocId, reason: String },
    /// An association ended (peer closed, reset, broken framing).
    Closed { assoc: AssocId, reason: String },
    /// A message arrived.
    Message(Arrived),
    /// A multicast datagram arrived.
    Datagram(Heard),
}

/// A message that arrived on an association.
#[derive(Debug)]
pub(crate) struct Arrived {
    pub(crate) assoc: AssocId,
    pub(crate) protocol: Protocol,
    pub(crate) payload: Vec<u8>,
}

/// A datagram heard on a multicast channel.
#[derive(Debug)]
pub(crate) struct Heard {
    pub(crate) from: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) payload: Vec<u8>,
}

/// The driver's end of one association: its send queue, and the token that closes it.
/// Closing (cancel, then drop the link) flushes the queue first.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) sender: mpsc::Sender<Vec<u8>>,
    pub(crate) cancel: CancellationToken,
}

/// Tells the driver an association is up; returns the association's send queue and
/// the token the driver cancels to close it (`None`: the driver is gone).
pub(crate) async fn report_opened(
    assoc: AssocId,
    peer: PeerInfo,
    incoming: &mpsc::Sender<Incoming>,
) -> Option<(mpsc::Receiver<Vec<u8>>, CancellationToken)> {
    let (sender, outgoing) = mpsc::channel::<Vec<u8>>(SEND_QUEUE);
    let closed_locally = CancellationToken::new();
    let link = Link {
        sender,
        cancel: closed_locally.clone(),
    };
    incoming
        .send(Incoming::Opened { assoc, peer, link })
        .await
        .ok()?;
    Some((outgoing, closed_locally))
}

/// How long one message may wait for a peer that does not read (and a closing
/// association for its queue to drain).
pub(crate) const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Where a carrier writes an association's messages.
pub(crate) trait MessageSink {
    /// Sends one message; `more` says another is queued behind it already (a sink may
    /// hold this one to send both together, provided a send with `more` false sends
    /// everything held).
    fn send(&mut self, message: &[u8], more: bool) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the sending side gracefully (FIN, SHUTDOWN) after what was sent.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// Sends what the driver queues for an association until the driver drops the link
/// (then every queued message is out and the sink is finished), the association is
/// aborted, or a send fails or stalls past [`WRITE_TIMEOUT`].
pub(crate) async fn write_loop(
    assoc: AssocId,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    mut sink: impl MessageSink,
    abort: CancellationToken,
) {
    // Waited on across iterations (registering anew takes the token's lock twice).
    let aborting = abort.cancelled();
    tokio::pin!(aborting);
    loop {
        let message = tokio::select! {
            () = &mut aborting => return,
            message = outgoing.recv() => message,
        };
        let Some(message) = message else { break };
        let more = !outgoing.is_empty();
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(&message, more)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%assoc, %error, "send failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%assoc, "send timed out: the peer does not read");
                return;
            }
        }
    }
    sink.finish().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each message sent, and whether `more` was said with it.
    type Sent = Vec<(Vec<u8>, bool)>;

    /// Records what it was given.
    #[derive(Default)]
    struct Recorder {
        sent: std::sync::Arc<std::sync::Mutex<Sent>>,
    }

    impl MessageSink for Recorder {
        async fn send(&mut self, message: &[u8], more: bool) -> io::Result<()> {
            if let Ok(mut sent) = self.sent.lock() {
                sent.push((message.to_vec(), more));
            }
            Ok(())
        }

        async fn finish(&mut self) {}
    }

    #[tokio::test]
    async fn a_sink_is_told_of_queued_messages_and_the_last_one_is_sent_without_hold() {
        let (sender, outgoing) = mpsc::channel(SEND_QUEUE);
        let recorder = Recorder::default();
        let sent = recorder.sent.clone();
        // Three queued before the loop runs: the first two may be held, the third must
        // send them all (a held message with nothing behind it would wait forever).
        for message in [b"a", b"b", b"c"] {
            sender.send(message.to_vec()).await.unwrap();
        }
        let looping = tokio::spawn(write_loop(
            AssocId(1),
            outgoing,
            recorder,
            CancellationToken::new(),
        ));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while sent.lock().unwrap().len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the queue was not sent"
            );
            tokio::task::yield_now().await;
        }
        // One more after the queue ran dry: alone, it is not held.
        sender.send(b"d".to_vec()).await.unwrap();
        drop(sender);
        looping.await.unwrap();
        let sent = sent.lock().unwrap().clone();
        let expected: Sent = vec![
            (b"a".to_vec(), true),
            (b"b".to_vec(), true),
            (b"c".to_vec(), false),
            (b"d".to_vec(), false),
        ];
        assert_eq!(sent, expected);
    }
}
