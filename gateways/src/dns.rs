//! The DNS gateway: clients that only know DNS look up a pool and get its live pool
//! elements in the order the pool's policy gives (hickory-server, a `RequestHandler`).
//!
//! Names in the zone (README, "DNS gateway"):
//! * `<label>.<zone>`: a pool. The label is a configured name, else the pool handle
//!   itself when it is a valid DNS label (as the query spells it), else `h-` and the
//!   handle's bytes in lowercase base32hex without padding (RFC 4648 §7), which can
//!   name any handle: `h-8lhmgrqgdtnmo` is `EchoPool`.
//! * `_<service>._<proto>.<label>.<zone>`: SRV for the pool's PEs (service and proto
//!   are not checked: a pool has one user transport per PE).
//! * `pe-<8 hex digits>.<label>.<zone>`: one PE (the SRV targets), A and AAAA.
//!
//! A and AAAA answer with the first address of each PE in the family, each address
//! once (PEs on one host share a record; SRV tells their ports apart), TXT with one
//! string per PE (identifier, policy, load, transport). Unknown pools are NXDOMAIN, a
//! pool without an address of the family NODATA (both with the SOA), names outside the
//! zone REFUSED, an unreachable registrar SERVFAIL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use metrics::Counter;
use rserpool_proto::wire::{PoolElement, PoolHandle};

use crate::{Directory, DirectoryError};

mod limits;
mod records;
mod tcp;
mod udp;
use limits::{NegativeCache, RateLimiter};
pub use tcp::TcpLimits;

use records::Answer;

/// A domain name from text (the zone of the configuration).
pub fn hickory_name(text: &str) -> Result<Name, String> {
    Name::from_ascii(text).map_err(|e| e.to_string())
}

/// The DNS gateway's settings.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The zone it is authoritative for (`pool.example.`).
    pub zone: Name,
    /// Configured labels (lowercase) and their pools.
    pub names: BTreeMap<String, PoolHandle>,
    /// TTL of answers (0: clients ask every time, which keeps the policy in charge).
    pub ttl: u32,
    /// PEs per answer at most.
    pub answer_count: usize,
    /// Negative answers are cached this long (the SOA minimum).
    pub negative_ttl: u32,
    /// Responses per second to one client prefix (/24 for IPv4, /56 for IPv6) over UDP;
    /// 0: no limit.
    pub rate_limit: u32,
    /// Bounds of the TCP listener.
    pub tcp: TcpLimits,
}

impl DnsConfig {
    /// Defaults for `zone`.
    pub fn new(zone: Name) -> Self {
        Self {
            zone,
            names: BTreeMap::new(),
            ttl: 0,
            answer_count: 8,
            negative_ttl: 5,
            rate_limit: 200,
            tcp: TcpLimits::default(),
        }
    }
}

/// What a name in the zone refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Apex,
    Pool(PoolHandle),
    Srv(PoolHandle),
    Element(PoolHandle, u32),
}

/// The base32hex alphabet, lowercase (DNS names are case-insensitive).
const BASE32HEX: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

/// The base32hex digit of the low 5 bits of `value`.
fn base32_digit(value: u32) -> char {
    char::from(
        BASE32HEX
            .get((value & 31) as usize)
            .copied()
            .unwrap_or(b'0'),
    )
}

/// `h-` + base32hex of a pool handle: a DNS label for any handle (at most 54 bytes).
pub fn encode_label(handle: &PoolHandle) -> String {
    let mut label = String::from("h-");
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in handle.as_bytes() {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            label.push(base32_digit(buffer >> bits));
        }
    }
    if bits > 0 {
        label.push(base32_digit(buffer << (5 - bits)));
    }
    label
}

/// The handle an `h-` label names, if it is one.
fn decode_label(label: &str) -> Option<PoolHandle> {
    let digits = label.strip_prefix("h-")?;
    let (mut buffer, mut bits, mut bytes) = (0u32, 0u32, Vec::new());
    for c in digits.bytes() {
        let value = BASE32HEX
            .iter()
            .position(|&d| d == c.to_ascii_lowercase())?;
        buffer = (buffer << 5) | value as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
        }
        buffer &= (1 << bits) - 1;
    }
    // Leftover bits must be padding zeros, fewer than a byte (canonical form only).
    if bits >= 5 || buffer != 0 {
        return None;
    }
    PoolHandle::new(&bytes).ok()
}

fn is_dns_label(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

impl<D> std::fmt::Debug for PoolDns<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolDns")
            .field("config", &self.config)
            .finish()
    }
}

/// The request handler: answers from the pool user's view of the pools.
pub struct PoolDns<D> {
    config: DnsConfig,
    origin: LowerName,
    soa: Record,
    directory: Arc<D>,
    limiter: Option<RateLimiter>,
    /// Pools found unknown lately (a repeated unknown name costs no resolution).
    unknown: NegativeCache,
    /// Over-limit UDP queries seen; every other one gets a truncated empty answer, so a
    /// real client behind a busy prefix can retry over TCP (RRL "slip").
    slipped: std::sync::atomic::AtomicU64,
    meters: DnsMeters,
}

impl<D: Directory> PoolDns<D> {
    pub fn new(config: DnsConfig, directory: Arc<D>) -> Self {
        let origin = LowerName::from(config.zone.clone());
        let host = |label: &str| {
            Name::from_ascii(label)
                .and_then(|n| n.append_domain(&config.zone))
                .unwrap_or_else(|_| config.zone.clone())
        };
        let soa = Record::from_rdata(
            config.zone.clone(),
            config.negative_ttl,
            RData::SOA(SOA::new(
                host("ns"),
                host("hostmaster"),
                1,
                3600,
                600,
                86_400,
                config.negative_ttl,
            )),
        );
        let limiter = (config.rate_limit > 0).then(|| RateLimiter::new(config.rate_limit));
        // What resolvers are told to cache negatively, at most 5 s: a pool that gets
        // its first PE is answered soon.
        let unknown = NegativeCache::new(Duration::from_secs(u64::from(
            config.negative_ttl.clamp(1, 5),
        )));
        Self {
            config,
            origin,
            soa,
            directory,
            limiter,
            unknown,
            slipped: std::sync::atomic::AtomicU64::new(0),
            meters: DnsMeters::new(),
        }
    }

    /// What a name in the zone refers to; `None`: nothing (NXDOMAIN).
    fn target(&self, name: &Name) -> Option<Target> {
        let zone_labels = self.config.zone.num_labels();
        let labels: Vec<&[u8]> = name.iter().collect();
        let own = labels.len().checked_sub(usize::from(zone_labels))?;
        let own = labels.get(..own)?;
        let pool = |label: &[u8]| self.pool_of(label);
        match own {
            [] => Some(Target::Apex),
            [label] => pool(label).map(Target::Pool),
            [service, proto, label] if service.starts_with(b"_") && proto.starts_with(b"_") => {
                pool(label).map(Target::Srv)
            }
            [element, label] => {
                let text = std::str::from_utf8(element).ok()?.to_ascii_lowercase();
                let id = u32::from_str_radix(text.strip_prefix("pe-")?, 16).ok()?;
                pool(label).map(|handle| Target::Element(handle, id))
            }
            _ => None,
        }
    }

    fn pool_of(&self, label: &[u8]) -> Option<PoolHandle> {
        let text = std::str::from_utf8(label).ok();
        if let Some(handle) = text.and_then(|t| self.config.names.get(&t.to_ascii_lowercase())) {
            return Some(*handle);
        }
        if let Some(handle) = text.and_then(decode_label) {
            return Some(handle);
        }
        is_dns_label(label)
            .then(|| PoolHandle::new(label).ok())
            .flatten()
    }

    fn element_name(&self, handle_label: &[u8], id: u32) -> Option<Name> {
        Name::from_labels([format!("pe-{id:08x}").as_bytes(), handle_label])
            .ok()?
            .append_domain(&self.config.zone)
            .ok()
    }
}

impl<D: Directory> PoolDns<D> {
    async fn answer(&self, name: &Name, query_type: RecordType) -> Answer {
        let Some(target) = self.target(name) else {
            return Answer::nxdomain();
        };
        let ttl = self.config.ttl;
        let handle = match target {
            Target::Apex => {
                return match query_type {
                    RecordType::SOA => Answer {
                        answers: vec![self.soa.clone()],
                        ..Answer::default()
                    },
                    _ => Answer {
                        negative: true,
                        ..Answer::default()
                    },
                };
            }
            Target::Pool(h) | Target::Srv(h) | Target::Element(h, _) => h,
        };
        if self.unknown.is_unknown(&handle, crate::now()) {
            return Answer::nxdomain();
        }
        let pes = match self
            .directory
            .resolve(handle, u32::try_from(self.config.answer_count).ok())
            .await
        {
            Ok(pes) if !pes.is_empty() => pes,
            Ok(_) | Err(DirectoryError::UnknownPool) => {
                self.unknown.remember(handle, crate::now());
                return Answer::nxdomain();
            }
            Err(DirectoryError::Unavailable) => {
                return Answer {
                    code: Some(ResponseCode::ServFail),
                    ..Answer::default()
                };
            }
        };
        let count = self.config.answer_count;
        let mut answer = match (target, query_type) {
            (Target::Pool(_), RecordType::A | RecordType::AAAA) => {
                records::addresses(&pes, None, name, ttl, count, query_type == RecordType::AAAA)
            }
            (Target::Element(_, id), RecordType::A | RecordType::AAAA) => {
                let v6 = query_type == RecordType::AAAA;
                records::addresses(&pes, Some(id), name, ttl, count, v6)
            }
            (Target::Pool(_), RecordType::TXT) => Answer {
                answers: records::texts(&pes, name, ttl, count),
                ..Answer::default()
            },
            (Target::Srv(_), RecordType::SRV) => {
                let label: Vec<u8> = name.iter().nth(2).map(<[u8]>::to_vec).unwrap_or_default();
                let target_of = |pe: &PoolElement| self.element_name(&label, pe.id.0);
                records::services(&pes, name, ttl, count, target_of)
            }
            _ => Answer::default(),
        };
        if answer.answers.is_empty() && answer.code.is_none() {
            answer.negative = true;
        }
        if answer.code == Some(ResponseCode::NXDomain) {
            answer.negative = true;
            answer.answers.clear();
        }
        answer
    }
}

#[async_trait::async_trait]
impl<D: Directory> RequestHandler for PoolDns<D> {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let udp = request.protocol() == Protocol::Udp;
        if udp
            && let Some(limiter) = &self.limiter
            && !limiter.allow(request.src().ip(), crate::now())
        {
            let seen = self
                .slipped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.meters.rate_limited.increment(1);
            if seen % 2 == 1 {
                // Dropped: nothing goes back to a flooding (or spoofed) prefix.
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::Refused;
                return ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                });
            }
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.truncation = true;
            let response =
                MessageResponseBuilder::from_message_request(request).build_no_records(metadata);
            return send(&mut response_handle, response, request).await;
        }

        let mut response_edns = None;
        if let Some(request_edns) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(request_edns.max_payload().max(512));
            edns.set_version(0);
            if request_edns.version() > 0 {
                let code = ResponseCode::BADVERS;
                edns.set_rcode_high(code.high());
                let response = MessageResponseBuilder::new(&request.queries, Some(&edns))
                    .error_msg(&request.metadata, code);
                return send(&mut response_handle, response, request).await;
            }
            response_edns = Some(edns);
        }
        let builder = MessageResponseBuilder::new(&request.queries, response_edns.as_ref());
        let refuse = |code| {
            self.meters.response(code).increment(1);
            MessageResponseBuilder::new(&request.queries, response_edns.as_ref())
                .error_msg(&request.metadata, code)
        };
        if request.metadata.message_type != MessageType::Query {
            return send(&mut response_handle, refuse(ResponseCode::FormErr), request).await;
        }
        if request.metadata.op_code != OpCode::Query {
            return send(&mut response_handle, refuse(ResponseCode::NotImp), request).await;
        }
        let Ok(info) = request.request_info() else {
            return send(&mut response_handle, refuse(ResponseCode::FormErr), request).await;
        };
        if !self.origin.zone_of(info.query.name()) {
            // Authoritative only: no recursion, nothing outside the zone.
            return send(&mut response_handle, refuse(ResponseCode::Refused), request).await;
        }
        // Pool handles are case-sensitive bytes: use the name as the client spelled it
        // (hickory hands queries over lowercased).
        let lower: Name = info.query.name().into();
        let name = original_name(request)
            .filter(|n| *n == lower)
            .unwrap_or(lower);
        let answer = self.answer(&name, info.query.query_type()).await;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = false;
        let code = answer.code.unwrap_or(ResponseCode::NoError);
        metadata.response_code = code;
        self.meters.response(code).increment(1);
        let soa: &[Record] = if answer.negative {
            std::slice::from_ref(&self.soa)
        } else {
            &[]
        };
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            std::iter::empty(),
            soa.iter(),
            answer.additionals.iter(),
        );
        send(&mut response_handle, response, request).await
    }
}

/// The first question's name as sent (the question section's own bytes hold no
/// compression target for it).
fn original_name(request: &Request) -> Option<Name> {
    let mut decoder = BinDecoder::new(request.queries.as_bytes());
    Name::read(&mut decoder).ok()
}

/// The DNS meters, looked up once rather than per query.
struct DnsMeters {
    no_error: Counter,
    nx_domain: Counter,
    serv_fail: Counter,
    refused: Counter,
    form_err: Counter,
    not_imp: Counter,
    other: Counter,
    rate_limited: Counter,
}

impl DnsMeters {
    fn new() -> Self {
        let rcode =
            |name: &'static str| metrics::counter!("rserpool_dns_responses_total", "rcode" => name);
        Self {
            no_error: rcode("NOERROR"),
            nx_domain: rcode("NXDOMAIN"),
            serv_fail: rcode("SERVFAIL"),
            refused: rcode("REFUSED"),
            form_err: rcode("FORMERR"),
            not_imp: rcode("NOTIMP"),
            other: rcode("other"),
            rate_limited: metrics::counter!("rserpool_dns_rate_limited_total"),
        }
    }

    fn response(&self, code: ResponseCode) -> &Counter {
        match code {
            ResponseCode::NoError => &self.no_error,
            ResponseCode::NXDomain => &self.nx_domain,
            ResponseCode::ServFail => &self.serv_fail,
            ResponseCode::Refused => &self.refused,
            ResponseCode::FormErr => &self.form_err,
            ResponseCode::NotImp => &self.not_imp,
            _ => &self.other,
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    handle: &mut R,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, client = %request.src(), "DNS response not sent");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        }
    }
}

/// DNS over TLS: a listener and its certificates.
#[derive(Debug)]
pub struct DotListener {
    pub listener: tokio::net::TcpListener,
    pub certificates: Arc<crate::http::tls::CertificateResolver>,
}

/// Serves the zone on UDP and TCP (and DNS over TLS) until `shutdown`.
pub async fn serve<D: Directory>(
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
    dot: Option<DotListener>,
    config: DnsConfig,
    directory: Arc<D>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let tcp_limits = config.tcp;
    let handler = Arc::new(PoolDns::new(config, directory));
    let mut streams = tokio::task::JoinSet::new();
    streams.spawn(udp::serve(udp, handler.clone(), shutdown.clone()));
    streams.spawn(tcp::serve(
        tcp::Stream::Tcp(tcp),
        handler.clone(),
        tcp_limits,
        shutdown.clone(),
    ));
    if let Some(dot) = dot {
        match crate::http::tls::server_config_for(dot.certificates, &[b"dot"]) {
            Ok(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
                streams.spawn(tcp::serve(
                    tcp::Stream::Tls(dot.listener, acceptor),
                    handler,
                    tcp_limits,
                    shutdown.clone(),
                ));
            }
            Err(error) => tracing::error!(%error, "DNS over TLS not served"),
        }
    }
    streams.join_all().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_handle_round_trips_through_its_label() {
        for handle in [&b"EchoPool"[..], b"x", &[0u8, 255, 7, 128], &[0xab; 32]] {
            let handle = PoolHandle::new(handle).unwrap();
            let label = encode_label(&handle);
            assert!(label.len() <= 63, "{label}");
            assert!(is_dns_label(label.as_bytes()), "{label}");
            assert_eq!(decode_label(&label), Some(handle));
            assert_eq!(
                decode_label(&label.to_ascii_uppercase().replace("H-", "h-")),
                Some(handle)
            );
        }
        assert_eq!(
            encode_label(&PoolHandle::new(b"EchoPool").unwrap()),
            "h-8lhmgrqgdtnmo"
        );
        assert_eq!(
            decode_label("h-8lhmgrqgdtnmp"),
            None,
            "non-zero padding bits"
        );
        assert_eq!(decode_label("h-"), None);
        assert_eq!(decode_label("h-w"), None, "not base32hex");
    }
}
