//! Pinned BPF links: what keeps the datapath attached when the agent is
//! gone. Every attachment (tcx on pod and external interfaces, XDP, the
//! cgroup socket hooks) is a BPF link pinned under `<bpffs>/links/`. A
//! process exit (SIGTERM, a crash, an OOM kill) then leaves it attached and
//! serving; a starting agent adopts each pinned link and swaps its own
//! program in atomically (`BPF_LINK_UPDATE`), so no packet ever meets an
//! interface without a program; `lb-agent uninstall` unpins them, which
//! detaches them.
//!
//! aya creates the links; the raw `bpf(2)` calls here open pinned ones,
//! update and detach them, and read their target (aya keeps a link's fd to
//! itself and cannot update a cgroup link).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `bpf_link_type` values we pin.
pub const LINK_TYPE_CGROUP: u32 = 3;
pub const LINK_TYPE_XDP: u32 = 6;
pub const LINK_TYPE_TCX: u32 = 11;
/// `bpf_attach_type` of tcx links.
pub const ATTACH_TCX_INGRESS: u32 = 46;
pub const ATTACH_TCX_EGRESS: u32 = 47;

/// The bpf syscall `cmd` with `attr` (a prefix of `union bpf_attr`'s
/// member for `cmd`; the kernel zeroes the rest): its non-negative result
/// (an fd, for the commands that make one).
pub(crate) fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the bpf syscall with an attribute struct of the size we pass.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Opens a pinned BPF object (a link here).
pub fn open(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGet { pathname: c.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: a new fd the kernel returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes `link` run `prog` instead of its current program, atomically.
pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let mut attr = LinkUpdate { link_fd: link.as_raw_fd() as u32, new_prog_fd: prog.as_raw_fd() as u32, flags: 0, old_prog_fd: 0 };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// Detaches `link` now, even if other references (pins) remain.
pub fn detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let mut attr = LinkDetach { link_fd: link.as_raw_fd() as u32 };
    sys_bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// `bpf_link_type`.
    pub kind: u32,
    pub id: u32,
    pub prog_id: u32,
    /// The interface of a tcx or XDP link; 0 once the interface is gone.
    pub ifindex: u32,
    /// The attach type of a tcx or cgroup link.
    pub attach_type: u32,
    /// The cgroup of a cgroup link (its directory's inode).
    pub cgroup_id: u64,
}

/// Reads a link's type, program and target.
pub fn info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    // struct bpf_link_info: type, id, prog_id, then a union whose tcx,
    // xdp and cgroup members start with (ifindex | cgroup_id u64, attach
    // type).
    #[repr(C)]
    struct Raw {
        kind: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        union: [u32; 32],
    }
    #[repr(C)]
    struct GetInfo {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut raw = Raw { kind: 0, id: 0, prog_id: 0, _pad: 0, union: [0; 32] };
    let mut attr = GetInfo { bpf_fd: link.as_raw_fd() as u32, info_len: size_of::<Raw>() as u32, info: (&raw mut raw) as u64 };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let mut out = LinkInfo { kind: raw.kind, id: raw.id, prog_id: raw.prog_id, ..LinkInfo::default() };
    match raw.kind {
        // tcx: { __u32 ifindex; __u32 attach_type; }
        LINK_TYPE_TCX => (out.ifindex, out.attach_type) = (raw.union[0], raw.union[1]),
        // xdp: { __u32 ifindex; }
        LINK_TYPE_XDP => out.ifindex = raw.union[0],
        // cgroup: { __u64 cgroup_id; __u32 attach_type; }
        LINK_TYPE_CGROUP => {
            out.cgroup_id = u64::from(raw.union[0]) | (u64::from(raw.union[1]) << 32);
            out.attach_type = raw.union[2];
        }
        _ => {}
    }
    Ok(out)
}

/// The IDs of the programs attached with tcx to an interface of the
/// current network namespace, in the order they run.
pub fn query_tcx(ifindex: u32, ingress: bool) -> io::Result<Vec<u32>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    #[repr(C)]
    struct Query {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        count: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let mut ids = [0u32; 64];
    let mut attr = Query {
        target_ifindex: ifindex,
        attach_type: if ingress { ATTACH_TCX_INGRESS } else { ATTACH_TCX_EGRESS },
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        count: ids.len() as u32,
        _pad: 0,
        prog_attach_flags: 0,
        link_ids: 0,
        link_attach_flags: 0,
        revision: 0,
    };
    sys_bpf(BPF_PROG_QUERY, &mut attr)?;
    Ok(ids[..(attr.count as usize).min(ids.len())].to_vec())
}

/// Where an attachment's link is pinned.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pin {
    /// tcx on an interface (by ifindex), ingress or egress.
    Tcx { ifindex: u32, ingress: bool },
    /// XDP on an interface, in a mode (`xdp_mode::*`).
    Xdp { ifindex: u32, mode: u32 },
    /// A socket hook on the cgroup, by program name.
    Cgroup { program: String },
}

impl Pin {
    /// The file name under `<bpffs>/links/`.
    pub fn file_name(&self) -> String {
        match self {
            Pin::Tcx { ifindex, ingress: true } => format!("tcx-in-{ifindex}"),
            Pin::Tcx { ifindex, ingress: false } => format!("tcx-out-{ifindex}"),
            Pin::Xdp { ifindex, mode } => format!("xdp-{ifindex}-{}", crate::datapath::xdp_mode_name(*mode)),
            Pin::Cgroup { program } => format!("cgroup-{program}"),
        }
    }

    /// The pin a file name stands for.
    pub fn parse(name: &str) -> Option<Pin> {
        if let Some(i) = name.strip_prefix("tcx-in-") {
            return Some(Pin::Tcx { ifindex: i.parse().ok()?, ingress: true });
        }
        if let Some(i) = name.strip_prefix("tcx-out-") {
            return Some(Pin::Tcx { ifindex: i.parse().ok()?, ingress: false });
        }
        if let Some(rest) = name.strip_prefix("xdp-") {
            let (i, mode) = rest.split_once('-')?;
            let mode = match mode {
                "native" => lb_common::xdp_mode::NATIVE,
                "generic" => lb_common::xdp_mode::GENERIC,
                _ => return None,
            };
            return Some(Pin::Xdp { ifindex: i.parse().ok()?, mode });
        }
        name.strip_prefix("cgroup-").map(|p| Pin::Cgroup { program: p.to_string() })
    }

    pub fn ifindex(&self) -> Option<u32> {
        match self {
            Pin::Tcx { ifindex, .. } | Pin::Xdp { ifindex, .. } => Some(*ifindex),
            Pin::Cgroup { .. } => None,
        }
    }
}

/// The directory of link pins under a bpffs directory.
pub fn dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

/// The link pins present, with their paths.
pub fn pinned(bpffs: &Path) -> io::Result<Vec<(Pin, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir(bpffs)) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if let Some(pin) = entry.file_name().to_str().and_then(Pin::parse) {
            out.push((pin, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Detaches and unpins the link at `path` (gone already is fine).
pub fn remove(path: &Path) -> io::Result<()> {
    if let Ok(fd) = open(path) {
        // Detach at once: another holder of the link (a process that
        // opened the pin) must not keep it attached.
        let _ = detach(std::os::fd::AsFd::as_fd(&fd));
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        for pin in [
            Pin::Tcx { ifindex: 7, ingress: true },
            Pin::Tcx { ifindex: 7, ingress: false },
            Pin::Xdp { ifindex: 3, mode: lb_common::xdp_mode::GENERIC },
            Pin::Xdp { ifindex: 3, mode: lb_common::xdp_mode::NATIVE },
            Pin::Cgroup { program: "lb_connect4".into() },
        ] {
            assert_eq!(Pin::parse(&pin.file_name()), Some(pin.clone()), "{}", pin.file_name());
        }
        assert_eq!(Pin::parse("tcx-in-x"), None);
        assert_eq!(Pin::parse("other"), None);
    }
}
