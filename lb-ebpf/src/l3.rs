//! What differs between the families' network headers, behind one trait
//! ([`L3`]): how a flow's addresses are rewritten (IPv4 has a header
//! checksum, IPv6 none) and what the change does to the L4 checksum's
//! pseudo header, the flow hash, the session affinity key and the hairpin
//! address (fragments are `frag`'s, over `FamilyMaps`). Conntrack (`ct`), the rewrite (`nat`), the backend
//! choice (`select::flow_backend`) and the tc programs are written once
//! over it; each family's packet is parsed by its own parser (`parse`).

use lb_common::{
    Addr6, V4, V6, csum, hairpin_addr,
    hash::{affinity_client6_prefix, flow_hash, flow_hash6},
    packet::{ETH_HLEN, ip, ip6},
};

use crate::{
    family::FamilyMaps,
    maps::LB6_NODE,
    packet::{L4Csum, PacketData, read, write},
    parse::Flow,
};

pub trait L3: FamilyMaps + Sized {
    /// Writes `saddr` and `daddr` into the network header of `f`'s packet
    /// where they differ from the packet's (and its checksum, if any).
    fn rewrite_addrs<C: PacketData>(ctx: &C, f: &Flow<Self>, saddr: &Self::Addr, daddr: &Self::Addr) -> Option<()>;
    /// Updates the TCP/UDP checksum at `check` for the pseudo header's
    /// addresses changing from `f`'s to `saddr` and `daddr`.
    fn l4_csum_addrs<C: L4Csum>(ctx: &C, check: usize, udp: bool, f: &Flow<Self>, saddr: &Self::Addr, daddr: &Self::Addr) -> Option<()>;
    /// The flow's hash for Maglev.
    fn flow_hash(f: &Flow<Self>) -> u32;
    /// The session affinity key's client for a client address.
    fn affinity_client(addr: Self::Addr) -> u64;
    /// The address a pod reaching itself through its Service is SNATed to;
    /// `None`: no hairpin translation in this family.
    fn hairpin_addr() -> Option<Self::Addr>;
    /// Keeps `v` (a flow, a conntrack key or entry) in memory for the
    /// rest of the program (see the IPv6 implementation); nothing for IPv4.
    fn keep_in_memory<T>(v: &T);
}

impl L3 for V4 {
    /// The IPv4 header checksum is updated in software (the header has no
    /// offload state).
    #[inline(always)]
    fn rewrite_addrs<C: PacketData>(ctx: &C, f: &Flow<V4>, saddr: &u32, daddr: &u32) -> Option<()> {
        let (saddr, daddr) = (*saddr, *daddr);
        if saddr != f.saddr || daddr != f.daddr {
            let mut check: u16 = read(ctx, ETH_HLEN + ip::CHECK.start)?;
            if saddr != f.saddr {
                check = csum::replace4(check, f.saddr, saddr);
                write(ctx, ETH_HLEN + ip::SADDR.start, saddr)?;
            }
            if daddr != f.daddr {
                check = csum::replace4(check, f.daddr, daddr);
                write(ctx, ETH_HLEN + ip::DADDR.start, daddr)?;
            }
            write(ctx, ETH_HLEN + ip::CHECK.start, check)?;
        }
        Some(())
    }

    /// One update per changed address, and one for both (by their
    /// difference, as IPv6's) when SNAT with DNAT changes both: in tc each
    /// update is a helper call, dear on hosts with return-thunk
    /// mitigations. (The combined update for one address alone cost the
    /// DNAT paths 5-7 ns in XDP and tc.)
    #[inline(always)]
    fn l4_csum_addrs<C: L4Csum>(ctx: &C, check: usize, udp: bool, f: &Flow<V4>, saddr: &u32, daddr: &u32) -> Option<()> {
        match (*saddr != f.saddr, *daddr != f.daddr) {
            (true, true) => {
                let diff = csum::add_diff(csum::diff(&[f.saddr], &[*saddr]), csum::diff(&[f.daddr], &[*daddr]));
                ctx.l4_csum_diff(check, udp, diff)
            }
            (true, false) => ctx.l4_csum_addr(check, udp, f.saddr, *saddr),
            (false, true) => ctx.l4_csum_addr(check, udp, f.daddr, *daddr),
            (false, false) => Some(()),
        }
    }

    #[inline(always)]
    fn flow_hash(f: &Flow<V4>) -> u32 {
        flow_hash(f.saddr, f.daddr, f.sport, f.dport, f.proto)
    }

    #[inline(always)]
    fn affinity_client(addr: u32) -> u64 {
        addr as u64
    }

    #[inline(always)]
    fn hairpin_addr() -> Option<u32> {
        Some(hairpin_addr())
    }

    #[inline(always)]
    fn keep_in_memory<T>(_v: &T) {}
}

impl L3 for V6 {
    /// IPv6 has no header checksum: the addresses are just written.
    #[inline(always)]
    fn rewrite_addrs<C: PacketData>(ctx: &C, f: &Flow<V6>, saddr: &Addr6, daddr: &Addr6) -> Option<()> {
        if *saddr != f.saddr {
            write(ctx, ETH_HLEN + ip6::SADDR.start, *saddr)?;
        }
        if *daddr != f.daddr {
            write(ctx, ETH_HLEN + ip6::DADDR.start, *daddr)?;
        }
        Some(())
    }

    /// One checksum update for both addresses, by their difference
    /// (`csum::diff`): a helper call per changed word (two to eight) cost
    /// the IPv6 rewrite more than the arithmetic.
    #[inline(always)]
    fn l4_csum_addrs<C: L4Csum>(ctx: &C, check: usize, udp: bool, f: &Flow<V6>, saddr: &Addr6, daddr: &Addr6) -> Option<()> {
        let (s, d) = (*saddr != f.saddr, *daddr != f.daddr);
        if !s && !d {
            return Some(());
        }
        let ds = if s { csum::diff(&f.saddr, saddr) } else { 0 };
        let dd = if d { csum::diff(&f.daddr, daddr) } else { 0 };
        ctx.l4_csum_diff(check, udp, csum::add_diff(ds, dd))
    }

    #[inline(always)]
    fn flow_hash(f: &Flow<V6>) -> u32 {
        flow_hash6(&f.saddr, &f.daddr, f.sport, f.dport, f.proto)
    }

    /// The client's prefix (`LB6_NODE.affinity_host_bits`, read in place:
    /// only a frontend with affinity asks), folded into the key.
    #[inline(always)]
    fn affinity_client(addr: Addr6) -> u64 {
        let len = LB6_NODE.get(0).map_or(128, |n| n.affinity_prefix());
        affinity_client6_prefix(&addr, len)
    }

    #[inline(always)]
    fn hairpin_addr() -> Option<Addr6> {
        Some(lb_common::hairpin_addr6())
    }

    /// The verifier's 512 bytes of stack forced this: split into scalars,
    /// an IPv6 flow's or entry's addresses (four words each) are spilled
    /// across every helper call, one 8-byte slot per word and per copy.
    /// Once its address escapes, the value stays one object in memory and
    /// its fields are loaded where they are used.
    #[inline(always)]
    fn keep_in_memory<T>(v: &T) {
        core::hint::black_box(v);
    }
}
