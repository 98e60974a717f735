//! Sticky sessions that any gateway instance can serve: the binding of a client's
//! session to a PE (and the PE's latest ASAP cookie, when small) travels in an HTTP
//! cookie, sealed with XChaCha20-Poly1305 under a key from the configuration. Gateways
//! sharing the key need no shared state; a client cannot read or forge its binding.
//!
//! Cookie value: base64url(nonce[24] || ciphertext), the cookie name bound in as
//! associated data. Plaintext: version (1), session id (u64), PE identifier (u32),
//! issued (u64, seconds since the Unix epoch), pool handle (u8 length + bytes), ASAP
//! cookie (u16 length + bytes).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rserpool_proto::wire::{PoolElementId, PoolHandle};

const VERSION: u8 = 1;
const NONCE: usize = 24;
/// An ASAP cookie larger than this stays out of the HTTP cookie (browsers keep about
/// 4 KiB per cookie; the rest of the binding and the encoding need the remainder).
pub const MAX_ASAP_COOKIE: usize = 2048;

/// A client's session: which PE serves it and the state that PE handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Stable across re-homes: PEs see it as `RSerPool-Session`.
    pub session: u64,
    pub pool_handle: PoolHandle,
    pub pe_id: PoolElementId,
    /// The PE's latest ASAP cookie for this session, echoed to the next PE.
    pub asap_cookie: Option<Vec<u8>>,
    /// When the binding was sealed (seconds since the Unix epoch).
    pub issued: u64,
}

/// Seals and opens bindings; the first key seals, every key opens (key rotation).
#[derive(Clone)]
pub struct CookieSealer {
    name: String,
    keys: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for CookieSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSealer")
            .field("name", &self.name)
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl CookieSealer {
    /// `keys`: 32-byte keys, the first one current. None: no key given.
    pub fn new(name: impl Into<String>, keys: &[[u8; 32]]) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        Some(Self {
            name: name.into(),
            keys: keys
                .iter()
                .map(|key| XChaCha20Poly1305::new(key.into()))
                .collect(),
        })
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The binding as a cookie value. `None` only if the system has no randomness.
    pub fn seal(&self, binding: &Binding) -> Option<String> {
        let mut plain = Vec::with_capacity(64);
        plain.push(VERSION);
        plain.extend_from_slice(&binding.session.to_be_bytes());
        plain.extend_from_slice(&binding.pe_id.0.to_be_bytes());
        plain.extend_from_slice(&binding.issued.to_be_bytes());
        let handle = binding.pool_handle.as_bytes();
        plain.push(u8::try_from(handle.len()).ok()?);
        plain.extend_from_slice(handle);
        let cookie = binding
            .asap_cookie
            .as_deref()
            .filter(|c| c.len() <= MAX_ASAP_COOKIE)
            .unwrap_or_default();
        plain.extend_from_slice(&u16::try_from(cookie.len()).ok()?.to_be_bytes());
        plain.extend_from_slice(cookie);
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).ok()?;
        let sealed = self
            .keys
            .first()?
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: self.name.as_bytes(),
                },
            )
            .ok()?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(raw))
    }

    /// The binding in a cookie value, if one of the keys sealed it and it is well formed.
    pub fn open(&self, value: &str) -> Option<Binding> {
        if value.len() > 4 * 1024 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        let (nonce, sealed) = raw.split_at_checked(NONCE)?;
        let payload = || Payload {
            msg: sealed,
            aad: self.name.as_bytes(),
        };
        let plain = self
            .keys
            .iter()
            .find_map(|key| key.decrypt(XNonce::from_slice(nonce), payload()).ok())?;
        parse(&plain)
    }

    /// The binding in a request's `Cookie` headers, if any.
    pub fn from_headers(&self, headers: &http::HeaderMap) -> Option<Binding> {
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == self.name)
            .find_map(|(_, value)| self.open(value))
    }
}

fn parse(plain: &[u8]) -> Option<Binding> {
    let mut reader = Reader(plain);
    if reader.take(1)? != [VERSION] {
        return None;
    }
    let session = u64::from_be_bytes(reader.take(8)?.try_into().ok()?);
    let pe_id = PoolElementId(u32::from_be_bytes(reader.take(4)?.try_into().ok()?));
    let issued = u64::from_be_bytes(reader.take(8)?.try_into().ok()?);
    let handle_length = usize::from(*reader.take(1)?.first()?);
    let pool_handle = PoolHandle::new(reader.take(handle_length)?).ok()?;
    let cookie_length = usize::from(u16::from_be_bytes(reader.take(2)?.try_into().ok()?));
    let cookie = reader.take(cookie_length)?;
    if !reader.0.is_empty() {
        return None;
    }
    Some(Binding {
        session,
        pool_handle,
        pe_id,
        asap_cookie: (!cookie.is_empty()).then(|| cookie.to_vec()),
        issued,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(count)?;
        self.0 = rest;
        Some(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding {
            session: 0x0102_0304_0506_0708,
            pool_handle: PoolHandle::new(b"WebPool").unwrap(),
            pe_id: PoolElementId(0xdead_beef),
            asap_cookie: Some(b"state".to_vec()),
            issued: 1_790_000_000,
        }
    }

    #[test]
    fn sealed_bindings_open_with_any_configured_key() {
        let old = CookieSealer::new("rs", &[[7; 32]]).unwrap();
        let rotated = CookieSealer::new("rs", &[[9; 32], [7; 32]]).unwrap();
        let value = old.seal(&binding()).unwrap();
        assert_eq!(rotated.open(&value), Some(binding()));
        let fresh = rotated.seal(&binding()).unwrap();
        assert_eq!(old.open(&fresh), None, "a key the gateway does not hold");
        assert_ne!(
            value,
            old.seal(&binding()).unwrap(),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn tampered_renamed_or_garbage_cookies_are_refused() {
        let sealer = CookieSealer::new("rs", &[[7; 32]]).unwrap();
        let value = sealer.seal(&binding()).unwrap();
        let mut bytes = value.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(sealer.open(std::str::from_utf8(&bytes).unwrap()), None);
        let other_name = CookieSealer::new("other", &[[7; 32]]).unwrap();
        assert_eq!(other_name.open(&value), None, "the name is bound in");
        for garbage in ["", "!!", "AAAA", &"A".repeat(10_000)] {
            assert_eq!(sealer.open(garbage), None);
        }
    }

    #[test]
    fn large_asap_cookies_stay_out() {
        let sealer = CookieSealer::new("rs", &[[7; 32]]).unwrap();
        let mut large = binding();
        large.asap_cookie = Some(vec![1; MAX_ASAP_COOKIE + 1]);
        let opened = sealer.open(&sealer.seal(&large).unwrap()).unwrap();
        assert_eq!(opened.asap_cookie, None);
        assert_eq!(opened.pe_id, large.pe_id);
    }

    #[test]
    fn the_binding_is_found_among_other_cookies() {
        let sealer = CookieSealer::new("rs", &[[7; 32]]).unwrap();
        let value = sealer.seal(&binding()).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::COOKIE, "a=1; rs=junk".parse().unwrap());
        headers.append(
            http::header::COOKIE,
            format!("b=2; rs={value}").parse().unwrap(),
        );
        assert_eq!(sealer.from_headers(&headers), Some(binding()));
    }
}
