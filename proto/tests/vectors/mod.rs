//! The project's wire test vectors (docs/architecture.md, "The wire codec"; produced byte-identically by
//! rsplib 3.4.4's encoder or accepted by its decoder), with the typed message each
//! one must decode to. Shared by the codec, fuzz-seed and tshark tests.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::net::{IpAddr, Ipv4Addr};

use rserpool_proto::wire::{
    AsapMessage, CauseCode, Cookie, DeregistrationResponse, EndpointKeepAlive, EnrpBody,
    EnrpMessage, ErrorCause, ErrorReport, HandleResolution, HandleResolutionResponse, Message,
    OperationError, Policy, PoolElement, PoolElementId, PoolElementRef, PoolEntries, PoolHandle,
    Protocol, RegistrarId, Registration, RegistrationResponse, ServerAnnounce, ServerInformation,
    Transport, TransportProtocol, TransportUse, UpdateAction,
};

pub(crate) const PR1: RegistrarId = RegistrarId(0x1122_3344);
pub(crate) const PR2: RegistrarId = RegistrarId(0x5566_7788);
pub(crate) const PR3: RegistrarId = RegistrarId(0x99aa_bbcc);
pub(crate) const PE_A: PoolElementId = PoolElementId(0x1a2b_3c4d);
pub(crate) const PE_B: PoolElementId = PoolElementId(0x5a6b_7c8d);

pub(crate) fn echo_pool() -> PoolHandle {
    PoolHandle::new(b"EchoPool").expect("valid handle")
}

pub(crate) fn ipv4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

pub(crate) fn sctp(port: u16, address: IpAddr) -> Transport {
    Transport {
        protocol: TransportProtocol::Sctp(TransportUse::DataOnly),
        port,
        addresses: vec![address],
    }
}

/// PE A or B of §9: SCTP port 7000, Round Robin, 90 s registration life.
pub(crate) fn pe(id: PoolElementId, home: RegistrarId, asap_port: Option<u16>) -> PoolElement {
    let address = if id == PE_A { ipv4(10) } else { ipv4(11) };
    PoolElement {
        id,
        home_registrar: home,
        registration_life_ms: 90_000,
        user_transport: sctp(7000, address),
        policy: Policy::RoundRobin,
        asap_transport: asap_port.map(|port| sctp(port, address)),
    }
}

fn asap(m: AsapMessage) -> Message {
    Message::Asap(m)
}

fn enrp(sender: RegistrarId, receiver: RegistrarId, body: EnrpBody) -> Message {
    Message::Enrp(EnrpMessage {
        sender,
        receiver,
        body,
    })
}

fn pe_ref(pe_id: PoolElementId) -> PoolElementRef {
    PoolElementRef {
        pool_handle: echo_pool(),
        pe_id,
    }
}

/// One row of the §9.14 table.
#[derive(Debug)]
pub(crate) struct Vector {
    pub(crate) name: &'static str,
    pub(crate) protocol: Protocol,
    pub(crate) hex: &'static str,
    pub(crate) message: Message,
}

impl Vector {
    pub(crate) fn bytes(&self) -> Vec<u8> {
        hex::decode(self.hex).expect("vector hex")
    }
}

/// Every row of docs/wire.md §5, in table order.
pub(crate) fn all() -> Vec<Vector> {
    use Protocol::{Asap, Enrp};
    let v = |name, protocol, hex, message| Vector {
        name,
        protocol,
        hex,
        message,
    };
    let server_info = |id, last| ServerInformation {
        server_id: id,
        transport: sctp(9901, ipv4(last)),
    };
    vec![
        v(
            "registration",
            Asap,
            "010000380009000c4563686f506f6f6c000a00281a2b3c4d0000000000015f90000400101b58000000010008c000020a0008000800000001",
            asap(AsapMessage::Registration(Registration {
                pool_handle: echo_pool(),
                pool_element: pe(PE_A, RegistrarId::UNKNOWN, None),
            })),
        ),
        v(
            "registration_response",
            Asap,
            "030000180009000c4563686f506f6f6c000e00081a2b3c4d",
            asap(AsapMessage::RegistrationResponse(RegistrationResponse {
                reject: false,
                pool_handle: echo_pool(),
                pe_id: PE_A,
                error: None,
            })),
        ),
        v(
            "registration_response_reject",
            Asap,
            "030100200009000c4563686f506f6f6c000e00081a2b3c4d000c000800050004",
            asap(AsapMessage::RegistrationResponse(RegistrationResponse {
                reject: true,
                pool_handle: echo_pool(),
                pe_id: PE_A,
                error: Some(OperationError::single(ErrorCause::new(
                    CauseCode::INCONSISTENT_POOLING_POLICY,
                ))),
            })),
        ),
        v(
            "deregistration",
            Asap,
            "020000180009000c4563686f506f6f6c000e00081a2b3c4d",
            asap(AsapMessage::Deregistration(pe_ref(PE_A))),
        ),
        v(
            "deregistration_response",
            Asap,
            "040000180009000c4563686f506f6f6c000e00081a2b3c4d",
            asap(AsapMessage::DeregistrationResponse(
                DeregistrationResponse {
                    pool_handle: echo_pool(),
                    pe_id: PE_A,
                    error: None,
                },
            )),
        ),
        v(
            "handle_resolution",
            Asap,
            "050000100009000c4563686f506f6f6c",
            asap(AsapMessage::HandleResolution(HandleResolution {
                pool_handle: echo_pool(),
                items: None,
            })),
        ),
        v(
            "handle_resolution_hropt",
            Asap,
            "050000180009000c4563686f506f6f6c803f000800000002",
            asap(AsapMessage::HandleResolution(HandleResolution {
                pool_handle: echo_pool(),
                items: Some(2),
            })),
        ),
        v(
            "handle_resolution_response",
            Asap,
            "060000680009000c4563686f506f6f6c0008000800000001000a00281a2b3c4d1122334400015f90000400101b58000000010008c000020a0008000800000001000a00285a6b7c8d1122334400015f90000400101b58000000010008c000020b0008000800000001",
            asap(AsapMessage::HandleResolutionResponse(
                HandleResolutionResponse {
                    pool_handle: echo_pool(),
                    policy: Some(Policy::RoundRobin),
                    pool_elements: vec![pe(PE_A, PR1, None), pe(PE_B, PR1, None)],
                    error: None,
                },
            )),
        ),
        v(
            "handle_resolution_response_unknown",
            Asap,
            "0600001c0009000e4e6f53756368506f6f6c0000000c000800090004",
            asap(AsapMessage::HandleResolutionResponse(
                HandleResolutionResponse {
                    pool_handle: PoolHandle::new(b"NoSuchPool").expect("handle"),
                    policy: None,
                    pool_elements: vec![],
                    error: Some(OperationError::single(ErrorCause::new(
                        CauseCode::UNKNOWN_POOL_HANDLE,
                    ))),
                },
            )),
        ),
        v(
            "endpoint_keep_alive",
            Asap,
            "07010014112233440009000c4563686f506f6f6c",
            asap(AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
                home: true,
                server_id: PR1,
                pool_handle: echo_pool(),
                pe_id: None,
            })),
        ),
        v(
            "endpoint_keep_alive_rsplib",
            Asap,
            "0701001c112233440009000c4563686f506f6f6c000e00081a2b3c4d",
            asap(AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
                home: true,
                server_id: PR1,
                pool_handle: echo_pool(),
                pe_id: Some(PE_A),
            })),
        ),
        v(
            "endpoint_keep_alive_ack",
            Asap,
            "080000180009000c4563686f506f6f6c000e00081a2b3c4d",
            asap(AsapMessage::EndpointKeepAliveAck(pe_ref(PE_A))),
        ),
        v(
            "endpoint_unreachable",
            Asap,
            "090000180009000c4563686f506f6f6c000e00085a6b7c8d",
            asap(AsapMessage::EndpointUnreachable(pe_ref(PE_B))),
        ),
        v(
            "server_announce_rsplib",
            Asap,
            "0a00000811223344",
            asap(AsapMessage::ServerAnnounce(ServerAnnounce {
                server_id: PR1,
                transports: vec![],
                server_information: None,
            })),
        ),
        v(
            "server_announce_full",
            Asap,
            "0a00001811223344000400100f17000000010008c0000201",
            asap(AsapMessage::ServerAnnounce(ServerAnnounce {
                server_id: PR1,
                transports: vec![sctp(3863, ipv4(1))],
                server_information: None,
            })),
        ),
        v(
            "cookie",
            Asap,
            "0b000010000d00097374617465000000",
            asap(AsapMessage::Cookie(Cookie {
                cookie: b"state".to_vec(),
            })),
        ),
        v(
            "cookie_echo",
            Asap,
            "0c000010000d00097374617465000000",
            asap(AsapMessage::CookieEcho(Cookie {
                cookie: b"state".to_vec(),
            })),
        ),
        v(
            "asap_error_unrecog_param",
            Asap,
            "0e000014000c000f0001000b4077000701020300",
            asap(AsapMessage::Error(ErrorReport {
                error: OperationError::single(ErrorCause {
                    code: CauseCode::UNRECOGNIZED_PARAMETER,
                    info: vec![0x40, 0x77, 0x00, 0x07, 0x01, 0x02, 0x03],
                }),
            })),
        ),
        v(
            "enrp_presence",
            Enrp,
            "0101002c1122334455667788000f0006f7310000000b0018112233440004001026ad000000010008c0000201",
            enrp(
                PR1,
                PR2,
                EnrpBody::Presence {
                    reply_required: true,
                    checksum: Some(0xf731),
                    server_information: Some(server_info(PR1, 1)),
                },
            ),
        ),
        v(
            "enrp_handle_table_request_W",
            Enrp,
            "0201000c5566778811223344",
            enrp(
                PR2,
                PR1,
                EnrpBody::HandleTableRequest {
                    own_children_only: true,
                },
            ),
        ),
        v(
            "enrp_handle_table_response",
            Enrp,
            "0300008811223344556677880009000c4563686f506f6f6c000a00381a2b3c4d1122334400015f90000400101b58000000010008c000020a000800080000000100040010c000000000010008c000020a000a00385a6b7c8d1122334400015f90000400101b58000000010008c000020b000800080000000100040010c001000000010008c000020b",
            enrp(
                PR1,
                PR2,
                EnrpBody::HandleTableResponse {
                    reject: false,
                    more: false,
                    pools: vec![PoolEntries {
                        pool_handle: echo_pool(),
                        pool_elements: vec![
                            pe(PE_A, PR1, Some(0xc000)),
                            pe(PE_B, PR1, Some(0xc001)),
                        ],
                    }],
                },
            ),
        ),
        v(
            "enrp_handle_update",
            Enrp,
            "040000541122334455667788000000000009000c4563686f506f6f6c000a00381a2b3c4d1122334400015f90000400101b58000000010008c000020a000800080000000100040010c000000000010008c000020a",
            enrp(
                PR1,
                PR2,
                EnrpBody::HandleUpdate {
                    takeover_suggested: false,
                    action: UpdateAction::ADD_PE,
                    pool_handle: echo_pool(),
                    pool_element: pe(PE_A, PR1, Some(0xc000)),
                },
            ),
        ),
        v(
            "enrp_list_request",
            Enrp,
            "0500000c5566778811223344",
            enrp(PR2, PR1, EnrpBody::ListRequest),
        ),
        v(
            "enrp_list_response",
            Enrp,
            "060000241122334455667788000b001899aabbcc0004001026ad000000010008c0000203",
            enrp(
                PR1,
                PR2,
                EnrpBody::ListResponse {
                    reject: false,
                    servers: vec![server_info(PR3, 3)],
                },
            ),
        ),
        v(
            "enrp_init_takeover",
            Enrp,
            "070000105566778899aabbcc11223344",
            enrp(PR2, PR3, EnrpBody::InitTakeover { target: PR1 }),
        ),
        v(
            "enrp_init_takeover_ack",
            Enrp,
            "0800001099aabbcc5566778811223344",
            enrp(PR3, PR2, EnrpBody::InitTakeoverAck { target: PR1 }),
        ),
        v(
            "enrp_takeover_server",
            Enrp,
            "090000105566778899aabbcc11223344",
            enrp(PR2, PR3, EnrpBody::TakeoverServer { target: PR1 }),
        ),
        v(
            "enrp_error",
            Enrp,
            "0a00001c5566778811223344000c00100002000cee000008deadbeef",
            enrp(
                PR2,
                PR1,
                EnrpBody::Error {
                    error: OperationError::single(ErrorCause {
                        code: CauseCode::UNRECOGNIZED_MESSAGE,
                        info: vec![0xee, 0x00, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef],
                    }),
                },
            ),
        ),
    ]
}
