//! The ICMP errors the datapath sends itself (a reject for a frontend
//! without endpoints or on an unserved port, over IPv4 and IPv6;
//! "fragmentation needed" and "time exceeded" on the north-south path),
//! each from the address the offending packet was sent to and quoting it,
//! and the rate limits (per client, a map per family, and one for the
//! whole node) that keep them from being used as a reflector.

use core::{
    net::Ipv6Addr,
    ptr::{addr_of, addr_of_mut},
};

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action, xdp_md},
    btf_maps::LruHashMap,
    helpers::{bpf_skb_change_tail, bpf_skb_load_bytes, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    Addr6, REJECT_BURST, REJECT_NODE_BURST, REJECT_NODE_PER_SEC, REJECT_PER_SEC, RejectRate, addr6, csum,
    packet::{
        ETH_HLEN, ETH_P_IPV6, ICMP_QUOTE_LEN, ICMP_UNREACH_LEN, ICMP6_ERROR_HLEN, ICMP6_QUOTE_MAX, eth, icmp, icmp_error_packet, icmp6,
        icmp6_error_headers, ip6, swapped_macs,
    },
    stat,
};

use crate::{
    maps::{LB_REJECT_NODE, LB4_REJECT_RATE, LB6_REJECT_RATE},
    packet::{read, redirect_back, write},
    stats,
};

/// Whether one more ICMP error may go to `client` now: a token bucket per
/// client of [`REJECT_BURST`] refilled at [`REJECT_PER_SEC`] a second, as
/// the kernel limits its own ICMP errors per destination, and one for the
/// whole node ([`node_allowed`]). A refused one is counted
/// (`stat::DROP_REJECT_RATE`).
#[inline(always)]
pub fn allowed(client: u32, now: u64) -> bool {
    allowed_in(&LB4_REJECT_RATE, &client, now)
}

/// [`allowed`] for an IPv6 client.
#[inline(always)]
pub fn allowed6(client: &Addr6, now: u64) -> bool {
    allowed_in(&LB6_REJECT_RATE, client, now)
}

/// The token bucket of `client` in `map` (its family's), then the node's.
#[inline(always)]
fn allowed_in<K, const M: usize>(map: &LruHashMap<K, RejectRate, M>, client: &K, now: u64) -> bool {
    let allow = match map.get_ptr_mut(client) {
        Some(r) => take(r, now, REJECT_BURST, REJECT_PER_SEC),
        None => {
            let fresh = RejectRate { last_ns: now, tokens: REJECT_BURST - 1, _pad: 0 };
            // LRU: fails only on a bad argument; then the client is not
            // limited.
            let _ = map.insert(client, fresh, 0);
            true
        }
    };
    let allow = allow && node_allowed(now);
    if !allow {
        stats::count(stat::DROP_REJECT_RATE);
    }
    allow
}

/// Whether the node's bucket (`LB_REJECT_NODE`: [`REJECT_NODE_BURST`],
/// then [`REJECT_NODE_PER_SEC`] a second, the kernel's defaults for its
/// own ICMP errors) has a token left, taking it: a flood from ever-changing
/// sources, each within its own bucket, is not reflected one for one.
#[inline(always)]
fn node_allowed(now: u64) -> bool {
    match LB_REJECT_NODE.get_ptr_mut(0) {
        Some(r) => take(r, now, REJECT_NODE_BURST, REJECT_NODE_PER_SEC),
        None => true,
    }
}

/// Takes a token from the bucket at `r` (refilled at `per_sec`, holding at
/// most `burst`), if it has one at `now`. A zeroed bucket (a fresh array
/// slot) fills up at once.
#[inline(always)]
fn take(r: *mut RejectRate, now: u64, burst: u32, per_sec: u32) -> bool {
    let ns_per_token = 1_000_000_000 / per_sec as u64;
    // SAFETY: `r` is a map value pointer from a lookup, valid and aligned
    // for the program's run. Other CPUs may update the same bucket at
    // once, so each field is read and written once, volatile, through the
    // raw pointer (READ_ONCE/WRITE_ONCE), never through a reference; a race
    // at worst lets one more error through.
    let (last, tokens) = unsafe { (addr_of!((*r).last_ns).read_volatile(), addr_of!((*r).tokens).read_volatile()) };
    let refill = now.saturating_sub(last) / ns_per_token;
    let mut tokens = tokens as u64 + refill;
    if tokens > burst as u64 {
        tokens = burst as u64;
    }
    let allow = tokens > 0;
    if allow {
        tokens -= 1;
    }
    if refill > 0 {
        // SAFETY: as above.
        unsafe { addr_of_mut!((*r).last_ns).write_volatile(last + refill * ns_per_token) };
    }
    // SAFETY: as above.
    unsafe { addr_of_mut!((*r).tokens).write_volatile(tokens as u32) };
    allow
}

/// A context whose packet bytes a helper copies out.
trait LoadBytes {
    /// Copies exactly `N` bytes at `off`. (`TcContext::load_bytes` clamps
    /// the length to the packet, which the verifier rejects as a possibly
    /// zero-sized read; a constant length is what it wants.)
    fn load_exact<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

impl LoadBytes for TcContext {
    #[inline(always)]
    fn load_exact<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: `skb` is the program's context and `buf` is N bytes of
        // writable stack, the length passed.
        let ret = unsafe { bpf_skb_load_bytes(self.skb.skb as *const _, off as u32, buf.as_mut_ptr().cast(), N as u32) };
        (ret == 0).then_some(buf)
    }
}

impl LoadBytes for XdpContext {
    #[inline(always)]
    fn load_exact<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: `ctx` is the program's context and `buf` is N bytes of
        // writable stack, the length passed.
        let ret = unsafe { bpf_xdp_load_bytes(self.ctx, off as u32, buf.as_mut_ptr().cast(), N as u32) };
        (ret == 0).then_some(buf)
    }
}

#[inline(always)]
fn load_exact<C: LoadBytes, const N: usize>(ctx: &C, off: usize) -> Option<[u8; N]> {
    ctx.load_exact(off)
}

/// tc: turns the packet (IPv4 without options) into an ICMP error about it
/// and sends it back out of the interface it came in on. `None` when the
/// skb could not be rewritten.
#[inline(always)]
pub fn tc_reply(ctx: &TcContext, icmp_type: u8, code: u8, mtu: u16) -> Option<i32> {
    let macs: [u8; 12] = load_exact(ctx, eth::ADDRS.start)?;
    let quote: [u8; ICMP_QUOTE_LEN] = load_exact(ctx, ETH_HLEN)?;
    let icmp = icmp_error_packet(&quote, icmp_type, code, mtu);
    // SAFETY: `skb` is the program's context; the helper takes it and
    // integers.
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + ICMP_UNREACH_LEN) as u32, 0) };
    if ret != 0 {
        return None;
    }
    ctx.store(eth::ADDRS.start, &swapped_macs(&macs), 0).ok()?;
    ctx.store(ETH_HLEN, &icmp, 0).ok()?;
    Some(redirect_back(ctx))
}

/// tc: a reject (ICMP port unreachable) to `client`, within its rate.
#[inline(always)]
pub fn tc_reject(ctx: &TcContext, client: u32, now: u64) -> Option<i32> {
    tc_error(ctx, client, now, icmp::DEST_UNREACH, icmp::PORT_UNREACH, 0)
}

/// tc: an ICMP error about the packet to `client` within its rate (a drop
/// beyond it), as XDP's [`xdp_error`].
#[inline(always)]
pub fn tc_error(ctx: &TcContext, client: u32, now: u64, icmp_type: u8, code: u8, mtu: u16) -> Option<i32> {
    if !allowed(client, now) {
        return Some(TC_ACT_SHOT);
    }
    tc_reply(ctx, icmp_type, code, mtu)
}

/// tc: an IPv6 reject (ICMPv6 port unreachable) to the packet's sender,
/// within its rate.
#[inline(always)]
pub fn tc_reject6(ctx: &TcContext, now: u64) -> Option<i32> {
    tc_error6(ctx, now, icmp6::DEST_UNREACH, icmp6::PORT_UNREACH)
}

/// tc: an ICMPv6 error (no `info`) to the packet's sender within its rate
/// (a drop beyond it), as XDP's [`xdp_error6`].
#[inline(always)]
pub fn tc_error6(ctx: &TcContext, now: u64, icmp_type: u8, code: u8) -> Option<i32> {
    let client: Addr6 = load_exact::<_, 16>(ctx, ETH_HLEN + ip6::SADDR.start).map(|b| addr6(Ipv6Addr::from(b)))?;
    if !allowed6(&client, now) {
        return Some(TC_ACT_SHOT);
    }
    tc_reply6(ctx, icmp_type, code, 0)
}

/// tc: turns the IPv6 packet into an ICMPv6 error about it (from the
/// address it was sent to, quoting as much of it as fits in the IPv6
/// minimum MTU) and sends it back out of the interface it came in on.
/// The packet is cut to the quote and the new headers are inserted in
/// front of it: the quote is never copied. `None` when the skb could not
/// be rewritten.
#[inline(always)]
pub fn tc_reply6(ctx: &TcContext, icmp_type: u8, code: u8, info: u32) -> Option<i32> {
    let macs: [u8; 12] = load_exact(ctx, eth::ADDRS.start)?;
    let addrs: [u8; 32] = load_exact(ctx, ETH_HLEN + ip6::SADDR.start)?;
    let len = ctx.len() as usize;
    if len < ETH_HLEN + ip6::DADDR.end {
        return None;
    }
    let mut quote = len - ETH_HLEN;
    if quote > ICMP6_QUOTE_MAX {
        quote = ICMP6_QUOTE_MAX;
        // SAFETY: `skb` is the program's context; the helper takes it and
        // integers.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + quote) as u32, 0) } != 0 {
            return None;
        }
    }
    let sum = packet_sum(ctx, ETH_HLEN, quote)?;
    let headers = icmp6_error_headers(&addrs, icmp_type, code, info, quote as u16, sum);
    // Room for the IPv6 and ICMPv6 headers between the Ethernet header and
    // the packet, which becomes the quote.
    ctx.adjust_room(ICMP6_ERROR_HLEN as i32, BPF_ADJ_ROOM_MAC, 0).ok()?;
    ctx.store(eth::ADDRS.start, &swapped_macs(&macs), 0).ok()?;
    ctx.store(ETH_HLEN, &headers, 0).ok()?;
    Some(redirect_back(ctx))
}

/// The one's-complement sum (as `csum::sum_words`) of `len` bytes of the
/// packet from `start`; `len` is at most [`ICMP6_QUOTE_MAX`]. A loop of
/// 8-byte words with a bound the verifier can see, then the last bytes.
/// Copied out by the helper: a packet pointer at a growing offset, LLVM
/// turned into arithmetic on the end pointer, which the verifier refuses.
#[inline(always)]
fn packet_sum<C: LoadBytes>(ctx: &C, start: usize, len: usize) -> Option<u32> {
    let mut sum: u64 = 0;
    let words = len / 8;
    let mut i = 0;
    while i < ICMP6_QUOTE_MAX / 8 && i < words {
        let w: [u8; 8] = load_exact(ctx, start + i * 8)?;
        sum += csum::sum_words(&w, 0) as u64;
        i += 1;
    }
    let mut off = start + words * 8;
    if len & 4 != 0 {
        let w: [u8; 4] = load_exact(ctx, off)?;
        sum += csum::sum_words(&w, 0) as u64;
        off += 4;
    }
    if len & 2 != 0 {
        let w: [u8; 2] = load_exact(ctx, off)?;
        sum += csum::sum_words(&w, 0) as u64;
        off += 2;
    }
    if len & 1 != 0 {
        let w: [u8; 1] = load_exact(ctx, off)?;
        sum += csum::sum_words(&w, 0) as u64;
    }
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    Some(((sum & 0xffff_ffff) + (sum >> 32)) as u32)
}

/// XDP: the same as [`tc_reply`], transmitted back out of the interface.
#[inline(always)]
pub fn xdp_reply(ctx: &XdpContext, icmp_type: u8, code: u8, mtu: u16) -> Option<u32> {
    let macs: [u8; 12] = read(ctx, eth::ADDRS.start)?;
    let quote: [u8; ICMP_QUOTE_LEN] = read(ctx, ETH_HLEN)?;
    let icmp = icmp_error_packet(&quote, icmp_type, code, mtu);
    let len = (ctx.data_end() - ctx.data()) as i32;
    let delta = (ETH_HLEN + ICMP_UNREACH_LEN) as i32 - len;
    // SAFETY: `ctx.ctx` is the program's context; the helper takes it and
    // an integer. Packet pointers taken before are stale after it: the
    // writes below bounds-check afresh.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return None;
    }
    write(ctx, eth::ADDRS.start, swapped_macs(&macs))?;
    write(ctx, ETH_HLEN, icmp)?;
    Some(xdp_action::XDP_TX)
}

/// XDP: an ICMP error to `client` within its rate, else a drop.
#[inline(always)]
pub fn xdp_error(ctx: &XdpContext, client: u32, now: u64, icmp_type: u8, code: u8, mtu: u16) -> u32 {
    if !allowed(client, now) {
        return xdp_action::XDP_DROP;
    }
    xdp_reply(ctx, icmp_type, code, mtu).unwrap_or(xdp_action::XDP_DROP)
}

/// XDP: the same as [`tc_reply6`] (the packet cut to the quote, the new
/// headers in front of it, the quote never copied), transmitted back out
/// of the interface; a drop when the packet could not be rewritten. A
/// function of its own, with scalar arguments, called by the program
/// itself once its path has returned ([`request6`]): inlined in that path,
/// or called from it, its headers and checksum loop took `lb_xdp6_nat`
/// past the 512-byte stack.
#[inline(never)]
pub fn xdp_reply6(ctx: *mut xdp_md, icmp_type: u8, code: u8, info: u32) -> u32 {
    xdp_reply6_in(&XdpContext::new(ctx), icmp_type, code, info).unwrap_or(xdp_action::XDP_DROP)
}

#[inline(always)]
fn xdp_reply6_in(ctx: &XdpContext, icmp_type: u8, code: u8, info: u32) -> Option<u32> {
    let macs: [u8; 12] = read(ctx, eth::ADDRS.start)?;
    let addrs: [u8; 32] = read(ctx, ETH_HLEN + ip6::SADDR.start)?;
    let len = ctx.data_end() - ctx.data();
    if len < ETH_HLEN + ip6::DADDR.end {
        return None;
    }
    let mut quote = len - ETH_HLEN;
    if quote > ICMP6_QUOTE_MAX {
        quote = ICMP6_QUOTE_MAX;
        let delta = (ETH_HLEN + quote) as i32 - len as i32;
        // SAFETY: `ctx.ctx` is the program's context; the helper takes it
        // and an integer. Packet pointers taken before are stale after it:
        // every access below bounds-checks afresh.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return None;
        }
    }
    let sum = packet_sum(ctx, ETH_HLEN, quote)?;
    let headers = icmp6_error_headers(&addrs, icmp_type, code, info, quote as u16, sum);
    // Room for the IPv6 and ICMPv6 headers in front: the old Ethernet
    // header's bytes are overwritten by them, and the packet from its
    // IPv6 header on becomes the quote.
    // SAFETY: as above.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(ICMP6_ERROR_HLEN as i32)) } != 0 {
        return None;
    }
    write(ctx, eth::ADDRS.start, swapped_macs(&macs))?;
    write(ctx, eth::ETHERTYPE.start, ETH_P_IPV6.to_be())?;
    write(ctx, ETH_HLEN, headers)?;
    Some(xdp_action::XDP_TX)
}

/// XDP: an ICMPv6 error (no `info`) to the packet's sender within its
/// rate, else a drop: [`xdp_error`] for IPv6, called by a program whose
/// own frame is small (`lb_xdp6_reject`).
#[inline(always)]
pub fn xdp_error6(ctx: &XdpContext, now: u64, icmp_type: u8, code: u8) -> u32 {
    let Some(client) = read::<_, Addr6>(ctx, ETH_HLEN + ip6::SADDR.start) else {
        return xdp_action::XDP_DROP;
    };
    if !allowed6(&client, now) {
        return xdp_action::XDP_DROP;
    }
    xdp_reply6(ctx.ctx, icmp_type, code, 0)
}

/// Marks a verdict as a request for an ICMPv6 error ([`request6`]); XDP's
/// verdicts are small numbers.
const REQUEST6: u32 = 1 << 31;

/// XDP: an ICMPv6 error of `icmp_type`/`code` (with a 16-bit `info`: an
/// MTU) to `client` within its rate, as a verdict of the path that the
/// program turns into the error with [`xdp_reply6`] (see [`requested6`]);
/// a drop when the rate is exceeded.
#[inline(always)]
pub fn request6(client: &Addr6, now: u64, icmp_type: u8, code: u8, info: u16) -> u32 {
    if !allowed6(client, now) {
        return xdp_action::XDP_DROP;
    }
    REQUEST6 | (icmp_type as u32) << 24 | (code as u32) << 16 | info as u32
}

/// The ICMPv6 error a verdict requests ([`request6`]), if it is one.
#[inline(always)]
pub fn requested6(verdict: u32) -> Option<(u8, u8, u32)> {
    (verdict & REQUEST6 != 0).then_some(((verdict >> 24 & 0x7f) as u8, (verdict >> 16) as u8, verdict & 0xffff))
}
