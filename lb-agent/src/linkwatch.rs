//! Interfaces as they come and go, from rtnetlink link events
//! (`RTNLGRP_LINK`), so a new pod's interface has the tc programs before
//! the pod sends its first packet; and addresses of both families as they
//! are added and removed (`RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`), so
//! NodePorts and the SNAT addresses follow the node's addresses; and route
//! changes (`RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE`), which end the next
//! hops the datapath keeps (`LB_NEXTHOPS`). The agent also re-lists the interfaces
//! (and the addresses) now and then, in case events were lost (a netlink
//! socket that overflows drops them).

use std::{io, net::IpAddr};

use futures::{StreamExt, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
        link::{LinkAttribute, LinkMessage},
    },
    sys::{AsyncSocket, SocketAddr},
};
use tokio::task::JoinHandle;

/// The link group's bit in a netlink socket address (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;
/// The IPv4 address group's bit (`RTMGRP_IPV4_IFADDR`).
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
/// The IPv6 address group's bit (`RTMGRP_IPV6_IFADDR`).
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
/// The route groups' bits (`RTMGRP_IPV4_ROUTE`, `RTMGRP_IPV6_ROUTE`).
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// A change of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// An interface appeared or changed (its name may be new).
    New { ifindex: u32, name: String },
    /// An interface is gone.
    Gone { ifindex: u32 },
    /// An address was added to (`added`) or removed from an interface.
    Address { ifindex: u32, address: IpAddr, added: bool },
    /// A route was added, changed or removed: next hops the XDP program
    /// kept may be stale.
    Route,
}

/// A subscription to link events; ends with the value.
pub struct LinkEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    connection: JoinHandle<()>,
}

impl LinkEvents {
    /// Subscribes to the link and address events of the current network
    /// namespace.
    /// Subscribe before listing the interfaces, so none is missed between.
    pub fn subscribe() -> io::Result<LinkEvents> {
        let (mut connection, _handle, messages) = rtnetlink::new_connection()?;
        let socket = connection.socket_mut().socket_mut();
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))?;
        // A node starting many pods at once sends bursts of events.
        let _ = socket.set_rx_buf_sz(4 << 20);
        let connection = tokio::spawn(connection);
        Ok(LinkEvents { messages, connection })
    }

    /// The next event; `None` when the subscription broke.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        loop {
            let (message, _) = self.messages.next().await?;
            if let Some(event) = event(message) {
                return Some(event);
            }
        }
    }
}

impl Drop for LinkEvents {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

fn event(message: NetlinkMessage<RouteNetlinkMessage>) -> Option<LinkEvent> {
    match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            Some(LinkEvent::New { ifindex: link.header.index, name: name(&link)? })
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => Some(LinkEvent::Gone { ifindex: link.header.index }),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => address_event(&a, true),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(a)) => address_event(&a, false),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_)) => Some(LinkEvent::Route),
        _ => None,
    }
}

/// The interface's own address: `IFA_LOCAL` (on a point-to-point link
/// `IFA_ADDRESS` is the peer's), else `IFA_ADDRESS`. IPv6 link-local
/// addresses come and go with every interface (each pod's veth) and never
/// hold NodePorts: not events.
fn address_event(a: &AddressMessage, added: bool) -> Option<LinkEvent> {
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    if let IpAddr::V6(v6) = address
        && v6.is_unicast_link_local()
    {
        return None;
    }
    Some(LinkEvent::Address { ifindex: a.header.index, address, added })
}

fn name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = 7;
        m.attributes = attributes;
        m
    }

    #[test]
    fn address_events_carry_the_interfaces_own_address() {
        let own: IpAddr = "192.168.50.11".parse().unwrap();
        let peer: IpAddr = "192.168.50.99".parse().unwrap();
        let m = message(vec![AddressAttribute::Address(own)]);
        assert_eq!(address_event(&m, true), Some(LinkEvent::Address { ifindex: 7, address: own, added: true }));
        // Point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL ours.
        let m = message(vec![AddressAttribute::Address(peer), AddressAttribute::Local(own)]);
        assert_eq!(address_event(&m, false), Some(LinkEvent::Address { ifindex: 7, address: own, added: false }));
        // IPv6: global addresses are events, link-local ones are not.
        let v6: IpAddr = "fd00:50::11".parse().unwrap();
        let m = message(vec![AddressAttribute::Address(v6)]);
        assert_eq!(address_event(&m, true), Some(LinkEvent::Address { ifindex: 7, address: v6, added: true }));
        let m = message(vec![AddressAttribute::Address("fe80::1".parse().unwrap())]);
        assert_eq!(address_event(&m, true), None);
    }
}
