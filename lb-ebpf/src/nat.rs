//! Rewriting packets: a TCP/UDP packet's addresses and ports (either
//! family, through `L3`), and an ICMP or ICMPv6 error about a translated
//! flow (its outer header and the packet it quotes).

use lb_common::{
    Addr6, Ct6Entry, CtEntry, IPPROTO_UDP, V4, V6, csum,
    packet::{ETH_HLEN, Fragment, ICMP_HLEN, icmp, icmp_error, icmp6, ip, ip6, l4, l4_check_offset},
    stat,
};

use crate::{
    ct,
    error::Error,
    family::{Ct, CtKey, FamilyMaps},
    l3::L3,
    packet::{L4Csum, PacketData, read, write},
    parse::{Flow, IcmpError, MAX_L4_OFF, MAX_QUOTED_L4_OFF},
    stats,
};

/// Rewrites a TCP/UDP packet to source `saddr:sport` and destination
/// `daddr:dport`. The network header as its family needs (`L3`); the L4
/// checksum through the context (see [`L4Csum`]), pseudo header included,
/// unless this is a later fragment, which has no L4 header (the first
/// fragment's checksum covers the whole datagram).
#[inline(always)]
///
/// The addresses are taken by reference: an IPv6 address passed by value
/// lives in four registers, spilled across each checksum helper call.
pub fn rewrite<F: L3, C: PacketData + L4Csum>(
    ctx: &C,
    f: &Flow<F>,
    saddr: &F::Addr,
    sport: u16,
    daddr: &F::Addr,
    dport: u16,
) -> Option<()> {
    let l4 = f.has_l4();
    // An IPv6 flow lives in map memory (`scratch`): the verifier knows no
    // bounds of an offset loaded from there, and refuses packet pointer
    // arithmetic with it. A parsed offset is never beyond this.
    let l4_off = f.l4_off;
    if l4_off > MAX_L4_OFF {
        return None;
    }
    if l4 {
        let check = l4_off + l4_check_offset(f.proto);
        let udp = f.proto == IPPROTO_UDP;
        F::l4_csum_addrs(ctx, check, udp, f, saddr, daddr)?;
        // One update for both ports when SNAT with DNAT changes both (in
        // tc, a helper call less).
        match (sport != f.sport, dport != f.dport) {
            (true, true) => ctx.l4_csum_ports(check, udp, csum::add_diff(csum::diff2(f.sport, sport), csum::diff2(f.dport, dport)))?,
            (true, false) => ctx.l4_csum_port(check, udp, f.sport, sport)?,
            (false, true) => ctx.l4_csum_port(check, udp, f.dport, dport)?,
            (false, false) => {}
        }
    }
    // The tc helpers may have moved the packet: every access below is
    // bounds-checked afresh.
    F::rewrite_addrs(ctx, f, saddr, daddr)?;
    if l4 {
        if sport != f.sport {
            write(ctx, l4_off + l4::SPORT.start, sport)?;
        }
        if dport != f.dport {
            write(ctx, l4_off + l4::DPORT.start, dport)?;
        }
    }
    Some(())
}

/// Rewrites a packet of a flow as its conntrack entry `e` says (a later
/// fragment is counted).
#[inline(always)]
pub fn translate<F: L3, C: PacketData + L4Csum>(ctx: &C, f: &Flow<F>, e: &Ct<F>) -> Result<(), Error> {
    rewrite(ctx, f, &e.nat_saddr, e.nat_sport, &e.nat_daddr, e.nat_dport).ok_or(Error::Rewrite)?;
    if f.frag == Fragment::Later {
        stats::count(stat::FRAGMENT_TRANSLATED);
    }
    Ok(())
}

/// Translates an ICMP or ICMPv6 error travelling in direction `dir` of a
/// translated flow (see [`IcmpRewrite`]) and returns the flow's entry;
/// `None` when it is about no flow we know (it passes untouched). The flow
/// is found under the quoted packet's tuple reversed, in direction `dir`
/// (the direction the error travels).
#[inline(always)]
pub fn translate_icmp_error<F: IcmpRewrite, C: PacketData>(ctx: &C, err: &IcmpError<F>, dir: u8) -> Result<Option<Ct<F>>, Error> {
    let q = &err.quoted;
    let key = CtKey::<F>::new(q.daddr, q.saddr, q.dport, q.sport, q.proto, dir);
    let Some(e) = ct::get::<F>(&key) else {
        return Ok(None);
    };
    let entry = ct::load(e);
    F::rewrite_icmp_error(ctx, err, &entry).ok_or(Error::Rewrite)?;
    stats::count(stat::ICMP_TRANSLATED);
    Ok(Some(entry))
}

/// How each family rewrites an ICMP error about a flow (the checksums
/// differ: IPv4 has header checksums, ICMPv6's covers a pseudo header).
pub trait IcmpRewrite: FamilyMaps + Sized {
    fn rewrite_icmp_error<C: PacketData>(ctx: &C, err: &IcmpError<Self>, e: &Ct<Self>) -> Option<()>;
}

impl IcmpRewrite for V4 {
    #[inline(always)]
    fn rewrite_icmp_error<C: PacketData>(ctx: &C, err: &IcmpError, e: &CtEntry) -> Option<()> {
        rewrite_icmp_error(ctx, err, e)
    }
}

impl IcmpRewrite for V6 {
    #[inline(always)]
    fn rewrite_icmp_error<C: PacketData>(ctx: &C, err: &IcmpError<V6>, e: &Ct6Entry) -> Option<()> {
        rewrite_icmp6_error(ctx, err, e)
    }
}

/// Translates an ICMP error that travels like a packet of the flow whose
/// entry is `e` (found with the quoted packet's tuple reversed). The outer
/// header gets the entry's addresses, as netfilter does with related ICMP;
/// the quoted packet, which travelled the other way, gets the inverse: its
/// source becomes the entry's destination and its destination the entry's
/// source. The outer IPv4, quoted IPv4 and ICMP checksums are updated
/// incrementally, all in software: ICMP has no checksum offload, and each
/// change is balanced by its checksum's, so a CHECKSUM_COMPLETE skb stays
/// right. The quoted L4 checksum is updated too when the quote has it (a
/// UDP one always does; a TCP one is past the 8 bytes every quote has),
/// so the quote is exactly the packet the receiver sent.
#[inline(always)]
pub fn rewrite_icmp_error<C: PacketData>(ctx: &C, err: &IcmpError, e: &CtEntry) -> Option<()> {
    const IP: usize = ETH_HLEN;
    const ICMP_CHECK: usize = ETH_HLEN + icmp_error::ICMP + icmp::CHECK.start;
    const Q_IP: usize = ETH_HLEN + icmp_error::INNER_IP;
    const Q_L4: usize = ETH_HLEN + icmp_error::INNER_L4;
    let q = &err.quoted;
    // The quoted packet's new tuple.
    let (q_saddr, q_sport, q_daddr, q_dport) = (e.nat_daddr, e.nat_dport, e.nat_saddr, e.nat_sport);

    let mut outer: u16 = read(ctx, IP + ip::CHECK.start)?;
    outer = csum::replace4(outer, err.saddr, e.nat_saddr);
    outer = csum::replace4(outer, err.daddr, e.nat_daddr);

    let q_check_old: u16 = read(ctx, Q_IP + ip::CHECK.start)?;
    let mut q_check = csum::replace4(q_check_old, q.saddr, q_saddr);
    q_check = csum::replace4(q_check, q.daddr, q_daddr);

    let mut icmp_check: u16 = read(ctx, ICMP_CHECK)?;
    icmp_check = csum::replace4(icmp_check, q.saddr, q_saddr);
    icmp_check = csum::replace4(icmp_check, q.daddr, q_daddr);
    icmp_check = csum::replace2(icmp_check, q_check_old, q_check);
    icmp_check = csum::replace2(icmp_check, q.sport, q_sport);
    icmp_check = csum::replace2(icmp_check, q.dport, q_dport);

    // The quoted L4 checksum, where the quote has it (a UDP checksum of 0
    // means none).
    let q_l4_check = Q_L4 + l4_check_offset(q.proto);
    if let Some(old) = read::<C, u16>(ctx, q_l4_check)
        && (old != 0 || q.proto != IPPROTO_UDP)
    {
        let mut new = csum::replace4(old, q.saddr, q_saddr);
        new = csum::replace4(new, q.daddr, q_daddr);
        new = csum::replace2(new, q.sport, q_sport);
        new = csum::replace2(new, q.dport, q_dport);
        if q.proto == IPPROTO_UDP {
            new = csum::udp_mangled_zero(new);
        }
        icmp_check = csum::replace2(icmp_check, old, new);
        write(ctx, q_l4_check, new)?;
    }

    write(ctx, IP + ip::SADDR.start, e.nat_saddr)?;
    write(ctx, IP + ip::DADDR.start, e.nat_daddr)?;
    write(ctx, IP + ip::CHECK.start, outer)?;
    write(ctx, ICMP_CHECK, icmp_check)?;
    write(ctx, Q_IP + ip::SADDR.start, q_saddr)?;
    write(ctx, Q_IP + ip::DADDR.start, q_daddr)?;
    write(ctx, Q_IP + ip::CHECK.start, q_check)?;
    write(ctx, Q_L4 + l4::SPORT.start, q_sport)?;
    write(ctx, Q_L4 + l4::DPORT.start, q_dport)?;
    Some(())
}

/// [`rewrite_icmp_error`] for ICMPv6: the outer addresses, the quoted
/// packet's addresses and ports (after its extension headers, at
/// `err.q_l4_off`), and its L4 checksum where the quote has it. IPv6 has
/// no header checksum; the ICMPv6 checksum covers the pseudo header (the
/// outer addresses) and the whole quote, and is updated incrementally in
/// software for every change (the quoted extension headers are not).
#[inline(always)]
pub fn rewrite_icmp6_error<C: PacketData>(ctx: &C, err: &IcmpError<V6>, e: &Ct6Entry) -> Option<()> {
    // In map memory (`scratch`), as a flow's `l4_off`: bounded for the
    // verifier.
    let icmp_off = err.icmp_off;
    if icmp_off > MAX_L4_OFF {
        return None;
    }
    // The quoted L4 header, after the quote's extension headers.
    let q_l4 = err.q_l4_off;
    if q_l4 > MAX_QUOTED_L4_OFF {
        return None;
    }
    let check_off = icmp_off + icmp6::CHECK.start;
    let q_ip = icmp_off + ICMP_HLEN;
    let q = &err.quoted;
    // The quoted packet's new tuple is the entry's, reversed.
    let (q_saddr, q_sport, q_daddr, q_dport) = (&e.nat_daddr, e.nat_dport, &e.nat_saddr, e.nat_sport);

    let mut icmp_check: u16 = read(ctx, check_off)?;
    icmp_check = replace16(icmp_check, &err.saddr, &e.nat_saddr);
    icmp_check = replace16(icmp_check, &err.daddr, &e.nat_daddr);
    icmp_check = replace16(icmp_check, &q.saddr, q_saddr);
    icmp_check = replace16(icmp_check, &q.daddr, q_daddr);
    icmp_check = csum::replace2(icmp_check, q.sport, q_sport);
    icmp_check = csum::replace2(icmp_check, q.dport, q_dport);

    let q_l4_check = q_l4 + l4_check_offset(q.proto);
    if let Some(old) = read::<C, u16>(ctx, q_l4_check)
        && (old != 0 || q.proto != IPPROTO_UDP)
    {
        let mut new = replace16(old, &q.saddr, q_saddr);
        new = replace16(new, &q.daddr, q_daddr);
        new = csum::replace2(new, q.sport, q_sport);
        new = csum::replace2(new, q.dport, q_dport);
        if q.proto == IPPROTO_UDP {
            new = csum::udp_mangled_zero(new);
        }
        icmp_check = csum::replace2(icmp_check, old, new);
        write(ctx, q_l4_check, new)?;
    }

    write(ctx, ETH_HLEN + ip6::SADDR.start, e.nat_saddr)?;
    write(ctx, ETH_HLEN + ip6::DADDR.start, e.nat_daddr)?;
    write(ctx, check_off, icmp_check)?;
    write(ctx, q_ip + ip6::SADDR.start, *q_saddr)?;
    write(ctx, q_ip + ip6::DADDR.start, *q_daddr)?;
    write(ctx, q_l4 + l4::SPORT.start, q_sport)?;
    write(ctx, q_l4 + l4::DPORT.start, q_dport)?;
    Some(())
}

/// A checksum after an IPv6 address it covers changed, word by word.
#[inline(always)]
fn replace16(check: u16, from: &Addr6, to: &Addr6) -> u16 {
    let mut c = check;
    let mut i = 0;
    while i < 4 {
        c = csum::replace4(c, from[i], to[i]);
        i += 1;
    }
    c
}
