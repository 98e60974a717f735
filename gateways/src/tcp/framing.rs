//! Message framing for SCTP PEs: a length field in each client message says where it
//! ends (RFC 4960 keeps message boundaries; a TCP client's byte stream has none), and
//! the check that a client's stream follows it.

/// Message framing by a length field: a big-endian unsigned field of `size` bytes at
/// `offset` gives the message length, plus `adjust` (e.g. rsplib's PingPong: offset 2,
/// size 2, the length counting the whole message: adjust 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub offset: usize,
    pub size: usize,
    pub adjust: i64,
    /// Longer messages are a framing error (the client is closed).
    pub max_message: usize,
}

/// A client stream that does not follow its listener's framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message of {0} bytes does not fit the framing (at most {1}, at least the header)")]
pub struct FramingError(pub i64, pub usize);

impl Framing {
    /// The longest message unless configured (the largest a 16-bit length field gives).
    pub const DEFAULT_MAX_MESSAGE: usize = 65_535;

    /// Bytes up to the end of the length field.
    pub(super) fn header(&self) -> usize {
        self.offset + self.size
    }

    /// The whole message's length from its header (at least [`Framing::header`] bytes).
    pub(super) fn message_length(&self, header: &[u8]) -> Result<usize, FramingError> {
        let field = header.get(self.offset..self.header()).unwrap_or_default();
        let length = field.iter().fold(0i64, |v, b| (v << 8) | i64::from(*b)) + self.adjust;
        usize::try_from(length)
            .ok()
            .filter(|total| (self.header()..=self.max_message).contains(total))
            .ok_or(FramingError(length, self.max_message))
    }

    /// Takes the whole messages off the front of `buffer`.
    pub fn split(&self, buffer: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, FramingError> {
        let mut messages = Vec::new();
        while buffer.len() >= self.header() {
            let total = self.message_length(buffer)?;
            if buffer.len() < total {
                break;
            }
            messages.push(buffer.drain(..total).collect());
        }
        Ok(messages)
    }
}

/// Follows a client's stream through its listener's framing, so that a client breaking
/// it is closed before any PE sees the bytes (rather than failing PE after PE).
#[derive(Debug)]
pub(super) struct FramingCheck {
    pub(super) framing: Framing,
    pub(super) header: Vec<u8>,
    /// Bytes of the current message still to come after its header.
    pub(super) remaining: usize,
}

impl FramingCheck {
    pub(super) fn new(framing: Framing) -> Self {
        Self {
            framing,
            header: Vec::with_capacity(framing.header()),
            remaining: 0,
        }
    }

    pub(super) fn feed(&mut self, mut bytes: &[u8]) -> Result<(), FramingError> {
        while !bytes.is_empty() {
            let take = if self.remaining > 0 {
                let take = self.remaining.min(bytes.len());
                self.remaining -= take;
                take
            } else {
                let take = (self.framing.header() - self.header.len()).min(bytes.len());
                self.header
                    .extend_from_slice(bytes.get(..take).unwrap_or_default());
                if self.header.len() == self.framing.header() {
                    self.remaining = self.framing.message_length(&self.header)? - self.header.len();
                    self.header.clear();
                }
                take
            };
            bytes = bytes.get(take..).unwrap_or_default();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINGPONG: Framing = Framing {
        offset: 2,
        size: 2,
        adjust: 0,
        max_message: 64,
    };

    #[test]
    fn the_framing_check_follows_messages_across_reads() {
        let mut check = FramingCheck::new(PINGPONG);
        // Two 6-byte messages, cut at every awkward place.
        let stream = [1, 0, 0, 6, 9, 9, 1, 0, 0, 6, 8, 8];
        for piece in stream.chunks(1) {
            check.feed(piece).unwrap();
        }
        check.feed(&stream[..5]).unwrap();
        check.feed(&stream[5..]).unwrap();
        // A length shorter than the header, then one longer than the limit.
        assert_eq!(check.feed(&[1, 0, 0, 3]), Err(FramingError(3, 64)));
        let mut check = FramingCheck::new(PINGPONG);
        assert_eq!(check.feed(&[1, 0, 1, 0]), Err(FramingError(256, 64)));
    }
}
