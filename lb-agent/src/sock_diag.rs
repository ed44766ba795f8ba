//! The kernel's socket diagnostics (`NETLINK_SOCK_DIAG`, the interface of
//! `ss`): the UDP sockets of the agent's network namespace, and
//! `SOCK_DESTROY` of one (`ss -K`; needs `CONFIG_INET_DIAG_DESTROY`).
//!
//! The messages are `inet_diag_req_v2` and `inet_diag_msg` of
//! `<linux/inet_diag.h>`, behind a `nlmsghdr`; their fields are named
//! byte ranges here, built and read by plain functions.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `inet_diag_req_v2`: family, protocol, extensions, pad, states (u32),
/// then the socket ID.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `inet_diag_sockid`: sport, dport (network order), src and dst (16
/// bytes each), interface (u32), cookie (two u32).
const SOCKID_LEN: usize = 48;
/// `inet_diag_msg`: family, state, timer, retrans, the socket ID, then
/// expires, rqueue, wqueue, uid, inode (u32 each).
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// One UDP socket, as the kernel reports it (and wants it back to destroy
/// it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpSocket {
    /// Local address and port (the address is unspecified while unbound).
    pub src: SocketAddr,
    /// Peer address and port: unspecified, port 0, while unconnected. An
    /// IPv6 socket connected to an IPv4 peer has it IPv4-mapped.
    pub dst: SocketAddr,
    /// The interface it is bound to (0: none).
    pub ifindex: u32,
    /// The kernel's socket cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
}

impl UdpSocket {
    /// Whether it has a peer (`connect`ed).
    pub fn connected(&self) -> bool {
        self.dst.port() != 0
    }
}

/// A `NETLINK_SOCK_DIAG` socket of the caller's network namespace: one
/// serves a listing and the destroys that follow it, one request at a
/// time.
pub struct SockDiag(OwnedFd);

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        // SAFETY: a plain socket call; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(SockDiag(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The UDP sockets of both families.
    pub fn udp_sockets(&self) -> io::Result<Vec<UdpSocket>> {
        let mut out = Vec::new();
        for family in [libc::AF_INET, libc::AF_INET6] {
            let req = request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family as u8, None);
            send(&self.0, &req)?;
            receive(&self.0, |kind, payload| {
                if kind == SOCK_DIAG_BY_FAMILY
                    && let Some(s) = parse_msg(payload)
                {
                    out.push(s);
                }
            })?;
        }
        Ok(out)
    }

    /// Destroys socket `s` (`SOCK_DESTROY`): its owner's next call fails
    /// with ECONNABORTED. `ENOENT` when it is already gone; `EOPNOTSUPP`
    /// where the kernel lacks `CONFIG_INET_DIAG_DESTROY`.
    pub fn destroy(&self, s: &UdpSocket) -> io::Result<()> {
        let family = if s.src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        send(&self.0, &request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, family as u8, Some(s)))?;
        receive(&self.0, |_, _| {})
    }
}

fn send(fd: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: zeroed plain data: the kernel as the destination.
    let mut to: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    to.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: a valid fd, buffer and address of the given sizes.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Reads replies until the dump's end or the request's acknowledgement,
/// handing each message's type and payload to `each`; an error reply is
/// returned as the error it carries.
fn receive(fd: &OwnedFd, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: a valid fd and buffer of `buf.len()` bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            if len < NLMSG_HDRLEN || len > rest.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated sock_diag reply"));
            }
            let payload = &rest[NLMSG_HDRLEN..len];
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    // An acknowledgement is an error reply with 0.
                    let errno = payload.get(0..4).map_or(0, |e| i32::from_ne_bytes(e.try_into().unwrap()));
                    return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) };
                }
                _ => each(kind, payload),
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

/// A request of `kind` for `family`'s UDP sockets: all of them (a dump),
/// or socket `s` exactly.
fn request(kind: u16, flags: u16, family: u8, s: Option<&UdpSocket>) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut m = vec![0u8; len];
    m[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    // (Sequence number and port ID stay 0: one request per socket.)
    let r = &mut m[NLMSG_HDRLEN..];
    r[0] = family;
    r[1] = libc::IPPROTO_UDP as u8;
    // Every state.
    r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    if let Some(s) = s {
        write_sockid(&mut r[8..], s);
    }
    m
}

fn write_sockid(id: &mut [u8], s: &UdpSocket) {
    id[0..2].copy_from_slice(&s.src.port().to_be_bytes());
    id[2..4].copy_from_slice(&s.dst.port().to_be_bytes());
    id[4..20].copy_from_slice(&addr_bytes(s.src.ip()));
    id[20..36].copy_from_slice(&addr_bytes(s.dst.ip()));
    id[36..40].copy_from_slice(&s.ifindex.to_ne_bytes());
    id[40..44].copy_from_slice(&(s.cookie as u32).to_ne_bytes());
    id[44..48].copy_from_slice(&((s.cookie >> 32) as u32).to_ne_bytes());
}

/// An address as `inet_diag_sockid` holds it: IPv4 in the first four
/// bytes.
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b = v6.octets(),
    }
    b
}

/// One socket of a dump reply (`inet_diag_msg`), or `None` for a message
/// too short or of another family.
fn parse_msg(p: &[u8]) -> Option<UdpSocket> {
    if p.len() < MSG_LEN {
        return None;
    }
    let id = &p[4..4 + SOCKID_LEN];
    let addr = |b: &[u8]| -> Option<IpAddr> {
        match p[0] as i32 {
            libc::AF_INET => Some(Ipv4Addr::from(<[u8; 4]>::try_from(&b[..4]).unwrap()).into()),
            libc::AF_INET6 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()).into()),
            _ => None,
        }
    };
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let word = |b: &[u8]| u32::from_ne_bytes(b.try_into().unwrap());
    Some(UdpSocket {
        src: SocketAddr::new(addr(&id[4..20])?, port(&id[0..2])),
        dst: SocketAddr::new(addr(&id[20..36])?, port(&id[2..4])),
        ifindex: word(&id[36..40]),
        cookie: word(&id[40..44]) as u64 | (word(&id[44..48]) as u64) << 32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(src: &str, dst: &str) -> UdpSocket {
        UdpSocket { src: src.parse().unwrap(), dst: dst.parse().unwrap(), ifindex: 3, cookie: 0x1_0000_0002 }
    }

    /// A reply message as the kernel fills it for `s`.
    fn msg_of(s: &UdpSocket) -> Vec<u8> {
        let mut p = vec![0u8; MSG_LEN];
        p[0] = if s.src.is_ipv4() { libc::AF_INET as u8 } else { libc::AF_INET6 as u8 };
        p[1] = 1;
        write_sockid(&mut p[4..4 + SOCKID_LEN], s);
        p
    }

    #[test]
    fn a_socket_reads_back_as_written_in_both_families() {
        for s in [sock("192.168.1.2:40000", "10.244.1.5:5353"), sock("[fd00::1]:40000", "[::ffff:10.244.1.5]:5353")] {
            assert_eq!(parse_msg(&msg_of(&s)), Some(s));
            assert!(s.connected());
        }
        assert!(!sock("0.0.0.0:53", "0.0.0.0:0").connected());
        assert_eq!(parse_msg(&[0u8; MSG_LEN - 1]), None, "too short");
    }

    #[test]
    fn a_destroy_request_names_the_socket_exactly() {
        let s = sock("192.168.1.2:40000", "10.244.1.5:5353");
        let m = request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, libc::AF_INET as u8, Some(&s));
        assert_eq!(m.len(), NLMSG_HDRLEN + REQ_LEN);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), SOCK_DESTROY);
        let r = &m[NLMSG_HDRLEN..];
        assert_eq!((r[0], r[1]), (libc::AF_INET as u8, libc::IPPROTO_UDP as u8));
        assert_eq!(&r[8..10], &40000u16.to_be_bytes(), "the local port first");
        assert_eq!(&r[12..16], &[192, 168, 1, 2]);
        assert_eq!(&r[28..32], &[10, 244, 1, 5]);
        // The ID reads back as the socket (the same layout as a reply's).
        let mut reply = vec![libc::AF_INET as u8, 0, 0, 0];
        reply.extend_from_slice(&r[8..]);
        reply.resize(MSG_LEN, 0);
        assert_eq!(parse_msg(&reply), Some(s));
    }
}
