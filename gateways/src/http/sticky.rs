//! Sticky sessions that any gateway instance can serve: the binding of a client's
//! session to a PE (and the PE's latest ASAP cookie, when small) travels in an HTTP
//! cookie, sealed with XChaCha20-Poly1305 under a key from the configuration. Gateways
//! sharing the key need no shared state; a client cannot read or forge its binding.
//!
//! Cookie value: `base64url(nonce[24] || ciphertext)`, the cookie name bound in as
//! associated data. Plaintext: version (2), session id (u64), PE identifier (u32),
//! issued (u64, seconds since the Unix epoch), sealed (u64, likewise), pool handle (u8
//! length + bytes), ASAP cookie (u16 length + bytes).
//!
//! A sealed binding is good for `max_age` after it was sealed, and a gateway seals it
//! again once it is half that old: a client cannot replay a binding (and the ASAP
//! cookie in it, rolling its session's state back) older than `max_age`; within that
//! window a replay is not told apart (the cookie is the client's to keep or resend).
//! Version 1 bindings (no seal date) are not accepted.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rserpool_proto::wire::{PoolElementId, PoolHandle};

const VERSION: u8 = 2;
const NONCE: usize = 24;
/// An ASAP cookie larger than this stays out of the HTTP cookie (browsers keep about
/// 4 KiB per cookie; the rest of the binding and the encoding need the remainder).
pub const MAX_ASAP_COOKIE: usize = 2048;

/// The cookie's name unless configured.
pub const DEFAULT_COOKIE: &str = "rserpool_session";

/// How long a sealed binding is accepted unless configured.
pub const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A client's session: which PE serves it and the state that PE handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Stable across re-homes: PEs see it as `RSerPool-Session`.
    pub session: u64,
    pub pool_handle: PoolHandle,
    pub pe_id: PoolElementId,
    /// The PE's latest ASAP cookie for this session, echoed to the next PE.
    pub asap_cookie: Option<Vec<u8>>,
    /// When the session began (seconds since the Unix epoch).
    pub issued: u64,
    /// When this binding was last sealed (seconds since the Unix epoch).
    pub sealed: u64,
}

/// Seals and opens bindings; the first key seals, every key opens (key rotation).
#[derive(Clone)]
pub struct CookieSealer {
    name: String,
    keys: Vec<XChaCha20Poly1305>,
    /// How long a sealed binding is accepted.
    max_age: u64,
}

impl std::fmt::Debug for CookieSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSealer")
            .field("name", &self.name)
            .field("keys", &self.keys.len())
            .field("max_age", &self.max_age)
            .finish()
    }
}

impl CookieSealer {
    /// `keys`: 32-byte keys, the first one current; bindings are accepted for `max_age`
    /// after they were sealed. None: no key given.
    pub fn new(
        name: impl Into<String>,
        keys: &[[u8; 32]],
        max_age: std::time::Duration,
    ) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        Some(Self {
            name: name.into(),
            keys: keys
                .iter()
                .map(|key| XChaCha20Poly1305::new(key.into()))
                .collect(),
            max_age: max_age.as_secs().max(1),
        })
    }

    /// Whether a binding sealed at `sealed` is still accepted at `now` (seconds since
    /// the Unix epoch; a minute of clock skew between gateways is allowed).
    fn fresh(&self, sealed: u64, now: u64) -> bool {
        sealed <= now.saturating_add(60) && now.saturating_sub(sealed) <= self.max_age
    }

    /// Whether an accepted binding should be sealed again (half its age is gone), so
    /// that an active session never runs out.
    pub fn due_for_resealing(&self, binding: &Binding, now: u64) -> bool {
        now.saturating_sub(binding.sealed) >= self.max_age / 2
    }

    /// The cookie's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The binding as a cookie value, sealed as of its `sealed` date. `None` only if
    /// the system has no randomness.
    pub fn seal(&self, binding: &Binding) -> Option<String> {
        let mut plain = Vec::with_capacity(64);
        plain.push(VERSION);
        plain.extend_from_slice(&binding.session.to_be_bytes());
        plain.extend_from_slice(&binding.pe_id.0.to_be_bytes());
        plain.extend_from_slice(&binding.issued.to_be_bytes());
        plain.extend_from_slice(&binding.sealed.to_be_bytes());
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

    /// The binding in a cookie value, if one of the keys sealed it, it is well formed,
    /// and it is not older than `max_age` at `now` (seconds since the Unix epoch).
    pub fn open(&self, value: &str, now: u64) -> Option<Binding> {
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
        parse(&plain).filter(|binding| self.fresh(binding.sealed, now))
    }

    /// The binding in a request's `Cookie` headers, if any (and fresh at `now`).
    pub fn from_headers(&self, headers: &http::HeaderMap, now: u64) -> Option<Binding> {
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| *name == self.name)
            .find_map(|(_, value)| self.open(value, now))
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
    let sealed = u64::from_be_bytes(reader.take(8)?.try_into().ok()?);
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
        sealed,
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
            sealed: NOW,
        }
    }

    const NOW: u64 = 1_790_000_500;
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    fn sealer_with(name: &str, keys: &[[u8; 32]]) -> CookieSealer {
        CookieSealer::new(name, keys, HOUR).unwrap()
    }

    /// A replayed old binding used to roll a session's state back: one sealed more
    /// than `max_age` ago is refused, and an active one is resealed at half its age.
    #[test]
    fn old_bindings_are_refused_and_active_ones_resealed() {
        let sealer = sealer_with("rs", &[[7; 32]]);
        let value = sealer.seal(&binding()).unwrap();
        assert_eq!(sealer.open(&value, NOW + 3600), Some(binding()));
        assert_eq!(sealer.open(&value, NOW + 3601), None, "too old");
        assert_eq!(sealer.open(&value, NOW - 61), None, "from the future");
        assert!(!sealer.due_for_resealing(&binding(), NOW + 1799));
        assert!(sealer.due_for_resealing(&binding(), NOW + 1800));
    }

    #[test]
    fn sealed_bindings_open_with_any_configured_key() {
        let old = sealer_with("rs", &[[7; 32]]);
        let rotated = sealer_with("rs", &[[9; 32], [7; 32]]);
        let value = old.seal(&binding()).unwrap();
        assert_eq!(rotated.open(&value, NOW), Some(binding()));
        let fresh = rotated.seal(&binding()).unwrap();
        assert_eq!(
            old.open(&fresh, NOW),
            None,
            "a key the gateway does not hold"
        );
        assert_ne!(
            value,
            old.seal(&binding()).unwrap(),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn tampered_renamed_or_garbage_cookies_are_refused() {
        let sealer = sealer_with("rs", &[[7; 32]]);
        let value = sealer.seal(&binding()).unwrap();
        let mut bytes = value.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(sealer.open(std::str::from_utf8(&bytes).unwrap(), NOW), None);
        let other_name = sealer_with("other", &[[7; 32]]);
        assert_eq!(other_name.open(&value, NOW), None, "the name is bound in");
        for garbage in ["", "!!", "AAAA", &"A".repeat(10_000)] {
            assert_eq!(sealer.open(garbage, NOW), None);
        }
    }

    #[test]
    fn large_asap_cookies_stay_out() {
        let sealer = sealer_with("rs", &[[7; 32]]);
        let mut large = binding();
        large.asap_cookie = Some(vec![1; MAX_ASAP_COOKIE + 1]);
        let opened = sealer.open(&sealer.seal(&large).unwrap(), NOW).unwrap();
        assert_eq!(opened.asap_cookie, None);
        assert_eq!(opened.pe_id, large.pe_id);
    }

    #[test]
    fn the_binding_is_found_among_other_cookies() {
        let sealer = sealer_with("rs", &[[7; 32]]);
        let value = sealer.seal(&binding()).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.append(http::header::COOKIE, "a=1; rs=junk".parse().unwrap());
        headers.append(
            http::header::COOKIE,
            format!("b=2; rs={value}").parse().unwrap(),
        );
        assert_eq!(sealer.from_headers(&headers, NOW), Some(binding()));
    }
}
