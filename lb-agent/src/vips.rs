//! `LB4_VIPS` and `LB6_VIPS`: every frontend address with the kinds of
//! frontend it has, the datapath's first lookup (one [`Vips`] per family). Kept in step with the installed frontends
//! by counting, per address and kind, how many frontends have it, so a
//! sync touches only the addresses whose frontends changed.
//!
//! An address is written before the first frontend that needs it (a
//! packet that misses it passes untranslated) and removed after the last
//! one is gone.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use crate::reconcile::MapFamily;

use lb_common::{Vip4, svc_flags, vip_flags};

use crate::{maps::MapsError, reconcile::MapStore};

/// The VIP kind of a frontend with `svc_flags`.
pub fn kind(flags: u32) -> u32 {
    if flags & svc_flags::NODE_PORT != 0 {
        vip_flags::NODE_PORT
    } else if flags & svc_flags::EXTERNAL_IP != 0 {
        vip_flags::EXTERNAL_IP
    } else if flags & svc_flags::LOAD_BALANCER != 0 {
        vip_flags::LOAD_BALANCER
    } else {
        vip_flags::CLUSTER_IP
    }
}

const KINDS: [u32; 4] = [vip_flags::CLUSTER_IP, vip_flags::LOAD_BALANCER, vip_flags::EXTERNAL_IP, vip_flags::NODE_PORT];

/// The addresses of one family's frontends (`A`: `Ipv4Addr` or
/// `Ipv6Addr`).
pub struct Vips<A = Ipv4Addr> {
    /// Frontends per address, by kind (in `KINDS` order).
    refs: HashMap<A, [u32; 4]>,
    /// What the map holds.
    written: HashMap<A, u32>,
    /// Addresses whose count changed since the last `settle`.
    touched: BTreeSet<A>,
}

impl<A> Default for Vips<A> {
    fn default() -> Self {
        Vips { refs: HashMap::new(), written: HashMap::new(), touched: BTreeSet::new() }
    }
}

impl<A: MapFamily> Vips<A> {
    /// Takes over what the map holds; every address is looked at again by
    /// the next `settle`, once the installed frontends have been counted.
    pub fn recover(maps: &impl MapStore) -> Result<Vips<A>, MapsError> {
        let mut v = Vips::default();
        for (addr, vip) in maps.vips::<A>()? {
            let ip = A::vip_ip(addr);
            v.written.insert(ip, vip.flags);
            v.touched.insert(ip);
        }
        Ok(v)
    }

    /// Counts a frontend with `flags` at `addr` in (`add`) or out.
    pub fn count(&mut self, addr: A, flags: u32, add: bool) {
        let k = kind(flags);
        let slot = KINDS.iter().position(|&x| x == k).expect("a known kind");
        let refs = self.refs.entry(addr).or_default();
        refs[slot] = if add { refs[slot] + 1 } else { refs[slot].saturating_sub(1) };
        if refs.iter().all(|&n| n == 0) {
            self.refs.remove(&addr);
        }
        self.touched.insert(addr);
    }

    /// Makes sure the map has `addr` with the kind of `flags` before a
    /// frontend there is written; returns the map writes issued (0 or 1).
    pub fn prepare(&mut self, maps: &mut impl MapStore, addr: A, flags: u32) -> Result<u64, MapsError> {
        let have = self.written.get(&addr).copied().unwrap_or(0);
        let want = have | kind(flags);
        // Settled against the counts later, should the frontend fail.
        self.touched.insert(addr);
        if want == have {
            return Ok(0);
        }
        maps.insert_vip::<A>(A::vip_key(addr), &Vip4 { flags: want })?;
        self.written.insert(addr, want);
        Ok(1)
    }

    /// What the map should hold: every address with its kinds.
    pub fn written(&self) -> impl Iterator<Item = (A, u32)> + '_ {
        self.written.iter().map(|(a, f)| (*a, *f))
    }

    fn wanted(&self, addr: &A) -> u32 {
        let Some(refs) = self.refs.get(addr) else { return 0 };
        KINDS.iter().zip(refs).filter(|(_, n)| **n > 0).fold(0, |acc, (k, _)| acc | k)
    }

    /// Writes the addresses whose kinds changed; returns the map
    /// operations issued and the errors.
    pub fn settle(&mut self, maps: &mut impl MapStore) -> (u64, Vec<String>) {
        let mut ops = 0;
        let mut errors = Vec::new();
        for addr in std::mem::take(&mut self.touched) {
            let want = self.wanted(&addr);
            let have = self.written.get(&addr).copied().unwrap_or(0);
            if want == have {
                continue;
            }
            ops += 1;
            let result = if want == 0 {
                maps.remove_vip::<A>(A::vip_key(addr))
            } else {
                maps.insert_vip::<A>(A::vip_key(addr), &Vip4 { flags: want })
            };
            match result {
                Ok(()) if want == 0 => {
                    self.written.remove(&addr);
                }
                Ok(()) => {
                    self.written.insert(addr, want);
                }
                Err(e) => {
                    errors.push(format!("frontend address {addr}: {e}"));
                    self.touched.insert(addr);
                }
            }
        }
        (ops, errors)
    }
}
