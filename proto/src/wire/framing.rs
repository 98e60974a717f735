//! Cutting ASAP/ENRP messages out of a byte stream (the TCP mapping, spec README §6):
//! read the 4-byte header, then `round_up4(length)` bytes in all, which is what
//! Wireshark assumes on tcp/3863. A length below 4 cannot make progress, so it is an
//! error that ends the stream rather than a hang.

use super::codec::round_up4;

/// The largest frame: a 65535-byte message plus its final padding.
pub const MAX_FRAME: usize = round_up4(u16::MAX as usize);

/// The byte stream cannot be framed any more; the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// A header whose length field is below the header size.
    #[error("message length {0} in a stream header is below the 4-byte minimum")]
    LengthTooSmall(u16),
    /// The peer sent more than the buffer holds without completing frames.
    #[error("stream buffer full ({0} bytes unread): the peer is not sending whole messages")]
    BufferFull(usize),
}

/// The size of the frame that starts with this header.
pub fn frame_length(header: [u8; 4]) -> Result<usize, FramingError> {
    let [_, _, high, low] = header;
    let length = u16::from_be_bytes([high, low]);
    if length < 4 {
        return Err(FramingError::LengthTooSmall(length));
    }
    Ok(round_up4(usize::from(length)))
}

/// A bounded reassembly buffer for one byte stream.
#[derive(Debug, Default)]
pub struct StreamDeframer {
    buffer: Vec<u8>,
    /// Bytes of `buffer` already handed out as frames.
    consumed: usize,
}

impl StreamDeframer {
    /// The most unread bytes kept: one whole frame plus one more read of the same size.
    pub const CAPACITY: usize = 2 * MAX_FRAME;

    /// The most buffer memory kept between messages.
    const KEPT_CAPACITY: usize = 4096;

    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes. Take out complete frames with [`Self::next_frame`] after
    /// every push; a peer that fills the buffer anyway is broken.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FramingError> {
        if self.consumed > 0 {
            self.buffer.drain(..self.consumed);
            self.consumed = 0;
        }
        if self.buffer.len() + data.len() > Self::CAPACITY {
            return Err(FramingError::BufferFull(self.buffer.len()));
        }
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FramingError> {
        let unread = self.buffer.get(self.consumed..).unwrap_or(&[]);
        let Some(header) = unread.first_chunk::<4>() else {
            return Ok(None);
        };
        let length = frame_length(*header)?;
        let Some(frame) = unread.get(..length) else {
            return Ok(None);
        };
        let frame = frame.to_vec();
        self.consumed += length;
        if self.consumed == self.buffer.len() {
            self.release();
        }
        Ok(Some(frame))
    }

    /// Everything was handed out: empties the buffer, and gives its memory back when a
    /// large message grew it (an association keeps its deframer for its whole life).
    fn release(&mut self) {
        self.consumed = 0;
        if self.buffer.capacity() > Self::KEPT_CAPACITY {
            self.buffer = Vec::new();
        } else {
            self.buffer.clear();
        }
    }

    /// Bytes received but not yet returned in a frame (a partial frame at stream end
    /// means the peer closed mid-message).
    pub fn pending(&self) -> usize {
        self.buffer.len() - self.consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_message_does_not_keep_its_memory() {
        let mut deframer = StreamDeframer::new();
        let mut frame = vec![0u8; 60_000];
        frame[2..4].copy_from_slice(&60_000u16.to_be_bytes());
        deframer.push(&frame).unwrap();
        assert_eq!(
            deframer.next_frame().unwrap().map(|f| f.len()),
            Some(60_000)
        );
        assert_eq!(deframer.pending(), 0);
        assert!(deframer.buffer.capacity() <= StreamDeframer::KEPT_CAPACITY);
        // Small messages keep their (small) buffer.
        deframer.push(&[1, 0, 0, 8, 0, 0, 0, 0]).unwrap();
        assert_eq!(deframer.next_frame().unwrap().map(|f| f.len()), Some(8));
        assert!(deframer.buffer.capacity() > 0);
    }

    #[test]
    fn frames_arrive_byte_by_byte_and_in_bulk() {
        // Two ASAP_COOKIE messages (docs/wire.md §5), the first fed one byte at a time.
        let cookie: [u8; 16] = [
            0x0b, 0, 0, 0x10, 0, 0x0d, 0, 0x09, b's', b't', b'a', b't', b'e', 0, 0, 0,
        ];
        let mut d = StreamDeframer::new();
        for (i, byte) in cookie.iter().enumerate() {
            assert_eq!(d.next_frame(), Ok(None), "no frame before byte {i}");
            d.push(&[*byte]).expect("room");
        }
        assert_eq!(d.next_frame(), Ok(Some(cookie.to_vec())));
        let mut two = cookie.to_vec();
        two.extend_from_slice(&cookie);
        d.push(&two).expect("room");
        assert_eq!(d.next_frame(), Ok(Some(cookie.to_vec())));
        assert_eq!(d.next_frame(), Ok(Some(cookie.to_vec())));
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn lengths_below_four_are_errors_not_hangs() {
        for length in 0u8..4 {
            let mut d = StreamDeframer::new();
            d.push(&[1, 0, 0, length, 0, 0, 0, 0]).expect("room");
            assert_eq!(
                d.next_frame(),
                Err(FramingError::LengthTooSmall(length.into()))
            );
        }
    }

    #[test]
    fn the_largest_length_waits_for_65536_bytes() {
        let mut d = StreamDeframer::new();
        d.push(&[1, 0, 0xff, 0xff]).expect("room");
        d.push(&vec![0; MAX_FRAME - 5]).expect("room");
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&[0]).expect("room");
        assert_eq!(
            d.next_frame().map(|f| f.map(|f| f.len())),
            Ok(Some(MAX_FRAME))
        );
    }

    #[test]
    fn a_peer_that_never_completes_a_frame_fills_the_buffer() {
        let mut d = StreamDeframer::new();
        d.push(&[1, 0, 0xff, 0xff]).expect("room");
        let chunk = vec![0; 4096];
        let mut result = Ok(());
        for _ in 0..64 {
            result = d.push(&chunk);
            while let Ok(Some(_)) = d.next_frame() {}
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(FramingError::BufferFull(_))));
    }
}
