//! Loads the eBPF object with its maps pinned, and attaches the programs.

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
        cgroup_sock_addr::CgroupSockAddrLinkId, tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use lb_common::{names, xdp_mode};
use tracing::{debug, info, warn};

use crate::{EBPF_OBJECT, netns};

/// Map capacities (max_entries). Only used when a map is created; a map
/// that is already pinned keeps its size.
#[derive(Clone, Debug)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    pub ct: u32,
    pub affinity: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        use lb_common::sizes;
        MapSizes {
            services: sizes::SERVICES,
            backends: sizes::BACKENDS,
            slots: sizes::SLOTS,
            ct: sizes::CT,
            affinity: sizes::AFFINITY,
        }
    }
}

pub const TC_PROGRAM: &str = "lb_tc";
/// The north-south program on the external interfaces.
pub const XDP_PROGRAM: &str = "lb_xdp";
/// The no-op XDP program (benchmark floor; not loaded by [`Datapath::load`]).
pub const XDP_PASS_PROGRAM: &str = "lb_xdp_pass";

/// How the XDP program is attached to the external interfaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttach {
    /// Native (driver) XDP where the driver supports it, else generic.
    #[default]
    Auto,
    /// Native only: fail when the driver does not support it.
    Native,
    /// Generic (skb) XDP only.
    Generic,
}

impl FromStr for XdpAttach {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpAttach::Auto),
            "native" => Ok(XdpAttach::Native),
            "generic" => Ok(XdpAttach::Generic),
            other => Err(format!("{other:?} is not an XDP mode (auto, native or generic)")),
        }
    }
}

impl fmt::Display for XdpAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttach::Auto => "auto",
            XdpAttach::Native => "native",
            XdpAttach::Generic => "generic",
        })
    }
}

/// The name of an `xdp_mode` value.
pub fn xdp_mode_name(mode: u32) -> &'static str {
    match mode {
        xdp_mode::NATIVE => "native",
        xdp_mode::GENERIC => "generic",
        xdp_mode::OFFLOAD => "offload",
        _ => "unknown",
    }
}
pub const SOCK_PROGRAMS: [&str; 4] = ["lb_connect4", "lb_sendmsg4", "lb_recvmsg4", "lb_getpeername4"];

pub struct Datapath {
    pub ebpf: Ebpf,
    pub pin_dir: PathBuf,
    tc_links: BTreeMap<String, SchedClassifierLinkId>,
    sock_links: Vec<(&'static str, CgroupSockAddrLinkId)>,
    /// External interface -> (link, `xdp_mode`).
    xdp_links: BTreeMap<String, (XdpLinkId, u32)>,
}

impl Datapath {
    /// Loads the programs. Maps already pinned under `pin_dir` are reused
    /// with their content; missing ones are created and pinned.
    pub fn load(pin_dir: &Path, sizes: &MapSizes) -> anyhow::Result<Datapath> {
        netns::ensure_bpffs(pin_dir)?;
        check_pinned_maps(pin_dir)?;
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = names::ALL.iter().map(|n| (*n, pin_dir.join(n))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .map_max_entries(names::SERVICES, sizes.services)
            .map_max_entries(names::REVNAT, sizes.services)
            .map_max_entries(names::SVC_NAMES, sizes.services)
            .map_max_entries(names::BACKENDS, sizes.backends)
            .map_max_entries(names::SLOTS, sizes.slots)
            .map_max_entries(names::CT, sizes.ct)
            .map_max_entries(names::AFFINITY, sizes.affinity);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object (are you root, with bpffs and BTF available?)")?;

        let tc: &mut SchedClassifier = program(&mut ebpf, TC_PROGRAM)?.try_into()?;
        tc.load().with_context(|| format!("loading {TC_PROGRAM}"))?;
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        let xdp: &mut Xdp = program(&mut ebpf, XDP_PROGRAM)?.try_into()?;
        xdp.load().with_context(|| format!("loading {XDP_PROGRAM}"))?;
        info!(pin_dir = %pin_dir.display(), "datapath loaded");
        Ok(Datapath {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            tc_links: BTreeMap::new(),
            sock_links: Vec::new(),
            xdp_links: BTreeMap::new(),
        })
    }

    /// Attaches the north-south XDP program to `ifname` in the mode asked
    /// for; `Auto` tries native XDP first and falls back to generic.
    /// Returns the `xdp_mode` in use.
    pub fn attach_xdp(&mut self, ifname: &str, want: XdpAttach) -> anyhow::Result<u32> {
        if let Some((_, mode)) = self.xdp_links.get(ifname) {
            return Ok(*mode);
        }
        if netns::interface_names()?.iter().all(|n| n != ifname) {
            bail!("external interface {ifname} does not exist (check --external-ifaces)");
        }
        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_PROGRAM)?.try_into()?;
        let (link, mode) = match want {
            XdpAttach::Native => (
                xdp.attach(ifname, XdpMode::Driver).with_context(|| {
                    format!("attaching {XDP_PROGRAM} to {ifname} in native mode (does its driver support XDP? try --xdp-mode generic)")
                })?,
                xdp_mode::NATIVE,
            ),
            XdpAttach::Generic => (
                xdp.attach(ifname, XdpMode::Skb)
                    .with_context(|| format!("attaching {XDP_PROGRAM} to {ifname} in generic mode"))?,
                xdp_mode::GENERIC,
            ),
            XdpAttach::Auto => match xdp.attach(ifname, XdpMode::Driver) {
                Ok(link) => (link, xdp_mode::NATIVE),
                Err(e) => {
                    warn!(interface = ifname, "native XDP unavailable ({e}); falling back to generic XDP");
                    (
                        xdp.attach(ifname, XdpMode::Skb)
                            .with_context(|| format!("attaching {XDP_PROGRAM} to {ifname} (native failed: {e}; generic too)"))?,
                        xdp_mode::GENERIC,
                    )
                }
            },
        };
        info!(interface = ifname, mode = xdp_mode_name(mode), "XDP program attached");
        self.xdp_links.insert(ifname.to_string(), (link, mode));
        Ok(mode)
    }

    /// External interfaces with the XDP program, and their `xdp_mode`.
    pub fn xdp_interfaces(&self) -> impl Iterator<Item = (&str, u32)> {
        self.xdp_links.iter().map(|(n, (_, m))| (n.as_str(), *m))
    }

    /// Attaches the tc program on ingress of `ifname` (tcx).
    pub fn attach_tc(&mut self, ifname: &str) -> anyhow::Result<()> {
        if self.tc_links.contains_key(ifname) {
            return Ok(());
        }
        let tc: &mut SchedClassifier = program(&mut self.ebpf, TC_PROGRAM)?.try_into()?;
        let link = tc
            .attach(ifname, TcAttachType::Ingress)
            .with_context(|| format!("attaching {TC_PROGRAM} to {ifname} ingress"))?;
        info!(interface = ifname, "tc program attached");
        // The tc program turns replies of NodePort flows into packets from
        // the node's own address before they are routed: without
        // accept_local the kernel would drop them as martians.
        if let Err(e) = std::fs::write(format!("/proc/sys/net/ipv4/conf/{ifname}/accept_local"), "1") {
            warn!("setting accept_local on {ifname}: {e} (NodePort replies from its pod may be dropped)");
        }
        self.tc_links.insert(ifname.to_string(), link);
        Ok(())
    }

    /// Forgets interfaces that no longer exist (their links went with them).
    pub fn forget_interfaces(&mut self, present: &[String]) {
        let gone: Vec<String> = self
            .tc_links
            .keys()
            .filter(|name| !present.contains(name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(link) = self.tc_links.remove(&name) {
                if let Ok(tc) = program(&mut self.ebpf, TC_PROGRAM)
                    .and_then(|p| <&mut SchedClassifier>::try_from(p).map_err(Into::into))
                {
                    // The interface is gone, and so is the attachment.
                    let _ = tc.detach(link);
                }
            }
            debug!(interface = name, "interface gone");
        }
    }

    pub fn attached_interfaces(&self) -> impl Iterator<Item = &str> {
        self.tc_links.keys().map(String::as_str)
    }

    /// Attaches the socket hooks to a cgroup2 directory (normally the root
    /// of the cgroup2 mount, so every process on the node is covered).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> anyhow::Result<()> {
        let file = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
            // With bpf_link (the kernel 5.7+ path aya takes) the attachment
            // always coexists with other programs; the link API rejects the
            // legacy BPF_F_ALLOW_MULTI flag, so the mode must be Single (0).
            let link = p
                .attach(&file, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
            self.sock_links.push((name, link));
        }
        info!(cgroup = %cgroup.display(), "socket hooks attached");
        Ok(())
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

/// Pinned maps from an older, incompatible build would be reused blindly by
/// the loader; refuse instead, naming the map.
fn check_pinned_maps(dir: &Path) -> anyhow::Result<()> {
    use lb_common::*;
    let expect: [(&str, usize, usize); 14] = [
        (names::SERVICES, size_of::<Service4Key>(), size_of::<Service4Value>()),
        (names::SLOTS, size_of::<SlotKey>(), size_of::<Slot>()),
        (names::BACKENDS, size_of::<BackendKey>(), size_of::<Backend4>()),
        (names::REVNAT, size_of::<RevNatKey>(), size_of::<RevNat4>()),
        (names::CT, size_of::<Ct4Key>(), size_of::<CtEntry>()),
        (names::SOCK_REVNAT, size_of::<SockRevNat4Key>(), size_of::<SockRevNat4>()),
        (names::CONFIG, 4, size_of::<Config>()),
        (names::SVC_NAMES, size_of::<RevNatKey>(), size_of::<SvcName>()),
        (names::AFFINITY, size_of::<Affinity4Key>(), size_of::<Affinity4>()),
        (names::MAGLEV, size_of::<RevNatKey>(), 4),
        (names::NAT, size_of::<Ct4Key>(), size_of::<Nat4>()),
        (names::SRC_RANGES, 4 + size_of::<SrcRange4>(), 4),
        (names::NODE, 4, size_of::<NodeConfig>()),
        (names::DEVICES, 4, size_of::<Device>()),
    ];
    for (name, key, value) in expect {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        if info.key_size() as usize != key || info.value_size() as usize != value {
            bail!(
                "pinned map {} has key/value sizes {}/{} but this agent expects {key}/{value}: \
                 it was made by an incompatible version; remove it (`lb-agent cleanup --bpffs {}`) and restart",
                path.display(),
                info.key_size(),
                info.value_size(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Removes the pinned maps (all state) under `dir`.
pub fn cleanup(dir: &Path) -> anyhow::Result<()> {
    for name in names::ALL {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => info!(map = name, "unpinned"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!("removing {}: {e}", path.display()),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) | Err(_) => Ok(()),
    }
}
