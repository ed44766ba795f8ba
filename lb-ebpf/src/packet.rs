//! Bounds-checked packet access and L4 checksum updates, shared by the tc
//! and XDP programs.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_redirect,
    programs::{TcContext, XdpContext},
};
use lb_common::{csum, packet::Field};

/// A context with direct packet access.
pub trait PacketData {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length (an skb may hold more than its linear
    /// part).
    fn len(&self) -> u32;
}

impl PacketData for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }
}

impl PacketData for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }

    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }
}

/// A pointer to a `T` at `off`, or `None` if it would reach past the end.
/// The comparison against `data_end` is what the verifier needs to see
/// before any access through the pointer.
#[inline(always)]
pub fn ptr_at<C: PacketData, T>(ctx: &C, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + off + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Copies a `T` out of the packet at `off`.
///
/// Packet memory is read and written with `T`'s own access width although
/// `off` may not be a multiple of its alignment (an IPv4 address sits at
/// byte 26). The kernel constraint: the verifier accepts misaligned packet
/// access wherever the CPU does it efficiently (x86-64, arm64, ppc64le,
/// s390x: it refuses the program elsewhere, at load), while LLVM's BPF
/// backend, told "unaligned", splits every access into bytes: a `u32`
/// into four loads, three shifts and three ORs, an IPv6 address into
/// sixteen stores and two dozen shifts. C programs get the wide accesses
/// from their header structs in the same way.
#[inline(always)]
pub fn read<C: PacketData, T: Copy>(ctx: &C, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the `T` lies inside the packet; `T: Copy`
    // is plain bytes here; the access width is `T`'s (see above).
    Some(unsafe { ptr_at::<C, T>(ctx, off)?.read() })
}

/// `N` bytes of the packet at an offset, bounds-checked once, whose fields
/// are read in place at their own width (see [`read`]). A copy of the
/// bytes (`read::<[u8; N]>`) moved them one at a time, and each field was
/// then put back together from bytes: some 100 instructions for an IPv4
/// and a TCP header. Every read goes through the one checked pointer at a
/// constant offset, which the verifier accepts within the checked range.
#[derive(Clone, Copy)]
pub struct Header<const N: usize> {
    p: *const u8,
}

impl<const N: usize> Header<N> {
    /// The `N` bytes at `off`, or `None` if they would reach past the end.
    #[inline(always)]
    pub fn at<C: PacketData>(ctx: &C, off: usize) -> Option<Header<N>> {
        Some(Header { p: ptr_at::<C, [u8; N]>(ctx, off)? as *const u8 })
    }

    /// The byte at `i` (0 past the end: the index is a constant, and the
    /// test folds away).
    #[inline(always)]
    pub fn u8(&self, i: usize) -> u8 {
        if i >= N {
            return 0;
        }
        // SAFETY: `at` checked that the N bytes lie inside the packet.
        unsafe { self.p.add(i).read() }
    }

    /// The 16-bit field `f`, as it sits in memory (network order).
    #[inline(always)]
    pub fn u16(&self, f: Field) -> u16 {
        if f.start + 2 > N {
            return 0;
        }
        // SAFETY: as in `u8`; the access width is the field's (see `read`).
        unsafe { self.p.add(f.start).cast::<u16>().read() }
    }

    /// The 32-bit field `f`, as it sits in memory (network order).
    #[inline(always)]
    pub fn u32(&self, f: Field) -> u32 {
        if f.start + 4 > N {
            return 0;
        }
        // SAFETY: as in `u16`.
        unsafe { self.p.add(f.start).cast::<u32>().read() }
    }
}

/// Writes a `T` into the packet at `off`, with `T`'s access width (see
/// [`read`]); `None` if it would reach past the end. (tc: the verifier
/// makes the skb writable first.)
#[inline(always)]
pub fn write<C: PacketData, T>(ctx: &C, off: usize, v: T) -> Option<()> {
    // SAFETY: ptr_at checked that the `T` lies inside the packet; the
    // access width is `T`'s (see `read`).
    unsafe { ptr_at::<C, T>(ctx, off)?.write(v) };
    Some(())
}

/// tc: sends the packet back out of the interface it came in on (its MACs
/// swapped by the caller), without routing.
#[inline(always)]
pub fn redirect_back(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` is the program's context, valid for the whole run; one
    // field is read through the raw pointer.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the helper takes plain integers.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Updates a TCP or UDP checksum (at `check_off`) for a changed field.
/// A UDP checksum of 0 means "none" and stays 0.
pub trait L4Csum {
    /// A 4-byte field of the pseudo-header (an address) changed.
    fn l4_csum_addr(&self, check_off: usize, udp: bool, from: u32, to: u32) -> Option<()>;
    /// A 2-byte field inside the L4 header (a port) changed.
    fn l4_csum_port(&self, check_off: usize, udp: bool, from: u16, to: u16) -> Option<()>;
    /// Fields of the pseudo-header (addresses) changed by `diff`
    /// (`csum::diff`): one update for several words.
    fn l4_csum_diff(&self, check_off: usize, udp: bool, diff: u32) -> Option<()>;
    /// Fields inside the L4 header (ports) changed by `diff`
    /// (`csum::diff2`): one update for both ports.
    fn l4_csum_ports(&self, check_off: usize, udp: bool, diff: u32) -> Option<()>;
}

/// tc goes through the kernel helper, which alone knows the skb's checksum
/// state: with CHECKSUM_PARTIAL (local senders on veth) only the
/// pseudo-header part of the field may change, and ports not at all.
/// The helper may move packet data: pointers must be taken afresh after.
impl L4Csum for TcContext {
    #[inline(always)]
    fn l4_csum_addr(&self, check_off: usize, udp: bool, from: u32, to: u32) -> Option<()> {
        let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        self.l4_csum_replace(check_off, from as u64, to as u64, BPF_F_PSEUDO_HDR as u64 | mangled | 4).ok()
    }

    #[inline(always)]
    fn l4_csum_port(&self, check_off: usize, udp: bool, from: u16, to: u16) -> Option<()> {
        let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        self.l4_csum_replace(check_off, from as u64, to as u64, mangled | 2).ok()
    }

    /// Size 0: the helper adds `diff` as a `__wsum`, exactly as the word
    /// by word updates would (checksum field, and `skb->csum` of a
    /// CHECKSUM_COMPLETE skb alike).
    #[inline(always)]
    fn l4_csum_diff(&self, check_off: usize, udp: bool, diff: u32) -> Option<()> {
        let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        self.l4_csum_replace(check_off, 0, diff as u64, BPF_F_PSEUDO_HDR as u64 | mangled).ok()
    }

    /// Without `BPF_F_PSEUDO_HDR`, as the 2-byte updates it replaces: a
    /// CHECKSUM_PARTIAL field stays as it is, and `skb->csum` too (the
    /// field and the ports change by opposite amounts).
    #[inline(always)]
    fn l4_csum_ports(&self, check_off: usize, udp: bool, diff: u32) -> Option<()> {
        let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        self.l4_csum_replace(check_off, 0, diff as u64, mangled).ok()
    }
}

/// XDP frames carry no checksum state: the field is updated in software
/// (RFC 1624).
impl L4Csum for XdpContext {
    #[inline(always)]
    fn l4_csum_addr(&self, check_off: usize, udp: bool, from: u32, to: u32) -> Option<()> {
        let check: u16 = read(self, check_off)?;
        if udp && check == 0 {
            return Some(());
        }
        write(self, check_off, fix_udp(udp, csum::replace4(check, from, to)))
    }

    #[inline(always)]
    fn l4_csum_port(&self, check_off: usize, udp: bool, from: u16, to: u16) -> Option<()> {
        let check: u16 = read(self, check_off)?;
        if udp && check == 0 {
            return Some(());
        }
        write(self, check_off, fix_udp(udp, csum::replace2(check, from, to)))
    }

    #[inline(always)]
    fn l4_csum_diff(&self, check_off: usize, udp: bool, diff: u32) -> Option<()> {
        let check: u16 = read(self, check_off)?;
        if udp && check == 0 {
            return Some(());
        }
        write(self, check_off, fix_udp(udp, csum::apply_diff(check, diff)))
    }

    /// The same arithmetic: a frame has no checksum state to respect.
    #[inline(always)]
    fn l4_csum_ports(&self, check_off: usize, udp: bool, diff: u32) -> Option<()> {
        self.l4_csum_diff(check_off, udp, diff)
    }
}

#[inline(always)]
fn fix_udp(udp: bool, check: u16) -> u16 {
    if udp { csum::udp_mangled_zero(check) } else { check }
}
