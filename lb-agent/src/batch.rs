//! Batched map operations (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`,
//! `BPF_MAP_DELETE_BATCH`, kernel 5.6+), which aya does not wrap: reading
//! a conntrack map of 262,144 entries is a few dozen syscalls instead of
//! half a million (`get_next_key` plus `lookup` per entry).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per syscall.
const CHUNK: usize = 4096;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// (The pointers in `attr` are valid for the lengths `count` says.)
fn sys_bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    crate::links::sys_bpf(cmd, attr).map(|_| ())
}

/// Every entry of a hash or array map.
pub fn lookup_all<K: Pod, V: Pod>(map: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    // The kernel's batch token: a bucket index for hash maps, a key for
    // arrays (both u32 here).
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut first = true;
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_mut_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        let result = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match result {
            Ok(()) => false,
            // The end: the last entries (maybe none) came with it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let n = attr.count as usize;
        // SAFETY: the kernel wrote `n` keys and values (n <= CHUNK).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}

/// Writes `entries` (hash or array map), in chunks.
pub fn update<K: Pod, V: Pod>(map: BorrowedFd<'_>, entries: &[(K, V)]) -> io::Result<()> {
    for chunk in entries.chunks(CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}

/// Deletes `keys` from a hash map, in chunks. A key already gone ends a
/// chunk early (`ENOENT`): the rest of it is deleted one by one.
pub fn delete<K: Pod>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    for chunk in keys.chunks(CHUNK) {
        let mut attr =
            BatchAttr { keys: chunk.as_ptr() as u64, count: chunk.len() as u32, map_fd: map.as_raw_fd() as u32, ..Default::default() };
        match sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => deleted += attr.count as usize,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                deleted += attr.count as usize;
                // Skip the missing key and go on with the rest.
                for k in chunk.iter().skip(attr.count as usize + 1) {
                    let mut one = BatchAttr { keys: k as *const K as u64, count: 1, map_fd: map.as_raw_fd() as u32, ..Default::default() };
                    if sys_bpf(BPF_MAP_DELETE_BATCH, &mut one).is_ok() {
                        deleted += 1;
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// The fd of an aya map.
pub fn fd<M: aya::maps::IterableMap<K, V>, K: Pod, V>(map: &M) -> BorrowedFd<'_> {
    map.map().fd().as_fd()
}
