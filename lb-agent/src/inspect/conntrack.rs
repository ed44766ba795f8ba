//! `lb-agent ct`: the conntrack entries (and the NAT they apply), with
//! their age and state.

use std::net::Ipv4Addr;

use lb_common::{CT_SERVICE, Ct4Key, CtEntry, RevNatKey, ct};
use serde::Serialize;

use super::{endpoint, ip, proto_name};
use crate::maps::{Maps, MapsError, svc_name_str};

/// One direction of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CtRow {
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

/// Which entries `lb-agent ct` shows: an address and a port that must
/// appear anywhere in the entry (its tuple or its NAT).
#[derive(Clone, Debug, Default)]
pub struct CtFilter {
    pub addr: Option<Ipv4Addr>,
    pub port: Option<u16>,
}

impl CtFilter {
    fn keeps(&self, k: &Ct4Key, e: &CtEntry) -> bool {
        let addrs = [k.saddr, k.daddr, e.nat_saddr, e.nat_daddr];
        let ports = [k.sport, k.dport, e.nat_sport, e.nat_dport];
        self.addr.is_none_or(|a| addrs.iter().any(|x| ip(*x) == a)) && self.port.is_none_or(|p| ports.iter().any(|x| u16::from_be(*x) == p))
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

/// The row of one entry, as of `now_ns` (CLOCK_MONOTONIC).
pub fn row(k: &Ct4Key, e: &CtEntry, service: String, now_ns: u64) -> CtRow {
    CtRow {
        protocol: proto_name(k.proto),
        direction: if k.dir == CT_SERVICE { "service" } else { "reply" },
        src: endpoint(k.saddr, k.sport),
        dst: endpoint(k.daddr, k.dport),
        nat_src: endpoint(e.nat_saddr, e.nat_sport),
        nat_dst: endpoint(e.nat_daddr, e.nat_dport),
        frontend_id: e.frontend_id,
        service,
        backend_id: e.backend_id,
        state: state_name(ct::entry_state(k.proto, k.dir, e)),
        age_s: now_ns.saturating_sub(e.last_seen) / 1_000_000_000,
    }
}

/// Every entry `filter` keeps, service entries first, then by tuple.
pub fn rows(maps: &Maps, filter: &CtFilter) -> Result<Vec<CtRow>, MapsError> {
    let now = crate::gc::monotonic_ns();
    let mut entries: Vec<(Ct4Key, CtEntry)> = maps.ct.entries()?.into_iter().filter(|(k, e)| filter.keeps(k, e)).collect();
    entries
        .sort_by_key(|(k, _)| (k.dir, k.proto, u32::from_be(k.saddr), u16::from_be(k.sport), u32::from_be(k.daddr), u16::from_be(k.dport)));
    let mut out = Vec::with_capacity(entries.len());
    for (k, e) in &entries {
        let service = maps.names.get(&RevNatKey { frontend_id: e.frontend_id })?.map(|n| svc_name_str(&n)).unwrap_or_default();
        out.push(row(k, e, service, now));
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
    use lb_common::{CT_REPLY, IPPROTO_TCP, ct_flags};

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
        let r = row(&k, &e, "default/web:80".into(), 6_500_000_000);
        assert_eq!((r.src.as_str(), r.dst.as_str(), r.nat_dst.as_str()), ("10.0.0.1:40000", "10.96.0.10:80", "10.244.0.5:8080"));
        assert_eq!((r.state, r.age_s, r.direction), ("tcp_established", 5, "service"));
        let f = CtFilter { addr: Some(Ipv4Addr::new(10, 244, 0, 5)), port: Some(8080) };
        assert!(f.keeps(&k, &e), "the NAT side counts");
        assert!(!CtFilter { addr: None, port: Some(81) }.keeps(&k, &e));
        let reply = Ct4Key { dir: CT_REPLY, ..k };
        assert_eq!(row(&reply, &e, String::new(), 0).direction, "reply");
    }
}
