//! Bounds-checked packet access shared by the tc and XDP programs.

use aya_ebpf::programs::{TcContext, XdpContext};

/// A context with direct packet access.
pub trait PacketData {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
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
#[inline(always)]
pub fn read<C: PacketData, T: Copy>(ctx: &C, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked the bounds against data_end.
    Some(unsafe { ptr_at::<C, T>(ctx, off)?.read_unaligned() })
}

/// Writes a `T` into the packet at `off`; `None` if it would reach past
/// the end. (tc: the verifier makes the skb writable first.)
#[inline(always)]
pub fn write<C: PacketData, T>(ctx: &C, off: usize, v: T) -> Option<()> {
    // SAFETY: ptr_at checked the bounds against data_end.
    unsafe { ptr_at::<C, T>(ctx, off)?.write_unaligned(v) };
    Some(())
}
