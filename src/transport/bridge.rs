//! The TCP gateway's way to SCTP pool elements. The gateway's session layer speaks to
//! a PE as a byte stream (on TCP, with the project's control-channel framing when the
//! PE has a control channel); for a PE whose user transport is SCTP, a bridge task
//! holds the association and translates, so that the session layer stays one code
//! path:
//!
//! * session → PE: data frames (or plain bytes) become SCTP messages with the
//!   listener's data PPID, cut by its framing; ASAP frames (cookie echo, business
//!   cards) go with PPID 11; heartbeat frames are dropped (SCTP checks the path itself).
//! * PE → session: PPID 11 messages become ASAP frames, others data; when the
//!   association ends the session sees the end of its stream. (The session sends no
//!   heartbeats to an SCTP PE and expects none: SCTP watches the path, and a PE silent
//!   while answers are due fails after the response timeout, as a data-only one.)
//!
//! It costs a local socket pair per session: SCTP PEs are reached for interoperability,
//! the fast path is TCP.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rserpool_gateways::tcp::SctpUpstream;
use rserpool_proto::session::{ControlDeframer, ControlFrame, PPID_ASAP};
use rserpool_proto::wire::{PoolElement, TransportProtocol, TransportUse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::sctp::{Association, MAX_MESSAGE, Received};

/// Client bytes held while a framed message is incomplete, at most.
const MAX_PARTIAL: usize = MAX_MESSAGE;

/// Opens an association to `pe` and returns the session's end of the bridge.
pub(crate) async fn open(pe: &PoolElement, upstream: SctpUpstream) -> io::Result<UnixStream> {
    let transport = &pe.user_transport;
    let remote: Vec<SocketAddr> = transport
        .addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, transport.port))
        .collect();
    let association = Association::connect(&remote, &[]).await?;
    let control = matches!(
        transport.protocol,
        TransportProtocol::Sctp(TransportUse::DataPlusControl)
    );
    let (session, bridge) = UnixStream::pair()?;
    tokio::spawn(async move {
        if let Err(error) = run(association, bridge, control, upstream).await {
            tracing::debug!(%error, "SCTP bridge ended");
        }
    });
    Ok(session)
}

/// Data from the session on its way to the PE, cut into messages.
struct Outgoing {
    control: bool,
    deframer: ControlDeframer,
    partial: Vec<u8>,
    upstream: SctpUpstream,
}

impl Outgoing {
    /// The messages (PPID, payload) that `bytes` from the session complete.
    fn push(&mut self, bytes: &[u8]) -> io::Result<Vec<(u32, Vec<u8>)>> {
        let mut messages = Vec::new();
        if !self.control {
            self.data(bytes, &mut messages)?;
            return Ok(messages);
        }
        self.deframer.push(bytes);
        while let Some(frame) = self
            .deframer
            .next_frame()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            match frame {
                ControlFrame::Data { payload, .. } => self.data(&payload, &mut messages)?,
                ControlFrame::Asap(message) => messages.push((PPID_ASAP, message)),
                ControlFrame::Heartbeat => {}
            }
        }
        Ok(messages)
    }

    fn data(&mut self, bytes: &[u8], messages: &mut Vec<(u32, Vec<u8>)>) -> io::Result<()> {
        let ppid = self.upstream.ppid;
        let Some(framing) = self.upstream.framing else {
            messages.push((ppid, bytes.to_vec()));
            return Ok(());
        };
        self.partial.extend_from_slice(bytes);
        let complete = framing
            .split(&mut self.partial)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if self.partial.len() > MAX_PARTIAL {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "incomplete message beyond the framing's limit",
            ));
        }
        messages.extend(complete.into_iter().map(|m| (ppid, m)));
        Ok(())
    }
}

/// What one PE message becomes on the session's stream.
fn incoming(control: bool, ppid: u32, payload: Vec<u8>) -> Vec<u8> {
    match (control, ppid) {
        (false, _) => payload,
        (true, PPID_ASAP) => ControlFrame::Asap(payload).encode(),
        (true, _) => ControlFrame::Data { ppid, payload }.encode(),
    }
}

async fn run(
    association: Association,
    mut session: UnixStream,
    control: bool,
    upstream: SctpUpstream,
) -> io::Result<()> {
    let mut outgoing = Outgoing {
        control,
        deframer: ControlDeframer::default(),
        partial: Vec::new(),
        upstream,
    };
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = session.read(&mut buffer) => {
                let count = read?;
                if count == 0 {
                    // The session is done with this PE: end the association gracefully.
                    association.shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Ok(Received::Message { .. }) = association.receive(MAX_MESSAGE).await {}
                    })
                    .await;
                    return Ok(());
                }
                for (ppid, message) in outgoing.push(buffer.get(..count).unwrap_or_default())? {
                    association.send(ppid, &message).await?;
                }
            }
            received = association.receive(MAX_MESSAGE) => match received? {
                Received::Message { ppid, payload } => {
                    session.write_all(&incoming(control, ppid, payload)).await?;
                }
                Received::Closed(reason) => {
                    tracing::debug!(%reason, "SCTP pool element ended the session");
                    return Ok(());
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use rserpool_gateways::tcp::Framing;

    use super::*;

    fn pingpong() -> SctpUpstream {
        SctpUpstream {
            ppid: 33,
            framing: Some(Framing {
                offset: 2,
                size: 2,
                adjust: 0,
                max_message: 1024,
            }),
        }
    }

    fn ping(number: u8) -> Vec<u8> {
        vec![1, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, number]
    }

    #[test]
    fn framed_client_bytes_become_whole_messages() {
        let mut outgoing = Outgoing {
            control: false,
            deframer: ControlDeframer::default(),
            partial: Vec::new(),
            upstream: pingpong(),
        };
        let stream = [ping(1), ping(2)].concat();
        // Split in the middle of the second message: one whole message, then the other.
        let (first, second) = stream.split_at(15);
        assert_eq!(outgoing.push(first).unwrap(), vec![(33, ping(1))]);
        assert_eq!(outgoing.push(second).unwrap(), vec![(33, ping(2))]);
        // A length below the header is a framing error.
        assert!(outgoing.push(&[1, 0, 0, 2]).is_err());
    }

    #[test]
    fn control_frames_map_to_ppids() {
        let mut outgoing = Outgoing {
            control: true,
            deframer: ControlDeframer::default(),
            partial: Vec::new(),
            upstream: pingpong(),
        };
        let mut stream = ControlFrame::Asap(vec![9, 9, 0, 4]).encode();
        stream.extend(ControlFrame::Heartbeat.encode());
        stream.extend(
            ControlFrame::Data {
                ppid: 0,
                payload: ping(7),
            }
            .encode(),
        );
        assert_eq!(
            outgoing.push(&stream).unwrap(),
            vec![(PPID_ASAP, vec![9, 9, 0, 4]), (33, ping(7))]
        );
        assert_eq!(
            incoming(true, 11, vec![1]),
            ControlFrame::Asap(vec![1]).encode()
        );
        assert_eq!(incoming(false, 33, vec![1, 2]), vec![1, 2]);
    }
}
