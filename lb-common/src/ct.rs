//! Conntrack semantics shared by the datapath and the agent's garbage
//! collector: a flow's state from the TCP flags of both directions, its
//! timeout, whether a RST belongs to it, whether a SYN starts a new flow
//! over it, and whether a reply tuple can be given to a new flow.
//!
//! A flow is two entries (see [`crate::CtEntry`]). Each keeps the flags of
//! its own direction, plus the few flags of the other direction that decide
//! the state (`peer_flags`: the client's ACK, FIN and RST), which the
//! datapath copies over when they first appear. So either entry alone knows
//! the flow's state, and the agent judges a pair the same way.

use crate::{CT_SERVICE, CtEntryOf, CtTimeouts, IPPROTO_TCP, ct_entry_flags, ct_flags};

/// The lifecycle state of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// TCP: opened (SYN, maybe a SYN-ACK) but the client has not
    /// acknowledged anything yet: half-open.
    TcpSyn,
    /// TCP: the client's ACK was seen, and no RST nor a FIN both ways.
    TcpEstablished,
    /// TCP: a RST (that belonged to the flow), or a FIN in both
    /// directions. A FIN one way only is a half-close: data may still
    /// flow the other way for as long as the peer likes.
    TcpClosing,
    /// UDP or anything else without state.
    Other,
}

/// The state of a flow from the flags of its originator (the client) and
/// its responder (the backend).
#[inline(always)]
pub fn state(proto: u8, orig: u8, resp: u8) -> State {
    if proto != IPPROTO_TCP {
        State::Other
    } else if (orig | resp) & ct_flags::RST != 0 || orig & resp & ct_flags::FIN != 0 {
        State::TcpClosing
    } else if orig & ct_flags::ACK != 0 {
        State::TcpEstablished
    } else {
        State::TcpSyn
    }
}

/// The state of a flow as one of its entries (of direction `dir`) knows it.
#[inline(always)]
pub fn entry_state<A: Copy>(proto: u8, dir: u8, entry: &CtEntryOf<A>) -> State {
    let (orig, resp) = entry.orig_resp_flags(dir);
    state(proto, orig, resp)
}

/// The timeout of a state, in nanoseconds.
#[inline(always)]
pub fn timeout_ns(t: &CtTimeouts, state: State) -> u64 {
    let secs = match state {
        State::TcpSyn => t.tcp_syn,
        State::TcpEstablished => t.tcp_established,
        State::TcpClosing => t.tcp_closing,
        State::Other => t.udp,
    };
    secs as u64 * 1_000_000_000
}

/// Whether a flow in `state`, last seen at `last_seen` (ns), has run out at
/// `now` (ns). A `last_seen` in the future (another CPU wrote it after we
/// read the clock) is not expired.
#[inline(always)]
pub fn expired(t: &CtTimeouts, state: State, last_seen: u64, now: u64) -> bool {
    now > last_seen && now - last_seen > timeout_ns(t, state)
}

/// Whether TCP flags `packet_flags` are a bare SYN (a connection's first
/// packet: SYN without ACK).
#[inline(always)]
pub fn bare_syn(packet_flags: u8) -> bool {
    packet_flags & (ct_flags::SYN | ct_flags::ACK) == ct_flags::SYN
}

/// Whether a packet with `packet_flags` must start a new flow although an
/// entry in `state` exists: only a bare SYN, and only once the old flow is
/// closed (a client port reused after the connection ended). A SYN on a
/// live flow follows it.
#[inline(always)]
pub fn restarts(state: State, packet_flags: u8) -> bool {
    state == State::TcpClosing && bare_syn(packet_flags)
}

/// How far (either way) from the highest sequence number seen in its
/// direction a RST may be and still end the flow. A sender's RST carries
/// its next sequence number, which is at most one segment (64 KiB, or a
/// BIG TCP super-packet) past the highest seen; a blind attacker has one
/// chance in 2,048 per guess.
pub const RST_WINDOW: u32 = 1 << 20;

/// Whether a RST with sequence number `seq` (host order) belongs to the
/// direction an entry tracks (`entry_flags` and `highest` are its `flags`
/// and `seq`). With no sequence number seen yet in that direction (a
/// backend refusing the SYN) any RST does, as in netfilter's SYN_SENT
/// state.
#[inline(always)]
pub fn rst_in_window(entry_flags: u8, highest: u32, seq: u32) -> bool {
    if entry_flags & ct_entry_flags::SEQ_SEEN == 0 {
        return true;
    }
    let d = seq.wrapping_sub(highest) as i32;
    -(RST_WINDOW as i32) <= d && d <= RST_WINDOW as i32
}

/// Whether `seq` is past `than` in sequence space.
#[inline(always)]
pub fn seq_after(seq: u32, than: u32) -> bool {
    (seq.wrapping_sub(than) as i32) > 0
}

/// The flags a packet newly sets in its entry that its twin must learn:
/// FIN and RST either way, and the client's ACK (which makes the flow
/// established).
#[inline(always)]
pub fn to_propagate(dir: u8, old: u8, new: u8) -> u8 {
    let fresh = new & !old;
    let mut mask = ct_flags::FIN | ct_flags::RST;
    if dir == CT_SERVICE {
        mask |= ct_flags::ACK;
    }
    fresh & mask
}

/// Source ports (host order, inclusive) for SNAT and for new flows whose
/// reply tuple is taken, while the agent has not written `LB_NODE` (the
/// same range as the agent's `--snat-ports` default).
pub const DEFAULT_NAT_PORTS: (u16, u16) = (61_000, 65_535);

/// How long after its last packet a TCP tuple may still be in TIME_WAIT on
/// the backend (Linux keeps it 60 s): a new flow must not reuse it.
pub const TIME_WAIT_NS: u64 = 60 * 1_000_000_000;

/// What a new flow may do with a reply tuple that already has an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyTuple {
    /// The entry is stale, or is this very flow's (its forward entry was
    /// lost): overwrite it.
    Reclaim,
    /// Another flow holds it (or, for TCP, held it so recently that the
    /// backend may still be in TIME_WAIT): use another source port.
    Taken,
}

/// Whether the reply tuple held by `existing` (a reply entry) can be given
/// to a new flow whose reply entry would be `wanted`, at `now`. The same
/// flow is the same client address and port towards the same frontend;
/// a client reusing its port towards another frontend is another flow.
///
/// The same flow always gets its tuple back: its live entry (its forward
/// entry was lost), or a connection of the same client socket tuple that
/// ended, the client reusing its port. The backend may hold the tuple in
/// TIME_WAIT, which takes the new SYN, as it does without a load balancer:
/// the client's initial sequence number and timestamp clock are its
/// tuple's and only move on. Another port for it would be worse: a port of
/// the clash range whose TIME_WAIT is another client tuple's, whose
/// timestamps are unrelated (Linux offsets them per tuple), so the backend
/// drops the SYN half the time (PAWS) and the client waits a second for
/// its retransmission.
#[inline(always)]
pub fn reply_tuple<A: Copy + PartialEq>(t: &CtTimeouts, proto: u8, existing: &CtEntryOf<A>, wanted: &CtEntryOf<A>, now: u64) -> ReplyTuple {
    let same_flow = existing.nat_daddr == wanted.nat_daddr
        && existing.nat_dport == wanted.nat_dport
        && existing.nat_saddr == wanted.nat_saddr
        && existing.nat_sport == wanted.nat_sport;
    if same_flow {
        return ReplyTuple::Reclaim;
    }
    let st = entry_state(proto, crate::CT_REPLY, existing);
    if !expired(t, st, existing.last_seen, now) {
        return ReplyTuple::Taken;
    }
    // Only a connection that was established leaves TIME_WAIT behind; a
    // half-open one (a spoofed SYN) frees its tuple at the SYN timeout.
    let (orig, _) = existing.orig_resp_flags(crate::CT_REPLY);
    if proto == IPPROTO_TCP && orig & ct_flags::ACK != 0 && now.saturating_sub(existing.last_seen) < TIME_WAIT_NS {
        return ReplyTuple::Taken;
    }
    ReplyTuple::Reclaim
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CT_REPLY, CtEntry, IPPROTO_UDP, ct_flags::*};

    const T: CtTimeouts = CtTimeouts { tcp_syn: 60, tcp_established: 3600, tcp_closing: 10, udp: 30 };
    const S: u64 = 1_000_000_000;

    fn entry(own: u8, peer: u8, last_seen: u64) -> CtEntry {
        CtEntry {
            last_seen,
            nat_saddr: 1,
            nat_daddr: 2,
            nat_sport: 3,
            nat_dport: 4,
            backend_id: 1,
            frontend_id: 1,
            seq: 0,
            tcp_flags: own,
            peer_flags: peer,
            flags: 0,
            _pad: 0,
            frontend_version: 0,
            backend_version: 0,
        }
    }

    #[test]
    fn states() {
        assert_eq!(state(IPPROTO_TCP, SYN, 0), State::TcpSyn);
        // A SYN-ACK from the backend does not establish a flow: half-open.
        assert_eq!(state(IPPROTO_TCP, SYN, SYN | ACK), State::TcpSyn);
        assert_eq!(state(IPPROTO_TCP, SYN | ACK, SYN | ACK), State::TcpEstablished);
        // Half-closed: FIN one way only.
        assert_eq!(state(IPPROTO_TCP, SYN | ACK | FIN, SYN | ACK), State::TcpEstablished);
        assert_eq!(state(IPPROTO_TCP, SYN | ACK, SYN | ACK | FIN), State::TcpEstablished);
        assert_eq!(state(IPPROTO_TCP, SYN | ACK | FIN, SYN | ACK | FIN), State::TcpClosing);
        assert_eq!(state(IPPROTO_TCP, SYN | ACK, RST), State::TcpClosing);
        assert_eq!(state(IPPROTO_UDP, 0, 0), State::Other);
    }

    #[test]
    fn either_entry_knows_the_state() {
        let fwd = entry(SYN | ACK | FIN, FIN, 0);
        let reply = entry(SYN | ACK | FIN, ACK | FIN, 0);
        assert_eq!(entry_state(IPPROTO_TCP, CT_SERVICE, &fwd), State::TcpClosing);
        assert_eq!(entry_state(IPPROTO_TCP, CT_REPLY, &reply), State::TcpClosing);
        // The reply entry of a half-open flow: the client never ACKed.
        assert_eq!(entry_state(IPPROTO_TCP, CT_REPLY, &entry(SYN | ACK, 0, 0)), State::TcpSyn);
    }

    #[test]
    fn expiry_by_state() {
        let t0 = 1000 * S;
        assert!(!expired(&T, State::TcpSyn, t0, t0 + 60 * S));
        assert!(expired(&T, State::TcpSyn, t0, t0 + 61 * S));
        assert!(!expired(&T, State::TcpEstablished, t0, t0 + 61 * S));
        assert!(expired(&T, State::TcpClosing, t0, t0 + 11 * S));
        assert!(!expired(&T, State::Other, t0, t0 + 30 * S));
        assert!(expired(&T, State::Other, t0, t0 + 31 * S));
        // Written by another CPU after we read the clock.
        assert!(!expired(&T, State::Other, t0 + 5, t0));
    }

    #[test]
    fn only_a_bare_syn_on_a_closed_flow_restarts() {
        assert!(restarts(State::TcpClosing, SYN));
        assert!(!restarts(State::TcpClosing, ACK));
        assert!(!restarts(State::TcpEstablished, SYN));
        assert!(!restarts(State::TcpSyn, SYN));
        assert!(!restarts(State::Other, 0));
    }

    #[test]
    fn rst_window() {
        assert!(rst_in_window(0, 0, 12345), "nothing seen yet: any RST");
        let seen = ct_entry_flags::SEQ_SEEN;
        let hi = u32::MAX - 10;
        assert!(rst_in_window(seen, hi, hi));
        assert!(rst_in_window(seen, hi, 5), "across the wrap");
        assert!(rst_in_window(seen, hi, hi.wrapping_add(RST_WINDOW)));
        assert!(!rst_in_window(seen, hi, hi.wrapping_add(RST_WINDOW + 1)));
        assert!(!rst_in_window(seen, hi, hi.wrapping_sub(RST_WINDOW + 1)));
        assert!(!rst_in_window(seen, hi, 0x8000_0000));
        assert!(seq_after(5, u32::MAX));
        assert!(!seq_after(u32::MAX, 5));
    }

    #[test]
    fn propagation() {
        assert_eq!(to_propagate(CT_SERVICE, SYN, SYN | ACK), ACK);
        assert_eq!(to_propagate(CT_REPLY, SYN, SYN | ACK), 0, "the backend's ACK decides nothing");
        assert_eq!(to_propagate(CT_REPLY, SYN | ACK, SYN | ACK | FIN), FIN);
        assert_eq!(to_propagate(CT_SERVICE, SYN | ACK | FIN, SYN | ACK | FIN), 0, "already known");
    }

    #[test]
    fn reply_tuples() {
        let now = 10_000 * S;
        // The same flow: the same client (2:4) towards the same frontend
        // (1:3), as `entry` has it.
        let same = entry(0, 0, now);
        let other_client = CtEntry { nat_daddr: 9, nat_dport: 9, ..same };
        let other_frontend = CtEntry { nat_saddr: 7, ..same };
        // A live flow of another client holds it.
        let live = entry(SYN | ACK, ACK, now - S);
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &live, &other_client, now), ReplyTuple::Taken);
        // So does one of this client towards another frontend (a reused
        // source port): the reply tuple would be shared.
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &live, &other_frontend, now), ReplyTuple::Taken);
        // This flow's own live entry (its forward entry was lost).
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &live, &same, now), ReplyTuple::Reclaim);
        // A closed flow, 20 s ago: the backend may be in TIME_WAIT for the
        // tuple. Another client's (or this client's towards another
        // frontend) would meet it with unrelated sequence numbers and
        // timestamps: taken.
        let closed = entry(SYN | ACK | FIN, ACK | FIN, now - 20 * S);
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &closed, &other_client, now), ReplyTuple::Taken);
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &closed, &other_frontend, now), ReplyTuple::Taken);
        // This client reusing its port towards the same frontend is the
        // same client socket tuple, whose TIME_WAIT takes its new SYN: it
        // keeps its port. So it does while the old flow is closing.
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &closed, &same, now), ReplyTuple::Reclaim);
        let closing = entry(SYN | ACK | FIN, ACK | FIN, now - S);
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &closing, &same, now), ReplyTuple::Reclaim);
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &closing, &other_client, now), ReplyTuple::Taken);
        // ... and 61 s ago: free for anyone.
        let old = entry(SYN | ACK | FIN, ACK | FIN, now - 61 * S);
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &old, &same, now), ReplyTuple::Reclaim);
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &old, &other_client, now), ReplyTuple::Reclaim);
        // A half-open flow (a spoofed SYN) frees its tuple at the SYN
        // timeout: no TIME_WAIT without a connection.
        let half_open = entry(SYN | ACK, 0, now - 61 * S);
        assert_eq!(reply_tuple(&T, IPPROTO_TCP, &half_open, &other_client, now), ReplyTuple::Reclaim);
        let short = CtTimeouts { tcp_syn: 2, ..T };
        let half_open = entry(SYN | ACK, 0, now - 3 * S);
        assert_eq!(reply_tuple(&short, IPPROTO_TCP, &half_open, &other_client, now), ReplyTuple::Reclaim);
        // UDP: live for another flow is taken, expired is free.
        let udp = entry(0, 0, now - S);
        assert_eq!(reply_tuple(&T, IPPROTO_UDP, &udp, &other_client, now), ReplyTuple::Taken);
        assert_eq!(reply_tuple(&T, IPPROTO_UDP, &udp, &same, now), ReplyTuple::Reclaim);
        let udp_old = entry(0, 0, now - 31 * S);
        assert_eq!(reply_tuple(&T, IPPROTO_UDP, &udp_old, &other_client, now), ReplyTuple::Reclaim);
    }
}
