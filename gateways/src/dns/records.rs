//! The records of an answer about a pool's PEs (RFC 1035 §3.3, RFC 2782 for SRV): A and
//! AAAA with each address once, TXT describing each PE, SRV with the policy's priority
//! and weight and the PEs' addresses as glue.

use std::net::{IpAddr, SocketAddr};

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, SRV, TXT};
use hickory_server::proto::rr::{Name, RData, Record};
use rserpool_proto::policy::spec;
use rserpool_proto::wire::{Policy, PoolElement, TransportProtocol};

/// A or AAAA records of the PEs (only `element`'s, when one is named; NXDOMAIN when
/// the pool does not hold it).
pub(super) fn addresses(
    pes: &[PoolElement],
    element: Option<u32>,
    name: &Name,
    ttl: u32,
    count: usize,
    v6: bool,
) -> Answer {
    let chosen = pes
        .iter()
        .filter(|pe| element.is_none_or(|id| pe.id.0 == id));
    let answers = unique_addresses(chosen, v6, count)
        .into_iter()
        .map(|address| address_record(name, ttl, address))
        .collect();
    let missing = element.is_some_and(|id| !pes.iter().any(|pe| pe.id.0 == id));
    Answer {
        code: missing.then_some(ResponseCode::NXDomain),
        answers,
        ..Answer::default()
    }
}

/// One TXT record per PE: its ID, policy (with the load for policies that carry one)
/// and transport.
pub(super) fn texts(pes: &[PoolElement], name: &Name, ttl: u32, count: usize) -> Vec<Record> {
    pes.iter()
        .take(count)
        .map(|pe| {
            let load = spec::load_fraction(&pe.policy)
                .map(|l| format!(" load={l:.3}"))
                .unwrap_or_default();
            let text = format!(
                "pe={} policy={}{load} transport={}",
                pe.id,
                spec::format(&pe.policy),
                transport_text(pe)
            );
            Record::from_rdata(name.clone(), ttl, RData::TXT(TXT::new(vec![text])))
        })
        .collect()
}

/// SRV records naming each PE (`target_of`: its own name in the zone) with its port,
/// the policy's priority and weight, and its addresses as additional records.
pub(super) fn services(
    pes: &[PoolElement],
    name: &Name,
    ttl: u32,
    count: usize,
    target_of: impl Fn(&PoolElement) -> Option<Name>,
) -> Answer {
    let mut priorities: Vec<u32> = pes
        .iter()
        .filter_map(|pe| match pe.policy {
            Policy::Priority { priority } => Some(priority),
            _ => None,
        })
        .collect();
    priorities.sort_unstable_by(|a, b| b.cmp(a));
    priorities.dedup();
    let mut answer = Answer::default();
    for pe in pes.iter().take(count) {
        let Some(target) = target_of(pe) else {
            continue;
        };
        let (priority, weight) = srv_priority_weight(&pe.policy, &priorities);
        let srv = SRV::new(priority, weight, pe.user_transport.port, target.clone());
        answer
            .answers
            .push(Record::from_rdata(name.clone(), ttl, RData::SRV(srv)));
        for v6 in [false, true] {
            if let Some(address) = address_of(pe, v6) {
                answer
                    .additionals
                    .push(address_record(&target, ttl, address.ip()));
            }
        }
    }
    answer
}

/// The first address of the family of each PE, each address once (an RRset holds no
/// duplicates, RFC 2181 §5: PEs on one host share a record, SRV gives their ports), at
/// most `count`.
fn unique_addresses<'a>(
    pes: impl Iterator<Item = &'a PoolElement>,
    v6: bool,
    count: usize,
) -> Vec<IpAddr> {
    let mut addresses: Vec<IpAddr> = Vec::new();
    for address in pes.filter_map(|pe| address_of(pe, v6)) {
        if addresses.len() == count {
            break;
        }
        if !addresses.contains(&address.ip()) {
            addresses.push(address.ip());
        }
    }
    addresses
}

/// The PE's first address of a family, with its port.
fn address_of(pe: &PoolElement, v6: bool) -> Option<SocketAddr> {
    pe.user_transport
        .addresses
        .iter()
        .find(|a| a.is_ipv6() == v6)
        .map(|a| SocketAddr::new(*a, pe.user_transport.port))
}

fn address_record(name: &Name, ttl: u32, address: IpAddr) -> Record {
    let rdata = match address {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

/// SRV priority (lower is preferred) and weight from the PE's policy.
fn srv_priority_weight(policy: &Policy, priorities: &[u32]) -> (u16, u16) {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    match policy {
        Policy::Priority { priority } => {
            let rank = priorities.iter().position(|p| p == priority).unwrap_or(0);
            (clamp(u32::try_from(rank).unwrap_or(u32::MAX)), 1)
        }
        Policy::WeightedRoundRobin { weight }
        | Policy::WeightedRandom { weight }
        | Policy::WeightedRandomDpf { weight, .. } => (0, clamp(*weight)),
        _ => (0, 1),
    }
}

fn transport_text(pe: &PoolElement) -> String {
    let protocol = match pe.user_transport.protocol {
        TransportProtocol::Tcp(_) => "tcp",
        TransportProtocol::Udp => "udp",
        TransportProtocol::Sctp(_) => "sctp",
        _ => "other",
    };
    let addresses: Vec<String> = pe
        .user_transport
        .addresses
        .iter()
        .map(|a| SocketAddr::new(*a, pe.user_transport.port).to_string())
        .collect();
    format!("{protocol}:{}", addresses.join(","))
}

/// An answer under construction.
#[derive(Default)]
pub(super) struct Answer {
    pub(super) code: Option<ResponseCode>,
    pub(super) answers: Vec<Record>,
    pub(super) additionals: Vec<Record>,
    pub(super) negative: bool,
}

impl Answer {
    /// No such name (negative: resolvers cache it for the SOA minimum).
    pub(super) fn nxdomain() -> Self {
        Self {
            code: Some(ResponseCode::NXDomain),
            negative: true,
            ..Self::default()
        }
    }
}
