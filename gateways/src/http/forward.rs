//! What a reverse proxy changes in the headers it passes on (RFC 9110 §7.6, RFC 7239):
//! hop-by-hop headers stay on their hop, the client's address and scheme go forward in
//! `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (`for` and `proto`; the
//! original `Host` is passed on unchanged), and `Via` names the gateway.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that apply to one connection only (RFC 9110 §7.6.1, plus the
/// `Proxy-Connection` and `Keep-Alive` that old clients still send). Names, not
/// strings: a lookup by string parses the name every time.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// `RSerPool-Session`: the sticky session's id, for PEs.
pub const SESSION: HeaderName = HeaderName::from_static("rserpool-session");
/// `RSerPool-Cookie`: a PE's latest state for its session (response).
pub const COOKIE: HeaderName = HeaderName::from_static("rserpool-cookie");
/// `RSerPool-Cookie-Echo`: that state handed to the next PE (request).
pub const COOKIE_ECHO: HeaderName = HeaderName::from_static("rserpool-cookie-echo");
/// `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): requests with the
/// same key are applied once.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Headers a client must not hand to PEs: the gateway's own channel to them.
static GATEWAY_HEADERS: [HeaderName; 3] = [SESSION, COOKIE_ECHO, COOKIE];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes the hop-by-hop headers and those named in `Connection`. An upgrade keeps its
/// `Upgrade` and `Connection: upgrade` (the tunnel is end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry one of them at most: one pass over the names finds which,
    // and only those are looked up again to be removed.
    let mut found = 0u16;
    let mut upgrade = false;
    for name in headers.keys() {
        let name = name.as_str();
        // Lengths of the hop-by-hop names and `upgrade`: most names are ruled out by
        // their length alone.
        if !matches!(name.len(), 2 | 7 | 10 | 16..=19) {
            continue;
        }
        if let Some(index) = HOP_BY_HOP.iter().position(|hop| hop.as_str() == name) {
            found |= 1 << index;
        }
        upgrade |= name == header::UPGRADE.as_str();
    }
    if found == 0 && !upgrade {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        strip_named_in_connection(headers, keep_upgrade);
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << index) != 0 {
            headers.remove(name);
        }
    }
    if upgrade && keep_upgrade && headers.contains_key(header::UPGRADE) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if upgrade {
        headers.remove(header::UPGRADE);
    }
}

fn strip_named_in_connection(headers: &mut HeaderMap, keep_upgrade: bool) {
    // The values are shared bytes (a clone is a reference count), there is mostly one
    // (`rest` stays empty: no allocation), and removing by `&str` does not allocate a
    // header name.
    let values = headers.get_all(header::CONNECTION);
    let mut values = values.iter();
    let first = values.next().cloned();
    let rest: Vec<HeaderValue> = values.cloned().collect();
    for value in first.iter().chain(&rest) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for name in value.split(',').map(str::trim) {
            let kept = keep_upgrade && name.eq_ignore_ascii_case("upgrade");
            if !name.is_empty() && !kept {
                headers.remove(name);
            }
        }
    }
}

/// What a client connection adds to each of its requests, made once per connection.
#[derive(Debug, Clone)]
pub struct Forwarding {
    address: HeaderValue,
    proto: HeaderValue,
    forwarded: HeaderValue,
}

impl Forwarding {
    pub fn new(client: SocketAddr, https: bool) -> Self {
        let ip = client.ip().to_canonical();
        let proto = if https { "https" } else { "http" };
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let value = |text: &str| {
            HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        };
        Self {
            address: value(&ip.to_string()),
            proto: HeaderValue::from_static(proto),
            forwarded: value(&format!("for={node};proto={proto}")),
        }
    }

    /// Adds the client's address and scheme (`X-Forwarded-For`, `X-Forwarded-Proto`,
    /// `Forwarded`) and the gateway's `Via` to a request.
    pub fn apply(&self, headers: &mut HeaderMap, version: http::Version) {
        append_value(headers, X_FORWARDED_FOR, &self.address);
        headers.insert(X_FORWARDED_PROTO, self.proto.clone());
        append_value(headers, FORWARDED, &self.forwarded);
        add_via(headers, version);
    }
}

/// Adds the gateway to `Via` (requests and responses).
pub fn add_via(headers: &mut HeaderMap, version: http::Version) {
    const VIA_10: HeaderValue = HeaderValue::from_static("1.0 rserpool");
    const VIA_11: HeaderValue = HeaderValue::from_static("1.1 rserpool");
    const VIA_2: HeaderValue = HeaderValue::from_static("2 rserpool");
    const VIA_3: HeaderValue = HeaderValue::from_static("3 rserpool");
    let via = match version {
        http::Version::HTTP_10 => VIA_10,
        http::Version::HTTP_2 => VIA_2,
        http::Version::HTTP_3 => VIA_3,
        _ => VIA_11,
    };
    append_value(headers, header::VIA, &via);
}

/// Appends to a comma-separated list header, joining earlier values (one lookup when
/// the header is new, the usual case).
fn append_value(headers: &mut HeaderMap, name: HeaderName, item: &HeaderValue) {
    let mut entry = match headers.entry(name) {
        header::Entry::Vacant(vacant) => {
            vacant.insert(item.clone());
            return;
        }
        header::Entry::Occupied(occupied) => occupied,
    };
    let mut joined: Vec<u8> = Vec::new();
    for value in entry.iter() {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(item.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        entry.insert(value);
    }
}

/// Removes the gateway's own headers (`GATEWAY_HEADERS`) a client sent.
pub fn strip_gateway_headers(headers: &mut HeaderMap) {
    if headers.keys().any(|name| GATEWAY_HEADERS.contains(name)) {
        for name in &GATEWAY_HEADERS {
            headers.remove(name);
        }
    }
}

/// True for a request asking to switch protocols (WebSocket and the like).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// True if a `Connection` field lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "Keep-Alive, X-Private".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        headers.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept"]);
    }

    #[test]
    fn upgrades_keep_their_upgrade_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "Upgrade".parse().unwrap());
        headers.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&headers));
        strip_hop_by_hop(&mut headers, true);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
    }

    #[test]
    fn forwarding_headers_append_to_what_came_in() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        headers.insert("via", "1.1 edge".parse().unwrap());
        let client: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().unwrap();
        Forwarding::new(client, false).apply(&mut headers, http::Version::HTTP_11);
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["forwarded"], "for=192.0.2.7;proto=http");
        assert_eq!(headers["via"], "1.1 edge, 1.1 rserpool");
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let mut headers = HeaderMap::new();
        Forwarding::new(v6, true).apply(&mut headers, http::Version::HTTP_2);
        assert_eq!(headers["forwarded"], "for=\"[2001:db8::1]\";proto=https");
        assert_eq!(headers["via"], "2 rserpool");
    }
}
