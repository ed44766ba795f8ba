//! Conntrack lifetimes: which timeout applies to a flow, and whether it ran
//! out. Used by the datapath (an expired entry is not reused) and by the
//! agent's garbage collector (an expired pair is deleted).

use crate::{CtTimeouts, IPPROTO_TCP, ct_flags};

/// The lifecycle state of a flow, from the TCP flags seen on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// TCP: only the opening SYN so far.
    TcpSyn,
    /// TCP: an ACK was seen and no FIN or RST.
    TcpEstablished,
    /// TCP: a FIN or RST was seen.
    TcpClosing,
    /// UDP or anything else without state.
    Udp,
}

#[inline(always)]
pub fn state(proto: u8, tcp_flags: u8) -> State {
    if proto != IPPROTO_TCP {
        State::Udp
    } else if tcp_flags & (ct_flags::FIN | ct_flags::RST) != 0 {
        State::TcpClosing
    } else if tcp_flags & ct_flags::ACK != 0 {
        State::TcpEstablished
    } else {
        State::TcpSyn
    }
}

/// The timeout of a state, in nanoseconds.
#[inline(always)]
pub fn timeout_ns(t: &CtTimeouts, state: State) -> u64 {
    let secs = match state {
        State::TcpSyn => t.tcp_syn,
        State::TcpEstablished => t.tcp_established,
        State::TcpClosing => t.tcp_closing,
        State::Udp => t.udp,
    };
    secs as u64 * 1_000_000_000
}

/// Whether a flow last seen at `last_seen` (ns) has run out at `now` (ns).
/// A `last_seen` in the future (another CPU wrote it after we read the
/// clock) is not expired.
#[inline(always)]
pub fn expired(t: &CtTimeouts, proto: u8, tcp_flags: u8, last_seen: u64, now: u64) -> bool {
    now > last_seen && now - last_seen > timeout_ns(t, state(proto, tcp_flags))
}

/// Whether a packet must start a new flow although an entry exists: a
/// fresh SYN (no ACK) on a flow that was closing reuses the tuple for a new
/// connection (e.g. a client port reused after TIME_WAIT).
#[inline(always)]
pub fn restarts(proto: u8, entry_flags: u8, packet_flags: u8) -> bool {
    proto == IPPROTO_TCP
        && state(proto, entry_flags) == State::TcpClosing
        && packet_flags & (ct_flags::SYN | ct_flags::ACK) == ct_flags::SYN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IPPROTO_UDP, ct_flags::*};

    const T: CtTimeouts = CtTimeouts { tcp_syn: 60, tcp_established: 3600, tcp_closing: 10, udp: 30 };
    const S: u64 = 1_000_000_000;

    #[test]
    fn states() {
        assert_eq!(state(IPPROTO_TCP, SYN), State::TcpSyn);
        assert_eq!(state(IPPROTO_TCP, SYN | ACK), State::TcpEstablished);
        assert_eq!(state(IPPROTO_TCP, SYN | ACK | FIN), State::TcpClosing);
        assert_eq!(state(IPPROTO_TCP, RST), State::TcpClosing);
        assert_eq!(state(IPPROTO_UDP, 0), State::Udp);
    }

    #[test]
    fn expiry_by_state() {
        let t0 = 1000 * S;
        assert!(!expired(&T, IPPROTO_TCP, SYN, t0, t0 + 60 * S));
        assert!(expired(&T, IPPROTO_TCP, SYN, t0, t0 + 61 * S));
        assert!(!expired(&T, IPPROTO_TCP, SYN | ACK, t0, t0 + 61 * S));
        assert!(expired(&T, IPPROTO_TCP, SYN | ACK | FIN, t0, t0 + 11 * S));
        assert!(!expired(&T, IPPROTO_UDP, 0, t0, t0 + 30 * S));
        assert!(expired(&T, IPPROTO_UDP, 0, t0, t0 + 31 * S));
        // Written by another CPU after we read the clock.
        assert!(!expired(&T, IPPROTO_UDP, 0, t0 + 5, t0));
    }

    #[test]
    fn syn_after_close_restarts() {
        assert!(restarts(IPPROTO_TCP, SYN | ACK | FIN, SYN));
        assert!(!restarts(IPPROTO_TCP, SYN | ACK | FIN, ACK));
        assert!(!restarts(IPPROTO_TCP, SYN | ACK, SYN));
        assert!(!restarts(IPPROTO_UDP, 0, 0));
    }
}
