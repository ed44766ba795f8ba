//! Loads the eBPF object with its maps pinned, and attaches the programs.

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink, tc::SchedClassifierLinkId,
        xdp::XdpLinkId,
    },
};
use lb_common::{names, tc_call, xdp_call, xdp_mode, xdp_why};
use tracing::{debug, info, warn};

use crate::{
    EBPF_OBJECT, carry, host, kernel_probe, layout,
    links::{self, Pin},
};

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
    /// IPv6 frontends (`LB6_SERVICES`, `LB6_VIPS`).
    pub services6: u32,
    /// IPv6 backends (`LB6_BACKENDS`).
    pub backends6: u32,
    /// IPv6 TCP conntrack (`LB6_CT_TCP`).
    pub ct_tcp6: u32,
    /// IPv6 conntrack of every other protocol (`LB6_CT_ANY`).
    pub ct_any6: u32,
}

impl MapSizes {
    /// The size asked for a map, by name; `None` for maps of fixed size.
    pub fn for_map(&self, name: &str) -> Option<u32> {
        use lb_common::SizedBy;
        Some(match lb_common::layout::sized_by(name) {
            SizedBy::Services => self.services,
            SizedBy::Backends => self.backends,
            SizedBy::Slots => self.slots,
            SizedBy::CtTcp => self.ct_tcp,
            SizedBy::CtAny => self.ct_any,
            SizedBy::Affinity => self.affinity,
            SizedBy::Services6 => self.services6,
            SizedBy::Backends6 => self.backends6,
            SizedBy::CtTcp6 => self.ct_tcp6,
            SizedBy::CtAny6 => self.ct_any6,
            SizedBy::Fixed => return None,
        })
    }
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
            services6: sizes::SERVICES6,
            backends6: sizes::BACKENDS6,
            ct_tcp6: sizes::CT_TCP6,
            ct_any6: sizes::CT_ANY6,
        }
    }
}

/// Pod interfaces, ingress: DNAT of packets leaving pods.
pub const TC_INGRESS_PROGRAM: &str = "lb_tc_ingress";
/// Pod and external interfaces, egress: reverse translation of replies.
pub const TC_EGRESS_PROGRAM: &str = "lb_tc_egress";
/// External interfaces, ingress, with BPF host routing only: north-south
/// packets `lb_xdp` DNATed to a backend on this node go straight into the
/// backend's pod.
pub const TC_EXT_INGRESS_PROGRAM: &str = "lb_tc_ext_ingress";
/// The north-south path in tc, on the external interfaces' ingress
/// (`--xdp-mode tc`), in place of XDP and `lb_tc_ext_ingress`.
pub const TC_NS_PROGRAM: &str = "lb_tc_ns";
/// The IPv6 tc programs, by `LB_TC_CALLS` slot: the attached tc programs
/// tail-call them for IPv6 frames (see [`fill_tc_calls`]).
pub const TC_CALL_PROGRAMS: [&str; tc_call::SLOTS as usize] = tc_call::PROGRAMS;
/// A tc program that passes everything on (floor; not loaded by
/// [`Datapath::load`]).
pub const TC_PASS_PROGRAM: &str = "lb_tc_pass";
/// The north-south program on the external interfaces.
pub const XDP_PROGRAM: &str = "lb_xdp";
/// The IPv6 XDP program, by `LB_XDP_CALLS` slot: `lb_xdp` tail-calls it
/// for IPv6 frames (see [`fill_tc_calls`]).
pub const XDP_CALL_PROGRAMS: [&str; xdp_call::SLOTS as usize] = xdp_call::PROGRAMS;
/// The no-op XDP program (benchmark floor; not loaded by [`Datapath::load`]).
pub const XDP_PASS_PROGRAM: &str = "lb_xdp_pass";

/// How the XDP program is attached to the external interfaces
/// (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttach {
    /// Native (driver) XDP where the driver runs it well, else generic;
    /// instead of generic, the north-south path in tc (see `Tc`) on a node
    /// with a pod overlay device of a smaller MTU.
    #[default]
    Auto,
    /// Native only: fail when the driver does not support it.
    Native,
    /// Generic (skb) XDP only.
    Generic,
    /// No XDP: the north-south path runs in tc on the external
    /// interfaces' ingress (`lb_tc_ns`), as Cilium's does with XDP
    /// acceleration off. For nodes where XDP is not wanted or cannot be
    /// had (another XDP program on the interface, say).
    Tc,
    /// No XDP: north-south traffic is served from pods and hosts only.
    Off,
}

impl fmt::Display for XdpAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpAttach::Auto => "auto",
            XdpAttach::Native => "native",
            XdpAttach::Generic => "generic",
            XdpAttach::Tc => "tc",
            XdpAttach::Off => "off",
        })
    }
}

/// How translated pod traffic reaches a pod of this node
/// (`--host-routing`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HostRouting {
    /// Through the host stack (its routing, netfilter and neighbour
    /// layer), as kube-proxy's: the NetworkPolicy of an iptables-based
    /// CNI applies.
    #[default]
    Legacy,
    /// Straight into the destination pod (`bpf_redirect_peer`), past the
    /// host stack and its netfilter: only where netfilter enforces
    /// nothing for pod traffic (no iptables-based NetworkPolicy). North-south
    /// traffic to a backend on this node too (`lb_tc_ext_ingress` on the
    /// external interfaces), and its replies out towards the client.
    Bpf,
}

impl HostRouting {
    /// The `lb_common::config_flags` bits of this mode.
    pub fn config_flags(self) -> u32 {
        match self {
            HostRouting::Legacy => 0,
            HostRouting::Bpf => lb_common::config_flags::HOST_ROUTING_BPF,
        }
    }
}

impl fmt::Display for HostRouting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostRouting::Legacy => "legacy",
            HostRouting::Bpf => "bpf",
        })
    }
}

/// Why an interface got its XDP mode, in words.
pub fn xdp_why_text(why: u32) -> &'static str {
    match why {
        xdp_why::REQUESTED => "as requested",
        xdp_why::AUTO_NATIVE => "auto: the driver runs XDP natively",
        xdp_why::AUTO_VETH => "auto: veth (native XDP there passes partial checksums on and transmits only to peers running XDP)",
        xdp_why::AUTO_UNSUPPORTED => "auto: the driver cannot run it natively, and generic XDP would turn its GRO off",
        xdp_why::AUTO_OVERLAY => {
            "auto: generic XDP here (a veth), and a pod overlay device with a smaller MTU (generic XDP could not answer \"fragmentation needed\" for GRO'd packets forwarded into it)"
        }
        _ => "unknown",
    }
}

/// Warns, once per interface and overlay device, that generic XDP on
/// interface `ext` (attached for `why`) sits in front of a pod `overlay`
/// device with a smaller MTU: generic XDP sees GRO's packets whole, so it
/// cannot answer "fragmentation needed" for a NodePort flow forwarded into
/// the tunnel, and the kernel's answer goes to the SNAT address. `auto`
/// puts the north-south path in tc there when it attaches
/// (`xdp_why::AUTO_OVERLAY`); this covers a requested generic mode, and an
/// overlay that came after `auto` chose.
pub fn warn_generic_xdp_over_overlay(ext: &str, why: u32, overlay: &str, overlay_mtu: u32) {
    use std::{collections::BTreeSet, sync::Mutex};
    static WARNED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());
    if !WARNED.lock().unwrap_or_else(|e| e.into_inner()).insert((overlay.to_string(), ext.to_string())) {
        return;
    }
    let (what, remedy) = if why == xdp_why::REQUESTED {
        (
            "generic XDP here (--xdp-mode generic) and a pod overlay device with a smaller MTU",
            "--xdp-mode auto or tc puts the north-south path in tc",
        )
    } else {
        (
            "a pod overlay device with a smaller MTU appeared after auto chose generic XDP here",
            "restarting the agent (auto then picks the tc path) or --xdp-mode tc does",
        )
    };
    warn!(
        interface = ext,
        overlay,
        overlay_mtu,
        "{what}: NodePort uploads to other nodes' pods with segments too big for the overlay stall (generic XDP cannot answer \"fragmentation needed\" for GRO'd packets); {remedy}"
    );
}

/// The name of an `xdp_mode` value.
pub fn xdp_mode_name(mode: u32) -> &'static str {
    match mode {
        xdp_mode::NATIVE => "native",
        xdp_mode::GENERIC => "generic",
        xdp_mode::OFFLOAD => "offload",
        xdp_mode::TC => "tc",
        _ => "unknown",
    }
}
pub const SOCK_PROGRAMS: [&str; 8] =
    ["lb_connect4", "lb_sendmsg4", "lb_recvmsg4", "lb_getpeername4", "lb_connect6", "lb_sendmsg6", "lb_recvmsg6", "lb_getpeername6"];

/// What became of an attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A link of an earlier agent, now running this agent's program (or
    /// about to, at [`Datapath::go_live`]).
    Adopted,
    /// A new link.
    New,
    /// Attached already by this agent.
    Already,
}

/// An external interface with the XDP program.
#[derive(Clone, Debug)]
struct External {
    mode: u32,
    why: u32,
}

/// The loaded programs, their pinned maps and their pinned links. One
/// agent at a time owns a bpffs directory ([`DirLock`]).
pub struct Datapath {
    pub ebpf: Ebpf,
    pub pin_dir: PathBuf,
    _lock: DirLock,
    /// Maps found pinned with another layout and created anew.
    rebuilt: Vec<(&'static str, String)>,
    /// The old maps of rebuilt flow maps, whose entries move into the new
    /// ones at [`Datapath::go_live`].
    carried: Vec<carry::OldMap>,
    /// Whether adopted links run this agent's programs. Until then (only
    /// after a rebuild: the new maps are empty until the first sync) they
    /// keep the earlier agent's programs and maps.
    live: bool,
    /// Adopted links waiting for [`Datapath::go_live`]: pin and program.
    held: Vec<(PathBuf, &'static str)>,
    /// Links pinned by an earlier agent and not adopted (yet): removed by
    /// [`Datapath::drop_unadopted`].
    found: BTreeMap<Pin, PathBuf>,
    /// Pod interfaces by ifindex, with their names.
    pods: BTreeMap<u32, String>,
    /// External interfaces by name.
    externals: BTreeMap<String, External>,
    /// Links the kernel could not pin (no tcx or XDP links): they end with
    /// the agent. Detached when dropped.
    unpinned: Vec<FdLinkless>,
    cgroup_attached: bool,
    /// BPF host routing: external interfaces get `lb_tc_ext_ingress`.
    host_routing_bpf: bool,
    /// Whether the XDP programs mark frames for `lb_tc_ext_ingress` (the
    /// kernel lets them call `bpf_xdp_adjust_meta`, [`xdp_meta_allowed`]).
    xdp_meta: bool,
}

/// Whether the XDP programs may call `bpf_xdp_adjust_meta` (the mark
/// for `lb_tc_ext_ingress`), asked of the kernel
/// ([`kernel_probe::xdp_adjust_meta`]). Some kernels refuse it, and then
/// no program calling it loads. When the kernel cannot be asked, the
/// programs keep the call: their load says what is wrong.
pub fn xdp_meta_allowed() -> bool {
    match kernel_probe::xdp_adjust_meta() {
        Ok(true) => true,
        Ok(false) => {
            info!("this kernel refuses bpf_xdp_adjust_meta to XDP programs: lb_xdp marks no frame for lb_tc_ext_ingress");
            false
        }
        Err(e) => {
            debug!("probing bpf_xdp_adjust_meta: {e}");
            true
        }
    }
}

/// An attachment aya holds for us (legacy tc or netlink XDP).
enum FdLinkless {
    Tc(&'static str, SchedClassifierLinkId),
    Xdp(XdpLinkId),
}

impl Datapath {
    /// Takes the bpffs directory, checks the layout of the maps pinned
    /// there and loads the programs. Maps of this agent's layout are reused
    /// with their content; others are created afresh (with a warning naming
    /// each) and pinned, as are missing ones.
    pub fn load(pin_dir: &Path, sizes: &MapSizes) -> anyhow::Result<Datapath> {
        Self::load_object(pin_dir, sizes, EBPF_OBJECT)
    }

    /// [`Datapath::load`] verifying only the north-south programs of the
    /// hook `xdp_mode` attaches (the agent's): most of a load's time is
    /// the verifier's, and each hook's programs are the largest. The
    /// program array slots of the other hook keep what they hold (see
    /// [`fill_tc_calls`]).
    pub fn load_for(pin_dir: &Path, sizes: &MapSizes, xdp_mode: XdpAttach) -> anyhow::Result<Datapath> {
        Self::load_programs(pin_dir, sizes, EBPF_OBJECT, NorthSouthHooks::of(xdp_mode))
    }

    /// [`Datapath::load`] with another build of the eBPF object than the
    /// one embedded (lb-bench's removal experiments: a variant of the
    /// datapath measured without rebuilding the bench). Its maps must have
    /// the embedded object's layout, which decides what pinned maps are
    /// reused.
    pub fn load_object(pin_dir: &Path, sizes: &MapSizes, object: &[u8]) -> anyhow::Result<Datapath> {
        Self::load_programs(pin_dir, sizes, object, NorthSouthHooks::Both)
    }

    fn load_programs(pin_dir: &Path, sizes: &MapSizes, object: &[u8], hooks: NorthSouthHooks) -> anyhow::Result<Datapath> {
        if object.is_empty() {
            bail!("this lb-agent was built without its eBPF object (a stub): build it with `cargo xtask build`");
        }
        host::ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(links::dir(pin_dir)).with_context(|| format!("creating {}", links::dir(pin_dir).display()))?;
        let lock = DirLock::take(pin_dir)?;
        let check = layout::check(pin_dir, sizes)?;
        for note in &check.size_notes {
            warn!("{note}");
        }
        let mut carried = Vec::new();
        for (name, why) in &check.rebuild {
            warn!(
                map = name,
                "pinned map has another layout ({why}): rebuilding it from the source; the attached programs keep the old one until the first sync"
            );
            let path = pin_dir.join(name);
            if check.carry.contains(name) {
                match carry::OldMap::open(name, &path) {
                    Ok(old) => {
                        info!(map = name, "its flows are carried into the rebuilt map when this agent's programs go live");
                        carried.push(old);
                    }
                    Err(e) => warn!(map = name, "its flows end with the old map: opening it failed: {e}"),
                }
            }
            if let Some((_, why)) = check.not_carried.iter().find(|(n, _)| n == name) {
                warn!(map = name, "its flows end with the old map: {why}");
            }
            if PROGRAM_ARRAYS.contains(name) {
                hold_program_array(&path)?;
                continue;
            }
            std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        }
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = names::ALL.iter().map(|n| (*n, pin_dir.join(n))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
            if let Some(n) = sizes.for_map(name) {
                loader.map_max_entries(name, n);
            }
        }
        // The datapath logs at debug only. With that level off, the
        // verifier sees the frozen level and removes every log call.
        let level = if tracing::enabled!(target: "lb", tracing::Level::DEBUG) { aya_log::Level::Trace as u8 } else { 0u8 };
        loader.override_global(aya_log::LEVEL, &level, false);
        let xdp_meta = xdp_meta_allowed();
        let meta_flag = u8::from(xdp_meta);
        loader.override_global(lb_common::XDP_META_GLOBAL, &meta_flag, true);
        let mut ebpf = loader.load(object).context("loading the eBPF object (are you root, with bpffs and BTF available?)")?;

        let tc = [TC_INGRESS_PROGRAM, TC_EGRESS_PROGRAM, TC_EXT_INGRESS_PROGRAM]
            .into_iter()
            .chain(TC_CALL_PROGRAMS.into_iter().filter(|n| !n.starts_with(TC_NS_PROGRAM)))
            .chain(tc_north_south_programs().filter(|_| hooks.tc()));
        for name in tc {
            let tc: &mut SchedClassifier = program(&mut ebpf, name)?.try_into()?;
            load_program(name, || tc.load())?;
        }
        for name in SOCK_PROGRAMS {
            let p: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
            load_program(name, || p.load())?;
        }
        for name in [XDP_PROGRAM].into_iter().chain(XDP_CALL_PROGRAMS).filter(|_| hooks.xdp()) {
            let xdp: &mut Xdp = program(&mut ebpf, name)?.try_into()?;
            load_program(name, || xdp.load())?;
        }
        let found: BTreeMap<Pin, PathBuf> =
            links::pinned(pin_dir).with_context(|| format!("listing {}", links::dir(pin_dir).display()))?.into_iter().collect();
        info!(pin_dir = %pin_dir.display(), pinned_links = found.len(), rebuilt_maps = check.rebuild.len(), "datapath loaded");
        let live = check.rebuild.is_empty();
        let mut dp = Datapath {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            _lock: lock,
            rebuilt: check.rebuild,
            carried,
            live,
            held: Vec::new(),
            found,
            pods: BTreeMap::new(),
            externals: BTreeMap::new(),
            unpinned: Vec::new(),
            cgroup_attached: false,
            host_routing_bpf: false,
            xdp_meta,
        };
        if live {
            fill_tc_calls(&mut dp.ebpf)?;
            layout::write_versions(&mut dp.ebpf)?;
        }
        Ok(dp)
    }

    /// Maps this load created afresh because another layout was pinned.
    pub fn rebuilt(&self) -> &[(&'static str, String)] {
        &self.rebuilt
    }

    /// Whether the adopted links run this agent's programs.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Swaps this agent's programs into the links adopted so far and
    /// records the map layouts: called once the maps hold a complete state
    /// (at once, unless maps were rebuilt).
    pub fn go_live(&mut self) -> anyhow::Result<()> {
        if self.live {
            return Ok(());
        }
        let before = self.carry_flows();
        fill_tc_calls(&mut self.ebpf)?;
        for (path, name) in std::mem::take(&mut self.held) {
            let link = links::open(&path).with_context(|| format!("opening link {}", path.display()))?;
            let prog = program(&mut self.ebpf, name)?.fd()?.as_fd();
            links::update(link.as_fd(), prog).with_context(|| format!("updating link {} to this agent's {name}", path.display()))?;
        }
        // The flows the old programs made since the first copy.
        let after = self.carry_flows();
        for (old, (b, a)) in std::mem::take(&mut self.carried).iter().zip(before.iter().zip(&after)) {
            info!(map = old.name, flows = b.copied + a.copied, after_the_swap = a.copied, "flows carried into the rebuilt map");
        }
        layout::write_versions(&mut self.ebpf)?;
        self.live = true;
        self.release_held_arrays();
        info!(maps = ?self.rebuilt.iter().map(|(n, _)| *n).collect::<Vec<_>>(), "rebuilt maps filled; this agent's programs are live");
        Ok(())
    }

    /// Unpins the program arrays of an earlier agent held for its programs
    /// ([`hold_program_array`]): called once every adopted link runs this
    /// agent's programs (at [`Datapath::go_live`], or after the first
    /// attach pass when the load went live at once).
    pub fn release_held_arrays(&self) {
        if !self.live {
            return;
        }
        for (name, held) in held_pins(&self.pin_dir) {
            match std::fs::remove_file(&held) {
                Ok(()) => {
                    info!(map = name, pin = %held.display(), "an earlier agent's program array, held for its programs until now, is unpinned")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("removing {}: {e}", held.display()),
            }
        }
    }

    /// Forgets the FIB answers the datapath keeps (`LB_NEXTHOPS`): a
    /// route changed, so the next packet of each destination asks the FIB
    /// again instead of waiting out the answer's second. Returns how many
    /// went.
    pub fn flush_nexthops(&mut self) -> anyhow::Result<usize> {
        let map = self.ebpf.map_mut(names::NEXTHOPS).context("LB_NEXTHOPS missing from the eBPF object")?;
        let mut map: aya::maps::HashMap<_, lb_common::NextHopKey, lb_common::NextHop> = aya::maps::HashMap::try_from(map)?;
        let keys: Vec<lb_common::NextHopKey> = map.keys().filter_map(Result::ok).collect();
        // A key the XDP program or the LRU removed meanwhile is gone anyway.
        Ok(keys.iter().filter(|k| map.remove(k).is_ok()).count())
    }

    /// Copies the entries of each carried old map that its rebuilt map
    /// lacks. A map that fails keeps what was copied, with a warning naming
    /// it (a full map: its size).
    fn carry_flows(&mut self) -> Vec<carry::Copied> {
        let mut out = Vec::with_capacity(self.carried.len());
        for old in &self.carried {
            let copied = match self.ebpf.map_mut(old.name) {
                Some(new) => old.copy_into(new).unwrap_or_else(|e| {
                    let size = layout::pinned_def(&self.pin_dir.join(old.name)).map(|d| d.max_entries).unwrap_or(0);
                    warn!(map = old.name, max_entries = size, "carrying its flows into the rebuilt map stopped: {e}");
                    carry::Copied::default()
                }),
                None => carry::Copied::default(),
            };
            out.push(copied);
        }
        out
    }

    /// Removes the links of an earlier agent that were not adopted: hooks
    /// this agent does not want (an interface gone or no longer matched, an
    /// XDP mode changed, socket hooks turned off).
    pub fn drop_unadopted(&mut self) {
        for (pin, path) in std::mem::take(&mut self.found) {
            match links::remove(&path) {
                Ok(()) => info!(link = %pin.file_name(), "removed a link this agent does not use"),
                Err(e) => warn!("removing link {}: {e}", path.display()),
            }
        }
    }

    /// Attaches `program` at the hook `pin` names: adopts the pinned link
    /// there when `fits` accepts what the kernel says of it, else attaches
    /// with `attach` and pins the new link.
    fn attach_pinned(
        &mut self,
        pin: Pin,
        name: &'static str,
        fits: impl Fn(&links::LinkInfo) -> bool,
        attach: impl FnOnce(&mut Ebpf) -> anyhow::Result<Result<FdLink, FdLinkless>>,
    ) -> anyhow::Result<Attached> {
        let path = links::dir(&self.pin_dir).join(pin.file_name());
        self.found.remove(&pin);
        if let Ok(link) = links::open(&path) {
            match links::info(link.as_fd()) {
                Ok(info) if fits(&info) => {
                    if self.live {
                        let prog = program(&mut self.ebpf, name)?.fd()?.as_fd();
                        links::update(link.as_fd(), prog)
                            .with_context(|| format!("updating link {} to this agent's {name}", path.display()))?;
                    } else {
                        self.held.push((path, name));
                    }
                    return Ok(Attached::Adopted);
                }
                other => {
                    debug!(link = %pin.file_name(), info = ?other, "pinned link does not fit; replacing it");
                    links::remove(&path).with_context(|| format!("removing link {}", path.display()))?;
                }
            }
        }
        match attach(&mut self.ebpf)? {
            Ok(link) => {
                link.pin(&path).with_context(|| format!("pinning link {}", path.display()))?;
            }
            Err(held) => {
                warn!(link = %pin.file_name(), "this kernel gave no BPF link for {name}: the attachment ends with the agent");
                self.unpinned.push(held);
            }
        }
        Ok(Attached::New)
    }

    /// With BPF host routing the external interfaces attached from now on
    /// get `lb_tc_ext_ingress` too (see [`Datapath::attach_xdp`]).
    pub fn set_host_routing(&mut self, mode: HostRouting) {
        self.host_routing_bpf = mode == HostRouting::Bpf;
    }

    /// Attaches the north-south XDP program to `ifname` in the mode asked
    /// for, and the reverse translation (tc egress) there. `Auto` picks
    /// native XDP where the driver runs it well and generic otherwise (see
    /// [`auto_mode`]). Returns the `xdp_mode` in use and why.
    pub fn attach_xdp(&mut self, ifname: &str, want: XdpAttach) -> anyhow::Result<(u32, u32)> {
        if let Some(e) = self.externals.get(ifname) {
            return Ok((e.mode, e.why));
        }
        let ifindex = host::external_ifindex(ifname)?;
        self.attach_tc_hook(ifindex, ifname, false)?;
        if want == XdpAttach::Tc {
            return self.attach_north_south_tc(ifindex, ifname, xdp_why::REQUESTED);
        }
        let driver = host::driver_name(ifname).unwrap_or_default();
        // Where `auto` would take generic XDP, a pod overlay with a smaller
        // MTU asks for tc instead (`xdp_why::AUTO_OVERLAY`); a requested
        // generic mode gets a warning.
        let overlay = if matches!(want, XdpAttach::Auto | XdpAttach::Generic) { host::overlay_with_smaller_mtu(ifname) } else { None };
        if auto_mode(&driver) == xdp_mode::GENERIC
            && let Some(overlay) = &overlay
        {
            return self.attach_overlay_tc(ifindex, ifname, overlay);
        }
        if self.host_routing_bpf {
            // (Without host routing an earlier agent's link here is not
            // adopted: `drop_unadopted` removes it.)
            self.attach_tc_program(ifindex, ifname, true, TC_EXT_INGRESS_PROGRAM)?;
            if !self.xdp_meta {
                warn!(
                    interface = ifname,
                    "this kernel refuses XDP programs the metadata helper (bpf_xdp_adjust_meta), so lb_xdp marks nothing: lb_tc_ext_ingress finds the packets it DNATed to pods of this node by a conntrack lookup of every packet from outside (`--xdp-mode tc` needs none)"
                );
            }
        }
        // A link of an earlier agent in a mode this one would pick is
        // adopted (no gap); one in another mode is replaced (native and
        // generic XDP cannot be attached together).
        let earlier = self.found.keys().find_map(|p| match p {
            Pin::Xdp { ifindex: i, mode } if *i == ifindex => Some(*mode),
            _ => None,
        });
        if let Some(mode) = earlier {
            let why = match (want, mode) {
                (XdpAttach::Native, xdp_mode::NATIVE) | (XdpAttach::Generic, xdp_mode::GENERIC) => Some(xdp_why::REQUESTED),
                (XdpAttach::Auto, xdp_mode::NATIVE) => Some(xdp_why::AUTO_NATIVE),
                (XdpAttach::Auto, xdp_mode::GENERIC) if auto_mode(&driver) == xdp_mode::GENERIC => Some(xdp_why::AUTO_VETH),
                // Not on a veth: native may work; else tc replaces the link
                // (an earlier agent's generic fallback, or asked for).
                (XdpAttach::Auto, xdp_mode::GENERIC) => None,
                _ => None,
            };
            if let Some(why) = why {
                let pin = Pin::Xdp { ifindex, mode };
                let got = self.attach_pinned(
                    pin,
                    XDP_PROGRAM,
                    |i| i.kind == links::LINK_TYPE_XDP && i.ifindex == ifindex,
                    |_| bail!("the pinned XDP link on {ifname} is gone"),
                )?;
                info!(interface = ifname, mode = xdp_mode_name(mode), why = xdp_why_text(why), "XDP program {}", verb(got));
                return Ok(self.xdp_attached(ifname, mode, why, overlay));
            }
        }
        let (mode, why) = match want {
            XdpAttach::Off => bail!("attaching XDP to {ifname} with --xdp-mode off"),
            XdpAttach::Tc => unreachable!("--xdp-mode tc attaches no XDP (above)"),
            XdpAttach::Native => {
                self.attach_xdp_mode(ifindex, ifname, xdp_mode::NATIVE).with_context(|| {
                    format!("attaching {XDP_PROGRAM} to {ifname} in native mode (does its driver support XDP? try --xdp-mode generic)")
                })?;
                (xdp_mode::NATIVE, xdp_why::REQUESTED)
            }
            XdpAttach::Generic => {
                self.attach_xdp_mode(ifindex, ifname, xdp_mode::GENERIC)?;
                (xdp_mode::GENERIC, xdp_why::REQUESTED)
            }
            XdpAttach::Auto if auto_mode(&driver) == xdp_mode::GENERIC => {
                self.attach_xdp_mode(ifindex, ifname, xdp_mode::GENERIC)?;
                (xdp_mode::GENERIC, xdp_why::AUTO_VETH)
            }
            // Where the driver cannot run the program natively (no XDP, or
            // an MTU past what its XDP takes: ENA's jumbo frames), the
            // north-south path goes to tc, as Cilium's does, not to generic
            // XDP: that turns the interface's hardware GRO and LRO off and
            // copies every GRO packet into one linear buffer.
            XdpAttach::Auto => match self.attach_xdp_mode(ifindex, ifname, xdp_mode::NATIVE) {
                Ok(()) => (xdp_mode::NATIVE, xdp_why::AUTO_NATIVE),
                Err(e) => {
                    info!(interface = ifname, driver, "native XDP unavailable ({e:#}): the north-south path in tc");
                    return self.attach_north_south_tc(ifindex, ifname, xdp_why::AUTO_UNSUPPORTED);
                }
            },
        };
        info!(interface = ifname, mode = xdp_mode_name(mode), why = xdp_why_text(why), "XDP program attached");
        Ok(self.xdp_attached(ifname, mode, why, overlay))
    }

    /// Records the XDP program on `ifname` (in `mode`, for `why`), and
    /// warns when generic XDP there has a pod `overlay` device with a
    /// smaller MTU behind it.
    fn xdp_attached(&mut self, ifname: &str, mode: u32, why: u32, overlay: Option<(String, u32)>) -> (u32, u32) {
        if mode == xdp_mode::GENERIC
            && let Some((overlay, overlay_mtu)) = overlay
        {
            warn_generic_xdp_over_overlay(ifname, why, &overlay, overlay_mtu);
        }
        self.externals.insert(ifname.to_string(), External { mode, why });
        (mode, why)
    }

    /// `--xdp-mode tc`: the north-south path in tc on the interface's
    /// ingress (`lb_tc_ns`, which also does BPF host routing's part there),
    /// then an earlier agent's XDP link on it removed (packets it
    /// translated in the meantime pass `lb_tc_ns` as traffic for no
    /// frontend).
    fn attach_north_south_tc(&mut self, ifindex: u32, ifname: &str, why: u32) -> anyhow::Result<(u32, u32)> {
        self.load_north_south_tc()?;
        let got = self.attach_tc_program(ifindex, ifname, true, TC_NS_PROGRAM)?;
        self.remove_earlier_xdp_links(ifindex, ifname, None)?;
        let mode = xdp_mode::TC;
        info!(interface = ifname, why = xdp_why_text(why), "north-south tc program ({TC_NS_PROGRAM}) {}", verb(got));
        self.externals.insert(ifname.to_string(), External { mode, why });
        Ok((mode, why))
    }

    /// `auto` where it would take generic XDP, with `overlay` (a pod
    /// overlay device and its smaller MTU): the north-south path in tc.
    fn attach_overlay_tc(&mut self, ifindex: u32, ifname: &str, overlay: &(String, u32)) -> anyhow::Result<(u32, u32)> {
        info!(
            interface = ifname,
            overlay = overlay.0,
            overlay_mtu = overlay.1,
            "auto: generic XDP here, and a pod overlay with a smaller MTU: the north-south path in tc"
        );
        self.attach_north_south_tc(ifindex, ifname, xdp_why::AUTO_OVERLAY)
    }

    /// Loads the north-south tc programs where the load left them out
    /// (`auto` loads the XDP ones, and picks tc for an interface only when
    /// it attaches: `xdp_why::AUTO_OVERLAY`), and puts their tail
    /// calls in `LB_TC_CALLS` once this agent is live.
    fn load_north_south_tc(&mut self) -> anyhow::Result<()> {
        if program(&mut self.ebpf, TC_NS_PROGRAM)?.fd().is_ok() {
            return Ok(());
        }
        for name in tc_north_south_programs() {
            let tc: &mut SchedClassifier = program(&mut self.ebpf, name)?.try_into()?;
            load_program(name, || tc.load())?;
        }
        if self.live {
            fill_tc_calls(&mut self.ebpf)?;
        }
        Ok(())
    }

    /// Attaches the XDP program in `mode`, replacing any earlier link on
    /// the interface.
    fn attach_xdp_mode(&mut self, ifindex: u32, ifname: &str, mode: u32) -> anyhow::Result<()> {
        self.remove_earlier_xdp_links(ifindex, ifname, Some(mode))?;
        let flags = if mode == xdp_mode::NATIVE { XdpMode::Driver } else { XdpMode::Skb };
        let ifname = ifname.to_string();
        self.attach_pinned(
            Pin::Xdp { ifindex, mode },
            XDP_PROGRAM,
            |i| i.kind == links::LINK_TYPE_XDP && i.ifindex == ifindex,
            move |ebpf| {
                let xdp: &mut Xdp = program(ebpf, XDP_PROGRAM)?.try_into()?;
                let id =
                    xdp.attach(&ifname, flags).with_context(|| format!("attaching {XDP_PROGRAM} to {ifname} ({})", xdp_mode_name(mode)))?;
                let link = xdp.take_link(id)?;
                match FdLink::try_from(link) {
                    Ok(l) => Ok(Ok(l)),
                    // Netlink XDP (no XDP links): attach again and let aya hold it.
                    Err(_) => Ok(Err(FdLinkless::Xdp(xdp.attach(&ifname, flags)?))),
                }
            },
        )?;
        Ok(())
    }

    /// Removes an earlier agent's pinned XDP links on the interface, but
    /// for one in mode `keep`.
    fn remove_earlier_xdp_links(&mut self, ifindex: u32, ifname: &str, keep: Option<u32>) -> anyhow::Result<()> {
        for mode in [xdp_mode::NATIVE, xdp_mode::GENERIC] {
            let pin = Pin::Xdp { ifindex, mode };
            if Some(mode) != keep && self.found.remove(&pin).is_some() {
                links::remove(&links::dir(&self.pin_dir).join(pin.file_name()))?;
                info!(interface = ifname, "removed the XDP link of an earlier agent ({})", xdp_mode_name(mode));
            }
        }
        Ok(())
    }

    /// External interfaces with the XDP program, their `xdp_mode` and why.
    pub fn xdp_interfaces(&self) -> impl Iterator<Item = (&str, u32, u32)> {
        self.externals.iter().map(|(n, e)| (n.as_str(), e.mode, e.why))
    }

    /// Attaches the tc programs to a pod interface: ingress (tcx) for
    /// packets leaving the pod, egress for replies on their way into it.
    /// The interface is recorded in `LB_POD_IFACES` (BPF host routing
    /// redirects only into those) once both programs are attached.
    pub fn attach_tc(&mut self, ifindex: u32, ifname: &str) -> anyhow::Result<Attached> {
        if self.pods.contains_key(&ifindex) {
            return Ok(Attached::Already);
        }
        let got = self.attach_tc_hook(ifindex, ifname, true)?;
        if let Err(e) = self.attach_tc_hook(ifindex, ifname, false) {
            self.remove_tc_hook(ifindex, true);
            return Err(e);
        }
        if let Err(e) = self.pod_ifaces().and_then(|mut m| Ok(m.insert(ifindex, 1, 0)?)) {
            warn!(interface = ifname, ifindex, "recording the pod interface in {}: {e:#}", names::POD_IFACES);
        }
        info!(interface = ifname, ifindex, "tc programs {}", verb(got));
        self.pods.insert(ifindex, ifname.to_string());
        Ok(got)
    }

    /// `LB_POD_IFACES`: ifindex -> 1.
    fn pod_ifaces(&mut self) -> anyhow::Result<aya::maps::HashMap<&mut aya::maps::MapData, u32, u32>> {
        let map = self.ebpf.map_mut(names::POD_IFACES).with_context(|| format!("no map {}", names::POD_IFACES))?;
        Ok(aya::maps::HashMap::try_from(map)?)
    }

    /// Drops the `LB_POD_IFACES` entries of interfaces this agent has no
    /// tc programs on (an earlier agent's, gone meanwhile).
    pub fn prune_pod_ifaces(&mut self) {
        let known: Vec<u32> = self.pods.keys().copied().collect();
        let result = self.pod_ifaces().and_then(|mut m| {
            let stale: Vec<u32> = m.keys().filter_map(Result::ok).filter(|i| !known.contains(i)).collect();
            for i in &stale {
                m.remove(i)?;
            }
            Ok(stale.len())
        });
        match result {
            Ok(0) => {}
            Ok(n) => debug!(interfaces = n, "stale pod interfaces dropped from {}", names::POD_IFACES),
            Err(e) => warn!("pruning {}: {e:#}", names::POD_IFACES),
        }
    }

    /// `lb_tc_ingress` or `lb_tc_egress` (a pod interface's hooks, an
    /// external interface's egress).
    fn attach_tc_hook(&mut self, ifindex: u32, ifname: &str, ingress: bool) -> anyhow::Result<Attached> {
        let name = if ingress { TC_INGRESS_PROGRAM } else { TC_EGRESS_PROGRAM };
        self.attach_tc_program(ifindex, ifname, ingress, name)
    }

    fn attach_tc_program(&mut self, ifindex: u32, ifname: &str, ingress: bool, name: &'static str) -> anyhow::Result<Attached> {
        let (at, attach_type) =
            if ingress { (TcAttachType::Ingress, links::ATTACH_TCX_INGRESS) } else { (TcAttachType::Egress, links::ATTACH_TCX_EGRESS) };
        let ifname = ifname.to_string();
        self.attach_pinned(
            Pin::Tcx { ifindex, ingress },
            name,
            |i| i.kind == links::LINK_TYPE_TCX && i.ifindex == ifindex && i.attach_type == attach_type,
            move |ebpf| {
                let tc: &mut SchedClassifier = program(ebpf, name)?.try_into()?;
                let id = tc.attach(&ifname, at).with_context(|| format!("attaching {name} to {ifname} {at:?}"))?;
                let link = tc.take_link(id)?;
                match FdLink::try_from(link) {
                    Ok(l) => Ok(Ok(l)),
                    // Legacy tc (no tcx before kernel 6.6): attach again
                    // and let aya hold it.
                    Err(_) => Ok(Err(FdLinkless::Tc(name, tc.attach(&ifname, at)?))),
                }
            },
        )
    }

    fn remove_tc_hook(&mut self, ifindex: u32, ingress: bool) {
        let pin = Pin::Tcx { ifindex, ingress };
        let path = links::dir(&self.pin_dir).join(pin.file_name());
        self.held.retain(|(p, _)| *p != path);
        if let Err(e) = links::remove(&path) {
            warn!("removing link {}: {e}", path.display());
        }
    }

    /// Lets go of a pod interface that is gone (or no longer matched):
    /// its links are removed.
    pub fn forget_interface(&mut self, ifindex: u32) {
        if let Some(name) = self.pods.remove(&ifindex) {
            // Before the hooks go: no redirect into an interface being let go.
            if let Err(e) = self.pod_ifaces().and_then(|mut m| Ok(m.remove(&ifindex)?)) {
                debug!(interface = name, ifindex, "removing the pod interface from {}: {e:#}", names::POD_IFACES);
            }
            self.remove_tc_hook(ifindex, true);
            self.remove_tc_hook(ifindex, false);
            debug!(interface = name, ifindex, "interface let go");
        }
    }

    /// Pod interfaces with the tc programs: (ifindex, name).
    pub fn attached_interfaces(&self) -> impl Iterator<Item = (u32, &str)> {
        self.pods.iter().map(|(i, n)| (*i, n.as_str()))
    }

    /// Attaches the socket hooks to a cgroup2 directory (normally the root
    /// of the cgroup2 mount, so every process on the node is covered).
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> anyhow::Result<()> {
        if self.cgroup_attached {
            return Ok(());
        }
        let file = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        // The kernel names a cgroup by the inode of its directory.
        let cgroup_id = std::os::unix::fs::MetadataExt::ino(&file.metadata()?);
        let mut got = Attached::Already;
        for name in SOCK_PROGRAMS {
            let file = &file;
            got = self.attach_pinned(
                Pin::Cgroup { program: name.to_string() },
                name,
                |i| i.kind == links::LINK_TYPE_CGROUP && i.cgroup_id == cgroup_id,
                move |ebpf| {
                    let p: &mut CgroupSockAddr = program(ebpf, name)?.try_into()?;
                    // With bpf_link (the kernel 5.7+ path aya takes) the
                    // attachment always coexists with other programs; the
                    // link API rejects the legacy BPF_F_ALLOW_MULTI flag, so
                    // the mode must be Single (0).
                    let id = p
                        .attach(file, CgroupAttachMode::Single)
                        .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
                    FdLink::try_from(p.take_link(id)?).map(Ok).map_err(|e| anyhow::anyhow!("{name}: no cgroup link: {e}"))
                },
            )?;
        }
        self.cgroup_attached = true;
        info!(cgroup = %cgroup.display(), "socket hooks {}", verb(got));
        Ok(())
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        for held in self.unpinned.drain(..) {
            match held {
                FdLinkless::Tc(name, id) => {
                    if let Ok(tc) = program(&mut self.ebpf, name).and_then(|p| <&mut SchedClassifier>::try_from(p).map_err(Into::into)) {
                        let _ = tc.detach(id);
                    }
                }
                FdLinkless::Xdp(id) => {
                    if let Ok(xdp) = program(&mut self.ebpf, XDP_PROGRAM).and_then(|p| <&mut Xdp>::try_from(p).map_err(Into::into)) {
                        let _ = xdp.detach(id);
                    }
                }
            }
        }
    }
}

fn verb(a: Attached) -> &'static str {
    match a {
        Attached::Adopted => "attached: links adopted from the earlier agent",
        Attached::New => "attached",
        Attached::Already => "attached already",
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

/// Points `LB_TC_CALLS` at this agent's IPv6 tc programs, and
/// `LB_XDP_CALLS` at its IPv6 XDP program. The arrays are pinned: they
/// keep them (and IPv6 working) after the agent is gone, until the next
/// agent points them at its own. Done when this agent's maps are complete
/// (at load, or at [`Datapath::go_live`] after a rebuild): the programs
/// attached until then keep the earlier agent's.
pub fn fill_tc_calls(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    fill_calls(ebpf, names::TC_CALLS, &TC_CALL_PROGRAMS)?;
    fill_calls(ebpf, names::XDP_CALLS, &XDP_CALL_PROGRAMS)
}

/// Sets each slot of the program array `map` to the program of that
/// index in `programs`. The slot of a program this agent did not load (a
/// north-south hook it does not attach) keeps what it holds: an earlier
/// agent's programs of that hook may still be attached until this agent
/// removes their links, and emptied slots under them would pass their
/// packets untranslated.
fn fill_calls(ebpf: &mut Ebpf, map: &str, programs: &[&str]) -> anyhow::Result<()> {
    let mut fds = Vec::new();
    for name in programs {
        let fd = match program(ebpf, name)?.fd() {
            Ok(fd) => Some(fd.try_clone()?),
            Err(_) => None,
        };
        fds.push((name, fd));
    }
    let m = ebpf.map_mut(map).with_context(|| format!("{map} missing from the eBPF object"))?;
    let mut calls = aya::maps::ProgramArray::try_from(m)?;
    for (slot, (name, fd)) in fds.iter().enumerate() {
        if let Some(fd) = fd {
            calls.set(slot as u32, fd, 0).with_context(|| format!("setting {name} in {map}"))?;
        }
    }
    debug!(map, ?programs, "IPv6 programs set");
    Ok(())
}

/// Which north-south hooks' programs a load verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NorthSouthHooks {
    Both,
    Xdp,
    Tc,
    Neither,
}

impl NorthSouthHooks {
    /// What `--xdp-mode` attaches.
    fn of(mode: XdpAttach) -> NorthSouthHooks {
        match mode {
            XdpAttach::Auto | XdpAttach::Native | XdpAttach::Generic => NorthSouthHooks::Xdp,
            XdpAttach::Tc => NorthSouthHooks::Tc,
            XdpAttach::Off => NorthSouthHooks::Neither,
        }
    }

    fn xdp(self) -> bool {
        matches!(self, NorthSouthHooks::Both | NorthSouthHooks::Xdp)
    }

    fn tc(self) -> bool {
        matches!(self, NorthSouthHooks::Both | NorthSouthHooks::Tc)
    }
}

/// The north-south path's tc programs: `lb_tc_ns` and those it
/// tail-calls.
fn tc_north_south_programs() -> impl Iterator<Item = &'static str> {
    [TC_NS_PROGRAM].into_iter().chain(TC_CALL_PROGRAMS.into_iter().filter(|n| n.starts_with(TC_NS_PROGRAM)))
}

/// How many times a program's load is tried when the kernel answers
/// `EAGAIN` (libbpf's count).
const LOAD_ATTEMPTS: u32 = 5;

/// Loads the program `name` with `load`, again when the kernel answers
/// `EAGAIN`: the verifier gives up on a program when a signal is pending
/// for the loading thread, and the largest of ours (`lb_xdp4_rest`) take
/// seconds to verify on a busy node (the CI run that found it: 6 s, with
/// the verifier log aya asks for after a first failure). libbpf retries
/// the same way.
fn load_program(name: &str, mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>) -> anyhow::Result<()> {
    let mut attempt = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < LOAD_ATTEMPTS =>
            {
                warn!(program = name, attempt, "the kernel's verifier was interrupted (EAGAIN); loading the program again");
                attempt += 1;
            }
            other => return other.with_context(|| format!("loading {name}")),
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))
}

/// The pinned program arrays: what the attached programs tail-call.
const PROGRAM_ARRAYS: [&str; 2] = [names::TC_CALLS, names::XDP_CALLS];

/// Where a rebuilt program array's old pin is held ([`hold_program_array`]):
/// `NAME_HELD_<map id>`. One pin per array: a pin left by an agent that
/// never went live (or by an older agent, which knows none of them) names
/// another array, and is never taken for the one the attached programs use.
fn held_pin(path: &Path, id: u32) -> PathBuf {
    let mut held = path.as_os_str().to_owned();
    // (bpffs refuses names with a dot.)
    held.push(format!("{HELD}_{id}"));
    PathBuf::from(held)
}

/// The suffix of a held program array's pin ([`held_pin`]; an agent before
/// the map ids pinned `NAME_HELD`).
const HELD: &str = "_HELD";

/// Every held program array pinned in `dir` (whichever agent held it):
/// the array's name and the pin.
fn held_pins(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let files: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    let mut held = Vec::new();
    for name in PROGRAM_ARRAYS {
        let prefix = format!("{name}{HELD}");
        for f in &files {
            let rest = f.strip_prefix(&prefix);
            if rest.is_some_and(|r| r.is_empty() || r.strip_prefix('_').is_some_and(|id| id.parse::<u32>().is_ok())) {
                held.push((name, dir.join(f)));
            }
        }
    }
    held.sort();
    held
}

/// Moves aside the pin of a program array about to be rebuilt (at `path`),
/// instead of removing it: the attached programs of the earlier agent
/// tail-call through it until this agent's programs go live (IPv4 XDP and
/// both families' IPv6 paths), and the kernel empties a program array when
/// its last user reference (a pin, or a process's descriptor) goes. Kept
/// also if this agent never goes live (it fails before its first sync):
/// the next one holds the never-used array at `path` beside it (each under
/// its own map id, so neither is taken for the other), and
/// [`Datapath::release_held_arrays`] unpins them all.
fn hold_program_array(path: &Path) -> anyhow::Result<()> {
    let old = aya::maps::MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let id = old.info().with_context(|| format!("reading {}", path.display()))?.id();
    let held = held_pin(path, id);
    if !held.exists() {
        // (bpffs refuses a rename: the map is pinned again, then unpinned.)
        old.pin(&held).with_context(|| format!("pinning {} at {}", path.display(), held.display()))?;
    }
    std::fs::remove_file(path).with_context(|| format!("unpinning {}", path.display()))?;
    info!(map = %path.display(), held = %held.display(), "the attached programs keep the old program array until this agent's go live");
    Ok(())
}

/// Removes everything lb pinned under `dir`: detaches every link (the
/// datapath stops) and unpins every map (all state). Refused while an agent
/// holds the directory.
pub fn cleanup(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // A process forked from one that held the lock shares it until it
    // execs: wait that out before calling the directory busy.
    let mut tries = 0;
    let _lock = loop {
        match DirLock::take(dir) {
            Ok(lock) => break lock,
            Err(_) if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e.context("`lb-agent uninstall` runs only with no agent on the node (delete the DaemonSet first)")),
        }
    };
    for (pin, path) in links::pinned(dir)? {
        match links::remove(&path) {
            Ok(()) => info!(link = %pin.file_name(), "detached and unpinned"),
            Err(e) => warn!("removing link {}: {e}", path.display()),
        }
    }
    let _ = std::fs::remove_dir(links::dir(dir));
    let held = held_pins(dir);
    for (name, path) in names::ALL.iter().map(|n| (*n, dir.join(n))).chain(held) {
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

/// The one-writer lock on a bpffs directory: an exclusive `flock` held for
/// the agent's life (the kernel drops it when the process ends, however
/// it ends).
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock on `dir`, or says who holds it.
    pub fn take(dir: &Path) -> anyhow::Result<DirLock> {
        let file = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock(2) on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let who = match holder(dir) {
                    Some(pid) => format!("process {pid}"),
                    None => "another process".to_string(),
                };
                bail!("{} is in use by {who} (another lb-agent): one agent per bpffs directory", dir.display());
            }
            return Err(e).with_context(|| format!("locking {}", dir.display()));
        }
        Ok(DirLock { _file: file })
    }
}

/// A process (other than this one) with `dir` open: the lock's holder.
fn holder(dir: &Path) -> Option<u32> {
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == dir)) {
            return Some(pid);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every held program array is found, whichever agent held it (with a
    /// map id, or the older `NAME_HELD`), and nothing else.
    #[test]
    fn held_pins_are_every_held_array_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("lb-held-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tc = names::TC_CALLS;
        let xdp = names::XDP_CALLS;
        let files = [
            format!("{tc}_HELD"),
            format!("{tc}_HELD_42"),
            format!("{xdp}_HELD_7"),
            tc.to_string(),
            xdp.to_string(),
            format!("{tc}_HELDX"),
            format!("{xdp}_HELD_"),
            format!("{xdp}_HELD_x1"),
            names::LAYOUT.to_string(),
        ];
        for f in &files {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let found: Vec<_> = held_pins(&dir).into_iter().map(|(n, p)| (n, p.file_name().unwrap().to_string_lossy().into_owned())).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found, [(tc, format!("{tc}_HELD")), (tc, format!("{tc}_HELD_42")), (xdp, format!("{xdp}_HELD_7"))]);
        assert_eq!(held_pin(&Path::new("/sys/fs/bpf/lb").join(xdp), 9), Path::new("/sys/fs/bpf/lb").join(format!("{xdp}_HELD_9")));
    }
}
