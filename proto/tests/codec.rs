//! Codec tests (RFC 5352 §2, RFC 5353 §2, RFC 5354): every test vector,
//! the transport-parameter vectors, the unknown-parameter rules (RFC 5354 §2.1), the
//! padding rules (RFC 5354 §2), and properties over arbitrary messages and arbitrary bytes.

#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code")]

mod vectors;

use std::net::{IpAddr, Ipv6Addr};

use proptest::prelude::*;
use rserpool_proto::wire::{
    self, AsapMessage, CauseCode, Cookie, EnrpBody, EnrpMessage, HandleResolution, Message,
    OperationError, Policy, PolicyType, PoolElement, PoolElementId, PoolHandle, Protocol,
    RegistrarId, Registration, Transport, TransportProtocol, TransportUse, WireErrorKind,
};
use vectors::{PE_A, echo_pool, ipv4, pe};

/// docs/wire.md §5: each vector decodes to the documented message, and encoding
/// that message gives the identical bytes.
#[test]
fn every_spec_vector_decodes_to_its_fields_and_encodes_back_identically() {
    let vectors = vectors::all();
    assert_eq!(vectors.len(), 28, "the §9.14 table has 28 rows");
    for vector in vectors {
        let bytes = vector.bytes();
        let decoded = wire::decode(vector.protocol, &bytes)
            .unwrap_or_else(|e| panic!("{}: decode failed: {e}", vector.name));
        assert_eq!(
            decoded.message, vector.message,
            "{}: decoded fields",
            vector.name
        );
        assert!(decoded.unknown_parameters.is_empty(), "{}", vector.name);
        assert_eq!(
            hex::encode(vector.message.encode().unwrap()),
            vector.hex,
            "{}: encoding",
            vector.name
        );
    }
}

/// The protocol is an input: the same bytes are a different message under ENRP.
#[test]
fn the_protocol_decides_the_message_type() {
    let registration = hex::decode("010000380009000c4563686f506f6f6c000a00281a2b3c4d0000000000015f90000400101b58000000010008c000020a0008000800000001").unwrap();
    assert!(matches!(
        wire::decode(Protocol::Asap, &registration).unwrap().message,
        Message::Asap(AsapMessage::Registration(_))
    ));
    // As ENRP, type 0x01 is a PRESENCE whose "IDs" are the ASAP parameters: it must not
    // decode as a registration, and must not panic.
    assert!(!matches!(
        wire::decode(Protocol::Enrp, &registration).map(|d| d.message),
        Ok(Message::Asap(_))
    ));
}

/// Registration of PE A with the other user transports and the LUD policy of the
/// extra vector table under §9.14.
#[test]
fn transport_and_policy_vectors_of_9_14() {
    let lud = Policy::LeastUsedDegradation {
        load: 0x4000_0000,
        degradation: 0x0100_0000,
    };
    let ip6 = IpAddr::V6("2001:db8::1".parse().unwrap());
    let cases = [
        (
            "00050010138a000100010008c000020a",
            TransportProtocol::Tcp(TransportUse::DataPlusControl),
            5002,
            vec![ipv4(10)],
        ),
        (
            "00060010138b000000010008c000020a",
            TransportProtocol::Udp,
            5003,
            vec![ipv4(10)],
        ),
        (
            "00030014138800001122334400010008c000020a",
            TransportProtocol::Dccp {
                service_code: 0x1122_3344,
            },
            5000,
            vec![ipv4(10)],
        ),
        (
            "0007001c138900000002001420010db8000000000000000000000001",
            TransportProtocol::UdpLite,
            5001,
            vec![ip6],
        ),
        (
            "00040024138c000100010008c000020a0002001420010db8000000000000000000000001",
            TransportProtocol::Sctp(TransportUse::DataPlusControl),
            5004,
            vec![ipv4(10), ip6],
        ),
    ];
    for (tlv, protocol, port, addresses) in cases {
        let policy_tlv = "00080010400000024000000001000000";
        let pe_len = 16 + tlv.len() / 2 + policy_tlv.len() / 2;
        let total = 4 + 12 + pe_len;
        let hex = format!(
            "0100{total:04x}0009000c4563686f506f6f6c000a{pe_len:04x}1a2b3c4d0000000000015f90{tlv}{policy_tlv}"
        );
        let message = Message::Asap(AsapMessage::Registration(Registration {
            pool_handle: echo_pool(),
            pool_element: PoolElement {
                id: PE_A,
                home_registrar: RegistrarId::UNKNOWN,
                registration_life_ms: 90_000,
                user_transport: Transport {
                    protocol,
                    port,
                    addresses,
                },
                policy: lud.clone(),
                asap_transport: None,
            },
        }));
        let decoded = wire::decode(Protocol::Asap, &hex::decode(&hex).unwrap()).unwrap();
        assert_eq!(decoded.message, message, "{tlv}");
        assert_eq!(hex::encode(message.encode().unwrap()), hex, "{tlv}");
    }
    // The WRR weight-5 policy TLV.
    let mut registration = registration_of(Policy::WeightedRoundRobin { weight: 5 });
    let bytes = registration.encode().unwrap();
    assert!(hex::encode(&bytes).ends_with("0008000c0000000200000005"));
    registration = Message::Asap(AsapMessage::decode(&bytes).map(|d| d.message).unwrap());
    assert_eq!(
        registration,
        registration_of(Policy::WeightedRoundRobin { weight: 5 })
    );
}

fn registration_of(policy: Policy) -> Message {
    let mut pool_element = pe(PE_A, RegistrarId::UNKNOWN, None);
    pool_element.policy = policy;
    Message::Asap(AsapMessage::Registration(Registration {
        pool_handle: echo_pool(),
        pool_element,
    }))
}

/// RFC 5354, IPv6 Address: IPv4-mapped IPv6 addresses go on the wire as IPv4.
#[test]
fn ipv4_mapped_addresses_are_encoded_as_ipv4() {
    let mut mapped = pe(PE_A, RegistrarId::UNKNOWN, None);
    mapped.user_transport.addresses = vec![IpAddr::V6(Ipv6Addr::new(
        0, 0, 0, 0, 0, 0xffff, 0xc000, 0x020a,
    ))];
    let message = AsapMessage::Registration(Registration {
        pool_handle: echo_pool(),
        pool_element: mapped,
    });
    assert_eq!(
        hex::encode(message.encode().unwrap()),
        "010000380009000c4563686f506f6f6c000a00281a2b3c4d0000000000015f90000400101b58000000010008c000020a0008000800000001"
    );
}

/// A HANDLE_RESOLUTION with one unknown parameter of the given type after the handle.
fn resolution_with_unknown(param_type: u16, value: &[u8]) -> Vec<u8> {
    let mut bytes = hex::decode("050000000009000c4563686f506f6f6c").unwrap();
    bytes.extend_from_slice(&param_type.to_be_bytes());
    bytes.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(value);
    while !bytes.len().is_multiple_of(4) {
        bytes.push(0);
    }
    let length = u16::try_from(bytes.len()).unwrap().to_be_bytes();
    bytes[2..4].copy_from_slice(&length);
    bytes
}

/// docs/wire.md §2: the two action bits of an unrecognized parameter.
#[test]
fn unknown_parameters_follow_their_action_bits() {
    // 00: stop, discard silently.
    let err = AsapMessage::decode(&resolution_with_unknown(0x0077, &[1, 2, 3])).unwrap_err();
    assert_eq!(err.offset, 16);
    assert!(matches!(
        err.kind,
        WireErrorKind::UnrecognizedParameter {
            param_type: 0x0077,
            report: false,
            ..
        }
    ));
    assert_eq!(err.reply_cause(), None);

    // 01: stop, report with a copy of the TLV (the §9.13 ASAP_ERROR).
    let err = AsapMessage::decode(&resolution_with_unknown(0x4077, &[1, 2, 3])).unwrap_err();
    let cause = err.reply_cause().unwrap();
    assert_eq!(cause.code, CauseCode::UNRECOGNIZED_PARAMETER);
    assert_eq!(cause.info, [0x40, 0x77, 0x00, 0x07, 1, 2, 3]);
    let reply = AsapMessage::Error(rserpool_proto::wire::ErrorReport {
        error: OperationError::single(cause),
    });
    assert_eq!(
        hex::encode(reply.encode().unwrap()),
        "0e000014000c000f0001000b4077000701020300"
    );

    // 10: skip, keep, no report; the message is processed.
    let bytes = resolution_with_unknown(0x8077, &[1, 2, 3]);
    let decoded = AsapMessage::decode(&bytes).unwrap();
    assert_eq!(
        decoded.message,
        AsapMessage::HandleResolution(HandleResolution {
            pool_handle: echo_pool(),
            items: None
        })
    );
    assert_eq!(decoded.unknown_parameters.len(), 1);
    assert!(decoded.report_causes().is_empty());
    assert_eq!(
        decoded
            .message
            .encode_with_unknown(&decoded.unknown_parameters)
            .unwrap(),
        bytes
    );

    // 11: skip, keep, and report.
    let bytes = resolution_with_unknown(0xc077, &[9; 6]);
    let decoded = AsapMessage::decode(&bytes).unwrap();
    let causes = decoded.report_causes();
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].info, [0xc0, 0x77, 0x00, 0x0a, 9, 9, 9, 9, 9, 9]);
    assert_eq!(
        decoded
            .message
            .encode_with_unknown(&decoded.unknown_parameters)
            .unwrap(),
        bytes
    );
}

/// Kept unknown parameters re-encode byte-exact wherever they were: before, between
/// and after known parameters.
#[test]
fn kept_unknown_parameters_reencode_in_place() {
    // HANDLE_RESOLUTION_RESPONSE: unknown, PH, POL, unknown, PE, unknown.
    let unknown = |t: u16, fill: u8, n: usize| {
        let mut tlv = t.to_be_bytes().to_vec();
        tlv.extend_from_slice(&u16::try_from(4 + n).unwrap().to_be_bytes());
        tlv.extend(std::iter::repeat_n(fill, n));
        while !tlv.len().is_multiple_of(4) {
            tlv.push(0);
        }
        tlv
    };
    let known =
        AsapMessage::HandleResolutionResponse(rserpool_proto::wire::HandleResolutionResponse {
            pool_handle: echo_pool(),
            policy: Some(Policy::RoundRobin),
            pool_elements: vec![pe(PE_A, vectors::PR1, None)],
            error: None,
        })
        .encode()
        .unwrap();
    let (ph, rest) = known[4..].split_at(12);
    let (pol, pe_tlv) = rest.split_at(8);
    let mut bytes = vec![0x06, 0, 0, 0];
    bytes.extend(unknown(0x8100, 0xaa, 1));
    bytes.extend_from_slice(ph);
    bytes.extend_from_slice(pol);
    bytes.extend(unknown(0xc101, 0xbb, 5));
    bytes.extend_from_slice(pe_tlv);
    bytes.extend(unknown(0x8102, 0xcc, 8));
    let length = u16::try_from(bytes.len()).unwrap().to_be_bytes();
    bytes[2..4].copy_from_slice(&length);

    let decoded = AsapMessage::decode(&bytes).unwrap();
    let positions: Vec<_> = decoded
        .unknown_parameters
        .iter()
        .map(|u| u.position)
        .collect();
    assert_eq!(positions, [Some(0), Some(2), Some(3)]);
    assert_eq!(decoded.report_causes().len(), 1);
    assert_eq!(
        decoded
            .message
            .encode_with_unknown(&decoded.unknown_parameters)
            .unwrap(),
        bytes
    );
}

/// docs/wire.md §1-2: the message length may or may not count the final padding,
/// and a receiver tolerates a missing final padding.
#[test]
fn both_length_conventions_are_accepted() {
    let cookie = AsapMessage::Cookie(Cookie {
        cookie: b"state".to_vec(),
    });
    let rsplib = hex::decode("0b000010000d00097374617465000000").unwrap();
    // Length 13 (excluding padding), padding present.
    let mut short_length = rsplib.clone();
    short_length[3] = 13;
    assert_eq!(AsapMessage::decode(&short_length).unwrap().message, cookie);
    // Length 13, padding absent.
    assert_eq!(
        AsapMessage::decode(&short_length[..13]).unwrap().message,
        cookie
    );
    // An Operation Error whose length counts its final padding (16 instead of 15).
    let mut counted = hex::decode("0e000014000c000f0001000b4077000701020300").unwrap();
    counted[7] = 0x10;
    let decoded = AsapMessage::decode(&counted).unwrap();
    let AsapMessage::Error(report) = decoded.message else {
        panic!("not an error")
    };
    assert_eq!(
        report.error.causes[0].info,
        [0x40, 0x77, 0x00, 0x07, 1, 2, 3]
    );
}

#[test]
fn malformed_input_gives_typed_errors_with_offsets() {
    let rr = hex::decode("050000100009000c4563686f506f6f6c").unwrap();
    type Check = fn(&WireErrorKind) -> bool;
    let cases: Vec<(Vec<u8>, usize, Check)> = vec![
        (vec![], 0, |k| matches!(k, WireErrorKind::Truncated { .. })),
        (vec![5, 0, 0, 3], 2, |k| {
            matches!(k, WireErrorKind::MessageLengthTooSmall { length: 3 })
        }),
        (vec![5, 0, 0, 20, 0, 0, 0, 0], 2, |k| {
            matches!(k, WireErrorKind::MessageLengthExceedsInput { .. })
        }),
        ([rr.clone(), vec![0; 4]].concat(), 16, |k| {
            matches!(k, WireErrorKind::TrailingBytes { count: 4 })
        }),
        // A parameter length of 3.
        (hex::decode("0500000800090003").unwrap(), 4, |k| {
            matches!(k, WireErrorKind::BadParameterLength { length: 3, .. })
        }),
        // A parameter running past the message.
        (hex::decode("0500000800090010").unwrap(), 4, |k| {
            matches!(k, WireErrorKind::BadParameterLength { length: 16, .. })
        }),
        // A 33-byte pool handle.
        (
            {
                let mut b = hex::decode("0500002c00090025").unwrap();
                b.extend([b'x'; 33]);
                b.extend([0; 3]);
                b
            },
            4,
            |k| {
                matches!(
                    k,
                    WireErrorKind::InvalidValue {
                        what: "pool handle",
                        ..
                    }
                )
            },
        ),
        // No pool handle.
        (vec![5, 0, 0, 4], 4, |k| {
            matches!(k, WireErrorKind::MissingParameter { .. })
        }),
        // A PE identifier where the handle should be.
        (
            hex::decode("05000010000e00081a2b3c4d0009000c").unwrap(),
            4,
            |k| {
                matches!(
                    k,
                    WireErrorKind::UnexpectedParameter {
                        param_type: 0x000e,
                        ..
                    }
                )
            },
        ),
        // Two bytes that cannot be a parameter header.
        (
            hex::decode("050000120009000c4563686f506f6f6c0000").unwrap(),
            16,
            |k| matches!(k, WireErrorKind::Truncated { .. }),
        ),
        // A known ASAP type byte that is not defined: 0x0f.
        (vec![0x0f, 0, 0, 4], 0, |k| {
            matches!(
                k,
                WireErrorKind::UnrecognizedMessage {
                    message_type: 0x0f,
                    ..
                }
            )
        }),
    ];
    for (bytes, offset, check) in cases {
        let err = AsapMessage::decode(&bytes).unwrap_err();
        assert!(check(&err.kind), "{}: {err}", hex::encode(&bytes));
        assert_eq!(err.offset, offset, "{}: {err}", hex::encode(&bytes));
    }
}

/// RFC 5352 §2.2.14 / RFC 5353 §3.7: an unknown message type is answered with cause 0x0002
/// carrying the message.
#[test]
fn unknown_message_types_are_reported_with_a_copy() {
    let unknown = [0x0b, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef];
    let err = EnrpMessage::decode(&unknown).unwrap_err();
    let cause = err.reply_cause().unwrap();
    assert_eq!(cause.code, CauseCode::UNRECOGNIZED_MESSAGE);
    assert_eq!(cause.info, unknown);
    // ENRP_ERROR with type 0x10 (the IANA registry typo) is unknown too.
    assert!(EnrpMessage::decode(&[0x10, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 2]).is_err());
}

/// Error causes rsplib sends with its private codes decode as known-unknown.
#[test]
fn rsplib_private_cause_codes_decode() {
    let bytes =
        hex::decode("030100200009000c4563686f506f6f6c000e00081a2b3c4d000c0008f0080004").unwrap();
    let AsapMessage::RegistrationResponse(response) = AsapMessage::decode(&bytes).unwrap().message
    else {
        panic!("not a response")
    };
    let code = response.error.unwrap().first_code().unwrap();
    assert_eq!(code, CauseCode(0xf008));
    assert!(code.is_address_problem());
    assert_eq!(
        code.to_string(),
        "0xf008 (rsplib: no usable user addresses)"
    );
    assert_eq!(CauseCode(0x7777).to_string(), "0x7777 (unknown cause)");
}

/// Truncation at every offset of every vector is an error, never a panic; and with the
/// length field patched to the truncated size, decoding still never panics.
#[test]
fn truncation_at_every_offset_is_an_error() {
    for vector in vectors::all() {
        let bytes = vector.bytes();
        for cut in 0..bytes.len() {
            let prefix = &bytes[..cut];
            assert!(
                wire::decode(vector.protocol, prefix).is_err(),
                "{} cut at {cut}",
                vector.name
            );
            if cut >= 4 {
                let mut patched = prefix.to_vec();
                patched[2..4].copy_from_slice(&u16::try_from(cut).unwrap().to_be_bytes());
                let _ = wire::decode(vector.protocol, &patched);
            }
        }
    }
}

#[test]
fn pool_handles_are_bounded_at_the_api() {
    assert!(PoolHandle::new(b"").is_err());
    assert!(PoolHandle::new(&[b'a'; 32]).is_ok());
    assert!(PoolHandle::new(&[b'a'; 33]).is_err());
    assert_eq!(PoolHandle::new(b"Echo").unwrap().to_string(), "Echo");
    assert_eq!(
        PoolHandle::new(&[0, 1, 0xff]).unwrap().to_string(),
        "0x0001ff"
    );
}

#[test]
fn oversized_messages_are_refused_by_the_encoder() {
    let cookie = AsapMessage::Cookie(Cookie {
        cookie: vec![0; 65_532],
    });
    assert!(cookie.encode().is_err());
    let fits = AsapMessage::Cookie(Cookie {
        cookie: vec![0; 65_524],
    });
    assert_eq!(fits.encode().unwrap().len(), 65_532);
}

// Properties over arbitrary messages.

fn pool_handle() -> impl Strategy<Value = PoolHandle> {
    proptest::collection::vec(any::<u8>(), 1..=32).prop_map(|b| PoolHandle::new(&b).unwrap())
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>()
            .prop_map(|o| IpAddr::V6(Ipv6Addr::from(o)))
            .prop_filter("mapped addresses are re-encoded as IPv4", |a| match a {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none(),
                IpAddr::V4(_) => true,
            }),
    ]
}

fn transport() -> impl Strategy<Value = Transport> {
    let transport_use = prop_oneof![
        Just(TransportUse::DataOnly),
        Just(TransportUse::DataPlusControl)
    ];
    let protocol = prop_oneof![
        transport_use.clone().prop_map(TransportProtocol::Sctp),
        transport_use.prop_map(TransportProtocol::Tcp),
        Just(TransportProtocol::Udp),
        Just(TransportProtocol::UdpLite),
        any::<u32>().prop_map(|service_code| TransportProtocol::Dccp { service_code }),
    ];
    (
        protocol,
        any::<u16>(),
        proptest::collection::vec(address(), 1..4),
    )
        .prop_map(|(protocol, port, addresses)| Transport {
            protocol,
            port,
            addresses,
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    let known = [
        PolicyType::ROUND_ROBIN,
        PolicyType::WEIGHTED_ROUND_ROBIN,
        PolicyType::RANDOM,
        PolicyType::WEIGHTED_RANDOM,
        PolicyType::PRIORITY,
        PolicyType::LEAST_USED,
        PolicyType::LEAST_USED_DEGRADATION,
        PolicyType::PRIORITY_LEAST_USED,
        PolicyType::RANDOMIZED_LEAST_USED,
        PolicyType::RANDOMIZED_PRIORITY_LEAST_USED,
        PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION,
        PolicyType::PRIORITY_LEAST_USED_DEGRADATION,
        PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION,
        PolicyType::WEIGHTED_RANDOM_DPF,
        PolicyType::LEAST_USED_DPF,
        PolicyType::LEAST_USED_DEGRADATION_DPF,
    ];
    prop_oneof![
        (proptest::sample::select(known.to_vec()), any::<[u32; 4]>()).prop_map(|(t, v)| {
            let needed = Policy::from_values(t, &v).unwrap().values().len();
            Policy::from_values(t, &v[..needed]).unwrap()
        }),
        (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..4))
            .prop_filter("unknown types only", move |(t, _)| !known
                .contains(&PolicyType(*t)))
            .prop_map(|(t, values)| Policy::Other {
                policy_type: PolicyType(t),
                values
            }),
    ]
}

fn pool_element() -> impl Strategy<Value = PoolElement> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        transport(),
        policy(),
        proptest::option::of(transport()),
    )
        .prop_map(
            |(id, home, life, user_transport, policy, asap_transport)| PoolElement {
                id: PoolElementId(id),
                home_registrar: RegistrarId(home),
                registration_life_ms: life,
                user_transport,
                policy,
                asap_transport,
            },
        )
}

fn operation_error() -> impl Strategy<Value = OperationError> {
    proptest::collection::vec(
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..12)),
        1..3,
    )
    .prop_map(|causes| OperationError {
        causes: causes
            .into_iter()
            .map(|(code, info)| rserpool_proto::wire::ErrorCause {
                code: CauseCode(code),
                info,
            })
            .collect(),
    })
}

fn server_information() -> impl Strategy<Value = rserpool_proto::wire::ServerInformation> {
    (any::<u32>(), transport()).prop_map(|(id, transport)| {
        rserpool_proto::wire::ServerInformation {
            server_id: RegistrarId(id),
            transport,
        }
    })
}

fn asap_message() -> impl Strategy<Value = AsapMessage> {
    use rserpool_proto::wire::{
        BusinessCard, DeregistrationResponse, EndpointKeepAlive, ErrorReport,
        HandleResolutionResponse, PoolElementRef, RegistrationResponse, ServerAnnounce,
    };
    let pe_ref = || {
        (pool_handle(), any::<u32>()).prop_map(|(pool_handle, id)| PoolElementRef {
            pool_handle,
            pe_id: PoolElementId(id),
        })
    };
    let cookie = proptest::collection::vec(any::<u8>(), 1..40).prop_map(|cookie| Cookie { cookie });
    let pes = || proptest::collection::vec(pool_element(), 0..4);
    prop_oneof![
        (pool_handle(), pool_element()).prop_map(|(pool_handle, pool_element)| {
            AsapMessage::Registration(Registration {
                pool_handle,
                pool_element,
            })
        }),
        pe_ref().prop_map(AsapMessage::Deregistration),
        (
            any::<bool>(),
            pe_ref(),
            proptest::option::of(operation_error())
        )
            .prop_map(|(reject, r, error)| {
                AsapMessage::RegistrationResponse(RegistrationResponse {
                    reject,
                    pool_handle: r.pool_handle,
                    pe_id: r.pe_id,
                    error,
                })
            }),
        (pe_ref(), proptest::option::of(operation_error())).prop_map(|(r, error)| {
            AsapMessage::DeregistrationResponse(DeregistrationResponse {
                pool_handle: r.pool_handle,
                pe_id: r.pe_id,
                error,
            })
        }),
        (pool_handle(), proptest::option::of(any::<u32>())).prop_map(|(pool_handle, items)| {
            AsapMessage::HandleResolution(HandleResolution { pool_handle, items })
        }),
        (
            pool_handle(),
            proptest::option::of(policy()),
            pes(),
            proptest::option::of(operation_error())
        )
            .prop_map(|(pool_handle, policy, pool_elements, error)| {
                AsapMessage::HandleResolutionResponse(HandleResolutionResponse {
                    pool_handle,
                    policy,
                    pool_elements,
                    error,
                })
            }),
        (
            any::<bool>(),
            any::<u32>(),
            pool_handle(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(home, id, pool_handle, pe)| {
                AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
                    home,
                    server_id: RegistrarId(id),
                    pool_handle,
                    pe_id: pe.map(PoolElementId),
                })
            }),
        pe_ref().prop_map(AsapMessage::EndpointKeepAliveAck),
        pe_ref().prop_map(AsapMessage::EndpointUnreachable),
        (
            any::<u32>(),
            proptest::collection::vec(transport(), 0..3),
            proptest::option::of(server_information())
        )
            .prop_map(|(id, transports, server_information)| {
                AsapMessage::ServerAnnounce(ServerAnnounce {
                    server_id: RegistrarId(id),
                    transports,
                    server_information,
                })
            }),
        cookie.clone().prop_map(AsapMessage::Cookie),
        cookie.prop_map(AsapMessage::CookieEcho),
        (pool_handle(), proptest::option::of(policy()), pes()).prop_map(
            |(pool_handle, policy, pool_elements)| {
                AsapMessage::BusinessCard(BusinessCard {
                    pool_handle,
                    policy,
                    pool_elements,
                })
            }
        ),
        operation_error().prop_map(|error| AsapMessage::Error(ErrorReport { error })),
    ]
}

fn enrp_message() -> impl Strategy<Value = EnrpMessage> {
    use rserpool_proto::wire::{PoolEntries, UpdateAction};
    let id = any::<u32>().prop_map(RegistrarId);
    let pools = proptest::collection::vec(
        (
            pool_handle(),
            proptest::collection::vec(pool_element(), 1..3),
        )
            .prop_map(|(pool_handle, pool_elements)| PoolEntries {
                pool_handle,
                pool_elements,
            }),
        0..3,
    );
    let body = prop_oneof![
        (
            any::<bool>(),
            proptest::option::of(any::<u16>()),
            proptest::option::of(server_information())
        )
            .prop_map(|(reply_required, checksum, server_information)| {
                EnrpBody::Presence {
                    reply_required,
                    checksum,
                    server_information,
                }
            }),
        any::<bool>()
            .prop_map(|own_children_only| EnrpBody::HandleTableRequest { own_children_only }),
        (any::<bool>(), any::<bool>(), pools).prop_map(|(reject, more, pools)| {
            EnrpBody::HandleTableResponse {
                reject,
                more,
                pools,
            }
        }),
        (any::<bool>(), any::<u16>(), pool_handle(), pool_element()).prop_map(
            |(takeover_suggested, action, pool_handle, pool_element)| EnrpBody::HandleUpdate {
                takeover_suggested,
                action: UpdateAction(action),
                pool_handle,
                pool_element
            }
        ),
        Just(EnrpBody::ListRequest),
        (
            any::<bool>(),
            proptest::collection::vec(server_information(), 0..3)
        )
            .prop_map(|(reject, servers)| EnrpBody::ListResponse { reject, servers }),
        id.clone()
            .prop_map(|target| EnrpBody::InitTakeover { target }),
        id.clone()
            .prop_map(|target| EnrpBody::InitTakeoverAck { target }),
        id.clone()
            .prop_map(|target| EnrpBody::TakeoverServer { target }),
        operation_error().prop_map(|error| EnrpBody::Error { error }),
    ];
    (id.clone(), id, body).prop_map(|(sender, receiver, body)| EnrpMessage {
        sender,
        receiver,
        body,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn asap_roundtrip(message in asap_message()) {
        let bytes = message.encode().unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), bytes.len());
        let decoded = AsapMessage::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.message, message);
    }

    #[test]
    fn enrp_roundtrip(message in enrp_message()) {
        let bytes = message.encode().unwrap();
        let decoded = EnrpMessage::decode(&bytes).unwrap();
        prop_assert_eq!(decoded.message, message);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        for protocol in [Protocol::Asap, Protocol::Enrp] {
            if let Ok(decoded) = wire::decode(protocol, &bytes) {
                // Whatever decodes must re-encode, and that must decode to the same message.
                let again = decoded.message.encode_with_unknown(&decoded.unknown_parameters).unwrap();
                prop_assert_eq!(wire::decode(protocol, &again).unwrap().message, decoded.message);
            }
        }
    }

    /// Mutating one byte of a valid message never panics the decoder.
    #[test]
    fn mutated_vectors_never_panic(index in 0usize..200, value in any::<u8>(), which in 0usize..28) {
        let vector = &vectors::all()[which];
        let mut bytes = vector.bytes();
        let at = index % bytes.len();
        bytes[at] = value;
        let _ = wire::decode(vector.protocol, &bytes);
    }
}
