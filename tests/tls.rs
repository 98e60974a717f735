//! End-to-end: TLS with mutual authentication on ASAP and ENRP (RFC 5355), real
//! processes on 127.0.0.1 with certificates from `rserpool cert`. Attackers are raw
//! TLS or plain TCP clients; each test names the threat (docs/security.md, after
//! RFC 5355 §3) it closes.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code; a real clock for test deadlines"
)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::pki::Pki;
use common::{Process, eventually, pool_element, registration, run};
use rserpool_proto::wire::{
    AsapMessage, CauseCode, EndpointKeepAlive, EnrpBody, EnrpMessage, PoolElementId,
    PoolElementRef, PoolHandle, RegistrarId, ServerInformation, StreamDeframer, Transport,
    TransportProtocol, TransportUse, UpdateAction,
};

fn with(args: &[&str], more: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| (*a).to_owned())
        .chain(more.iter().cloned())
        .collect()
}

fn start(args: &[String]) -> Process {
    Process::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn tls_registrar(pki: &Pki, name: &str) -> Process {
    let flags = pki.flags(name);
    let mut args = common::registrar_args(&[]);
    args.extend(flags.iter().map(String::as_str));
    Process::start(&args)
}

/// `rserpool resolve --json` with identity `as_identity`: the PE ids, or the exit code.
fn resolve(
    pki: &Pki,
    registrar: SocketAddr,
    pool: &str,
    as_identity: &str,
) -> Result<Vec<String>, i32> {
    let registrar = registrar.to_string();
    let args = with(
        &[
            "resolve",
            pool,
            "--registrar",
            &registrar,
            "--json",
            "--timeout",
            "5s",
        ],
        &pki.flags(as_identity),
    );
    let (code, stdout, _) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    if code != 0 {
        return Err(code);
    }
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    Ok(json["pool_elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pe| pe["id"].as_str().unwrap().to_owned())
        .collect())
}

fn pe_agent(pki: &Pki, name: &str, pool: &str, registrar: SocketAddr, backend: u16) -> Process {
    let registrar = registrar.to_string();
    let backend = format!("127.0.0.1:{backend}");
    start(&with(
        &[
            "pe",
            "--pool",
            pool,
            "--backend",
            &backend,
            "--registrar",
            &registrar,
            "--health",
            "none",
        ],
        &pki.flags(name),
    ))
}

/// A TLS client presenting identity NAME; it checks nothing of the server (an attacker
/// or a tool that only wants to be heard).
type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_client(pki: &Pki, name: &str, to: SocketAddr) -> Result<TlsStream, String> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_file_iter(pki.path(&format!("{name}.pem")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path(&format!("{name}-key.pem")))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(chain, key)
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(to).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    // Complete the handshake now: a refusal shows here.
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads the next message (None when the peer closed or 5 s passed).
fn next_message(stream: &mut impl Read, deframer: &mut StreamDeframer) -> Option<Vec<u8>> {
    let mut buffer = [0u8; 4096];
    loop {
        if let Ok(Some(frame)) = deframer.next_frame() {
            return Some(frame);
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(n) => deframer.push(&buffer[..n]).ok()?,
        }
    }
}

fn asap_answer(stream: &mut impl Read) -> Option<AsapMessage> {
    let mut deframer = StreamDeframer::new();
    next_message(stream, &mut deframer).map(|m| AsapMessage::decode(&m).unwrap().message)
}

/// T1: a PE that speaks no TLS cannot register at a TLS registrar (the connection is
/// refused before any ASAP is read), while a PE with its certificate can.
#[test]
fn a_pe_without_a_certificate_is_refused() {
    let pki = Pki::new("plainpe");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("pe", &["--pe", "WebPool"]);
    pki.issue("gw", &["--pu", "*"]);
    let r = tls_registrar(&pki, "reg");
    let asap = r.address("asap");
    // A plain client: refused at the first byte, nothing registered.
    let mut plain = TcpStream::connect(asap).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(&registration(0x51, "WebPool", 9000))
        .unwrap();
    assert!(asap_answer(&mut plain).is_none());
    assert!(eventually(Duration::from_secs(5), || r
        .log_contains("plain peers are refused")));
    assert_eq!(
        resolve(&pki, asap, "WebPool", "gw"),
        Err(1),
        "unknown pool expected"
    );
    // The control: the PE with its certificate registers.
    let _pe = pe_agent(&pki, "pe", "WebPool", asap, 9001);
    assert!(eventually(Duration::from_secs(10), || {
        resolve(&pki, asap, "WebPool", "gw").is_ok_and(|ids| ids.len() == 1)
    }));
}

/// T2, T4: a PE granted pool A cannot register in pool B: cause 0x000A.
#[test]
fn a_pe_granted_one_pool_cannot_register_in_another() {
    let pki = Pki::new("grant");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("pe-a", &["--pe", "PoolA"]);
    let r = tls_registrar(&pki, "reg");
    let mut stream = tls_client(&pki, "pe-a", r.address("asap")).unwrap();
    for (pool, refused) in [("PoolB", true), ("PoolA", false)] {
        stream.write_all(&registration(0x61, pool, 9000)).unwrap();
        let Some(AsapMessage::RegistrationResponse(response)) = asap_answer(&mut stream) else {
            panic!("no registration response for {pool}")
        };
        assert_eq!(response.reject, refused, "{pool}");
        if refused {
            assert_eq!(
                response.error.unwrap().first_code(),
                Some(CauseCode::SECURITY_REJECTION)
            );
        }
    }
}

/// T3, T8: another PE identity granted the same pool can neither re-register (move)
/// nor deregister a PE identifier it did not register.
#[test]
fn a_pe_cannot_take_over_or_deregister_another_identitys_pe() {
    let pki = Pki::new("owner");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("owner", &["--pe", "WebPool"]);
    pki.issue("thief", &["--pe", "WebPool"]);
    pki.issue("gw", &["--pu", "*"]);
    let r = tls_registrar(&pki, "reg");
    let asap = r.address("asap");
    let mut owner = tls_client(&pki, "owner", asap).unwrap();
    owner
        .write_all(&registration(0x71, "WebPool", 9000))
        .unwrap();
    assert!(matches!(
        asap_answer(&mut owner),
        Some(AsapMessage::RegistrationResponse(r)) if !r.reject
    ));
    let mut thief = tls_client(&pki, "thief", asap).unwrap();
    thief
        .write_all(&registration(0x71, "WebPool", 6666))
        .unwrap();
    let Some(AsapMessage::RegistrationResponse(response)) = asap_answer(&mut thief) else {
        panic!("no registration response")
    };
    assert!(response.reject);
    assert_eq!(
        response.error.unwrap().first_code(),
        Some(CauseCode::NON_UNIQUE_PE_IDENTIFIER)
    );
    let deregistration = AsapMessage::Deregistration(PoolElementRef {
        pool_handle: PoolHandle::new(b"WebPool").unwrap(),
        pe_id: PoolElementId(0x71),
    })
    .encode()
    .unwrap();
    thief.write_all(&deregistration).unwrap();
    let Some(AsapMessage::DeregistrationResponse(response)) = asap_answer(&mut thief) else {
        panic!("no deregistration response")
    };
    assert!(response.error.is_some());
    let pes = common::resolve_pes(
        &asap.to_string(),
        "WebPool",
        &pki.flags("gw")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(pes.len(), 1);
    assert_eq!(pes[0]["user_transport"]["port"], 9000);
}

fn enrp(sender: u32, body: EnrpBody) -> Vec<u8> {
    EnrpMessage {
        sender: RegistrarId(sender),
        receiver: RegistrarId(0x11),
        body,
    }
    .encode()
    .unwrap()
}

fn handle_update(sender: u32, id: u32) -> Vec<u8> {
    let mut element = pool_element(id, 6666);
    element.home_registrar = RegistrarId(sender);
    enrp(
        sender,
        EnrpBody::HandleUpdate {
            takeover_suggested: false,
            action: UpdateAction::ADD_PE,
            pool_handle: PoolHandle::new(b"WebPool").unwrap(),
            pool_element: element,
        },
    )
}

/// T5: a peer without a registrar certificate cannot inject PEs, take a registrar's
/// PEs over or plant fake peers: its HANDLE_UPDATE, INIT_TAKEOVER and LIST_RESPONSE
/// are never acted on, and the association is closed.
#[test]
fn a_peer_without_a_registrar_certificate_is_never_acted_on() {
    let pki = Pki::new("rogue");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("rogue", &["--pe", "WebPool"]);
    pki.issue("pe", &["--pe", "WebPool"]);
    pki.issue("gw", &["--pu", "*"]);
    let flags = pki.flags("reg");
    let mut args = common::registrar_args(&["--admin", "127.0.0.1:0"]);
    args.extend(flags.iter().map(String::as_str));
    let r = Process::start(&args);
    let _pe = pe_agent(&pki, "pe", "WebPool", r.address("asap"), 9001);
    let asap = r.address("asap");
    assert!(eventually(Duration::from_secs(10), || {
        resolve(&pki, asap, "WebPool", "gw").is_ok_and(|ids| ids.len() == 1)
    }));
    let fake_peer = ServerInformation {
        server_id: RegistrarId(0x66),
        transport: Transport {
            protocol: TransportProtocol::Tcp(TransportUse::DataOnly),
            port: 1,
            addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        },
    };
    for message in [
        handle_update(0x22, 0x99),
        enrp(
            0x22,
            EnrpBody::InitTakeover {
                target: RegistrarId(0x11),
            },
        ),
        enrp(
            0x22,
            EnrpBody::ListResponse {
                reject: false,
                servers: vec![fake_peer.clone()],
            },
        ),
    ] {
        let mut stream = tls_client(&pki, "rogue", r.address("enrp")).unwrap();
        stream.write_all(&message).unwrap();
        let mut deframer = StreamDeframer::new();
        assert!(
            next_message(&mut stream, &mut deframer).is_none(),
            "answered instead of closed"
        );
    }
    assert!(eventually(Duration::from_secs(5), || r
        .log_contains("is not a registrar")));
    let ids = resolve(&pki, asap, "WebPool", "gw").unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(!ids.contains(&"0x00000099".to_owned()));
    // No peer was planted by the LIST_RESPONSE, none announced by the INIT_TAKEOVER.
    let (status, peers) = common::admin_get(r.address("admin"), "/api/peers");
    assert_eq!(status, 200);
    let peers: serde_json::Value = serde_json::from_str(&peers).unwrap();
    assert_eq!(peers["peers"].as_array().map(Vec::len), Some(0), "{peers}");
    assert!(!r.log_contains("takeover"));
}

/// T5, T17: a registrar cannot send ENRP as another registrar (its certificate grants
/// 0x22; it sends as 0x33); as itself, the same HANDLE_UPDATE is applied (the
/// control that this test can fail).
#[test]
fn a_registrar_cannot_speak_under_another_registrars_id() {
    let pki = Pki::new("spoof");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("other", &["--registrar-id", "0x22"]);
    pki.issue("gw", &["--pu", "*"]);
    let r = tls_registrar(&pki, "reg");
    let asap = r.address("asap");
    let mut spoofer = tls_client(&pki, "other", r.address("enrp")).unwrap();
    spoofer.write_all(&handle_update(0x33, 0x98)).unwrap();
    let mut deframer = StreamDeframer::new();
    assert!(next_message(&mut spoofer, &mut deframer).is_none());
    assert!(resolve(&pki, asap, "WebPool", "gw").is_err());
    let mut honest = tls_client(&pki, "other", r.address("enrp")).unwrap();
    let presence = enrp(
        0x22,
        EnrpBody::Presence {
            reply_required: false,
            checksum: None,
            server_information: None,
        },
    );
    honest.write_all(&presence).unwrap();
    honest.write_all(&handle_update(0x22, 0x97)).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        resolve(&pki, asap, "WebPool", "gw").is_ok_and(|ids| ids == ["0x00000097"])
    }));
}

/// T5: a peer that is not a registrar asking for the handle table is told no (R flag)
/// before its TLS association closes: the answer queued with the close is delivered
/// first, not cut off by it.
#[test]
fn a_refused_table_request_is_answered_before_the_association_closes() {
    let pki = Pki::new("table");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("pe", &["--pe", "WebPool"]);
    let r = tls_registrar(&pki, "reg");
    for _ in 0..3 {
        let mut stream = tls_client(&pki, "pe", r.address("enrp")).unwrap();
        let request = enrp(
            0x22,
            EnrpBody::HandleTableRequest {
                own_children_only: false,
            },
        );
        stream.write_all(&request).unwrap();
        let mut deframer = StreamDeframer::new();
        let answer = next_message(&mut stream, &mut deframer).expect("an answer before the close");
        let answer = EnrpMessage::decode(&answer).unwrap().message;
        assert!(
            matches!(
                answer.body,
                EnrpBody::HandleTableResponse { reject: true, ref pools, .. } if pools.is_empty()
            ),
            "{answer:?}"
        );
        assert!(
            next_message(&mut stream, &mut deframer).is_none(),
            "closed after it"
        );
    }
}

/// T14: a PE ignores a keep-alive with the H flag unless it comes over an association
/// authenticated as the registrar it names: a plain connection to its ASAP endpoint is
/// refused, and a TLS peer with a PE's certificate is ignored. The PE keeps its home.
#[test]
fn a_pe_ignores_home_claims_from_unauthenticated_peers() {
    let pki = Pki::new("hflag");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("pe", &["--pe", "WebPool"]);
    pki.issue("attacker", &["--pe", "WebPool"]);
    pki.issue("gw", &["--pu", "*"]);
    let r = tls_registrar(&pki, "reg");
    let asap = r.address("asap");
    let pe = pe_agent(&pki, "pe", "WebPool", asap, 9001);
    let mut ids = Vec::new();
    assert!(eventually(Duration::from_secs(10), || {
        ids = resolve(&pki, asap, "WebPool", "gw").unwrap_or_default();
        ids.len() == 1
    }));
    let pe_id = u32::from_str_radix(ids[0].trim_start_matches("0x"), 16).unwrap();
    let endpoint = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), pe.address("asap").port());
    let claim = AsapMessage::EndpointKeepAlive(EndpointKeepAlive {
        home: true,
        server_id: RegistrarId(0x66),
        pool_handle: PoolHandle::new(b"WebPool").unwrap(),
        pe_id: Some(PoolElementId(pe_id)),
    })
    .encode()
    .unwrap();
    let mut plain = TcpStream::connect(endpoint).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = plain.write_all(&claim);
    assert!(asap_answer(&mut plain).is_none());
    let mut attacker = tls_client(&pki, "attacker", endpoint).unwrap();
    attacker.write_all(&claim).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        pe.log_contains("ignored a keep-alive claiming to be the new home registrar")
    }));
    assert!(!pe.log_contains("new home registrar registrar="));
    assert!(!pe.log_contains("registrar association lost"));
    assert_eq!(resolve(&pki, asap, "WebPool", "gw").unwrap(), ids);
}

/// T6, T7: pool users (the gateway, `resolve`) and PEs refuse a registrar whose
/// certificate does not chain to their CA.
#[test]
fn a_registrar_of_another_ca_is_refused() {
    let ours = Pki::new("ours");
    ours.issue("gw", &["--pu", "*"]);
    let theirs = Pki::new("theirs");
    theirs.issue("reg", &["--registrar-id", "0x11"]);
    let r = tls_registrar(&theirs, "reg");
    let asap = r.address("asap").to_string();
    assert_eq!(resolve(&ours, r.address("asap"), "WebPool", "gw"), Err(69));
    let gateway = start(&with(
        &[
            "gateway",
            "--registrar",
            &asap,
            "--http",
            "127.0.0.1:0=WebPool",
        ],
        &ours.flags("gw"),
    ));
    let http = gateway.listener("http");
    let status = common::try_request(http, "GET", "/", &[], b"").map(|reply| reply.status);
    assert_ne!(status, Some(200));
    assert!(eventually(Duration::from_secs(10), || {
        gateway.log_contains("direction=outgoing")
            && gateway.log_contains("TLS: association refused")
    }));
}

/// Certificates rotate on SIGHUP: new associations get the new certificate, the
/// registered PE's association stays up.
#[test]
fn certificate_rotation_by_sighup_keeps_associations() {
    let pki = Pki::new("rotate");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("pe", &["--pe", "WebPool"]);
    pki.issue("gw", &["--pu", "*"]);
    let r = tls_registrar(&pki, "reg");
    let asap = r.address("asap");
    let pe = pe_agent(&pki, "pe", "WebPool", asap, 9001);
    assert!(eventually(Duration::from_secs(10), || {
        resolve(&pki, asap, "WebPool", "gw").is_ok_and(|ids| ids.len() == 1)
    }));
    let before = std::fs::read(pki.path("reg.pem")).unwrap();
    pki.issue("reg", &["--registrar-id", "0x11"]);
    assert_ne!(before, std::fs::read(pki.path("reg.pem")).unwrap());
    r.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || r
        .log_contains("TLS certificate reloaded")));
    assert!(resolve(&pki, asap, "WebPool", "gw").is_ok_and(|ids| ids.len() == 1));
    assert!(!pe.log_contains("registrar association lost"));
    assert!(!r.log_contains("pool element removed"));
    // A certificate granting another registrar ID is not taken: peers would refuse
    // every ENRP message of a registrar running as 0x11.
    pki.issue("reg", &["--registrar-id", "0x12"]);
    r.signal("HUP");
    assert!(eventually(Duration::from_secs(10), || {
        r.log_contains("TLS certificate not reloaded")
    }));
    assert!(r.log_contains("restart to change it"));
    assert!(resolve(&pki, asap, "WebPool", "gw").is_ok_and(|ids| ids.len() == 1));
}

/// Issues NAME, valid in 2020 only, with one grant URI (the CLI issues no certificate
/// that is already expired).
fn issue_expired(pki: &Pki, name: &str, grant: &str) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.path("ca-key.pem")).unwrap())
            .unwrap();
    let ca = std::fs::read_to_string(pki.path("ca.pem")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.subject_alt_names = vec![rcgen::SanType::URI(grant.try_into().unwrap())];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 12, 31);
    let key = rcgen::KeyPair::generate().unwrap();
    let certificate = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(pki.path(&format!("{name}.pem")), certificate.pem()).unwrap();
    std::fs::write(pki.path(&format!("{name}-key.pem")), key.serialize_pem()).unwrap();
}

/// Expired certificates are refused: a role will not start with one (and says so), and
/// a registrar refuses a peer presenting one.
#[test]
fn expired_certificates_are_refused() {
    let pki = Pki::new("expired");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("old", &["--registrar-id", "0x12", "--days", "0"]);
    issue_expired(&pki, "old-pe", "rserpool:pe:WebPool");
    let args = with(&common::registrar_args(&[]), &pki.flags("old"));
    let (code, _, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("expired on"), "{stderr}");
    let r = tls_registrar(&pki, "reg");
    let refused = tls_client(&pki, "old-pe", r.address("asap")).and_then(|mut stream| {
        stream
            .write_all(&registration(0x81, "WebPool", 9000))
            .map_err(|e| e.to_string())?;
        asap_answer(&mut stream).ok_or_else(|| "closed".to_owned())
    });
    assert!(refused.is_err(), "{refused:?}");
    assert!(eventually(Duration::from_secs(5), || r
        .log_contains("certificate expired")));
}

/// A registrar started with a certificate that is not a registrar's, or with an ID its
/// certificate does not grant, refuses to start with a message that says why.
#[test]
fn a_registrar_needs_a_registrar_certificate_for_its_id() {
    let pki = Pki::new("regid");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    pki.issue("pe", &["--pe", "WebPool"]);
    for (name, id, expected) in [
        ("pe", None, "is not a registrar's"),
        ("reg", Some("0x12"), "the certificate grants 0x00000011"),
    ] {
        let mut args = with(&common::registrar_args(&[]), &pki.flags(name));
        if let Some(id) = id {
            args.extend(["--id".to_owned(), id.to_owned()]);
        }
        let (code, _, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 64, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

/// Over SCTP every peer of a TLS endpoint speaks TLS: letting plain peers in beside
/// TLS ones (`--tls-plain`) is refused at start with a message that says why (TLS over
/// SCTP itself runs in the SCTP VM: tests/sctp.rs).
#[test]
fn plain_peers_beside_tls_need_the_tcp_mapping() {
    let pki = Pki::new("sctp");
    pki.issue("reg", &["--registrar-id", "0x11"]);
    let mut args = with(
        &common::registrar_args(&["--transport", "sctp"]),
        &pki.flags("reg"),
    );
    args.extend(["--tls-plain".to_owned(), "trusted".to_owned()]);
    let (code, _, stderr) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("over SCTP every peer"), "{stderr}");
}

/// A certificate expiring within 14 days is a warning at start (and a gauge of the time
/// left); one with more time is not.
#[test]
fn a_certificate_near_its_expiry_is_a_warning_and_a_metric() {
    let pki = Pki::new("expiring");
    pki.issue("soon", &["--registrar-id", "0x11", "--days", "7"]);
    pki.issue("later", &["--registrar-id", "0x12", "--days", "60"]);
    for (name, warned) in [("soon", true), ("later", false)] {
        let flags = pki.flags(name);
        let mut args = common::registrar_args(&["--admin", "127.0.0.1:0"]);
        args.extend(flags.iter().map(String::as_str));
        let r = Process::start(&args);
        assert_eq!(r.log_contains("expires soon"), warned, "{name}");
        let (_, metrics) = common::admin_get(r.address("admin"), "/metrics");
        let left: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("rserpool_tls_certificate_expiry_seconds "))
            .unwrap_or_else(|| panic!("no expiry gauge: {metrics}"))
            .trim()
            .parse()
            .unwrap();
        let days = left / 86_400.0;
        assert!(
            if warned { days < 8.0 } else { days > 50.0 },
            "{name}: {days} days"
        );
    }
    // The PE library's demo PEs too (their TLS starts before their admin listener).
    pki.issue("pe", &["--pe", "WebPool", "--days", "7"]);
    let pe = start(&with(
        &[
            "pe",
            "--serve",
            "echo",
            "--pool",
            "WebPool",
            "--admin",
            "127.0.0.1:0",
        ],
        &pki.flags("pe"),
    ));
    let (_, metrics) = common::admin_get(pe.address("admin"), "/metrics");
    assert!(
        metrics.contains("rserpool_tls_certificate_expiry_seconds "),
        "{metrics}"
    );
}
