//! IPv6 helpers for the kernel tests: IPv6 frontends written straight
//! into the pinned `LB6_*` maps (as the reconciler would, in its order),
//! and IPv6 test packets built by etherparse.

use std::net::SocketAddrV6;

use etherparse::{IpHeaders, IpNumber, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader, PacketBuilder};
use lb_agent::maps::{Maps, svc_name};
use lb_common::{Backend6, RevNat6, RevNatKey, Service4Value, Service6Key, Slot, SlotKey, Vip4, addr6, svc_flags, vip_flags};
use lb_lab::testrun::{CLIENT_MAC, Frame, NODE_MAC, tcp_packet};

/// Installs an IPv6 ClusterIP frontend `vip` (port, proto) with
/// `backends` (IPv6 backend IDs and addresses) under frontend ID `id`:
/// address (and its pre-filter lane), backends, rev-NAT slot, name, slots, and the frontend entry
/// last. `svc` are `svc_flags` (a 60 s timeout with `AFFINITY`).
pub fn install(maps: &mut Maps, id: u32, name: &str, vip: SocketAddrV6, proto: u8, backends: &[(u32, SocketAddrV6)], svc: u32) {
    // Through the store, as the reconciler: the pre-filter learns it first.
    maps.insert_vip(addr6(*vip.ip()), &Vip4 { flags: vip_flags::CLUSTER_IP }).unwrap();
    for (slot, (be_id, be)) in backends.iter().enumerate() {
        let entry = Backend6 { addr: addr6(*be.ip()), port: be.port().to_be(), proto, flags: 0, version: 1, _pad: 0 };
        maps.v6.backends.set(*be_id, &entry).unwrap();
        maps.slots.insert(&SlotKey { frontend_id: id, slot: slot as u16, generation: 0 }, &Slot { backend_id: *be_id }).unwrap();
    }
    maps.v6.revnat.set(id, &RevNat6 { addr: addr6(*vip.ip()), port: vip.port().to_be(), version: 1 }).unwrap();
    maps.names.insert(&RevNatKey { frontend_id: id }, &svc_name(name)).unwrap();
    let key = Service6Key { addr: addr6(*vip.ip()), port: vip.port().to_be(), proto, scope: 0 };
    let timeout = if svc & svc_flags::AFFINITY != 0 { 60 } else { 0 };
    let value = Service4Value { frontend_id: id, count: backends.len() as u16, generation: 0, flags: svc, affinity_timeout: timeout };
    maps.v6.services.insert(&key, &value).unwrap();
}

fn ip6(src: &SocketAddrV6, dst: &SocketAddrV6, next: IpNumber, exts: Ipv6Extensions) -> IpHeaders {
    ip6_hops(src, dst, next, exts, 64)
}

fn ip6_hops(src: &SocketAddrV6, dst: &SocketAddrV6, next: IpNumber, exts: Ipv6Extensions, hop_limit: u8) -> IpHeaders {
    let header = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: 0,
        next_header: next,
        hop_limit,
        source: src.ip().octets(),
        destination: dst.ip().octets(),
    };
    IpHeaders::Ipv6(header, exts)
}

/// An Ethernet + IPv6 + TCP packet (TCP flags as letters: S, A, F, R, P)
/// after the extension headers `exts`; checksums computed by etherparse.
pub fn tcp(src: SocketAddrV6, dst: SocketAddrV6, flags: &str, seq: u32, payload: &[u8], exts: Ipv6Extensions) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ip(ip6(&src, &dst, IpNumber::TCP, exts)).tcp(src.port(), dst.port(), seq, 64240);
    tcp_packet(b, flags, payload)
}

/// [`tcp`] in `frame` (its MACs, and its TTL as the hop limit), without
/// extension headers: a packet as a router forwards it.
pub fn tcp_in(frame: Frame, src: SocketAddrV6, dst: SocketAddrV6, flags: &str, seq: u32, payload: &[u8]) -> Vec<u8> {
    let ip = ip6_hops(&src, &dst, IpNumber::TCP, Ipv6Extensions::default(), frame.ttl);
    let b = PacketBuilder::ethernet2(frame.src_mac, frame.dst_mac).ip(ip).tcp(src.port(), dst.port(), seq, 64240);
    tcp_packet(b, flags, payload)
}

/// A destination options header (PadN only) before `next`.
pub fn dest_opts(next: IpNumber) -> Ipv6Extensions {
    Ipv6Extensions { destination_options: Some(padn(next)), ..Default::default() }
}

/// A hop-by-hop options header (PadN only) before `next`.
pub fn hop_by_hop(next: IpNumber) -> Ipv6Extensions {
    Ipv6Extensions { hop_by_hop_options: Some(padn(next)), ..Default::default() }
}

/// An 8-byte options header holding one PadN option, before `next`.
fn padn(next: IpNumber) -> Ipv6RawExtHeader {
    Ipv6RawExtHeader::new_raw(next, &[1, 4, 0, 0, 0, 0]).expect("a valid options header")
}

/// [`udp`] in `frame`, without extension headers.
pub fn udp_in(frame: Frame, src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
    udp_in_with(frame, src, dst, payload, Ipv6Extensions::default())
}

/// [`udp`] in `frame`, after the extension headers `exts`.
pub fn udp_in_with(frame: Frame, src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8], exts: Ipv6Extensions) -> Vec<u8> {
    let ip = ip6_hops(&src, &dst, IpNumber::UDP, exts, frame.ttl);
    let b = PacketBuilder::ethernet2(frame.src_mac, frame.dst_mac).ip(ip).udp(src.port(), dst.port());
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// An Ethernet + IPv6 + UDP packet after the extension headers `exts`.
pub fn udp(src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8], exts: Ipv6Extensions) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ip(ip6(&src, &dst, IpNumber::UDP, exts)).udp(src.port(), dst.port());
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("writing to a Vec");
    out
}

/// The Ethernet + IPv6 packet `packet` in fragments, as a sender's stack
/// cuts it: the unfragmentable part (the fixed header and any hop-by-hop
/// or routing headers) repeated in each, then a fragment header
/// (identification `id`, the offset, "more fragments" on all but the
/// last), then at most `size` bytes (a multiple of 8) of the rest (the L4
/// header and payload).
///
/// The fragment header is written here, as RFC 8200 4.5 lays it out:
/// etherparse 0.16 puts the offset and the M flag at the wrong bits (its
/// issue 150, fixed in 0.20), symmetrically, so it reads its own bytes
/// back but no other stack does.
pub fn fragments(packet: &[u8], size: usize, id: u32) -> Vec<Vec<u8>> {
    assert_eq!(size % 8, 0);
    let (eth, ip) = packet.split_at(14);
    // Walk the unfragmentable headers: `next_at` is the byte naming what
    // follows them, which becomes the fragment header.
    let (mut next_at, mut end) = (6, 40);
    while [0, 43].contains(&ip[next_at]) {
        next_at = end;
        end += (ip[end + 1] as usize + 1) * 8;
    }
    let next = ip[next_at];
    let (unfrag, rest) = ip.split_at(end);
    let chunks: Vec<&[u8]> = rest.chunks(size).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut head = unfrag.to_vec();
            head[next_at] = 44;
            head[4..6].copy_from_slice(&((end - 40 + 8 + chunk.len()) as u16).to_be_bytes());
            // Next header, reserved, offset (13 bits, 8-byte units) << 3 |
            // reserved (2 bits) | M, identification.
            let offset_m = ((i * size / 8) as u16) << 3 | u16::from(i + 1 < chunks.len());
            let frag = [&[next, 0][..], &offset_m.to_be_bytes(), &id.to_be_bytes()].concat();
            [eth, &head, &frag, chunk].concat()
        })
        .collect()
}

/// Recomputes the L4 checksum of an Ethernet + IPv6 packet from scratch
/// with etherparse (extension headers included in the walk).
pub fn assert_checksums_valid(name: &str, packet: &[u8]) {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(packet).unwrap_or_else(|e| panic!("{name}: unparsable output: {e}"));
    let Some(NetSlice::Ipv6(ip)) = &p.net else { panic!("{name}: not IPv6") };
    let (src, dst) = (ip.header().source(), ip.header().destination());
    match &p.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let want = tcp.to_header().calc_checksum_ipv6_raw(src, dst, tcp.payload()).unwrap();
            assert_eq!(tcp.checksum(), want, "{name}: TCP checksum");
        }
        Some(TransportSlice::Udp(udp)) => {
            let want = udp.to_header().calc_checksum_ipv6_raw(src, dst, udp.payload()).unwrap();
            assert_eq!(udp.checksum(), want, "{name}: UDP checksum");
        }
        other => panic!("{name}: unexpected transport {other:?}"),
    }
}

/// An IPv6 frontend `addr` with `backends` (all ready), flags 0, for the
/// reconciler (`Reconciler::apply_dual`).
pub fn frontend(
    addr: SocketAddrV6,
    proto: lb_agent::model::Protocol,
    backends: &[SocketAddrV6],
) -> (lb_agent::model::FrontendAddr<std::net::Ipv6Addr>, lb_agent::model::Frontend<std::net::Ipv6Addr>) {
    super::frontend_of(addr, proto, backends)
}
