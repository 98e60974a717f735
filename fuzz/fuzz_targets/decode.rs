//! Fuzzes the ASAP/ENRP decoder: no input may panic, and whatever decodes must
//! re-encode to bytes that decode to the same message.
//!
//! `cargo fuzz run decode --sanitizer none` (stable) or `cargo +nightly fuzz run decode`.
//! The first byte picks the protocol; the rest is the message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rserpool_proto::wire::{self, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((selector, bytes)) = data.split_first() else {
        return;
    };
    let protocol = if selector & 1 == 0 {
        Protocol::Asap
    } else {
        Protocol::Enrp
    };
    if let Ok(decoded) = wire::decode(protocol, bytes) {
        let again = decoded
            .message
            .encode_with_unknown(&decoded.unknown_parameters)
            .expect("a decoded message re-encodes");
        let redecoded = wire::decode(protocol, &again).expect("a re-encoded message decodes");
        assert_eq!(redecoded.message, decoded.message);
    }
});
