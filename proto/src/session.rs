//! The ASAP session layer on the pool-user side (RFC 5352 §3.8-3.9): one session per client
//! connection of a gateway, moved to another PE when its PE fails, without the client
//! noticing when that can be done without losing or repeating data.
//!
//! # Streams and offsets
//!
//! The client→PE stream and the PE→client stream are numbered from 0 for the whole
//! session, across PEs. The session keeps the client bytes that a recovery may need to
//! send again, and knows how much of the PE output has been delivered to the client.
//!
//! # Recovery point and the failover rule
//!
//! A recovery point says "a PE restored to this point has consumed the first C client
//! bytes and produced the first P output bytes". Before any cookie it is (0, 0): a fresh
//! PE. When a PE with a control channel sends ASAP_COOKIE, the cookie becomes the
//! recovery point. A cookie may carry, in front of the application's state, the
//! project-local envelope `"RSP1" | u64 consumed | u64 produced` (big-endian) written by
//! the PE library (`rserpool` crate, `service` module); a cookie without it (rsplib's,
//! opaque) is taken to cover every PE byte received when it arrived and the client bytes
//! sent before the latest of them (a PE answers, then sends its cookie; what the client
//! sent after seeing the answer may cross the cookie on its way).
//!
//! When the PE fails (connection refused or reset, write failure, silence beyond the
//! timeout, or end of stream on a control channel), the session can move if
//! 1. it still holds the client bytes from C on (at most `replay_limit` are kept), and
//! 2. either nothing reached the client since P (no byte delivered from the failed PE's
//!    output beyond P), or the PE uses the control channel: such a PE (this project's PE
//!    library) promises that re-processing the same input from its last cookie, or from
//!    the start of the session before its first cookie, gives the same output. (A PE
//!    answers, then sends its cookie: a crash between the two must not lose the
//!    session.)
//!
//! Then the new PE gets ASAP_COOKIE_ECHO with the cookie first (if any), then the client
//! bytes from C, and its first (delivered - P) output bytes are dropped, so the client
//! sees each byte once and in order. Otherwise the client connection is closed (no
//! silent data loss) and the failure counted. This gives the three rules of the
//! failover design: (1) nothing returned yet: retried transparently; (2) a cookie:
//! re-homed with cookie echo and replay; (3) otherwise closed.
//!
//! # The control channel on TCP (project-local)
//!
//! SCTP separates ASAP control messages from data by PPID. TCP has no PPID, so a PE
//! registered with transport use "data plus control" over TCP frames its stream as
//! `u32 PPID | u32 length | payload` (after the draft TCP mapping, draft-ietf-rserpool-tcpmapping): PPID 11 carries an ASAP
//! message, PPID 0 with length 0 is a heartbeat (sent every second when idle; three
//! missed mean the peer is gone), anything else is application data. A data-only PE gets
//! the plain byte stream. This framing is not a standard: it exists because the IETF
//! TCP mapping was never finished.

mod control;
mod machine;
mod snapshot;
mod types;

pub use control::{
    COOKIE_TAG, ControlDeframer, ControlFrame, ControlFrameTooLarge, MAX_CONTROL_FRAME, PPID_ASAP,
    PPID_HEARTBEAT, data_frames, open_cookie, seal_cookie,
};
pub use machine::{RecoveryPoint, Session};
pub use types::{PeFailure, SessionConfig, SessionEvent, SessionOutput};
