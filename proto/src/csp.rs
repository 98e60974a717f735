//! rsplib's Component Status Protocol (CSP): the status report every component sends to
//! a monitor (`cspmonitor`) over UDP. Not an RFC; the layout is rsplib's
//! `componentstatuspackets.h` as Wireshark's `componentstatusprotocol` dissector reads
//! it (docs/csp.md): a 28-byte header, two 128-byte texts, the workload and a list of
//! 24-byte associations, all big-endian and unpadded.
//!
//! Only the codec lives here; when and where to send is the caller's business.

use std::fmt;

/// The monitor's UDP port when none is given (rsplib's default).
pub const DEFAULT_PORT: u16 = 2960;
/// The version every report carries; rsplib's monitor drops any other.
pub const VERSION: u32 = 0x0000_0200;
/// The only message type: a component status report.
const REPORT: u8 = 0x01;
/// Flag: the component's last report (it is shutting down).
const FINAL_FLAG: u8 = 0x01;
/// Bytes of the fixed part: header, interval, texts, workload, association count.
const FIXED: usize = 288;
/// Bytes of one association entry.
const ASSOCIATION: usize = 24;
/// Bytes of the location and status texts, NUL-padded.
pub const TEXT: usize = 128;
/// Associations a report carries at most: the length field is 16 bits.
pub const MAX_ASSOCIATIONS: usize = (u16::MAX as usize - FIXED) / ASSOCIATION;
/// `workload` meaning "not applicable".
const NO_WORKLOAD: u16 = 0xFFFF;
/// The low 56 bits of a component ID name the object.
const OBJECT_MASK: u64 = 0x00FF_FFFF_FFFF_FFFF;

/// The kind of component a report comes from (the top byte of its ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentGroup {
    /// A registrar (ENRP server); the object is its registrar ID.
    Registrar,
    /// A pool element; the object is its PE ID.
    PoolElement,
    /// A pool user; the object is any number the user picked.
    PoolUser,
    /// A group this codec does not know (decoded only).
    Other(u8),
}

impl ComponentGroup {
    const fn code(self) -> u8 {
        match self {
            Self::Registrar => 1,
            Self::PoolElement => 2,
            Self::PoolUser => 3,
            Self::Other(code) => code,
        }
    }

    const fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Registrar,
            2 => Self::PoolElement,
            3 => Self::PoolUser,
            other => Self::Other(other),
        }
    }
}

/// A component's identity: its group and a 56-bit object number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ComponentId {
    /// What the component is.
    pub group: ComponentGroup,
    /// Which one (registrar ID, PE ID, or a pool user's number); 56 bits kept.
    pub object: u64,
}

impl ComponentId {
    /// The ID of a registrar, PE or pool user with this object number.
    pub const fn new(group: ComponentGroup, object: u64) -> Self {
        Self {
            group,
            object: object & OBJECT_MASK,
        }
    }

    const fn to_u64(self) -> u64 {
        ((self.group.code() as u64) << 56) | (self.object & OBJECT_MASK)
    }

    const fn from_u64(value: u64) -> Self {
        Self {
            group: ComponentGroup::from_code((value >> 56) as u8),
            object: value & OBJECT_MASK,
        }
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.to_u64())
    }
}

/// One association a component lists: a peer registrar, its home registrar, a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    /// The component at the other end.
    pub receiver: ComponentId,
    /// How long the association has been up, in microseconds.
    pub duration_micros: u64,
    /// rsplib sends 0; kept as given.
    pub flags: u16,
    /// The IP protocol number of the transport (6 TCP, 132 SCTP).
    pub protocol: u16,
    /// The payload protocol (ASAP 11, ENRP 12, or the application's).
    pub ppid: u32,
}

/// One component status report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Who reports.
    pub sender: ComponentId,
    /// The component's last report before it stops.
    pub is_final: bool,
    /// Microseconds since the component started (rsplib: its clock's reading).
    pub timestamp_micros: u64,
    /// The interval until the next report, in microseconds.
    pub interval_micros: u32,
    /// Where the component runs (host, addresses); cut to 127 bytes on encoding.
    pub location: String,
    /// What it is doing; cut to 127 bytes on encoding.
    pub status: String,
    /// Load as a fraction of capacity (0.0-1.0), `None` when it has no meaning.
    pub workload: Option<f64>,
    /// Its associations; at most [`MAX_ASSOCIATIONS`] are encoded.
    pub associations: Vec<Association>,
}

/// Why bytes are not a CSP report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CspError {
    /// Fewer bytes than the fixed part or than the length field says.
    #[error("truncated: {0} bytes")]
    Truncated(usize),
    /// Another message type.
    #[error("message type {0:#04x} is not a report")]
    Type(u8),
    /// Another protocol version.
    #[error("version {0:#010x} is not {VERSION:#010x}")]
    Version(u32),
    /// The length field disagrees with the association count.
    #[error("length {length} does not hold {associations} associations")]
    Length {
        /// The length field.
        length: usize,
        /// The association count field.
        associations: usize,
    },
}

impl Report {
    /// The datagram: at most [`MAX_ASSOCIATIONS`] associations, texts cut at a
    /// character boundary to leave their terminating NUL.
    pub fn encode(&self) -> Vec<u8> {
        let count = self.associations.len().min(MAX_ASSOCIATIONS);
        let length = FIXED + count * ASSOCIATION;
        let mut out = Vec::with_capacity(length);
        out.push(REPORT);
        out.push(if self.is_final { FINAL_FLAG } else { 0 });
        out.extend_from_slice(&u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&self.sender.to_u64().to_be_bytes());
        out.extend_from_slice(&self.timestamp_micros.to_be_bytes());
        out.extend_from_slice(&self.interval_micros.to_be_bytes());
        put_text(&mut out, &self.location);
        put_text(&mut out, &self.status);
        out.extend_from_slice(&encode_workload(self.workload).to_be_bytes());
        out.extend_from_slice(&u16::try_from(count).unwrap_or(u16::MAX).to_be_bytes());
        for association in self.associations.iter().take(count) {
            out.extend_from_slice(&association.receiver.to_u64().to_be_bytes());
            out.extend_from_slice(&association.duration_micros.to_be_bytes());
            out.extend_from_slice(&association.flags.to_be_bytes());
            out.extend_from_slice(&association.protocol.to_be_bytes());
            out.extend_from_slice(&association.ppid.to_be_bytes());
        }
        out
    }

    /// Reads a report as `cspmonitor` does: type, version and length checked.
    pub fn decode(bytes: &[u8]) -> Result<Self, CspError> {
        let mut reader = Fields { bytes, at: 0 };
        let header = reader
            .take::<FIXED>()
            .ok_or(CspError::Truncated(bytes.len()))?;
        let mut fixed = Fields {
            bytes: &header,
            at: 0,
        };
        let (message_type, flags) = (fixed.u8(), fixed.u8());
        let length = usize::from(fixed.u16());
        let version = fixed.u32();
        if message_type != REPORT {
            return Err(CspError::Type(message_type));
        }
        if version != VERSION {
            return Err(CspError::Version(version));
        }
        let sender = ComponentId::from_u64(fixed.u64());
        let timestamp_micros = fixed.u64();
        let interval_micros = fixed.u32();
        let location = text(&fixed.take::<TEXT>().unwrap_or([0; TEXT]));
        let status = text(&fixed.take::<TEXT>().unwrap_or([0; TEXT]));
        let workload = decode_workload(fixed.u16());
        let count = usize::from(fixed.u16());
        let expected = FIXED + count * ASSOCIATION;
        // rsplib's reporter stores the length with htonl into the 16-bit field, so on a
        // little-endian host every report says 0; cspmonitor ignores it, and so do we.
        if length != 0 && length != expected {
            return Err(CspError::Length {
                length,
                associations: count,
            });
        }
        if bytes.len() < expected {
            return Err(CspError::Truncated(bytes.len()));
        }
        let associations = (0..count)
            .map(|_| Association {
                receiver: ComponentId::from_u64(reader.u64()),
                duration_micros: reader.u64(),
                flags: reader.u16(),
                protocol: reader.u16(),
                ppid: reader.u32(),
            })
            .collect();
        Ok(Self {
            sender,
            is_final: flags & FINAL_FLAG != 0,
            timestamp_micros,
            interval_micros,
            location,
            status,
            workload,
            associations,
        })
    }
}

/// Big-endian fields read in order; the caller checked the length first, so a short
/// read (which cannot happen) yields zeros rather than a panic.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let field = self.bytes.get(self.at..self.at + N)?.try_into().ok()?;
        self.at += N;
        Some(field)
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>().map_or(0, |[b]| b)
    }

    fn u16(&mut self) -> u16 {
        self.take().map_or(0, u16::from_be_bytes)
    }

    fn u32(&mut self) -> u32 {
        self.take().map_or(0, u32::from_be_bytes)
    }

    fn u64(&mut self) -> u64 {
        self.take().map_or(0, u64::from_be_bytes)
    }
}

/// A text field: at most 127 bytes (cut at a character boundary), NUL-padded to 128.
fn put_text(out: &mut Vec<u8>, value: &str) {
    let mut end = value.len().min(TEXT - 1);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(value.as_bytes().get(..end).unwrap_or_default());
    out.resize(out.len() + TEXT - end, 0);
}

fn text(field: &[u8; TEXT]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(TEXT);
    String::from_utf8_lossy(field.get(..end).unwrap_or_default()).into_owned()
}

/// rsplib scales the load fraction to 0..0xFFFE; 0xFFFF says "none".
fn encode_workload(workload: Option<f64>) -> u16 {
    match workload {
        // The clamp keeps the product within 0..=0xFFFE, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(load) if load.is_finite() => {
            (load.clamp(0.0, 1.0) * f64::from(0xFFFE_u16)).round() as u16
        }
        _ => NO_WORKLOAD,
    }
}

fn decode_workload(raw: u16) -> Option<f64> {
    (raw != NO_WORKLOAD).then(|| f64::from(raw) / f64::from(0xFFFE_u16))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Report {
        Report {
            sender: ComponentId::new(ComponentGroup::Registrar, 0x1234_5678),
            is_final: false,
            timestamp_micros: 5_000_000,
            interval_micros: 1_000_000,
            location: "registrar 127.0.0.1:3863".into(),
            status: "2[1] PEs in 1 Pools, 1 Peers".into(),
            workload: None,
            associations: vec![Association {
                receiver: ComponentId::new(ComponentGroup::Registrar, 0xABCD),
                duration_micros: 7,
                flags: 0,
                protocol: 132,
                ppid: 12,
            }],
        }
    }

    #[test]
    fn a_report_has_the_layout_of_the_table_in_docs_csp() {
        let bytes = sample().encode();
        assert_eq!(bytes.len(), 288 + 24);
        assert_eq!(&bytes[0..4], &[0x01, 0x00, 0x01, 0x38]);
        assert_eq!(&bytes[4..8], &[0, 0, 2, 0]);
        assert_eq!(&bytes[8..16], &[1, 0, 0, 0, 0x12, 0x34, 0x56, 0x78]);
        assert_eq!(&bytes[16..24], &5_000_000_u64.to_be_bytes());
        assert_eq!(&bytes[24..28], &1_000_000_u32.to_be_bytes());
        assert_eq!(&bytes[28..37], b"registrar");
        assert!(bytes[52..156].iter().all(|&b| b == 0));
        assert_eq!(&bytes[156..158], b"2[");
        assert_eq!(&bytes[284..288], &[0xFF, 0xFF, 0, 1]);
        assert_eq!(&bytes[288..296], &[1, 0, 0, 0, 0, 0, 0xAB, 0xCD]);
        assert_eq!(&bytes[304..312], &[0, 0, 0, 132, 0, 0, 0, 12]);
    }

    #[test]
    fn the_final_report_sets_the_flag_and_load_is_scaled() {
        let report = Report {
            is_final: true,
            workload: Some(0.5),
            associations: Vec::new(),
            ..sample()
        };
        let bytes = report.encode();
        assert_eq!(bytes[1], 1);
        assert_eq!(&bytes[284..286], &0x7FFF_u16.to_be_bytes());
        let decoded = Report::decode(&bytes).expect("decodes");
        assert!(decoded.is_final);
        assert!((decoded.workload.unwrap_or(0.0) - 0.5).abs() < 1e-4);
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary_and_keep_their_nul() {
        let report = Report {
            location: "é".repeat(100),
            ..sample()
        };
        let decoded = Report::decode(&report.encode()).expect("decodes");
        assert_eq!(decoded.location, "é".repeat(63));
    }

    #[test]
    fn other_versions_types_and_lengths_are_refused() {
        let mut bytes = sample().encode();
        bytes[7] = 1;
        assert_eq!(Report::decode(&bytes), Err(CspError::Version(0x201)));
        let mut bytes = sample().encode();
        bytes[0] = 2;
        assert_eq!(Report::decode(&bytes), Err(CspError::Type(2)));
        let bytes = sample().encode();
        assert_eq!(Report::decode(&bytes[..300]), Err(CspError::Truncated(300)));
        let mut bytes = sample().encode();
        bytes[287] = 2;
        assert!(matches!(
            Report::decode(&bytes),
            Err(CspError::Length { .. })
        ));
    }

    #[test]
    fn rsplibs_zero_length_is_read_by_the_association_count() {
        let mut bytes = sample().encode();
        bytes[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(Report::decode(&bytes), Ok(sample()));
        assert_eq!(Report::decode(&bytes[..300]), Err(CspError::Truncated(300)));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic_and_reports_round_trip(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            object in any::<u64>(),
            status in "[ -~]{0,200}",
            peers in 0usize..5,
        ) {
            let _ = Report::decode(&bytes);
            let report = Report {
                sender: ComponentId::new(ComponentGroup::PoolElement, object),
                status: status.clone(),
                associations: (0..peers).map(|n| Association {
                    receiver: ComponentId::new(ComponentGroup::Registrar, n as u64),
                    duration_micros: n as u64,
                    flags: 0,
                    protocol: 6,
                    ppid: 11,
                }).collect(),
                ..sample()
            };
            let decoded = Report::decode(&report.encode()).expect("decodes");
            prop_assert_eq!(decoded.sender.object, object & OBJECT_MASK);
            prop_assert_eq!(&decoded.status, &status[..status.len().min(127)]);
            prop_assert_eq!(decoded.associations, report.associations);
        }
    }
}
