//! `lb-agent status`: what is attached where (from the pinned links), the
//! programs' IDs, the maps' IDs and sizes, and this binary's version.

use std::path::Path;

use aya::maps::MapData;
use lb_common::{config_flags, names};
use serde::Serialize;

use crate::links::{self, LINK_TYPE_CGROUP, LINK_TYPE_TCX, LINK_TYPE_XDP, Pin};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attachment {
    /// `tcx`, `xdp` or `cgroup`.
    pub kind: &'static str,
    /// The interface name (`?<ifindex>` once it is gone), or the cgroup
    /// hook's program.
    pub target: String,
    /// `ingress`/`egress` for tcx, the XDP mode (`native`, `generic`), the
    /// program for a cgroup hook.
    pub mode: String,
    pub link_id: u32,
    pub program_id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapInfo {
    pub name: &'static str,
    pub id: u32,
    pub max_entries: u32,
    pub key_size: u32,
    pub value_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// This binary's version.
    pub version: &'static str,
    pub bpffs: String,
    /// Whether an agent wrote the datapath's configuration (the maps are
    /// live).
    pub ready: bool,
    /// How translated packets reach local pods: `bpf` (BPF host routing,
    /// `--host-routing bpf`) or `legacy` (the host stack); empty before an
    /// agent wrote the datapath's configuration.
    pub host_routing: &'static str,
    /// Whether this kernel gives XDP programs `bpf_xdp_adjust_meta`
    /// (`kernel_probe`): without it `lb_xdp` marks nothing, and with BPF
    /// host routing `lb_tc_ext_ingress` looks every packet from outside up
    /// instead. `None` when the kernel could not be asked.
    pub xdp_metadata: Option<bool>,
    /// The IPv6 client prefix session affinity keys a client by
    /// (`--affinity-ipv6-prefix`, from `LB6_NODE`); `None` when unread.
    pub affinity_ipv6_prefix: Option<u32>,
    pub attachments: Vec<Attachment>,
    pub maps: Vec<MapInfo>,
    /// Maps of this version that are not pinned (an older agent's
    /// pins, or none at all).
    pub missing_maps: Vec<&'static str>,
}

fn ifname(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes the call may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("?{ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

pub fn read(bpffs: &Path) -> anyhow::Result<Status> {
    let mut attachments = Vec::new();
    for (pin, path) in links::pinned(bpffs)? {
        let info = match links::open(&path).and_then(|fd| links::info(std::os::fd::AsFd::as_fd(&fd))) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("link {}: {e}", path.display());
                continue;
            }
        };
        let (kind, target, mode) = match &pin {
            Pin::Tcx { ifindex, ingress } => ("tcx", ifname(*ifindex), if *ingress { "ingress" } else { "egress" }.to_string()),
            Pin::Xdp { ifindex, mode } => ("xdp", ifname(*ifindex), crate::datapath::xdp_mode_name(*mode).to_string()),
            Pin::Cgroup { program } => ("cgroup", "cgroup2".to_string(), program.clone()),
        };
        debug_assert!(matches!(info.kind, LINK_TYPE_TCX | LINK_TYPE_XDP | LINK_TYPE_CGROUP | 0));
        attachments.push(Attachment { kind, target, mode, link_id: info.id, program_id: info.prog_id });
    }
    let mut maps = Vec::new();
    let mut missing_maps = Vec::new();
    for name in names::ALL {
        match MapData::from_pin(bpffs.join(name)).and_then(|m| m.info()) {
            Ok(info) => maps.push(MapInfo {
                name,
                id: info.id(),
                max_entries: info.max_entries(),
                key_size: info.key_size(),
                value_size: info.value_size(),
            }),
            Err(_) => missing_maps.push(name),
        }
    }
    let opened = crate::maps::Maps::open(bpffs).ok();
    let flags = opened.as_ref().and_then(|m| m.read_config().ok()).map_or(0, |c| c.flags);
    let affinity_ipv6_prefix = opened.as_ref().and_then(|m| m.read_node6().ok()).map(|n| n.affinity_prefix());
    let ready = flags & config_flags::READY != 0;
    let host_routing = match (ready, flags & config_flags::HOST_ROUTING_BPF != 0) {
        (false, _) => "",
        (true, true) => "bpf",
        (true, false) => "legacy",
    };
    Ok(Status {
        version: env!("CARGO_PKG_VERSION"),
        bpffs: bpffs.display().to_string(),
        ready,
        host_routing,
        xdp_metadata: crate::kernel_probe::xdp_adjust_meta().ok(),
        affinity_ipv6_prefix,
        attachments,
        maps,
        missing_maps,
    })
}

pub fn render(s: &Status) -> String {
    let datapath = if s.ready { format!("ready, host routing {}", s.host_routing) } else { "not ready".to_string() };
    let datapath = match s.xdp_metadata {
        Some(false) if s.ready && s.host_routing == "bpf" => {
            format!("{datapath} (no XDP metadata on this kernel: north-south packets found by conntrack lookups)")
        }
        _ => datapath,
    };
    let datapath = match s.affinity_ipv6_prefix {
        Some(len) if s.ready => format!("{datapath}, IPv6 affinity by /{len}"),
        _ => datapath,
    };
    let mut out = format!("lb-agent {} (maps under {}; datapath {datapath})\n\n", s.version, s.bpffs);
    let mut t = vec![["ATTACHED", "TARGET", "MODE", "LINK ID", "PROGRAM ID"].map(String::from).to_vec()];
    for a in &s.attachments {
        t.push(vec![a.kind.to_string(), a.target.clone(), a.mode.clone(), a.link_id.to_string(), a.program_id.to_string()]);
    }
    out.push_str(&super::table(&t));
    out.push('\n');
    let mut t = vec![["MAP", "ID", "MAX ENTRIES", "KEY", "VALUE"].map(String::from).to_vec()];
    for m in &s.maps {
        t.push(vec![m.name.to_string(), m.id.to_string(), m.max_entries.to_string(), m.key_size.to_string(), m.value_size.to_string()]);
    }
    out.push_str(&super::table(&t));
    if !s.missing_maps.is_empty() {
        out.push_str(&format!("not pinned: {}\n", s.missing_maps.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(host_routing: &'static str, xdp_metadata: Option<bool>) -> Status {
        Status {
            version: "0",
            bpffs: "/sys/fs/bpf/lb".into(),
            ready: true,
            host_routing,
            xdp_metadata,
            affinity_ipv6_prefix: None,
            attachments: Vec::new(),
            maps: Vec::new(),
            missing_maps: Vec::new(),
        }
    }

    #[test]
    fn the_header_says_when_host_routing_runs_without_xdp_metadata() {
        let first_line = |s: &Status| render(s).lines().next().unwrap().to_string();
        let unmarked = first_line(&status("bpf", Some(false)));
        assert!(unmarked.contains("host routing bpf (no XDP metadata on this kernel"), "{unmarked}");
        // Nothing to say where the marks work, or where host routing is
        // the stack's.
        assert_eq!(first_line(&status("bpf", Some(true))), "lb-agent 0 (maps under /sys/fs/bpf/lb; datapath ready, host routing bpf)");
        assert_eq!(
            first_line(&status("legacy", Some(false))),
            "lb-agent 0 (maps under /sys/fs/bpf/lb; datapath ready, host routing legacy)"
        );
    }
}
