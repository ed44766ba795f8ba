//! The map ABI shared by the eBPF programs and the agent, plus the pure
//! packet arithmetic both sides use.
//!
//! Everything in this crate is `#![no_std]` and `#[repr(C)]`. Keys and values
//! carry explicit padding fields so that no byte of a map key is ever
//! uninitialised (the kernel hashes every byte of a key). The layout of every
//! type is locked by compile-time size and offset asserts below; changing one
//! is an ABI change for pinned maps.
//!
//! Addresses and ports are stored in network byte order, exactly as they
//! appear on the wire, so the datapath never swaps bytes on the fast path.
#![cfg_attr(not(test), no_std)]

pub mod csum;
pub mod ct;
pub mod hash;
// `maps` first, with its macros (`assert_layout!`) for `maps6`.
#[macro_use]
pub mod maps;
pub mod maps6;
pub mod packet;
pub mod vip_filter;

pub use maps::*;
pub use maps6::*;
