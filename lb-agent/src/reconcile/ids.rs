//! IDs of frontends and backends: slots of an array map (`LB4_REVNAT`,
//! `LB4_BACKENDS`), 1 to size - 1 (0 means none), each with the version
//! it holds. An ID is not handed out again right away (allocation goes
//! round the array), and every reuse moves its version on, so a conntrack
//! or affinity entry that names an ID and the version it saw can tell
//! whether its frontend or backend still exists.

/// One slot of an array map as found at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdSlot {
    pub id: u32,
    /// Whether a frontend or backend holds it.
    pub used: bool,
    /// The version it holds (kept while free, moved on at the next reuse).
    pub version: u16,
}

/// The IDs of one array map.
#[derive(Debug, Clone)]
pub struct Ids {
    used: Vec<bool>,
    versions: Vec<u16>,
    next: u32,
    in_use: usize,
}

impl Ids {
    /// IDs of an array of `size` slots, all free, versions 0.
    pub fn new(size: u32) -> Ids {
        Ids { used: vec![false; size as usize], versions: vec![0; size as usize], next: 1, in_use: 0 }
    }

    /// Takes over what an array holds: `slots` gives each slot's ID,
    /// whether it is in use, and its version.
    pub fn recover(size: u32, slots: impl IntoIterator<Item = IdSlot>) -> Ids {
        let mut ids = Ids::new(size);
        let mut last = 0;
        for IdSlot { id, used, version } in slots {
            let Some(slot) = ids.used.get_mut(id as usize) else { continue };
            if id == 0 {
                continue;
            }
            *slot = used;
            ids.versions[id as usize] = version;
            if used {
                ids.in_use += 1;
                last = last.max(id);
            }
        }
        ids.next = if (last as usize + 1) < ids.used.len() { last + 1 } else { 1 };
        ids
    }

    /// A free ID at or after the last one handed out (wrapping), with its
    /// new version; `None` when every slot is in use.
    pub fn alloc(&mut self) -> Option<(u32, u16)> {
        let size = self.used.len() as u32;
        if size < 2 || self.in_use + 1 >= size as usize {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id + 1 >= size { 1 } else { id + 1 };
            if !self.used[id as usize] {
                self.used[id as usize] = true;
                self.in_use += 1;
                let v = &mut self.versions[id as usize];
                *v = v.wrapping_add(1);
                return Some((id, *v));
            }
        }
    }

    /// Gives `id` back (its version stays until the next reuse).
    pub fn free(&mut self, id: u32) {
        if let Some(used) = self.used.get_mut(id as usize)
            && *used
        {
            *used = false;
            self.in_use -= 1;
        }
    }

    /// Whether `id` is in use with `version`.
    pub fn holds(&self, id: u32, version: u16) -> bool {
        self.used.get(id as usize).copied().unwrap_or(false) && self.versions[id as usize] == version
    }

    pub fn version(&self, id: u32) -> u16 {
        self.versions.get(id as usize).copied().unwrap_or(0)
    }

    /// The array's size (IDs are below it).
    pub fn size(&self) -> u32 {
        self.used.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_with_versions() {
        let mut ids = Ids::new(4); // IDs 1..=3
        assert_eq!(ids.alloc(), Some((1, 1)));
        assert_eq!(ids.alloc(), Some((2, 1)));
        ids.free(1);
        // Not reused right away: 3 first, then 1 again with a new version.
        assert_eq!(ids.alloc(), Some((3, 1)));
        assert!(ids.holds(2, 1));
        assert!(!ids.holds(1, 1), "freed");
        ids.free(3);
        assert_eq!(ids.alloc(), Some((1, 2)), "reused with the next version");
        assert_eq!(ids.alloc(), Some((3, 2)));
        assert_eq!(ids.alloc(), None, "full");
    }

    #[test]
    fn recovers_in_use_slots_and_versions() {
        let slot = |id, used, version| IdSlot { id, used, version };
        let ids = Ids::recover(8, [slot(1, true, 4), slot(2, false, 9), slot(5, true, 1)]);
        assert!(ids.holds(1, 4) && ids.holds(5, 1) && !ids.holds(2, 9));
        let mut ids = ids;
        // After the highest in use, and a reused slot moves its version on.
        assert_eq!(ids.alloc(), Some((6, 1)));
        assert_eq!(ids.alloc(), Some((7, 1)));
        assert_eq!(ids.alloc(), Some((2, 10)));
    }
}
