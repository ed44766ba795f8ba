//! Facts about the agent's own network namespace and the host.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

/// The cookie of the calling thread's network namespace (SO_NETNS_COOKIE,
/// Linux 5.14+).
pub fn current_netns_cookie() -> io::Result<u64> {
    let sock = inet_socket()?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: cookie and len are valid for the duration of the call.
    let ret = unsafe { libc::getsockopt(sock.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// A UDP socket of the caller's network namespace: a handle for the
/// ioctls and socket options that ask about it.
fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface ioctl `request` about interface `name`, with `ifr` (whose
/// name it fills in; the rest is the caller's).
fn interface_ioctl(name: &str, request: libc::c_ulong, ifr: &mut libc::ifreq) -> io::Result<()> {
    for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    let sock = inet_socket()?;
    // SAFETY: an interface ioctl with a valid ifreq; what it points at (an
    // ethtool request) is the caller's and lives through the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, ifr as *mut libc::ifreq) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Names of the interfaces in the current network namespace.
pub fn interface_names() -> io::Result<Vec<String>> {
    Ok(interfaces()?.into_iter().map(|(_, n)| n).collect())
}

/// (ifindex, name) of the interfaces in the current network namespace.
pub fn interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // freed below with if_freenameindex.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut cur = list;
        while (*cur).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*cur).if_name);
            out.push(((*cur).if_index, name.to_string_lossy().into_owned()));
            cur = cur.add(1);
        }
        libc::if_freenameindex(list);
        Ok(out)
    }
}

/// The ifindex of an interface of the current network namespace.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: a NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        anyhow::bail!("interface {name} does not exist");
    }
    Ok(idx)
}

/// The ifindex of an external interface (`--external-ifaces`), or the
/// error an operator gets for one that does not exist.
pub fn external_ifindex(name: &str) -> anyhow::Result<u32> {
    ifindex(name).map_err(|_| anyhow::anyhow!("external interface {name} does not exist (check --external-ifaces)"))
}

/// The driver of a network interface (`ethtool -i`'s "driver"), e.g.
/// `veth`, `virtio_net`, `mlx5_core`.
pub fn driver_name(ifname: &str) -> io::Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x03;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    // SAFETY: all-zero is a valid value of both C structs.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_ifru.ifru_data = (&raw mut info).cast();
    interface_ioctl(ifname, libc::SIOCETHTOOL, &mut ifr)?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Shell-style match with `*` wildcards only (`lxc*`, `*-pod`, `veth*x`).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Filesystem type of the mount holding `path`.
fn fs_magic(path: &Path) -> io::Result<libc::c_long> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL terminated, st is a valid out pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as libc::c_long)
}

const BPF_FS_MAGIC: libc::c_long = 0xcafe4a11;
const CGROUP2_SUPER_MAGIC: libc::c_long = 0x63677270;

/// Makes sure `dir` lies on a bpffs. If `/sys/fs/bpf` is not mounted, mounts
/// it there first, as Cilium's agent does. Creates `dir`.
pub fn ensure_bpffs(dir: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && fs_magic(root).ok() != Some(BPF_FS_MAGIC) {
        std::fs::create_dir_all(root)?;
        let src = c"bpf";
        let target = c"/sys/fs/bpf";
        // SAFETY: constant NUL-terminated strings.
        let ret = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), src.as_ptr(), 0, std::ptr::null()) };
        if ret != 0 {
            anyhow::bail!(
                "bpffs is not mounted at /sys/fs/bpf and mounting it failed: {} \
                 (run `mount -t bpf bpf /sys/fs/bpf` as root)",
                io::Error::last_os_error()
            );
        }
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir)?;
    if fs_magic(dir)? != BPF_FS_MAGIC {
        anyhow::bail!("{} is not on a bpffs: mount one (`mount -t bpf bpf <dir>`) or choose --bpffs under /sys/fs/bpf", dir.display());
    }
    Ok(())
}

/// The cgroup2 mount to attach socket hooks to: `/sys/fs/cgroup` on a
/// unified host, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn find_cgroup2() -> io::Result<PathBuf> {
    if let Ok(root) = cgroup2_at(Path::new("/sys/fs/cgroup")) {
        return Ok(root);
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, target, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(target))
        })
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup2 mount found"))
}

/// The cgroup2 root at or under `dir` (`--cgroup`, the DaemonSet's mount
/// of the host's `/sys/fs/cgroup`): `dir` on a unified host, `dir/unified`
/// on a hybrid one (cgroup v1 controllers beside a cgroup2 mount, as
/// systemd's hybrid mode lays them out); an error naming both otherwise.
pub fn cgroup2_at(dir: &Path) -> io::Result<PathBuf> {
    let unified = dir.join("unified");
    for candidate in [dir, unified.as_path()] {
        if fs_magic(candidate).ok() == Some(CGROUP2_SUPER_MAGIC) {
            return Ok(candidate.to_path_buf());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("neither {} nor {} is a cgroup2 mount: the socket hooks need the host's cgroup2 root", dir.display(), unified.display()),
    ))
}

/// Interfaces of the default routes of both families (`/proc/net/route`,
/// then `/proc/net/ipv6_route`; IPv4's first, each once). An IPv6-only
/// node has only the second; a dual-stack node may route IPv6 out of
/// another interface than IPv4.
pub fn default_route_interfaces() -> std::io::Result<Vec<String>> {
    let v4 = std::fs::read_to_string("/proc/net/route")?;
    // No such file where the kernel or the namespace has no IPv6.
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    Ok(default_routes(&v4, &v6))
}

/// [`default_route_interfaces`] of the two tables' text.
fn default_routes(v4: &str, v6: &str) -> Vec<String> {
    const RTF_UP: u32 = 0x1;
    const RTF_REJECT: u32 = 0x200;
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    };
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000" {
            add(f[0]);
        }
    }
    // destination, its prefix length, source, its prefix length, next hop,
    // metric, refcount, use, flags, device. The kernel's own "unreachable"
    // defaults (flag RTF_REJECT, on lo) route nothing out.
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(flags) = f.get(8).and_then(|x| u32::from_str_radix(x, 16).ok()) else {
            continue;
        };
        let default = f[0].bytes().all(|b| b == b'0') && f[1] == "00";
        if f.len() >= 10 && default && flags & RTF_UP != 0 && flags & RTF_REJECT == 0 && f[9] != "lo" {
            add(f[9]);
        }
    }
    out
}

/// (interface, address) of every IPv4 and IPv6 address in this network
/// namespace, in the kernel's order (one `getifaddrs` walk for both
/// families).
fn interface_ips() -> std::io::Result<Vec<(String, std::net::IpAddr)>> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: a valid element of the list.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: a non-null address of the element.
        let ip: std::net::IpAddr = match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
            // SAFETY: AF_INET addresses are sockaddr_in.
            libc::AF_INET => unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) }.sin_addr.s_addr.to_ne_bytes().into(),
            // SAFETY: AF_INET6 addresses are sockaddr_in6.
            libc::AF_INET6 => unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) }.sin6_addr.s6_addr.into(),
            _ => continue,
        };
        // SAFETY: a NUL-terminated name.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
        out.push((name, ip));
    }
    // SAFETY: the list from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// (interface, IPv4 address) of every address in this network namespace.
pub fn interface_addresses() -> std::io::Result<Vec<(String, std::net::Ipv4Addr)>> {
    Ok(interface_ips()?
        .into_iter()
        .filter_map(|(name, ip)| match ip {
            std::net::IpAddr::V4(ip) => Some((name, ip)),
            std::net::IpAddr::V6(_) => None,
        })
        .collect())
}

/// The global IPv6 addresses of every interface (interface, address), in
/// the kernel's order: link-local and loopback ones never serve NodePorts.
pub fn interface_addresses6() -> std::io::Result<Vec<(String, std::net::Ipv6Addr)>> {
    Ok(interface_ips()?
        .into_iter()
        .filter_map(|(name, ip)| match ip {
            std::net::IpAddr::V6(ip) if !ip.is_loopback() && !ip.is_unicast_link_local() && !ip.is_multicast() => Some((name, ip)),
            _ => None,
        })
        .collect())
}

/// The drivers of pod overlay devices (`ethtool -i`): the tunnels
/// flannel, Calico and Cilium make between nodes.
const OVERLAY_DRIVERS: [&str; 2] = ["vxlan", "geneve"];

/// The node's pod overlay devices (interface, driver), from the interfaces
/// of the agent's network namespace.
pub fn overlay_devices() -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv4/conf") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name != "all" && name != "default")
        .filter_map(|name| overlay_driver(&name).map(|driver| (name, driver)))
        .collect()
}

/// The driver of interface `name` if it is an overlay's.
fn overlay_driver(name: &str) -> Option<String> {
    driver_name(name).ok().filter(|d| OVERLAY_DRIVERS.contains(&d.as_str()))
}

/// An overlay device whose MTU is smaller than interface `name`'s (the
/// first one, with its MTU).
pub fn overlay_with_smaller_mtu(name: &str) -> Option<(String, u32)> {
    let own = mtu(name).ok()?;
    overlay_devices().into_iter().find_map(|(o, _)| mtu(&o).ok().filter(|&m| m < own).map(|m| (o, m)))
}

/// The MTU of interface `name` (`SIOCGIFMTU`).
pub fn mtu(name: &str) -> io::Result<u32> {
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    interface_ioctl(name, libc::SIOCGIFMTU, &mut ifr)?;
    // SAFETY: the member SIOCGIFMTU wrote.
    Ok(unsafe { ifr.ifr_ifru.ifru_mtu } as u32)
}

/// Whether an interface filters strictly: the kernel applies the larger
/// of `all`'s and the interface's `rp_filter` (0 off, 1 strict, 2 loose).
fn rp_filter_is_strict(all: u8, dev: u8) -> bool {
    all.max(dev) == 1
}

/// The node's network sysctls (`net.*`), read and written under a
/// directory (`--sysctl-dir`): `/proc/sys`, or, in a container that is not
/// privileged (whose `/proc/sys` the runtime mounts read-only), one whose
/// `net` is a writable mount of the host's `/proc/sys/net`. The DaemonSet
/// mounts it at `/host/proc/sys/net`, as Cilium's does. Either way the
/// values are those of the agent's network namespace: the kernel picks a
/// `net` sysctl's namespace from the process that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctls {
    dir: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Sysctls::new("/proc/sys")
    }
}

impl Sysctls {
    pub fn new(dir: impl Into<PathBuf>) -> Sysctls {
        Sysctls { dir: dir.into() }
    }

    /// An error unless the directory holds the IPv4 interface sysctls (a
    /// `--sysctl-dir` whose mount is missing).
    pub fn check(&self) -> io::Result<()> {
        let conf = self.dir.join("net/ipv4/conf");
        if conf.is_dir() {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} is no directory: --sysctl-dir must hold the host's /proc/sys/net as net/", conf.display()),
        ))
    }

    /// The value of sysctl `key` (`net/ipv4/conf/eth0/rp_filter`).
    fn read(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(key)).ok().map(|v| v.trim().to_string())
    }

    /// The node's ephemeral ports (`net.ipv4.ip_local_port_range`).
    pub fn ephemeral_ports(&self) -> Option<(u16, u16)> {
        let v = self.read("net/ipv4/ip_local_port_range")?;
        let mut it = v.split_whitespace().map(|p| p.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    }

    /// Sets sysctl `key` (`net/ipv4/conf/eth0/rp_filter`) to `value`.
    pub fn write(&self, key: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.dir.join(key), value)
    }

    /// Turns accept_local on for `name` unless it is on already (for the
    /// interface or for all).
    pub fn ensure_accept_local(&self, name: &str) {
        let on = |key: &str| self.read(&format!("net/ipv4/conf/{key}/accept_local")).is_some_and(|v| v == "1");
        if on("all") || on(name) {
            return;
        }
        match self.write(&format!("net/ipv4/conf/{name}/accept_local"), "1") {
            Ok(()) => {
                tracing::info!(interface = name, "accept_local turned on: replies of SNATed NodePort flows carry this node's address")
            }
            Err(e) => tracing::warn!(
                "accept_local is off on {name} and setting it under {} failed ({e}): replies of SNATed NodePort flows may be \
                 dropped as martians; set net.ipv4.conf.{name}.accept_local=1, or give the agent a writable mount of the \
                 host's /proc/sys/net (--sysctl-dir, as the DaemonSet does)",
                self.dir.display()
            ),
        }
    }

    /// Makes reverse-path filtering loose on every overlay device of the
    /// node where it is strict. A NodePort flow another node forwards to a
    /// pod here is SNATed to that node's address, and comes through the
    /// tunnel when the pod network is an overlay, while the route back to
    /// that address is the node network's: strict filtering drops it.
    /// (kube-proxy's MASQUERADE takes the tunnel device's address instead;
    /// lb has one SNAT address per node. Cilium's kube-proxy replacement
    /// asks for loose filtering too.)
    pub fn loosen_rp_filter_on_overlays(&self) {
        for (name, driver) in overlay_devices() {
            self.loosen_rp_filter(&name, &driver);
        }
    }

    /// [`Self::loosen_rp_filter_on_overlays`] for one interface (a new
    /// one); whether it is an overlay device.
    pub fn loosen_rp_filter_if_overlay(&self, name: &str) -> bool {
        let driver = overlay_driver(name);
        if let Some(driver) = &driver {
            self.loosen_rp_filter(name, driver);
        }
        driver.is_some()
    }

    /// Sets loose reverse-path filtering on overlay device `name` where it
    /// is strict.
    fn loosen_rp_filter(&self, name: &str, driver: &str) {
        let read = |key: &str| self.read(&format!("net/ipv4/conf/{key}/rp_filter"))?.parse::<u8>().ok();
        let (Some(all), Some(dev)) = (read("all"), read(name)) else {
            tracing::warn!("cannot read the rp_filter of overlay device {name} ({driver}) under {}", self.dir.display());
            return;
        };
        if !rp_filter_is_strict(all, dev) {
            return;
        }
        match self.write(&format!("net/ipv4/conf/{name}/rp_filter"), "2") {
            Ok(()) => tracing::info!(
                interface = name,
                driver,
                "reverse-path filtering made loose on this overlay device: NodePort flows other nodes SNAT to their address arrive through it"
            ),
            Err(e) => tracing::warn!(
                "strict reverse-path filtering on overlay device {name} ({driver}) and setting it loose under {} failed ({e}): \
                 NodePort flows that other nodes forward through it are dropped; set net.ipv4.conf.{name}.rp_filter=2, or give \
                 the agent a writable mount of the host's /proc/sys/net (--sysctl-dir, as the DaemonSet does)",
                self.dir.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{default_routes, glob_match, rp_filter_is_strict};

    #[test]
    fn the_loopback_device_has_its_mtu() {
        assert_eq!(super::mtu("lo").unwrap(), std::fs::read_to_string("/sys/class/net/lo/mtu").unwrap().trim().parse::<u32>().unwrap());
        assert!(super::mtu("no-such-if0").is_err());
    }

    #[test]
    fn strict_reverse_path_filtering_is_the_larger_value_being_1() {
        assert!(rp_filter_is_strict(1, 0));
        assert!(rp_filter_is_strict(0, 1));
        assert!(rp_filter_is_strict(1, 1));
        assert!(!rp_filter_is_strict(1, 2), "loose on the interface wins");
        assert!(!rp_filter_is_strict(2, 1), "loose for all wins");
        assert!(!rp_filter_is_strict(0, 0));
    }

    #[test]
    fn globs() {
        assert!(glob_match("lxc*", "lxc12ab"));
        assert!(glob_match("lxc*", "lxc"));
        assert!(!glob_match("lxc*", "eth0"));
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("eth0", "eth01"));
        assert!(glob_match("*pod", "mypod"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxc"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    /// `/proc/net/route` and `/proc/net/ipv6_route` as this kernel prints
    /// them.
    const ROUTE4: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
    const ROUTE6_DEFAULT_ETH1: &str = "\
        fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth1\n\
        00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n\
        00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001       lo\n";

    #[test]
    fn default_routes_of_both_families_name_their_interfaces() {
        assert_eq!(default_routes(ROUTE4, ""), ["eth0"], "IPv4 only (or no IPv6 table)");
        // An IPv6-only node: its default route is the only one.
        let header_only = ROUTE4.lines().next().unwrap();
        assert_eq!(default_routes(header_only, ROUTE6_DEFAULT_ETH1), ["eth1"]);
        // Dual-stack, IPv6 out of another interface: both, IPv4's first.
        assert_eq!(default_routes(ROUTE4, ROUTE6_DEFAULT_ETH1), ["eth0", "eth1"]);
        // The same interface for both: once.
        assert_eq!(default_routes(ROUTE4, &ROUTE6_DEFAULT_ETH1.replace("eth1", "eth0")), ["eth0"]);
        // The kernel's unreachable default on lo and a /64 are no default
        // route out.
        let no_default: String = ROUTE6_DEFAULT_ETH1.lines().filter(|l| !l.contains("00000400")).map(|l| format!("{l}\n")).collect();
        assert!(default_routes(header_only, &no_default).is_empty(), "{:?}", default_routes(header_only, &no_default));
    }
}
