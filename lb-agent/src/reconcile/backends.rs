//! Backend entries (`LB4_BACKENDS` and `LB6_BACKENDS`, arrays by ID, one
//! ID space per family) and their use counts:
//! a backend is written before the first frontend that uses it, carries
//! the union of the flags its users give it (terminating, local), and is
//! removed once nothing uses it.

use std::collections::BTreeSet;

use std::net::Ipv4Addr;

use lb_common::backend_flags;

use super::{MapFamily, MapStore, Reconciler, Stats};
use crate::model::{BackendAddr, Frontend};

/// A frontend's use of a backend: its address and the flags this frontend
/// gives it (terminating, local).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Use<A = Ipv4Addr> {
    pub addr: BackendAddr<A>,
    /// `backend_flags::TERMINATING` and `LOCAL`.
    pub flags: u8,
}

/// How many installed frontends use a backend, and how many of them mark
/// it terminating or local: its flags are the union.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refs {
    n: u32,
    terminating: u32,
    local: u32,
}

impl Refs {
    pub fn count(&mut self, flags: u8, add: bool) {
        let step = |c: &mut u32| *c = if add { *c + 1 } else { c.saturating_sub(1) };
        step(&mut self.n);
        if flags & backend_flags::TERMINATING != 0 {
            step(&mut self.terminating);
        }
        if flags & backend_flags::LOCAL != 0 {
            step(&mut self.local);
        }
    }

    fn flags(&self) -> u8 {
        let mut f = 0;
        if self.terminating > 0 {
            f |= backend_flags::TERMINATING;
        }
        if self.local > 0 {
            f |= backend_flags::LOCAL;
        }
        f
    }
}

/// Which backends [`Reconciler::write_backends`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writing {
    /// New ones, and installed ones whose flags changed.
    NewAndChanged,
    /// Only installed ones whose flags changed (a new backend that could
    /// not be written earlier in the apply waits for the next one).
    Changed,
}

/// A backend as installed: its ID, the version of its slot, its flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstalledBackend {
    pub id: u32,
    pub version: u16,
    pub flags: u8,
}

impl<M: MapStore> Reconciler<M> {
    /// The backends a desired frontend uses, with the flags it gives them.
    pub(super) fn uses<A: MapFamily>(&self, fe: &Frontend<A>) -> Vec<Use<A>> {
        fe.backends
            .iter()
            .map(|b| {
                let mut flags = if b.terminating { backend_flags::TERMINATING } else { 0 };
                if self.node_name.is_some() && b.node_name.as_deref() == self.node_name.as_deref() {
                    flags |= backend_flags::LOCAL;
                }
                Use { addr: b.addr, flags }
            })
            .collect()
    }

    pub(super) fn count<A: MapFamily>(&mut self, uses: &[Use<A>], add: bool) {
        let all = &mut A::pick_mut(&mut self.fam).refs;
        for &Use { addr, flags } in uses {
            let refs = all.entry(addr).or_default();
            refs.count(flags, add);
            if refs.n == 0 {
                all.remove(&addr);
            }
        }
    }

    /// Writes the backends of `addrs` that are used and new (if `writing`
    /// says so), or whose flags changed.
    pub(super) fn write_backends<A: MapFamily>(&mut self, addrs: &BTreeSet<BackendAddr<A>>, writing: Writing, stats: &mut Stats) {
        let fam = A::pick_mut(&mut self.fam);
        for &addr in addrs {
            let Some(flags) = fam.refs.get(&addr).map(Refs::flags) else {
                continue;
            };
            let existing = fam.backends.get(&addr).copied();
            if existing.is_some_and(|b| b.flags == flags) || (existing.is_none() && writing == Writing::Changed) {
                continue;
            }
            let (id, version) = match existing {
                Some(b) => (b.id, b.version),
                None => match fam.backend_ids.alloc() {
                    Some(v) => v,
                    None => {
                        stats.errors.push(format!(
                            "backend {addr}: map {} is full ({} entries); raise {}",
                            A::BACKENDS.name(),
                            self.maps.max_entries(A::BACKENDS),
                            A::BACKENDS_SIZE_FLAG
                        ));
                        continue;
                    }
                },
            };
            stats.ops += 1;
            match self.maps.set_backend::<A>(id, &A::backend(addr, flags, version)) {
                Ok(()) => {
                    fam.backends.insert(addr, InstalledBackend { id, version, flags });
                    fam.backend_addrs.insert(id, addr);
                }
                Err(e) => {
                    if existing.is_none() {
                        fam.backend_ids.free(id);
                    } else {
                        // Its flags are tried again by the next apply.
                        fam.retry_backends.insert(addr);
                    }
                    stats.errors.push(format!("backend {addr}: {e}"));
                }
            }
        }
    }

    /// After the frontends: backends of `addrs` that nothing uses any more
    /// are removed (their slot cleared, its version kept: every flow to
    /// them is invalid from now on), the others get their final flags.
    pub(super) fn settle_backends<A: MapFamily>(&mut self, addrs: &BTreeSet<BackendAddr<A>>, stats: &mut Stats) {
        self.write_backends(addrs, Writing::Changed, stats);
        let fam = A::pick_mut(&mut self.fam);
        for &addr in addrs {
            if fam.refs.contains_key(&addr) {
                continue;
            }
            let Some(b) = fam.backends.get(&addr).copied() else { continue };
            stats.ops += 1;
            match self.maps.set_backend::<A>(b.id, &A::free_backend(b.version)) {
                Ok(()) => {
                    fam.backends.remove(&addr);
                    fam.backend_addrs.remove(&b.id);
                    fam.backend_ids.free(b.id);
                }
                Err(e) => {
                    // Tried again by the next apply.
                    fam.retry_backends.insert(addr);
                    stats.errors.push(format!("removing backend {addr}: {e}"));
                }
            }
        }
    }
}
