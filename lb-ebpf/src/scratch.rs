//! The paths' per-CPU working memory (`LB6_SCRATCH`, and `LB4_SCRATCH`
//! for IPv4's XDP): the parsed flow, off the stack, where every part of a
//! path that a program splits (functions of their own, tail calls) finds
//! it without parsing again.
//!
//! - tc, from a pod: `lb_tc_ingress6`'s first look parses into
//!   [`TC_INGRESS`]; the exact path (`ingress6`, in
//!   `lb_tc_ingress6_rest`, which it tail-calls) reads the flow from there.
//! - tc, to a client: `egress6`, [`TC_EGRESS`].
//! - ICMPv6 errors about flows are read into the slot of their hook too
//!   ([`Scratch6::err`]).
//! - XDP: `lb_xdp6`'s first look parses into [`XDP`]; the exact path
//!   (`lb_xdp6_rest`, which it tail-calls) reads the flow from there, with
//!   whether the first look found a forward entry
//!   ([`Scratch6::first_look`]). For a NAT66 packet the path also leaves
//!   what `lb_xdp6_nat`, which it tail-calls, does with it
//!   ([`Scratch6::next`]: a reply, or a client's packet with its forward
//!   entry and the time), so that `lb_xdp6_nat` neither parses nor looks
//!   conntrack up again.
//! - XDP, IPv4: `lb_xdp4`'s first look parses onto its stack (the
//!   established flows it settles need nothing more) and hands a flow it
//!   does not settle to `lb_xdp4_rest` in [`Scratch4`], with what it
//!   found ([`Scratch4::first_look`]).
//!
//! A program runs to its end on its CPU (softirq, or with bottom halves
//! off), and a tail call keeps the CPU: nothing else uses a slot while a
//! program does. Each hook has its own slot all the same. Every member is
//! written before it is read on the same run.

use core::{mem::MaybeUninit, ptr::addr_of_mut};

use lb_common::{Ct6Entry, V4, V6};

use crate::{
    maps::{LB4_SCRATCH, LB6_SCRATCH},
    parse::{Flow, IcmpError},
};

/// The slot of `tc`'s packets from pods.
pub const TC_INGRESS: u32 = 0;
/// The slot of `tc`'s packets to clients.
pub const TC_EGRESS: u32 = 1;
/// The slot of `lb_xdp6` and `lb_xdp6_nat`.
pub const XDP: u32 = 2;
/// Slots in `LB6_SCRATCH`.
pub const SLOTS: u32 = 3;

/// [`Scratch6::next`]: a reply of a NAT66 flow (`lb_xdp6_nat` looks its
/// entry up).
pub const NAT66_REPLY: u32 = 1;
/// [`Scratch6::next`]: a client's packet of a NAT66 flow, recorded in its
/// forward entry ([`Scratch6::entry`], at [`Scratch6::now`]).
pub const NAT66_FORWARD: u32 = 2;

pub struct Scratch6 {
    pub flow: MaybeUninit<Flow<V6>>,
    /// An ICMPv6 error about a flow (`parse::icmp6_error_at`).
    pub err: MaybeUninit<IcmpError<V6>>,
    /// `lb_xdp6` -> `lb_xdp6_nat` only.
    pub entry: MaybeUninit<Ct6Entry>,
    pub now: u64,
    pub next: u32,
    /// `lb_xdp6` -> `lb_xdp6_rest`: [`NO_ENTRY`] when the first look found
    /// no forward entry for the flow (the exact path does not look again),
    /// else 0. (In the padding after `next`: the value's size is unchanged.)
    pub first_look: u32,
}

/// [`Scratch6::first_look`], [`Scratch4::first_look`]: the flow has no
/// forward entry.
pub const NO_ENTRY: u32 = 1;
/// [`Scratch4::first_look`]: the packet is an ICMP error (not in
/// [`Scratch4::flow`]: the rest parses it again).
pub const ICMP_ERROR: u32 = 2;

/// `lb_xdp4` -> `lb_xdp4_rest` (`LB4_SCRATCH`, one slot).
pub struct Scratch4 {
    pub flow: MaybeUninit<Flow<V4>>,
    /// [`NO_ENTRY`]: conntrack has no forward entry for the flow (the rest
    /// does not look again); [`ICMP_ERROR`]: no flow, an ICMP error; 0:
    /// the rest looks conntrack up.
    pub first_look: u32,
}

/// `lb_xdp4` -> `lb_xdp4_rest`: the flow `f` (none with [`ICMP_ERROR`]),
/// and what the first look found. `false` when this CPU's slot is
/// missing (the packet passes).
#[inline(always)]
pub fn hand_over4(f: Option<&Flow<V4>>, first_look: u32) -> bool {
    let Some(s) = LB4_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, as in `get`.
    unsafe {
        if let Some(f) = f {
            addr_of_mut!((*s).flow).write(MaybeUninit::new(*f));
        }
        addr_of_mut!((*s).first_look).write(first_look);
    }
    true
}

/// This CPU's slot of `LB4_SCRATCH`.
#[inline(always)]
pub fn get4() -> Option<&'static mut Scratch4> {
    let s = LB4_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: as in `get`.
    Some(unsafe { &mut *s })
}

/// This CPU's scratch of `slot`.
#[inline(always)]
pub fn get(slot: u32) -> Option<&'static mut Scratch6> {
    let s = LB6_SCRATCH.get_ptr_mut(slot)?;
    // SAFETY: this CPU's slot of a per-CPU array, valid and aligned for the
    // program's run and used by nothing else during it (see the module);
    // its `MaybeUninit` members are written before they are read.
    Some(unsafe { &mut *s })
}

/// `lb_xdp6` -> `lb_xdp6_nat`: what to do with the flow in [`XDP`]
/// (`NAT66_FORWARD`: with the forward entry `e` and the time `now`).
/// Written through the slot's pointer, member by member: the caller holds
/// the flow in the same slot.
#[inline(always)]
pub fn hand_over(next: u32, e: Option<(&Ct6Entry, u64)>) {
    let Some(s) = LB6_SCRATCH.get_ptr_mut(XDP) else {
        return;
    };
    // SAFETY: as in `get`; the members written are not the flow.
    unsafe {
        if let Some((e, now)) = e {
            addr_of_mut!((*s).entry).write(MaybeUninit::new(*e));
            addr_of_mut!((*s).now).write(now);
        }
        addr_of_mut!((*s).next).write(next);
    }
}
