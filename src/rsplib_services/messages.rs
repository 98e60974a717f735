//! The messages of rsplib's services on a session: each starts with its type (1 byte),
//! flags (1) and the whole message's length (2, big-endian). Over SCTP a message
//! arrives whole; over the TCP mapping (a gateway's legacy client) the messages are a
//! byte stream; both are cut here the same way.

/// Type, flags and length.
pub(crate) const HEADER: usize = 4;

/// A message that cannot be cut out of the session's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MessageError {
    #[error("a message's length field says {0} bytes, less than its {HEADER}-byte header")]
    ShorterThanHeader(u16),
    #[error("message type {kind:#04x} of {length} bytes: {problem}")]
    Invalid {
        kind: u8,
        length: usize,
        problem: &'static str,
    },
}

/// Invalid client input: the session ends with an `InvalidData` error, which the
/// demo PE counts and logs as such.
impl From<MessageError> for std::io::Error {
    fn from(error: MessageError) -> Self {
        Self::new(std::io::ErrorKind::InvalidData, error)
    }
}

/// Bytes received and not yet cut into messages: less than one message plus the
/// last piece received (a length field cannot say more than 64 KiB).
#[derive(Debug, Default)]
pub(crate) struct MessageBuffer {
    bytes: Vec<u8>,
}

impl MessageBuffer {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    /// The next whole message (type, flags, length and body), if one has arrived.
    pub(crate) fn next_message(&mut self) -> Result<Option<Vec<u8>>, MessageError> {
        let Some(&[_, _, high, low]) = self.bytes.first_chunk::<HEADER>() else {
            return Ok(None);
        };
        let length = u16::from_be_bytes([high, low]);
        if usize::from(length) < HEADER {
            return Err(MessageError::ShorterThanHeader(length));
        }
        let length = usize::from(length);
        if self.bytes.len() < length {
            return Ok(None);
        }
        let rest = self.bytes.split_off(length);
        Ok(Some(std::mem::replace(&mut self.bytes, rest)))
    }
}

/// A header for a message of `kind` with `length` bytes in all (at most 64 KiB).
pub(crate) fn header(kind: u8, length: usize) -> [u8; HEADER] {
    let [high, low] = u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes();
    [kind, 0, high, low]
}

/// The big-endian u64 at `offset` of a message.
pub(crate) fn u64_at(message: &[u8], offset: usize) -> Option<u64> {
    message
        .get(offset..)?
        .first_chunk::<8>()
        .map(|bytes| u64::from_be_bytes(*bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn a_stream_is_cut_into_messages_whatever_the_pieces() {
        let first = [1, 0, 0, 6, 0xaa, 0xbb];
        let second = [2, 0, 0, 4];
        let stream: Vec<u8> = [&first[..], &second[..]].concat();
        for split in 0..stream.len() {
            let mut buffer = MessageBuffer::default();
            buffer.push(&stream[..split]);
            let mut messages = Vec::new();
            while let Some(message) = buffer.next_message().unwrap() {
                messages.push(message);
            }
            buffer.push(&stream[split..]);
            while let Some(message) = buffer.next_message().unwrap() {
                messages.push(message);
            }
            assert_eq!(
                messages,
                [first.to_vec(), second.to_vec()],
                "split at {split}"
            );
        }
    }

    #[test]
    fn a_length_below_the_header_is_an_error() {
        let mut buffer = MessageBuffer::default();
        buffer.push(&[1, 0, 0, 3, 9]);
        assert_eq!(
            buffer.next_message(),
            Err(MessageError::ShorterThanHeader(3))
        );
    }
}
