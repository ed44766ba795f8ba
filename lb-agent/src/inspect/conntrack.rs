//! `lb-agent ct`: the conntrack entries of both families (`LB4_CT_*`,
//! `LB6_CT_*`) and the NAT they apply, with their age and state. One
//! reading, written over the family (`MapFamily`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::{CT_SERVICE, CtEntryOf, CtKeyOf, RevNatKey, ct};
use serde::Serialize;

use super::proto_name;
use crate::{
    maps::{Maps, MapsError, svc_name_str},
    reconcile::{CtKey, CtMap, CtValue, MapFamily, MapStore},
};

/// One direction of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CtRow {
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
    pub protocol: String,
    /// `service` (client -> frontend, keyed by the client's tuple) or
    /// `reply` (backend -> client, keyed by the backend's tuple).
    pub direction: &'static str,
    /// The tuple a packet has when it meets the entry.
    pub src: String,
    pub dst: String,
    /// What the entry rewrites it to.
    pub nat_src: String,
    pub nat_dst: String,
    pub frontend_id: u32,
    /// `namespace/name:port` of the frontend, empty when unknown.
    pub service: String,
    pub backend_id: u32,
    /// `tcp_syn`, `tcp_established`, `tcp_closing` or `other`.
    pub state: &'static str,
    /// Seconds since the last packet in this direction.
    pub age_s: u64,
}

/// Which entries `lb-agent ct` shows: an address (of either family) and a
/// port that must appear anywhere in the entry (its tuple or its NAT).
#[derive(Clone, Debug, Default)]
pub struct CtFilter {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
}

impl CtFilter {
    fn keeps<A: MapFamily>(&self, k: &CtKey<A>, e: &CtValue<A>) -> bool {
        let addrs = [k.saddr, k.daddr, e.nat_saddr, e.nat_daddr];
        let ports = [k.sport, k.dport, e.nat_sport, e.nat_dport];
        self.addr.is_none_or(|a| addrs.iter().any(|x| Into::<IpAddr>::into(A::vip_ip(*x)) == a))
            && self.port.is_none_or(|p| ports.iter().any(|x| u16::from_be(*x) == p))
    }
}

pub fn state_name(s: ct::State) -> &'static str {
    match s {
        ct::State::TcpSyn => "tcp_syn",
        ct::State::TcpEstablished => "tcp_established",
        ct::State::TcpClosing => "tcp_closing",
        ct::State::Other => "other",
    }
}

/// `ip:port` (`[ip]:port` for IPv6) of an address and a port as a
/// conntrack entry stores them (both in network order).
pub fn ct_endpoint<A: MapFamily>(addr: A::VipKey, port: u16) -> String {
    SocketAddr::new(A::vip_ip(addr).into(), u16::from_be(port)).to_string()
}

/// The row of one entry, as of `now_ns` (CLOCK_MONOTONIC).
pub fn row<A: MapFamily>(k: &CtKeyOf<A::VipKey>, e: &CtEntryOf<A::VipKey>, service: String, now_ns: u64) -> CtRow {
    CtRow {
        family: A::NAME,
        protocol: proto_name(k.proto),
        direction: if k.dir == CT_SERVICE { "service" } else { "reply" },
        src: ct_endpoint::<A>(k.saddr, k.sport),
        dst: ct_endpoint::<A>(k.daddr, k.dport),
        nat_src: ct_endpoint::<A>(e.nat_saddr, e.nat_sport),
        nat_dst: ct_endpoint::<A>(e.nat_daddr, e.nat_dport),
        frontend_id: e.frontend_id,
        service,
        backend_id: e.backend_id,
        state: state_name(ct::entry_state(k.proto, k.dir, e)),
        age_s: now_ns.saturating_sub(e.last_seen) / 1_000_000_000,
    }
}

/// Every entry `filter` keeps: IPv4 then IPv6, service entries first,
/// then by tuple.
pub fn rows(maps: &Maps, filter: &CtFilter) -> Result<Vec<CtRow>, MapsError> {
    let now = crate::gc::monotonic_ns();
    let mut out = family_rows::<Ipv4Addr>(maps, filter, now)?;
    out.extend(family_rows::<Ipv6Addr>(maps, filter, now)?);
    Ok(out)
}

fn family_rows<A: MapFamily>(maps: &Maps, filter: &CtFilter, now: u64) -> Result<Vec<CtRow>, MapsError> {
    let mut entries = Vec::new();
    for map in CtMap::BOTH {
        entries.extend(maps.ct_entries::<A>(map)?.into_iter().filter(|(k, e)| filter.keeps::<A>(k, e)));
    }
    entries.sort_by_key(|(k, _)| {
        let (ip, port) = (A::vip_ip, u16::from_be);
        (k.dir, k.proto, ip(k.saddr), port(k.sport), ip(k.daddr), port(k.dport))
    });
    let mut out = Vec::with_capacity(entries.len());
    for (k, e) in &entries {
        let service = maps.names.get(&RevNatKey { frontend_id: e.frontend_id })?.map(|n| svc_name_str(&n)).unwrap_or_default();
        out.push(row::<A>(k, e, service, now));
    }
    Ok(out)
}

pub fn render(rows: &[CtRow]) -> String {
    let mut t =
        vec![["PROTO", "DIR", "SRC", "DST", "NAT SRC", "NAT DST", "STATE", "AGE", "FRONTEND", "BACKEND"].map(String::from).to_vec()];
    for r in rows {
        t.push(vec![
            r.protocol.clone(),
            r.direction.to_string(),
            r.src.clone(),
            r.dst.clone(),
            r.nat_src.clone(),
            r.nat_dst.clone(),
            r.state.to_string(),
            format!("{}s", r.age_s),
            if r.service.is_empty() { r.frontend_id.to_string() } else { format!("{} ({})", r.frontend_id, r.service) },
            r.backend_id.to_string(),
        ]);
    }
    let mut out = super::table(&t);
    out.push_str(&format!("{} entries\n", rows.len()));
    out
}

#[cfg(test)]
mod tests {
    use lb_common::{CT_REPLY, Ct4Key, Ct6Key, CtEntry, IPPROTO_TCP, IPPROTO_UDP, addr6, ct_flags};

    use super::*;

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    #[test]
    fn a_row_shows_tuple_nat_state_and_age() {
        let k = Ct4Key::new(be([10, 0, 0, 1]), be([10, 96, 0, 10]), 40000u16.to_be(), 80u16.to_be(), IPPROTO_TCP, CT_SERVICE);
        let e = CtEntry {
            last_seen: 1_000_000_000,
            nat_saddr: be([10, 0, 0, 1]),
            nat_daddr: be([10, 244, 0, 5]),
            nat_sport: 40000u16.to_be(),
            nat_dport: 8080u16.to_be(),
            backend_id: 3,
            frontend_id: 2,
            seq: 0,
            tcp_flags: ct_flags::SYN | ct_flags::ACK,
            peer_flags: 0,
            flags: 0,
            _pad: 0,
            frontend_version: 0,
            backend_version: 0,
        };
        let r = row::<Ipv4Addr>(&k, &e, "default/web:80".into(), 6_500_000_000);
        assert_eq!((r.src.as_str(), r.dst.as_str(), r.nat_dst.as_str()), ("10.0.0.1:40000", "10.96.0.10:80", "10.244.0.5:8080"));
        assert_eq!((r.state, r.age_s, r.direction), ("tcp_established", 5, "service"));
        let f = CtFilter { addr: Some(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 5))), port: Some(8080) };
        assert!(f.keeps::<Ipv4Addr>(&k, &e), "the NAT side counts");
        assert!(!CtFilter { addr: None, port: Some(81) }.keeps::<Ipv4Addr>(&k, &e));
        let reply = Ct4Key { dir: CT_REPLY, ..k };
        assert_eq!(row::<Ipv4Addr>(&reply, &e, String::new(), 0).direction, "reply");
    }

    #[test]
    fn an_ipv6_row_shows_bracketed_endpoints_and_filters_by_ipv6_address() {
        let a = |s: &str| addr6(s.parse().unwrap());
        let k = Ct6Key::new(a("fd00:10:244::b"), a("fd00:96::a"), 40000u16.to_be(), 53u16.to_be(), IPPROTO_UDP, CT_REPLY);
        let e = lb_common::Ct6Entry {
            last_seen: 0,
            nat_saddr: a("fd00:96::a"),
            nat_daddr: a("fd00:10:244::b"),
            nat_sport: 53u16.to_be(),
            nat_dport: 40000u16.to_be(),
            backend_id: 2,
            frontend_id: 41,
            seq: 0,
            tcp_flags: 0,
            peer_flags: 0,
            flags: 0,
            _pad: 0,
            frontend_version: 0,
            backend_version: 0,
        };
        let r = row::<Ipv6Addr>(&k, &e, String::new(), 2_000_000_000);
        assert_eq!((r.family, r.protocol.as_str(), r.direction), ("IPv6", "UDP", "reply"));
        assert_eq!((r.src.as_str(), r.nat_src.as_str()), ("[fd00:10:244::b]:40000", "[fd00:96::a]:53"));
        assert_eq!((r.state, r.age_s), ("other", 2));
        let v6 = |s: &str| CtFilter { addr: Some(s.parse().unwrap()), port: None };
        assert!(v6("fd00:96::a").keeps::<Ipv6Addr>(&k, &e));
        assert!(!v6("fd00:96::b").keeps::<Ipv6Addr>(&k, &e));
        assert!(!v6("10.96.0.10").keeps::<Ipv6Addr>(&k, &e), "an IPv4 address never matches an IPv6 entry");
    }
}
