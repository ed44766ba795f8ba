//! Backend entries (`LB4_BACKENDS`, an array by ID) and their use counts:
//! a backend is written before the first frontend that uses it, carries
//! the union of the flags its users give it (terminating, local), and is
//! removed once nothing uses it.

use std::collections::BTreeSet;

use lb_common::{Backend4, backend_flags};

use super::{MapKind, MapStore, Reconciler, Stats};
use crate::model::{BackendAddr, Frontend};

/// A frontend's use of a backend: its address and the flags this frontend
/// gives it (terminating, local).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Use {
    pub addr: BackendAddr,
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

pub(super) fn entry(addr: BackendAddr, flags: u8, version: u16) -> Backend4 {
    Backend4 { addr: u32::from_ne_bytes(addr.ip.octets()), port: addr.port.to_be(), proto: addr.proto.number(), flags, version, _pad: 0 }
}

impl<M: MapStore> Reconciler<M> {
    /// The backends a desired frontend uses, with the flags it gives them.
    pub(super) fn uses(&self, fe: &Frontend) -> Vec<Use> {
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

    pub(super) fn count(&mut self, uses: &[Use], add: bool) {
        for &Use { addr, flags } in uses {
            let refs = self.refs.entry(addr).or_default();
            refs.count(flags, add);
            if refs.n == 0 {
                self.refs.remove(&addr);
            }
        }
    }

    /// Writes the backends of `addrs` that are used and new (if `writing`
    /// says so), or whose flags changed.
    pub(super) fn write_backends(&mut self, addrs: &BTreeSet<BackendAddr>, writing: Writing, stats: &mut Stats) {
        for &addr in addrs {
            let Some(flags) = self.refs.get(&addr).map(Refs::flags) else {
                continue;
            };
            let existing = self.backends.get(&addr).copied();
            if existing.is_some_and(|b| b.flags == flags) || (existing.is_none() && writing == Writing::Changed) {
                continue;
            }
            let (id, version) = match existing {
                Some(b) => (b.id, b.version),
                None => match self.backend_ids.alloc() {
                    Some(v) => v,
                    None => {
                        stats.errors.push(format!(
                            "backend {addr}: map {} is full ({} entries); raise --backends-size",
                            MapKind::Backends.name(),
                            self.maps.max_entries(MapKind::Backends)
                        ));
                        continue;
                    }
                },
            };
            stats.ops += 1;
            match self.maps.set_backend(id, &entry(addr, flags, version)) {
                Ok(()) => {
                    self.backends.insert(addr, InstalledBackend { id, version, flags });
                    self.backend_addrs.insert(id, addr);
                }
                Err(e) => {
                    if existing.is_none() {
                        self.backend_ids.free(id);
                    } else {
                        // Its flags are tried again by the next apply.
                        self.retry_backends.insert(addr);
                    }
                    stats.errors.push(format!("backend {addr}: {e}"));
                }
            }
        }
    }

    /// After the frontends: backends of `addrs` that nothing uses any more
    /// are removed (their slot cleared, its version kept: every flow to
    /// them is invalid from now on), the others get their final flags.
    pub(super) fn settle_backends(&mut self, addrs: &BTreeSet<BackendAddr>, stats: &mut Stats) {
        self.write_backends(addrs, Writing::Changed, stats);
        for &addr in addrs {
            if self.refs.contains_key(&addr) {
                continue;
            }
            let Some(b) = self.backends.get(&addr).copied() else { continue };
            stats.ops += 1;
            let empty = Backend4 { addr: 0, port: 0, proto: 0, flags: 0, version: b.version, _pad: 0 };
            match self.maps.set_backend(b.id, &empty) {
                Ok(()) => {
                    self.backends.remove(&addr);
                    self.backend_addrs.remove(&b.id);
                    self.backend_ids.free(b.id);
                }
                Err(e) => {
                    // Tried again by the next apply.
                    self.retry_backends.insert(addr);
                    stats.errors.push(format!("removing backend {addr}: {e}"));
                }
            }
        }
    }
}
