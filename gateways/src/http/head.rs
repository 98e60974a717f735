//! HTTP/1 heads as both sides of the gateway read and write them: fields parsed by
//! httparse become a `HeaderMap` whose values are slices of the head's bytes (one
//! shared buffer rather than an allocation per value), and fields are written as
//! `name: value` lines.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Header fields per head at most (hyper's default too).
pub(super) const MAX_HEADERS: usize = 100;

/// Where a head's request target and header fields lie, as offsets into it (heads are
/// under 64 KiB, so they fit in u16): what httparse found in a borrowed buffer, kept
/// while the head is split off that buffer.
pub(super) struct Spans {
    target: [u16; 2],
    fields: [[u16; 4]; MAX_HEADERS],
    count: usize,
}

impl Spans {
    /// The spans of `target` (a request's; empty for a response) and `fields`, all
    /// slices of `buffer`. `None` when one lies 64 KiB or more into it.
    pub(super) fn of(
        buffer: &[u8],
        target: &[u8],
        fields: &[httparse::Header<'_>],
    ) -> Option<Self> {
        let start = buffer.as_ptr() as usize;
        let span = |part: &[u8]| -> Option<[u16; 2]> {
            if part.is_empty() {
                return Some([0, 0]);
            }
            let offset = (part.as_ptr() as usize).checked_sub(start)?;
            Some([
                u16::try_from(offset).ok()?,
                u16::try_from(offset + part.len()).ok()?,
            ])
        };
        let mut spans = Self {
            target: span(target)?,
            fields: [[0; 4]; MAX_HEADERS],
            count: fields.len(),
        };
        for (slot, field) in spans.fields.iter_mut().zip(fields) {
            let [name_start, name_end] = span(field.name.as_bytes())?;
            let [value_start, value_end] = span(field.value)?;
            *slot = [name_start, name_end, value_start, value_end];
        }
        Some(spans)
    }

    /// The request target, from the head the spans were taken in.
    pub(super) fn target(&self, head: &Bytes) -> Option<Bytes> {
        let [start, end] = self.target;
        slice(head, start, end)
    }

    /// The header fields, with room for `spare` more (what the gateway adds) so that
    /// adding them does not grow the map; `None` if one is not a valid field.
    pub(super) fn headers(&self, head: &Bytes, spare: usize) -> Option<HeaderMap> {
        let mut headers = HeaderMap::with_capacity(self.count + spare);
        for [name_start, name_end, value_start, value_end] in self.fields.iter().take(self.count) {
            let name = head.get(usize::from(*name_start)..usize::from(*name_end))?;
            let name = HeaderName::from_bytes(name).ok()?;
            let value =
                HeaderValue::from_maybe_shared(slice(head, *value_start, *value_end)?).ok()?;
            headers.append(name, value);
        }
        Some(headers)
    }
}

fn slice(head: &Bytes, start: u16, end: u16) -> Option<Bytes> {
    let range = usize::from(start)..usize::from(end);
    head.get(range.clone()).map(|_| head.slice(range))
}

/// Writes one `name: value` line.
pub(super) fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Writes `headers` as lines, leaving out the framing and connection fields the writer
/// sets itself.
pub(super) fn put_fields(out: &mut BytesMut, headers: &HeaderMap, leave_out: &[HeaderName]) {
    for (name, value) in headers {
        if !leave_out.contains(name) {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Writes `data` as one chunk of a chunked body (RFC 9112 §7.1).
pub(super) fn put_chunk(out: &mut BytesMut, data: &[u8]) {
    out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// The end of a chunked body (no trailer fields).
pub(super) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
