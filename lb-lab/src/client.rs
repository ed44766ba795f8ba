//! Clients that run inside a namespace, always with timeouts.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::Netns;

/// Default timeout of the clients.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `to` from `ns`, sends `hello\n`, reads to EOF and returns the
/// trimmed text (the server's tag for [`crate::tcp_server`]).
///
/// I/O errors stay downcastable: `err.downcast_ref::<std::io::Error>()` (or
/// [`crate::io_error_kind`]) gives e.g. `ConnectionRefused` / `ECONNREFUSED`.
pub fn tcp_request(ns: &Netns, to: SocketAddrV4) -> Result<String> {
    tcp_request_with(ns, to, b"hello\n", DEFAULT_TIMEOUT)
}

/// [`tcp_request`] with a custom payload (may be empty) and timeout (for
/// connect, and separately for the whole exchange after connect).
pub fn tcp_request_with(ns: &Netns, to: SocketAddrV4, payload: &[u8], timeout: Duration) -> Result<String> {
    tcp_request_to(ns, to.into(), payload, timeout)
}

/// [`tcp_request_with`] to an address of either family (an IPv6 socket
/// for an IPv6 address, IPv4-mapped ones included).
pub fn tcp_request_to(ns: &Netns, to: SocketAddr, payload: &[u8], timeout: Duration) -> Result<String> {
    let payload = payload.to_vec();
    let ctx = format!("tcp_request {to} from netns {}", ns.name());
    let out = ns
        .run(move || -> Result<Vec<u8>> {
            let s = connect(to, timeout)?;
            let deadline = Instant::now() + timeout;
            s.set_write_timeout(Some(timeout)).context("set write timeout")?;
            (&s).write_all(&payload).context("send")?;
            read_to_eof(&s, deadline)
        })
        .context(ctx)?;
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

/// `GET /` over HTTP/1.1 (`Connection: close`) from `ns`; returns the body,
/// trimmed (the tag for [`crate::http_server`]). A non-2xx status is an error.
pub fn http_get(ns: &Netns, to: SocketAddrV4) -> Result<String> {
    http_get_with(ns, to, "/", DEFAULT_TIMEOUT)
}

/// [`http_get`] with a path and timeout.
pub fn http_get_with(ns: &Netns, to: SocketAddrV4, path: &str, timeout: Duration) -> Result<String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {to}\r\nUser-Agent: lb-lab\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    let ctx = format!("http_get http://{to}{path} from netns {}", ns.name());
    let resp = ns
        .run(move || -> Result<Vec<u8>> {
            let s = connect(to.into(), timeout)?;
            let deadline = Instant::now() + timeout;
            s.set_write_timeout(Some(timeout)).context("set write timeout")?;
            (&s).write_all(req.as_bytes()).context("send request")?;
            read_to_eof(&s, deadline)
        })
        .with_context(|| ctx.clone())?;
    let resp = String::from_utf8_lossy(&resp);
    let Some((head, body)) = resp.split_once("\r\n\r\n") else {
        bail!("{ctx}: malformed response {resp:?}");
    };
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || !code.starts_with('2') {
        bail!("{ctx}: status {status:?}");
    }
    Ok(body.trim().to_owned())
}

/// From `ns`: a UDP socket `connect()`ed to `to` sends `payload` and waits
/// (2 s) for one reply. Returns the reply text and the socket's
/// `peer_addr()`. Replies from other sources are dropped by the kernel, as
/// for any connected UDP socket.
pub fn udp_request(ns: &Netns, to: SocketAddrV4, payload: &str) -> Result<(String, SocketAddr)> {
    udp_request_with(ns, to, payload.as_bytes(), DEFAULT_TIMEOUT)
}

/// [`udp_request`] with raw payload bytes and a timeout.
pub fn udp_request_with(ns: &Netns, to: SocketAddrV4, payload: &[u8], timeout: Duration) -> Result<(String, SocketAddr)> {
    udp_request_to(ns, to.into(), payload, timeout)
}

/// [`udp_request_with`] to an address of either family (an IPv6 socket,
/// bound to `[::]:0`, for an IPv6 address, IPv4-mapped ones included).
pub fn udp_request_to(ns: &Netns, to: SocketAddr, payload: &[u8], timeout: Duration) -> Result<(String, SocketAddr)> {
    let payload = payload.to_vec();
    let ctx = format!("udp_request {to} from netns {}", ns.name());
    let (reply, peer) = ns
        .run(move || -> Result<(Vec<u8>, SocketAddr)> {
            let any: SocketAddr = if to.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
            let sock = UdpSocket::bind(any).context("bind")?;
            sock.connect(to).context("connect")?;
            sock.set_read_timeout(Some(timeout)).context("set read timeout")?;
            sock.send(&payload).context("send")?;
            let mut buf = vec![0u8; 65536];
            let n = sock.recv(&mut buf).map_err(timeout_err).context("recv reply")?;
            buf.truncate(n);
            let peer = sock.peer_addr().context("peer_addr")?;
            Ok((buf, peer))
        })
        .context(ctx)?;
    Ok((String::from_utf8_lossy(&reply).into_owned(), peer))
}

fn connect(to: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    TcpStream::connect_timeout(&to, timeout).context("connect")
}

fn read_to_eof(mut s: &TcpStream, deadline: Instant) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for EOF"))
                .with_context(|| format!("read (got {:?} so far)", String::from_utf8_lossy(&out)));
        }
        s.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if crate::server::is_retry(&e) => {}
            Err(e) => return Err(e).context("read"),
        }
    }
}

/// A read timeout surfaces as EAGAIN (`WouldBlock`) on Linux: report it as `TimedOut`.
fn timeout_err(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock { io::Error::new(io::ErrorKind::TimedOut, "timed out waiting for a reply") } else { e }
}
