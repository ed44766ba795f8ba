//! Interfaces as they come and go, from rtnetlink link events
//! (`RTNLGRP_LINK`), so a new pod's interface has the tc programs before
//! the pod sends its first packet. The agent also re-lists the interfaces
//! now and then, in case events were lost (a netlink socket that overflows
//! drops them).

use std::io;

use futures::{StreamExt, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    },
    sys::{AsyncSocket, SocketAddr},
};
use tokio::task::JoinHandle;

/// The link group's bit in a netlink socket address (`RTMGRP_LINK`).
const RTMGRP_LINK: u32 = 1;

/// A change of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// An interface appeared or changed (its name may be new).
    New { ifindex: u32, name: String },
    /// An interface is gone.
    Gone { ifindex: u32 },
}

/// A subscription to link events; ends with the value.
pub struct LinkEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    connection: JoinHandle<()>,
}

impl LinkEvents {
    /// Subscribes to the link events of the current network namespace.
    /// Subscribe before listing the interfaces, so none is missed between.
    pub fn subscribe() -> io::Result<LinkEvents> {
        let (mut connection, _handle, messages) = rtnetlink::new_connection()?;
        let socket = connection.socket_mut().socket_mut();
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
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
        _ => None,
    }
}

fn name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}
