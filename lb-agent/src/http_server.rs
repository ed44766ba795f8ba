//! The agent's HTTP servers (the health server, the health check
//! NodePorts) on hyper, bounded: at most `max_connections` at once (a new
//! connection beyond that closes the oldest one, which is the one most
//! likely to be a stuck or slow client, so a real probe is always served),
//! a deadline for the request head, and a deadline for the whole
//! connection (no keep-alive: one request a connection, as the probes
//! make). Accept errors (out of file descriptors, say) are logged at warn.
//!
//! [`listen`] binds them as kube-proxy's (Go) listeners are bound: a
//! wildcard address means both families.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::oneshot};
use tracing::{debug, warn};

/// How much a server takes on.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; a new one closes the oldest beyond this.
    pub max_connections: usize,
    /// Time a client has to send its request head.
    pub header_timeout: Duration,
    /// Time a connection may stay open at all.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 128, header_timeout: Duration::from_secs(5), idle_timeout: Duration::from_secs(10) }
    }
}

/// Binds a listening TCP socket to `addr`, as Go's `net.Listen("tcp",
/// addr)` binds kube-proxy's health server and health check NodePorts: a
/// wildcard address (`0.0.0.0` or `::`) means every address of both
/// families, one IPv6 socket with `IPV6_V6ONLY` off, so that IPv6 clients
/// (a cloud load balancer's IPv6 probes, the kubelet's probes on an
/// IPv6 node) are answered too. Where the host has no IPv6 at all
/// (`ipv6.disable=1`), the IPv4 wildcard. Any other address is bound as
/// it is. Must run inside the tokio runtime.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.ip().is_unspecified() {
        match bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, addr.port())), true) {
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
            other => return other,
        }
        return bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port())), false);
    }
    bind(addr, false)
}

fn bind(addr: SocketAddr, dual_stack: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // As std's and tokio's own binds: a port in TIME_WAIT after a restart
    // is free to take.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// A response with a whole body.
pub type Reply = Response<Full<Bytes>>;

/// A response with `status`, `content_type` and `body` (no body for HEAD).
pub fn reply(head: bool, status: u16, content_type: &str, body: String, extra: &[(&str, &str)]) -> Reply {
    let len = body.len();
    let mut b = Response::builder().status(status).header("Content-Type", content_type).header("Content-Length", len);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let body = if head { Full::new(Bytes::new()) } else { Full::new(Bytes::from(body)) };
    b.body(body).unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The open connections, oldest first, each with the sender that closes
/// it when dropped.
#[derive(Default)]
struct Open {
    next: u64,
    by_age: BTreeMap<u64, oneshot::Sender<()>>,
}

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve<F>(listener: TcpListener, what: &'static str, limits: Limits, handler: F)
where
    F: Fn(&Request<Incoming>) -> Option<Reply> + Clone + Send + Sync + 'static,
{
    let open: Arc<Mutex<Open>> = Arc::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("{what}: accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (id, closed) = {
            let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
            while o.by_age.len() >= limits.max_connections.max(1) {
                // Dropping the sender closes that connection.
                o.by_age.pop_first();
            }
            let id = o.next;
            o.next += 1;
            let (tx, rx) = oneshot::channel();
            o.by_age.insert(id, tx);
            (id, rx)
        };
        let (open, handler) = (open.clone(), handler.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let r = handler(&req);
                async move { Ok::<_, Infallible>(r.unwrap_or_else(|| reply(false, 404, "text/plain", String::new(), &[]))) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r { debug!("{what}: connection from {peer}: {e}") },
                _ = closed => debug!("{what}: connection from {peer} closed for a newer one"),
                _ = tokio::time::sleep(limits.idle_timeout) => debug!("{what}: connection from {peer} timed out"),
            }
            open.lock().unwrap_or_else(|e| e.into_inner()).by_age.remove(&id);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};

    use super::listen;

    /// A connection to `port` on `ip` is accepted.
    fn reaches(ip: std::net::IpAddr, port: u16) -> bool {
        TcpStream::connect_timeout(&SocketAddr::new(ip, port), std::time::Duration::from_secs(1)).is_ok()
    }

    #[tokio::test]
    async fn a_wildcard_takes_both_families_and_an_address_only_itself() {
        // As kube-proxy's Go listeners: 0.0.0.0 is one IPv6 socket that
        // IPv4 clients reach too (IPV6_V6ONLY off, whatever the host's
        // net.ipv6.bindv6only says).
        let l = listen(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).unwrap();
        let at = l.local_addr().unwrap();
        assert_eq!(at.ip(), Ipv6Addr::UNSPECIFIED, "{at}");
        assert!(reaches(Ipv4Addr::LOCALHOST.into(), at.port()), "IPv4 client to {at}");
        assert!(reaches(Ipv6Addr::LOCALHOST.into(), at.port()), "IPv6 client to {at}");
        let l6 = listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))).unwrap();
        assert!(reaches(Ipv4Addr::LOCALHOST.into(), l6.local_addr().unwrap().port()), ":: takes IPv4 too");

        // A given address is bound as it is: IPv4 only.
        let l4 = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let port = l4.local_addr().unwrap().port();
        assert_eq!(l4.local_addr().unwrap().ip(), Ipv4Addr::LOCALHOST);
        assert!(reaches(Ipv4Addr::LOCALHOST.into(), port));
        assert!(!reaches(Ipv6Addr::LOCALHOST.into(), port), "127.0.0.1 must not take IPv6");
        drop((l, l6, l4));
    }
}
