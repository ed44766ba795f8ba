//! XDP on the node's external interfaces: north-south load balancing.
//!
//! `lb_xdp` sees every packet that arrives from outside the node:
//!
//! - to a north-south frontend (a NodePort on a node address, an external
//!   IP, a LoadBalancer ingress IP): loadBalancerSourceRanges are checked,
//!   the backend comes from conntrack (established flows stick) or from
//!   `select_backend` (Maglev and affinity apply), and the packet is
//!   DNATed. A backend on this node gets the packet through the kernel
//!   (`XDP_PASS`), with the client's address intact; the tc program on the
//!   pod's interface reverse-NATs the replies from the conntrack entries
//!   written here. A backend on another node (externalTrafficPolicy
//!   Cluster) is reached by also SNATing to this node's address with a NAT
//!   port allocated collision-free in `LB4_NAT`, and forwarding with
//!   `bpf_fib_lookup` (`XDP_TX` out of the same interface, `XDP_REDIRECT`
//!   to another one);
//! - replies to SNATed flows (backend -> node address:NAT port): both
//!   translations are reversed and the packet forwarded to the client, so
//!   it sees the address it dialled;
//! - replies to flows that a pod of this node opened through a frontend
//!   whose backend is elsewhere: the source is turned back into the
//!   frontend (the tc program only sees packets leaving pods);
//! - anything else passes untouched.
//!
//! Only IPv4 without options and unfragmented TCP/UDP is translated; the
//! rest goes to the kernel. When the FIB has no neighbour for the next hop
//! yet, the translated packet is handed to the kernel, which forwards it
//! and resolves the neighbour (the agent sets `accept_local` on the
//! external interfaces so that a packet from the node's own address is not
//! dropped as martian).

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, bpf_fib_lookup as FibParams, xdp_action},
    btf_maps::lpm_trie::Key,
    helpers::{bpf_fib_lookup, bpf_get_prandom_u32, bpf_redirect, bpf_xdp_adjust_tail},
    macros::xdp,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use lb_common::{
    Backend4, CT_REPLY, CT_SERVICE, Config, Ct4Key, IPPROTO_TCP, IPPROTO_UDP, Nat4,
    NodeConfig, Service4Value, SrcRange4, backend_flags, csum,
    node_flags,
    packet::{ETH_HLEN, ETH_P_IP, ICMP_QUOTE_LEN, ICMP_UNREACH_LEN, IPV4_HLEN, icmp_port_unreachable, ip, l4},
    svc_flags,
};

use crate::{
    lookup::{Tuple, config, flow_backend, now_ns, rev_nat, service},
    packet,
    maps::{LB_NODE, LB4_CT, LB4_NAT, LB4_SRC_RANGES},
};

/// Passes every packet: the floor that per-packet costs are measured against.
#[xdp]
pub fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Frontend kinds served from outside the node.
const NORTH_SOUTH: u32 = svc_flags::NODE_PORT | svc_flags::EXTERNAL_IP | svc_flags::LOAD_BALANCER;
/// Offset of the IPv4 header and of the L4 header (no IP options here).
const IP: usize = ETH_HLEN;
const L4: usize = ETH_HLEN + IPV4_HLEN;
/// Random NAT ports tried before a new flow is dropped.
const NAT_TRIES: u32 = 32;
const AF_INET: u8 = 2;
const FIB_SUCCESS: i64 = 0;

enum Error {
    /// Too short or not well formed: the kernel judges it.
    Malformed,
    /// A map or packet write failed half-way: never let it out.
    Rewrite,
    /// No free NAT port for a new flow.
    NoPort,
}

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match try_lb_xdp(&ctx) {
        Ok(action) => action,
        Err(Error::Malformed) => xdp_action::XDP_PASS,
        Err(Error::Rewrite) => {
            debug!(&ctx, "lb_xdp: translation failed, packet dropped");
            xdp_action::XDP_DROP
        }
        Err(Error::NoPort) => {
            debug!(&ctx, "lb_xdp: no free NAT port, packet dropped");
            xdp_action::XDP_DROP
        }
    }
}

/// The parsed IPv4 5-tuple (network order) and the fields the rewrite needs.
struct Flow {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    tos: u8,
    /// Host order.
    tot_len: u16,
}

impl Flow {
    #[inline(always)]
    fn tuple(&self) -> Tuple {
        Tuple {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            tcp_flags: self.tcp_flags,
        }
    }

    #[inline(always)]
    fn ct_key(&self, dir: u8) -> Ct4Key {
        Ct4Key::new(self.saddr, self.daddr, self.sport, self.dport, self.proto, dir)
    }
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, Error> {
    packet::read(ctx, off).ok_or(Error::Malformed)
}

#[inline(always)]
fn write<T>(ctx: &XdpContext, off: usize, v: T) -> Result<(), Error> {
    packet::write(ctx, off, v).ok_or(Error::Rewrite)
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Option<Flow>, Error> {
    if read::<u16>(ctx, 12)? != ETH_P_IP.to_be() {
        return Ok(None);
    }
    let iph: [u8; IPV4_HLEN] = read(ctx, IP)?;
    // IPv4 with options (or garbage) is left to the kernel.
    if iph[0] != 0x45 {
        return Ok(None);
    }
    let proto = iph[ip::PROTO];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(None);
    }
    // Fragments (first ones included: the rest would not follow) pass.
    if u16::from_be_bytes([iph[ip::FRAG_OFF], iph[ip::FRAG_OFF + 1]]) & 0x3fff != 0 {
        return Ok(None);
    }
    let tot_len = u16::from_be_bytes([iph[ip::TOT_LEN], iph[ip::TOT_LEN + 1]]);
    if ctx.data() + ETH_HLEN + (tot_len as usize) > ctx.data_end() {
        return Err(Error::Malformed);
    }
    let (ports, tcp_flags) = if proto == IPPROTO_TCP {
        let h: [u8; 20] = read(ctx, L4)?;
        ([h[0], h[1], h[2], h[3]], h[l4::TCP_FLAGS])
    } else {
        let h: [u8; 8] = read(ctx, L4)?;
        ([h[0], h[1], h[2], h[3]], 0)
    };
    Ok(Some(Flow {
        saddr: u32::from_ne_bytes([iph[12], iph[13], iph[14], iph[15]]),
        daddr: u32::from_ne_bytes([iph[16], iph[17], iph[18], iph[19]]),
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        proto,
        tcp_flags,
        tos: iph[1],
        tot_len,
    }))
}

#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<u32, Error> {
    let Some(cfg) = config() else {
        return Ok(xdp_action::XDP_PASS);
    };
    let Some(f) = parse(ctx)? else {
        return Ok(xdp_action::XDP_PASS);
    };
    match service(f.daddr, f.dport, f.proto) {
        Some(svc) if svc.flags & NORTH_SOUTH != 0 => north_south(ctx, &cfg, &f, &svc),
        // A ClusterIP from outside is not ours to serve.
        Some(_) => Ok(xdp_action::XDP_PASS),
        None => reply(ctx, &f),
    }
}

#[inline(always)]
fn node_config() -> Option<NodeConfig> {
    let n = *LB_NODE.get(0)?;
    (n.flags & node_flags::READY != 0 && n.snat_addr != 0).then_some(n)
}

/// Client -> north-south frontend.
#[inline(always)]
fn north_south(ctx: &XdpContext, cfg: &Config, f: &Flow, svc: &Service4Value) -> Result<u32, Error> {
    if svc.flags & svc_flags::SOURCE_RANGES != 0 {
        let (len, data) = SrcRange4::client(svc.id, f.saddr);
        if LB4_SRC_RANGES.get(&Key::new(len, data)).is_none() {
            return Ok(xdp_action::XDP_DROP);
        }
    }
    let now = now_ns();
    let Some((_, be)) = flow_backend(cfg, svc, &f.tuple(), now).map_err(|()| Error::Rewrite)? else {
        // No backend. externalTrafficPolicy=Local without a local
        // endpoint: drop, so the load balancer's health check (503 here)
        // takes this node out. Otherwise reject, as kube-proxy does.
        if svc.flags & svc_flags::EXT_LOCAL != 0 {
            return Ok(xdp_action::XDP_DROP);
        }
        return reject(ctx, f);
    };
    let node = match node_config() {
        Some(n) if be.flags & backend_flags::LOCAL == 0 && svc.flags & svc_flags::EXT_LOCAL == 0 => n,
        // A local backend (or no SNAT configured): DNAT only, the kernel
        // routes to the pod and the client address is preserved.
        _ => {
            rewrite(ctx, f, f.saddr, f.sport, be.addr, be.port)?;
            return Ok(xdp_action::XDP_PASS);
        }
    };
    let (nat_addr, nat_port) = snat(f, svc, &be, &node, now)?;
    rewrite(ctx, f, nat_addr, nat_port, be.addr, be.port)?;
    forward(ctx, f, nat_addr, be.addr, nat_port, be.port)
}

/// The node address and NAT port of the flow: its `LB4_NAT` entry while it
/// is for this backend and its reply entry still exists, otherwise a new
/// port. A port is taken by inserting the reply entry with `BPF_NOEXIST`,
/// so two flows (on any CPUs) never share a reply tuple.
#[inline(always)]
fn snat(f: &Flow, svc: &Service4Value, be: &Backend4, node: &NodeConfig, now: u64) -> Result<(u32, u16), Error> {
    let key = f.ct_key(CT_SERVICE);
    if let Some(out) = LB4_NAT.get_ptr_mut(&key) {
        // SAFETY: a map value; racing CPUs only touch the timestamp and flags.
        let out = unsafe { &mut *out };
        if out.peer_addr == be.addr
            && out.peer_port == be.port
            && out.rev_nat_id == svc.id
            && out.addr == node.snat_addr
            && LB4_NAT.get_ptr(&out.twin_key(&key)).is_some()
        {
            out.last_seen = now;
            out.tcp_flags |= f.tcp_flags;
            return Ok((out.addr, out.port));
        }
    }
    let min = node.nat_port_min as u32;
    let max = node.nat_port_max as u32;
    if max < min {
        return Err(Error::NoPort);
    }
    let span = max - min + 1;
    let back = Nat4 {
        last_seen: now,
        addr: f.saddr,
        port: f.sport,
        tcp_flags: 0,
        _pad: 0,
        peer_addr: f.daddr,
        peer_port: f.dport,
        _pad2: 0,
        rev_nat_id: svc.id,
        _pad3: 0,
    };
    let mut i = 0;
    while i < NAT_TRIES {
        // SAFETY: plain helper call.
        let port = ((min + unsafe { bpf_get_prandom_u32() } % span) as u16).to_be();
        let reply_key = Ct4Key {
            saddr: be.addr,
            daddr: node.snat_addr,
            sport: be.port,
            dport: port,
            proto: f.proto,
            dir: CT_REPLY,
            _pad: 0,
        };
        if LB4_NAT.insert(&reply_key, &back, BPF_NOEXIST as u64).is_ok() {
            let out = Nat4 {
                last_seen: now,
                addr: node.snat_addr,
                port,
                tcp_flags: f.tcp_flags,
                _pad: 0,
                peer_addr: be.addr,
                peer_port: be.port,
                _pad2: 0,
                rev_nat_id: svc.id,
                _pad3: 0,
            };
            LB4_NAT.insert(&key, &out, 0).map_err(|_| Error::Rewrite)?;
            return Ok((node.snat_addr, port));
        }
        i += 1;
    }
    Err(Error::NoPort)
}

/// Anything that is not for a north-south frontend: replies of flows we
/// translated, or not ours.
#[inline(always)]
fn reply(ctx: &XdpContext, f: &Flow) -> Result<u32, Error> {
    let key = f.ct_key(CT_REPLY);
    let now = now_ns();
    if let Some(back) = LB4_NAT.get_ptr_mut(&key) {
        // SAFETY: see `conntrack`.
        let back = unsafe { &mut *back };
        back.last_seen = now;
        back.tcp_flags |= f.tcp_flags;
        let (client, client_port, front, front_port) = (back.addr, back.port, back.peer_addr, back.peer_port);
        rewrite(ctx, f, front, front_port, client, client_port)?;
        return forward(ctx, f, front, client, front_port, client_port);
    }
    if let Some(entry) = LB4_CT.get_ptr_mut(&key) {
        // SAFETY: see `conntrack`.
        let entry = unsafe { &mut *entry };
        entry.last_seen = now;
        entry.tcp_flags |= f.tcp_flags;
        if let Some(front) = rev_nat(entry.rev_nat_id) {
            rewrite(ctx, f, front.addr, front.port, f.daddr, f.dport)?;
        }
    }
    Ok(xdp_action::XDP_PASS)
}

/// Sets the packet's addresses and ports, updating the IPv4 and L4
/// checksums incrementally (a UDP datagram without checksum keeps none).
#[inline(always)]
fn rewrite(ctx: &XdpContext, f: &Flow, saddr: u32, sport: u16, daddr: u32, dport: u16) -> Result<(), Error> {
    let check_off = L4 + if f.proto == IPPROTO_TCP { l4::TCP_CHECK } else { l4::UDP_CHECK };
    let mut ip_check: u16 = read(ctx, IP + ip::CHECK)?;
    let mut l4_check: u16 = read(ctx, check_off)?;
    let l4_checked = f.proto == IPPROTO_TCP || l4_check != 0;
    if saddr != f.saddr {
        ip_check = csum::replace4(ip_check, f.saddr, saddr);
        l4_check = csum::replace4(l4_check, f.saddr, saddr);
        write(ctx, IP + ip::SADDR, saddr)?;
    }
    if daddr != f.daddr {
        ip_check = csum::replace4(ip_check, f.daddr, daddr);
        l4_check = csum::replace4(l4_check, f.daddr, daddr);
        write(ctx, IP + ip::DADDR, daddr)?;
    }
    if sport != f.sport {
        l4_check = csum::replace2(l4_check, f.sport, sport);
        write(ctx, L4 + l4::SPORT, sport)?;
    }
    if dport != f.dport {
        l4_check = csum::replace2(l4_check, f.dport, dport);
        write(ctx, L4 + l4::DPORT, dport)?;
    }
    write(ctx, IP + ip::CHECK, ip_check)?;
    if l4_checked {
        if f.proto == IPPROTO_UDP {
            l4_check = csum::udp_mangled_zero(l4_check);
        }
        write(ctx, check_off, l4_check)?;
    }
    Ok(())
}

/// Sends a translated packet on towards `dst`: the FIB gives the egress
/// interface and the next hop's MAC; the TTL goes down by one as in any
/// router. Without a usable route or neighbour the kernel forwards it.
#[inline(always)]
fn forward(ctx: &XdpContext, f: &Flow, src: u32, dst: u32, sport: u16, dport: u16) -> Result<u32, Error> {
    // SAFETY: a plain C struct; all-zero is a valid value.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = f.proto;
    p.sport = sport;
    p.dport = dport;
    p.__bindgen_anon_1.tot_len = f.tot_len;
    p.__bindgen_anon_2.tos = f.tos;
    p.__bindgen_anon_3.ipv4_src = src;
    p.__bindgen_anon_4.ipv4_dst = dst;
    let ingress = ctx.ingress_ifindex() as u32;
    p.ifindex = ingress;
    // SAFETY: the context and a parameter struct of the size we pass.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut p, size_of::<FibParams>() as i32, 0) };
    if rc != FIB_SUCCESS {
        return Ok(xdp_action::XDP_PASS);
    }
    let ttl_proto: [u8; 2] = read(ctx, IP + ip::TTL)?;
    if ttl_proto[0] <= 1 {
        // The kernel answers with time exceeded.
        return Ok(xdp_action::XDP_PASS);
    }
    let check: u16 = read(ctx, IP + ip::CHECK)?;
    let new = [ttl_proto[0] - 1, ttl_proto[1]];
    let check = csum::replace2(check, u16::from_ne_bytes(ttl_proto), u16::from_ne_bytes(new));
    write(ctx, IP + ip::TTL, new)?;
    write(ctx, IP + ip::CHECK, check)?;
    write(ctx, 0, p.dmac)?;
    write(ctx, 6, p.smac)?;
    if p.ifindex == ingress {
        Ok(xdp_action::XDP_TX)
    } else {
        // SAFETY: plain helper call.
        Ok(unsafe { bpf_redirect(p.ifindex, 0) } as u32)
    }
}

/// A frontend without endpoints: the packet becomes an ICMP port
/// unreachable from the dialled address (kube-proxy's REJECT) and goes back
/// out where it came from.
#[inline(always)]
fn reject(ctx: &XdpContext, f: &Flow) -> Result<u32, Error> {
    debug!(
        ctx,
        "lb_xdp: no backend for {:i}:{}, rejecting",
        u32::from_be(f.daddr),
        u16::from_be(f.dport)
    );
    let macs: [u8; 12] = read(ctx, 0)?;
    let quote: [u8; ICMP_QUOTE_LEN] = read(ctx, IP)?;
    let icmp = icmp_port_unreachable(&quote);
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    let len = (ctx.data_end() - ctx.data()) as i32;
    let delta = (ETH_HLEN + ICMP_UNREACH_LEN) as i32 - len;
    // SAFETY: the program's own context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Ok(xdp_action::XDP_DROP);
    }
    write(ctx, 0, swapped)?;
    write(ctx, IP, icmp)?;
    Ok(xdp_action::XDP_TX)
}
