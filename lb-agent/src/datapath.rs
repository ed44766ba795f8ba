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
use lb_common::{names, xdp_mode, xdp_why};
use tracing::{debug, info, warn};

use crate::{EBPF_OBJECT, netns};

/// Map capacities (max_entries). Only used when a map is created; a map
/// that is already pinned keeps its size.
#[derive(Clone, Debug)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    pub ct_tcp: u32,
    pub ct_any: u32,
    pub affinity: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        use lb_common::sizes;
        MapSizes {
            services: sizes::SERVICES,
            backends: sizes::BACKENDS,
            slots: sizes::SLOTS,
            ct_tcp: sizes::CT_TCP,
            ct_any: sizes::CT_ANY,
            affinity: sizes::AFFINITY,
        }
    }
}

/// Pod interfaces, ingress: DNAT of packets leaving pods.
pub const TC_INGRESS_PROGRAM: &str = "lb_tc_ingress";
/// Pod and external interfaces, egress: reverse translation of replies.
pub const TC_EGRESS_PROGRAM: &str = "lb_tc_egress";
/// A tc program that passes everything on (floor; not loaded by
/// [`Datapath::load`]).
pub const TC_PASS_PROGRAM: &str = "lb_tc_pass";
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

/// Why an interface got its XDP mode, in words.
pub fn xdp_why_text(why: u32) -> &'static str {
    match why {
        xdp_why::REQUESTED => "as requested",
        xdp_why::AUTO_NATIVE => "auto: the driver runs XDP natively",
        xdp_why::AUTO_VETH => "auto: veth (native XDP there passes partial checksums on and transmits only to peers running XDP)",
        xdp_why::AUTO_UNSUPPORTED => "auto: the driver has no native XDP",
        _ => "unknown",
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
    /// Pod interface -> its ingress and egress links.
    tc_links: BTreeMap<String, (SchedClassifierLinkId, SchedClassifierLinkId)>,
    /// External interface -> its egress link.
    ext_links: BTreeMap<String, SchedClassifierLinkId>,
    sock_links: Vec<(&'static str, CgroupSockAddrLinkId)>,
    /// External interface -> (link, `xdp_mode`, `xdp_why`).
    xdp_links: BTreeMap<String, (XdpLinkId, u32, u32)>,
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
            .map_max_entries(names::VIPS, sizes.services)
            .map_max_entries(names::BACKENDS, sizes.backends)
            .map_max_entries(names::SLOTS, sizes.slots)
            .map_max_entries(names::CT_TCP, sizes.ct_tcp)
            .map_max_entries(names::CT_ANY, sizes.ct_any)
            .map_max_entries(names::AFFINITY, sizes.affinity);
        // The datapath logs at debug only. With that level off, the
        // verifier sees the frozen level and removes every log call.
        let level = if tracing::enabled!(target: "lb", tracing::Level::DEBUG) {
            aya_log::Level::Trace as u8
        } else {
            0u8
        };
        loader.override_global(aya_log::LEVEL, &level, false);
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object (are you root, with bpffs and BTF available?)")?;

        for name in [TC_INGRESS_PROGRAM, TC_EGRESS_PROGRAM] {
            let tc: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
            tc.load().with_context(|| format!("loading {name}"))?;
        }
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
            ext_links: BTreeMap::new(),
            sock_links: Vec::new(),
            xdp_links: BTreeMap::new(),
        })
    }

    /// Attaches the north-south XDP program to `ifname` in the mode asked
    /// for, and the reverse translation (tc egress) there. `Auto` picks
    /// native XDP where the driver runs it well and generic otherwise (see
    /// [`auto_mode`]). Returns the `xdp_mode` in use and why.
    pub fn attach_xdp(&mut self, ifname: &str, want: XdpAttach) -> anyhow::Result<(u32, u32)> {
        if let Some((_, mode, why)) = self.xdp_links.get(ifname) {
            return Ok((*mode, *why));
        }
        if netns::interface_names()?.iter().all(|n| n != ifname) {
            bail!("external interface {ifname} does not exist (check --external-ifaces)");
        }
        self.attach_egress(ifname)?;
        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_PROGRAM)?.try_into()?;
        let (link, mode, why) = match want {
            XdpAttach::Native => (
                xdp.attach(ifname, XdpMode::Driver).with_context(|| {
                    format!("attaching {XDP_PROGRAM} to {ifname} in native mode (does its driver support XDP? try --xdp-mode generic)")
                })?,
                xdp_mode::NATIVE,
                xdp_why::REQUESTED,
            ),
            XdpAttach::Generic => (
                xdp.attach(ifname, XdpMode::Skb)
                    .with_context(|| format!("attaching {XDP_PROGRAM} to {ifname} in generic mode"))?,
                xdp_mode::GENERIC,
                xdp_why::REQUESTED,
            ),
            XdpAttach::Auto => {
                let driver = netns::driver_name(ifname).unwrap_or_default();
                let native_ok = auto_mode(&driver) == xdp_mode::NATIVE;
                let native = if native_ok { Some(xdp.attach(ifname, XdpMode::Driver)) } else { None };
                match native {
                    Some(Ok(link)) => (link, xdp_mode::NATIVE, xdp_why::AUTO_NATIVE),
                    other => {
                        let why = match other {
                            Some(Err(e)) => {
                                debug!(interface = ifname, driver, "native XDP unavailable: {e}");
                                xdp_why::AUTO_UNSUPPORTED
                            }
                            _ => xdp_why::AUTO_VETH,
                        };
                        (
                            xdp.attach(ifname, XdpMode::Skb)
                                .with_context(|| format!("attaching {XDP_PROGRAM} to {ifname} in generic mode"))?,
                            xdp_mode::GENERIC,
                            why,
                        )
                    }
                }
            }
        };
        info!(interface = ifname, mode = xdp_mode_name(mode), why = xdp_why_text(why), "XDP program attached");
        self.xdp_links.insert(ifname.to_string(), (link, mode, why));
        Ok((mode, why))
    }

    /// External interfaces with the XDP program, their `xdp_mode` and why.
    pub fn xdp_interfaces(&self) -> impl Iterator<Item = (&str, u32, u32)> {
        self.xdp_links.iter().map(|(n, (_, m, w))| (n.as_str(), *m, *w))
    }

    /// Attaches the tc programs to a pod interface: ingress (tcx) for
    /// packets leaving the pod, egress for replies on their way into it.
    pub fn attach_tc(&mut self, ifname: &str) -> anyhow::Result<()> {
        if self.tc_links.contains_key(ifname) {
            return Ok(());
        }
        let ingress = attach_classifier(&mut self.ebpf, TC_INGRESS_PROGRAM, ifname, TcAttachType::Ingress)?;
        let egress = match attach_classifier(&mut self.ebpf, TC_EGRESS_PROGRAM, ifname, TcAttachType::Egress) {
            Ok(link) => link,
            Err(e) => {
                detach_classifier(&mut self.ebpf, TC_INGRESS_PROGRAM, ingress);
                return Err(e);
            }
        };
        info!(interface = ifname, "tc programs attached");
        self.tc_links.insert(ifname.to_string(), (ingress, egress));
        Ok(())
    }

    /// Attaches the reverse translation to an external interface's egress,
    /// for replies to clients outside the node.
    fn attach_egress(&mut self, ifname: &str) -> anyhow::Result<()> {
        if !self.ext_links.contains_key(ifname) {
            let link = attach_classifier(&mut self.ebpf, TC_EGRESS_PROGRAM, ifname, TcAttachType::Egress)?;
            self.ext_links.insert(ifname.to_string(), link);
        }
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
            if let Some((ingress, egress)) = self.tc_links.remove(&name) {
                // The interface is gone, and so are the attachments.
                detach_classifier(&mut self.ebpf, TC_INGRESS_PROGRAM, ingress);
                detach_classifier(&mut self.ebpf, TC_EGRESS_PROGRAM, egress);
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

/// The XDP mode `auto` wants for a driver: generic on veth (native XDP
/// there passes the sender's partial checksums on untouched, and frames it
/// transmits arrive only where the peer runs XDP too: kind and containerlab
/// nodes are veth nodes) and on tun/tap; native elsewhere, where the
/// attach itself says whether the driver can.
pub fn auto_mode(driver: &str) -> u32 {
    match driver {
        "veth" | "tun" => xdp_mode::GENERIC,
        _ => xdp_mode::NATIVE,
    }
}

fn attach_classifier(ebpf: &mut Ebpf, name: &str, ifname: &str, at: TcAttachType) -> anyhow::Result<SchedClassifierLinkId> {
    let tc: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
    tc.attach(ifname, at).with_context(|| format!("attaching {name} to {ifname} {at:?}"))
}

fn detach_classifier(ebpf: &mut Ebpf, name: &str, link: SchedClassifierLinkId) {
    if let Ok(tc) = program(ebpf, name).and_then(|p| <&mut SchedClassifier>::try_from(p).map_err(Into::into)) {
        let _ = tc.detach(link);
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
    let expect: [(&str, usize, usize); 18] = [
        (names::SERVICES, size_of::<Service4Key>(), size_of::<Service4Value>()),
        (names::SLOTS, size_of::<SlotKey>(), size_of::<Slot>()),
        (names::BACKENDS, 4, size_of::<Backend4>()),
        (names::REVNAT, size_of::<RevNatKey>(), size_of::<RevNat4>()),
        (names::CT_TCP, size_of::<Ct4Key>(), size_of::<CtEntry>()),
        (names::CT_ANY, size_of::<Ct4Key>(), size_of::<CtEntry>()),
        (names::SOCK_REVNAT, size_of::<SockRevNat4Key>(), size_of::<SockRevNat4>()),
        (names::CONFIG, 4, size_of::<Config>()),
        (names::SVC_NAMES, size_of::<RevNatKey>(), size_of::<SvcName>()),
        (names::AFFINITY, size_of::<Affinity4Key>(), size_of::<Affinity4>()),
        (names::MAGLEV, size_of::<RevNatKey>(), 4),
        (names::SRC_RANGES, 4 + size_of::<SrcRange4>(), 4),
        (names::NODE, 4, size_of::<NodeConfig>()),
        (names::DEVICES, 4, size_of::<Device>()),
        (names::VIPS, 4, size_of::<Vip4>()),
        (names::FRAGS, size_of::<Frag4Key>(), size_of::<Frag4>()),
        (names::REJECT_RATE, 4, size_of::<RejectRate>()),
        (names::STATS, 4, 8),
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
