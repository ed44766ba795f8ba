//! Host sockets left connected to a backend that their Service no longer
//! has.
//!
//! The socket hooks translate a host client's `connect` once: a connected
//! UDP socket then sends straight to the backend, past any hook or
//! conntrack entry, for as long as it lives. When the backend leaves the
//! Service nothing would move it (a pod's socket moves: its flow is
//! invalid at once and the next datagram picks a live backend), and a
//! resolver in the host network would ask a removed CoreDNS pod until it
//! restarts. A TCP socket fails on its own (reset or timeout) and
//! reconnects through the hook. So, as Cilium's socket LB does, the agent
//! destroys such UDP sockets ([`SockDiag::destroy`]): the application's
//! next call fails with ECONNABORTED, and its retry's `connect` is
//! translated to a live backend.
//!
//! A socket counts only if the hooks translated it to that peer: the
//! socket rev-NAT map (`LB4_SOCK_REVNAT`, `LB6_SOCK_REVNAT`) has its
//! cookie with the peer, and names the frontend it stood for. A socket
//! connected to a pod's address directly is left alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lb_common::{Family, V4, V6};

use crate::{
    maps::Maps,
    model::{BackendAddr, Protocol},
    reconcile::{MapFamily, Reconciler},
    sock_diag::{SockDiag, UdpSocket},
};

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Connected UDP sockets looked at.
    pub connected: usize,
    /// Sockets destroyed, each with the frontend it had stood for.
    pub destroyed: Vec<(UdpSocket, String)>,
    /// Sockets that could not be destroyed, with why.
    pub errors: Vec<String>,
}

/// Destroys the UDP sockets of the agent's network namespace (the host's)
/// that the socket hooks connected to a backend their frontend no longer
/// allows.
pub fn sweep(reconciler: &Reconciler<Maps>) -> std::io::Result<Sweep> {
    let mut out = Sweep::default();
    let diag = SockDiag::open()?;
    for s in diag.udp_sockets()?.into_iter().filter(UdpSocket::connected) {
        out.connected += 1;
        let Some(frontend) = stale_frontend(reconciler, &s) else { continue };
        match diag.destroy(&s) {
            Ok(()) => out.destroyed.push((s, frontend)),
            // Closed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                out.errors.push(format!("socket {} -> {} (of {frontend}): this kernel lacks CONFIG_INET_DIAG_DESTROY", s.src, s.dst));
            }
            Err(e) => out.errors.push(format!("socket {} -> {} (of {frontend}): {e}", s.src, s.dst)),
        }
    }
    Ok(out)
}

/// The frontend that socket `s`'s peer stood for when the hooks connected
/// it, if that frontend no longer allows the peer as a backend. The entry
/// is looked up by the key the hooks wrote (`Family::sock_rev_nat_key`).
fn stale_frontend(r: &Reconciler<Maps>, s: &UdpSocket) -> Option<String> {
    let maps = r.maps();
    let port = s.dst.port();
    match peer_v4(s.dst.ip()) {
        Some(ip) => {
            let key = V4::sock_rev_nat_key(s.cookie, Ipv4Addr::vip_key(ip), port.to_be());
            unless_allowed(r, V4::sock_front(&maps.sock_revnat.get(&key).ok()??), (ip, port))
        }
        None => {
            let IpAddr::V6(ip) = s.dst.ip() else { return None };
            let key = V6::sock_rev_nat_key(s.cookie, Ipv6Addr::vip_key(ip), port.to_be());
            unless_allowed(r, V6::sock_front(&maps.v6.sock_revnat.get(&key).ok()??), (ip, port))
        }
    }
}

/// The frontend of a socket rev-NAT entry (`Family::sock_front`: its
/// address as the maps hold it, its port in network order, its ID), if it
/// no longer allows `peer` as a UDP backend.
fn unless_allowed<A: MapFamily>(r: &Reconciler<Maps>, front: (A::VipKey, u16, u32), peer: (A, u16)) -> Option<String> {
    let (addr, port, id) = front;
    let front = (A::vip_ip(addr), u16::from_be(port));
    let backend = BackendAddr { ip: peer.0, port: peer.1, proto: Protocol::Udp };
    (!r.allows(id, front, &backend)).then(|| SocketAddr::new(front.0.into(), front.1).to_string())
}

/// An IPv4 peer, or an IPv4-mapped one of a dual-stack IPv6 socket (which
/// the hooks translate as IPv4).
fn peer_v4(peer: IpAddr) -> Option<Ipv4Addr> {
    match peer {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(ip) => ip.to_ipv4_mapped(),
    }
}
