//! rsplib's PingPong service (PPID 33): each Ping (its number and data) is answered
//! with a Pong (the Ping's number, this session's reply number, the data), and after
//! every Pong the PE sends a cookie, rsplib's `<PP-TD1>` and the reply number, so that
//! a PE the session fails over to continues the numbering (`pingpongclient` prints
//! "Detected gap" when it jumps). The cookie is opaque (not the library's envelope):
//! rsplib's PEs in the same pool read it.

use crate::service::{Event, Session};

use super::messages::{self, MessageBuffer, MessageError};

const PING: u8 = 0x01;
const PONG: u8 = 0x02;
/// rsplib's cookie identifier.
const COOKIE_ID: &[u8; 8] = b"<PP-TD1>";
/// Type, flags, length, message number.
const PING_HEADER: usize = messages::HEADER + 8;
/// A Pong adds the reply number to what the Ping had.
const PONG_HEADER: usize = PING_HEADER + 8;

/// What a PingPong PE does besides answering.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PingPongOptions {
    /// Close a session after this many replies on this PE (rsplib's
    /// `-pppfailureafter`): the client fails over to another PE, whose numbering goes
    /// on from the cookie.
    pub(crate) failure_after: Option<u32>,
}

/// The Pong for a Ping, numbered `reply`.
fn pong(ping: &[u8], reply: u64) -> Result<Vec<u8>, MessageError> {
    let invalid = |problem| MessageError::Invalid {
        kind: ping.first().copied().unwrap_or(0),
        length: ping.len(),
        problem,
    };
    if ping.first() != Some(&PING) {
        return Err(invalid("not a Ping (type 0x01)"));
    }
    let (Some(number), Some(data)) = (messages::u64_at(ping, 4), ping.get(PING_HEADER..)) else {
        return Err(invalid("shorter than a Ping's 12 bytes"));
    };
    let length = PONG_HEADER + data.len();
    if length > usize::from(u16::MAX) {
        return Err(invalid(
            "too long to be answered: the Pong would pass 64 KiB",
        ));
    }
    let mut message = Vec::with_capacity(length);
    message.extend_from_slice(&messages::header(PONG, length));
    message.extend_from_slice(&number.to_be_bytes());
    message.extend_from_slice(&reply.to_be_bytes());
    message.extend_from_slice(data);
    Ok(message)
}

/// rsplib's PingPong cookie: its identifier and the last reply number.
fn cookie(reply: u64) -> Vec<u8> {
    [&COOKIE_ID[..], &reply.to_be_bytes()].concat()
}

/// The reply number a cookie carries (`None`: not a PingPong cookie).
fn reply_number(cookie: &[u8]) -> Option<u64> {
    messages::u64_at(cookie.strip_prefix(COOKIE_ID)?, 0)
}

/// Serves one PingPong session until the client goes, a message is invalid (an
/// error), or `failure_after` replies.
pub(crate) async fn serve(mut session: Session, options: PingPongOptions) -> std::io::Result<()> {
    let mut buffer = MessageBuffer::default();
    let mut reply: u64 = 0;
    let mut replies_here: u32 = 0;
    loop {
        match session.next_event().await? {
            Event::CookieEcho(state) => {
                if let Some(restored) = reply_number(&state) {
                    reply = restored;
                }
            }
            Event::Data(bytes) => {
                buffer.push(&bytes);
                while let Some(ping) = buffer.next_message()? {
                    reply += 1;
                    session.send(&pong(&ping, reply)?).await?;
                    session.send_opaque_cookie(cookie(reply)).await?;
                    replies_here += 1;
                    if options.failure_after.is_some_and(|n| replies_here >= n) {
                        tracing::info!(
                            replies = replies_here,
                            "closing the session (--failure-after)"
                        );
                        return Ok(());
                    }
                }
            }
            Event::BusinessCard(_) => {}
            Event::Closed => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn a_ping_is_answered_with_its_number_the_reply_number_and_its_data() {
        let ping = [&[PING, 0, 0, 15][..], &7u64.to_be_bytes(), b"abc"].concat();
        let answer = pong(&ping, 3).unwrap();
        let expected = [
            &[PONG, 0, 0, 23][..],
            &7u64.to_be_bytes(),
            &3u64.to_be_bytes(),
            b"abc",
        ]
        .concat();
        assert_eq!(answer, expected);
    }

    #[test]
    fn other_messages_are_refused() {
        assert!(pong(&[PONG, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 1], 1).is_err());
        assert!(pong(&[PING, 0, 0, 4], 1).is_err());
    }

    #[test]
    fn the_cookie_carries_the_reply_number_as_rsplib_writes_it() {
        assert_eq!(cookie(5), b"<PP-TD1>\0\0\0\0\0\0\0\x05");
        assert_eq!(reply_number(&cookie(5)), Some(5));
        assert_eq!(reply_number(b"counter state"), None);
    }
}
