//! Tiny TCP / UDP / HTTP servers running inside a namespace.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::Netns;

/// How often server loops look at their stop flag.
const POLL: Duration = Duration::from_millis(20);
/// How long the TCP server waits for the client's first bytes.
const TCP_READ_WAIT: Duration = Duration::from_millis(250);
/// How long the HTTP server waits for a complete request head.
const HTTP_READ_WAIT: Duration = Duration::from_secs(1);
/// How long a server waits for the client to close after the reply.
const LINGER: Duration = Duration::from_secs(1);

/// A server running on threads inside a namespace; stopped (and its sockets
/// closed) on drop, within about 20 ms.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Number of requests answered so far. Incremented before the reply is
    /// sent, so a client that got a reply always sees it counted.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// The bound address (useful with port 0) of an IPv4 server. Panics
    /// for an IPv6 one ([`Server::socket_addr`]).
    pub fn local_addr(&self) -> SocketAddrV4 {
        match self.local_addr {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(a) => panic!("{a} is an IPv6 server: use socket_addr()"),
        }
    }

    /// The bound address, of either family.
    pub fn socket_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server and waits for its threads (same as dropping it).
    pub fn stop(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Handler = Arc<dyn Fn(TcpStream, &AtomicBool, &AtomicU64) + Send + Sync>;

/// TCP server: for each connection, reads once (waiting at most 250 ms),
/// writes `<tag>\n` and closes (gracefully: shutdown, then waits briefly for
/// the client's FIN so unread data never turns the close into a RST).
/// Connections are handled concurrently.
pub fn tcp_server(ns: &Netns, addr: SocketAddrV4, tag: &str) -> Result<Server> {
    tcp_server_at(ns, addr.into(), tag)
}

/// [`tcp_server`] on an address of either family.
pub fn tcp_server_at(ns: &Netns, addr: SocketAddr, tag: &str) -> Result<Server> {
    let reply = format!("{tag}\n").into_bytes();
    let handler: Handler = Arc::new(move |s, stop, hits| {
        let mut buf = [0u8; 4096];
        let _ = read_some(&s, &mut buf, Instant::now() + TCP_READ_WAIT, stop);
        hits.fetch_add(1, Ordering::SeqCst);
        let _ = (&s).write_all(&reply);
        finish(s, stop);
    });
    start_tcp(ns, addr, "tcp", handler)
}

/// Minimal HTTP/1.1 server: answers any request with `200 OK`, body
/// `<tag>\n`, `Connection: close`. Connections that close without sending
/// anything are not answered (nor counted).
pub fn http_server(ns: &Netns, addr: SocketAddrV4, tag: &str) -> Result<Server> {
    let body = format!("{tag}\n");
    let reply = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .into_bytes();
    let handler: Handler = Arc::new(move |s, stop, hits| {
        let deadline = Instant::now() + HTTP_READ_WAIT;
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match read_some(&s, &mut buf, deadline, stop) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        if !req.is_empty() {
            hits.fetch_add(1, Ordering::SeqCst);
            let _ = (&s).write_all(&reply);
        }
        finish(s, stop);
    });
    start_tcp(ns, addr.into(), "http", handler)
}

/// UDP server: replies to every datagram with `<tag>:<payload>`, to its sender.
pub fn udp_echo(ns: &Netns, addr: SocketAddrV4, tag: &str) -> Result<Server> {
    udp_server(ns, addr.into(), tag, 0)
}

/// [`udp_echo`] on an address of either family.
pub fn udp_echo_at(ns: &Netns, addr: SocketAddr, tag: &str) -> Result<Server> {
    udp_server(ns, addr, tag, 0)
}

/// UDP server: replies to every datagram with `<tag>:<payload>` padded with
/// `.` to `len` bytes (a large answer to a small query, as an EDNS DNS
/// answer is).
pub fn udp_padded(ns: &Netns, addr: SocketAddrV4, tag: &str, len: usize) -> Result<Server> {
    udp_server(ns, addr.into(), tag, len)
}

/// [`udp_padded`] on an address of either family.
pub fn udp_padded_at(ns: &Netns, addr: SocketAddr, tag: &str, len: usize) -> Result<Server> {
    udp_server(ns, addr, tag, len)
}

fn udp_server(ns: &Netns, addr: SocketAddr, tag: &str, pad_to: usize) -> Result<Server> {
    let prefix = format!("{tag}:").into_bytes();
    let (stop, hits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (tx, rx) = mpsc::channel();
    let (stop2, hits2) = (stop.clone(), hits.clone());
    let thread = ns.spawn_thread("udp-echo", move || {
        let sock = match UdpSocket::bind(addr).and_then(|s| {
            s.set_read_timeout(Some(POLL))?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => return tx.send(Err(e)).unwrap_or(()),
        };
        let local = sock.local_addr();
        let _ = tx.send(local);
        let mut buf = vec![0u8; 65536];
        let mut out = Vec::with_capacity(65536 + prefix.len());
        while !stop2.load(Ordering::SeqCst) {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    out.clear();
                    out.extend_from_slice(&prefix);
                    out.extend_from_slice(&buf[..n]);
                    if out.len() < pad_to {
                        out.resize(pad_to, b'.');
                    }
                    hits2.fetch_add(1, Ordering::SeqCst);
                    let _ = sock.send_to(&out, from);
                }
                Err(e) if is_retry(&e) => {}
                // e.g. ECONNREFUSED/EHOSTUNREACH reported for a previous send.
                Err(_) => {}
            }
        }
    })?;
    finish_start(ns, addr, "udp_echo", stop, hits, thread, rx)
}

fn start_tcp(ns: &Netns, addr: SocketAddr, kind: &'static str, handler: Handler) -> Result<Server> {
    let (stop, hits) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (tx, rx) = mpsc::channel();
    let (stop2, hits2) = (stop.clone(), hits.clone());
    let thread = ns.spawn_thread(&format!("{kind}-accept"), move || {
        let listener = match TcpListener::bind(addr).and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        }) {
            Ok(l) => l,
            Err(e) => return tx.send(Err(e)).unwrap_or(()),
        };
        let _ = tx.send(listener.local_addr());
        accept_loop(listener, &stop2, &hits2, handler);
    })?;
    finish_start(ns, addr, kind, stop, hits, thread, rx)
}

fn finish_start(
    ns: &Netns,
    addr: SocketAddr,
    kind: &str,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
    thread: JoinHandle<()>,
    rx: mpsc::Receiver<io::Result<std::net::SocketAddr>>,
) -> Result<Server> {
    let ctx = || format!("{kind} on {addr} in netns {}", ns.name());
    let bound = match rx.recv() {
        Ok(r) => r.with_context(ctx),
        Err(_) => Err(anyhow!("server thread died")).with_context(ctx),
    };
    let local_addr = match bound {
        Ok(a) if a.is_ipv4() == addr.is_ipv4() => a,
        Ok(other) => {
            stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
            return Err(anyhow!("unexpected local address {other}")).with_context(ctx);
        }
        Err(e) => {
            let _ = thread.join();
            return Err(e);
        }
    };
    Ok(Server { local_addr, stop, hits, thread: Some(thread) })
}

fn accept_loop(listener: TcpListener, stop: &Arc<AtomicBool>, hits: &Arc<AtomicU64>, handler: Handler) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if !poll_readable(listener.as_raw_fd(), POLL) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if is_retry(&e) || e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                eprintln!("lb-lab: accept failed: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let (h, st, hi) = (handler.clone(), stop.clone(), hits.clone());
        // Threads spawned here start in this (the server's) namespace.
        match std::thread::Builder::new().name("lb-lab-conn".into()).spawn(move || h(stream, &st, &hi)) {
            Ok(j) => conns.push(j),
            Err(e) => eprintln!("lb-lab: spawn connection thread: {e}"),
        }
        conns.retain(|j| !j.is_finished());
    }
    drop(listener);
    for j in conns {
        let _ = j.join();
    }
}

/// One read, waiting until `deadline` at most; gives up early when `stop` is set.
fn read_some(mut s: &TcpStream, buf: &mut [u8], deadline: Instant, stop: &AtomicBool) -> io::Result<usize> {
    loop {
        let now = Instant::now();
        if now >= deadline || stop.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let wait = (deadline - now).min(POLL).max(Duration::from_millis(1));
        s.set_read_timeout(Some(wait))?;
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Half-closes and waits (briefly) for the peer to close, so the close is a
/// clean FIN exchange even if the client sent more than we read.
fn finish(s: TcpStream, stop: &AtomicBool) {
    let _ = s.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    while let Ok(n) = read_some(&s, &mut buf, deadline, stop) {
        if n == 0 {
            break;
        }
    }
}

fn poll_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    rc > 0
}

pub(crate) fn is_retry(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}
