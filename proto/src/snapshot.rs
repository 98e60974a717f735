//! Records that carry state from one process to the next in a binary upgrade (a
//! gateway's sessions and pool-user cache, a registrar's handlespace): fields in a
//! compact binary form, times as ages before `now` (both processes read the same
//! monotonic clock, but the bytes should not depend on it).
//!
//! Each record is project-local and versioned by its writer. The receiving side treats
//! it as hostile input like any other: every length is checked against what is left,
//! and a record that does not hold together is refused with a [`SnapshotError`] rather
//! than trusted.

use std::time::Duration;

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes end inside a field.
    #[error("record cut short")]
    Truncated,
    /// Bytes follow the last field.
    #[error("record has {0} bytes after its last field")]
    Trailing(usize),
    /// Written by a build with another form (the version it names).
    #[error("record form {0} is not understood by this build")]
    Version(u64),
    /// A field's value is impossible, or does not agree with the others.
    #[error("record field {0} is invalid")]
    Invalid(&'static str),
}

/// Writes snapshot fields: integers big-endian, byte strings behind a 32-bit length.
#[derive(Debug, Default)]
pub struct SnapshotWriter {
    bytes: Vec<u8>,
}

impl SnapshotWriter {
    /// An unsigned integer.
    pub fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_be_bytes());
    }

    /// A yes or no.
    pub fn flag(&mut self, value: bool) {
        self.bytes.push(u8::from(value));
    }

    /// A byte string (at most 4 GiB; longer ones are cut, which the reader's checks
    /// then refuse).
    pub fn bytes(&mut self, value: &[u8]) {
        let length = u32::try_from(value.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&length.to_be_bytes());
        self.bytes
            .extend_from_slice(value.get(..length as usize).unwrap_or(value));
    }

    /// A span of time, in nanoseconds (saturating at 584 years).
    pub fn duration(&mut self, value: Duration) {
        self.u64(u64::try_from(value.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The bytes written.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads what a [`SnapshotWriter`] wrote, refusing anything that runs past the end.
#[derive(Debug)]
pub struct SnapshotReader<'a> {
    rest: &'a [u8],
}

impl<'a> SnapshotReader<'a> {
    /// Reads `bytes` from the start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], SnapshotError> {
        if count > self.rest.len() {
            return Err(SnapshotError::Truncated);
        }
        let (taken, rest) = self.rest.split_at(count);
        self.rest = rest;
        Ok(taken)
    }

    /// An unsigned integer.
    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        let bytes = self.take(8)?;
        let array = bytes.first_chunk::<8>().ok_or(SnapshotError::Truncated)?;
        Ok(u64::from_be_bytes(*array))
    }

    /// A yes or no (any other byte is invalid: `what` names the field).
    pub fn flag(&mut self, what: &'static str) -> Result<bool, SnapshotError> {
        match self.take(1)? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(SnapshotError::Invalid(what)),
        }
    }

    /// A byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let length = self.take(4)?;
        let length = length.first_chunk::<4>().ok_or(SnapshotError::Truncated)?;
        self.take(u32::from_be_bytes(*length) as usize)
    }

    /// A span of time.
    pub fn duration(&mut self) -> Result<Duration, SnapshotError> {
        self.u64().map(Duration::from_nanos)
    }

    /// Whether every field has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Checks that nothing follows the last field.
    pub fn end(self) -> Result<(), SnapshotError> {
        match self.rest.len() {
            0 => Ok(()),
            left => Err(SnapshotError::Trailing(left)),
        }
    }
}
