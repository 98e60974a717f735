//! The control channel on TCP (see the parent module): frames of `u32 PPID | u32
//! length | payload`, and the envelope this project's PE library puts around a
//! cookie's application state.

/// PPID of ASAP messages on a control channel.
pub const PPID_ASAP: u32 = 11;

/// PPID of a heartbeat frame (with length 0).
pub const PPID_HEARTBEAT: u32 = 0;

/// The largest payload of one control-channel frame.
pub const MAX_CONTROL_FRAME: usize = 1 << 20;

/// The envelope tag at the start of a cookie written by this project's PE library.
pub const COOKIE_TAG: &[u8; 4] = b"RSP1";

/// One frame of the TCP control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlFrame {
    /// Application data with its PPID.
    Data {
        /// The application PPID (not 0 with empty data, not 11).
        ppid: u32,
        /// The bytes.
        payload: Vec<u8>,
    },
    /// An ASAP message (cookie, cookie echo, business card, error).
    Asap(Vec<u8>),
    /// Nothing to say, but alive.
    Heartbeat,
}

impl ControlFrame {
    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (ppid, payload): (u32, &[u8]) = match self {
            Self::Data { ppid, payload } => (*ppid, payload),
            Self::Asap(payload) => (PPID_ASAP, payload),
            Self::Heartbeat => (PPID_HEARTBEAT, &[]),
        };
        let mut out = Vec::with_capacity(8 + payload.len());
        out.extend_from_slice(&ppid.to_be_bytes());
        out.extend_from_slice(
            &u32::try_from(payload.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(payload);
        out
    }
}

/// Application data as control-channel frames: one per [`MAX_CONTROL_FRAME`] bytes,
/// so that data of any length passes a peer's frame limit (the receiver sees the same
/// byte stream; PPIDs are kept on every piece).
pub fn data_frames(ppid: u32, data: &[u8]) -> impl Iterator<Item = ControlFrame> + '_ {
    data.chunks(MAX_CONTROL_FRAME)
        .map(move |piece| ControlFrame::Data {
            ppid,
            payload: piece.to_vec(),
        })
}

/// A control channel stream that cannot be framed (the connection must be closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("control channel frame of {0} bytes exceeds the {MAX_CONTROL_FRAME}-byte limit")]
pub struct ControlFrameTooLarge(pub usize);

/// Cuts control-channel frames out of a byte stream, bounded.
#[derive(Debug, Default)]
pub struct ControlDeframer {
    buffer: Vec<u8>,
    start: usize,
}

impl ControlDeframer {
    /// A deframer that goes on with `unread` (a frame begun in another process).
    pub(super) fn with_unread(unread: Vec<u8>) -> Self {
        Self {
            buffer: unread,
            start: 0,
        }
    }

    /// Bytes received but not yet cut into a frame.
    pub(super) fn unread(&self) -> &[u8] {
        self.buffer.get(self.start..).unwrap_or_default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(data);
    }

    /// The next complete frame.
    pub fn next_frame(&mut self) -> Result<Option<ControlFrame>, ControlFrameTooLarge> {
        let unread = self.buffer.get(self.start..).unwrap_or(&[]);
        let Some(header) = unread.first_chunk::<8>() else {
            return Ok(None);
        };
        let [p0, p1, p2, p3, l0, l1, l2, l3] = *header;
        let ppid = u32::from_be_bytes([p0, p1, p2, p3]);
        let length = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        if length > MAX_CONTROL_FRAME {
            return Err(ControlFrameTooLarge(length));
        }
        let Some(payload) = unread.get(8..8 + length) else {
            return Ok(None);
        };
        let frame = match (ppid, length) {
            (PPID_HEARTBEAT, 0) => ControlFrame::Heartbeat,
            (PPID_ASAP, _) => ControlFrame::Asap(payload.to_vec()),
            _ => ControlFrame::Data {
                ppid,
                payload: payload.to_vec(),
            },
        };
        self.start += 8 + length;
        Ok(Some(frame))
    }
}

/// Splits an enveloped cookie into (consumed, produced, application state).
pub fn open_cookie(cookie: &[u8]) -> Option<(u64, u64, &[u8])> {
    let rest = cookie.strip_prefix(COOKIE_TAG)?;
    let consumed = u64::from_be_bytes(*rest.first_chunk::<8>()?);
    let produced = u64::from_be_bytes(*rest.get(8..)?.first_chunk::<8>()?);
    Some((consumed, produced, rest.get(16..)?))
}

/// Wraps application state in the envelope.
pub fn seal_cookie(consumed: u64, produced: u64, state: &[u8]) -> Vec<u8> {
    let mut cookie = Vec::with_capacity(20 + state.len());
    cookie.extend_from_slice(COOKIE_TAG);
    cookie.extend_from_slice(&consumed.to_be_bytes());
    cookie.extend_from_slice(&produced.to_be_bytes());
    cookie.extend_from_slice(state);
    cookie
}
