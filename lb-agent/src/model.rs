//! The desired datapath state: what the maps should hold, independent of
//! IDs and generations.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

use lb_common::{IPPROTO_TCP, IPPROTO_UDP, Service4Key, SCOPE_EXTERNAL};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A frontend address: what clients dial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl FrontendAddr {
    pub fn key(&self) -> Service4Key {
        Service4Key {
            addr: u32::from_ne_bytes(self.ip.octets()),
            port: self.port.to_be(),
            proto: self.proto.number(),
            scope: SCOPE_EXTERNAL,
        }
    }

    pub fn from_key(key: &Service4Key) -> Option<Self> {
        Some(FrontendAddr {
            ip: Ipv4Addr::from(key.addr.to_ne_bytes()),
            port: u16::from_be(key.port),
            proto: Protocol::from_number(key.proto)?,
        })
    }
}

impl fmt::Display for FrontendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// A backend as the datapath sees it: one endpoint address and target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: BackendAddr,
    /// Serving but terminating (KEP-1669); used only when nothing is ready.
    pub terminating: bool,
}

/// One frontend of a Service with the backends that serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub addr: FrontendAddr,
    /// `namespace/name:port` for listings and logs.
    pub name: String,
    /// Every serving endpoint, ready ones first, each group in a stable
    /// order. Terminating ones are kept so established flows to them keep
    /// working; [`Frontend::slot_backends`] says which take new flows.
    pub backends: Vec<Backend>,
    /// `lb_common::svc_flags::*`.
    pub flags: u32,
    pub affinity_timeout: u32,
}

/// Everything the maps should hold, keyed by frontend.
pub type Desired = BTreeMap<FrontendAddr, Frontend>;

impl Frontend {
    /// The backends that take new connections: the ready ones, or, when
    /// none is ready, the serving-but-terminating ones (KEP-1669). Empty
    /// means the frontend rejects.
    pub fn slot_backends(&self) -> impl Iterator<Item = &Backend> {
        let any_ready = self.backends.iter().any(|b| !b.terminating);
        self.backends.iter().filter(move |b| b.terminating != any_ready)
    }
}
