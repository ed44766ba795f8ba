//! One generated list of Services, rendered three ways: the agent's
//! desired state ([`to_desired`]), kube-proxy's iptables ruleset
//! ([`iptables_restore`]) and kube-proxy's nftables ruleset ([`nft_full`]).
//! Every datapath gets the same services, endpoints and order, so they
//! carry the same work.

use std::{fmt::Write as _, net::Ipv4Addr};

use lb_agent::model::{Backend, BackendAddr, Desired, Frontend, FrontendAddr, Protocol};

/// The pod CIDR (kube-proxy's `--cluster-cidr`): the lab's pods are
/// 10.244.0.x, the fake endpoints 10.128.0.0/12 (outside it: no pod
/// there, never contacted).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Service port of every generated service.
pub const SERVICE_PORT: u16 = 80;
/// Target port of every endpoint.
pub const TARGET_PORT: u16 = 8080;

/// One Service port with its endpoints.
#[derive(Clone, Debug)]
pub struct Svc {
    /// `namespace/name:port`, as kube-proxy names a service port.
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
    /// `(ip, port)`, in the order kube-proxy would list them.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
    /// The Service's NodePort for this port (`type: NodePort`,
    /// `externalTrafficPolicy: Cluster`), if any.
    pub node_port: Option<u16>,
}

/// The ClusterIP of service `i`: 10.96.0.0/12 from 10.96.0.10 on.
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32)
}

/// A fake endpoint address: 10.128.0.0/12, distinct per (service, index).
pub fn fake_endpoint(i: usize, j: usize, per_service: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 1)) + (i * per_service + j) as u32)
}

/// `n` TCP services with `endpoints` fake endpoints each.
pub fn generate(n: usize, endpoints: usize) -> Vec<Svc> {
    generate_range(0..n, endpoints)
}

/// The services of `generate(range.end, endpoints)` in `range` alone (each
/// service depends on its index only): the ones a benchmark adds to a set.
pub fn generate_range(range: std::ops::Range<usize>, endpoints: usize) -> Vec<Svc> {
    range
        .map(|i| Svc {
            name: format!("bench/svc-{i}:http"),
            ip: cluster_ip(i),
            port: SERVICE_PORT,
            proto: Protocol::Tcp,
            endpoints: (0..endpoints).map(|j| (fake_endpoint(i, j, endpoints), TARGET_PORT)).collect(),
            node_port: None,
        })
        .collect()
}

impl Svc {
    /// `tcp` or `udp`, as iptables and nft spell it.
    pub fn l4(&self) -> &'static str {
        match self.proto {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The same service port over UDP (a second port of the service).
    pub fn udp_twin(&self) -> Svc {
        let mut s = self.clone();
        s.proto = Protocol::Udp;
        s.name = format!("{}-udp", self.name);
        s
    }
}

pub fn frontend(s: &Svc) -> Frontend {
    let addr = FrontendAddr::new(s.ip, s.port, s.proto);
    Frontend {
        addr,
        name: s.name.clone(),
        backends: s.endpoints.iter().map(|&(ip, port)| Backend::ready(BackendAddr { ip, port, proto: s.proto })).collect(),
        flags: 0,
        affinity_timeout: 0,
    }
}

/// The agent's desired state for `svcs`.
pub fn to_desired(svcs: &[Svc]) -> Desired {
    svcs.iter().map(|s| (FrontendAddr::new(s.ip, s.port, s.proto), frontend(s))).collect()
}

/// [`to_desired`] plus, for every service with a NodePort, the NodePort
/// frontend on `node_ip` as the agent plans it (`svc_flags::NODE_PORT`),
/// each endpoint's `nodeName` from `node_of` (an endpoint on another node
/// is reached through DNAT + SNAT).
pub fn to_desired_with_nodeports(svcs: &[Svc], node_ip: Ipv4Addr, node_of: &dyn Fn(Ipv4Addr) -> Option<String>) -> Desired {
    let mut d = to_desired(svcs);
    for s in svcs {
        let Some(np) = s.node_port else { continue };
        let mut fe = frontend(s);
        fe.addr = FrontendAddr::new(node_ip, np, s.proto);
        fe.name = format!("{}:nodeport", s.name);
        fe.flags = lb_common::svc_flags::NODE_PORT;
        for b in &mut fe.backends {
            b.node_name = node_of(b.addr.ip).map(Into::into);
        }
        d.insert(fe.addr, fe);
    }
    d
}

// ---- naming, as kube-proxy does it -----------------------------------------

/// kube-proxy names chains by base32(sha256(...))[:16]; any stable 16
/// character hash gives rules of the same length and shape.
fn hash16(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::with_capacity(16);
    for round in 0..2u64 {
        for b in s.bytes().chain(round.to_le_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        for k in 0..8 {
            out.push(ALPHABET[((h >> (k * 5)) & 31) as usize] as char);
        }
    }
    out
}

fn svc_chain(s: &Svc) -> String {
    format!("KUBE-SVC-{}", hash16(&format!("{}{}", s.name, s.l4())))
}

fn ext_chain(s: &Svc) -> String {
    format!("KUBE-EXT-{}", hash16(&format!("{}{}", s.name, s.l4())))
}

fn sep_chain(s: &Svc, ep: (Ipv4Addr, u16)) -> String {
    format!("KUBE-SEP-{}", hash16(&format!("{}{}{}:{}", s.name, s.l4(), ep.0, ep.1)))
}

// ---- iptables --------------------------------------------------------------

/// The per-service rules kube-proxy's iptables mode writes into
/// `KUBE-SERVICES`.
fn iptables_services_rule(out: &mut String, s: &Svc) {
    let l4 = s.l4();
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {l4} -p {l4} -d {} --dport {} -j {}",
        s.name,
        s.ip,
        s.port,
        svc_chain(s)
    );
}

/// A service's `KUBE-SVC-*` chain and its `KUBE-SEP-*` chains (rules only).
fn iptables_service_chains(out: &mut String, s: &Svc) {
    let svc = svc_chain(s);
    let l4 = s.l4();
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{} cluster IP\" -m {l4} -p {l4} -d {} --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
        s.name, s.ip, s.port
    );
    let n = s.endpoints.len();
    for (i, &ep) in s.endpoints.iter().enumerate() {
        let sep = sep_chain(s, ep);
        if i + 1 < n {
            let p = 1.0 / (n - i) as f64;
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{} -> {}:{}\" -m statistic --mode random --probability {p:.10} -j {sep}",
                s.name, ep.0, ep.1
            );
        } else {
            let _ = writeln!(out, "-A {svc} -m comment --comment \"{} -> {}:{}\" -j {sep}", s.name, ep.0, ep.1);
        }
    }
    for &ep in &s.endpoints {
        let sep = sep_chain(s, ep);
        let _ = writeln!(out, "-A {sep} -m comment --comment {} -s {} -j KUBE-MARK-MASQ", s.name, ep.0);
        let _ = writeln!(out, "-A {sep} -m comment --comment {} -m {l4} -p {l4} -j DNAT --to-destination {}:{}", s.name, ep.0, ep.1);
    }
}

/// A service's `KUBE-NODEPORTS` rule (`KUBE-NODEPORTS` lists every
/// NodePort, like `KUBE-SERVICES` every service).
fn iptables_nodeport_rule(out: &mut String, s: &Svc) {
    let Some(np) = s.node_port else { return };
    let l4 = s.l4();
    let _ = writeln!(out, "-A KUBE-NODEPORTS -m comment --comment {} -m {l4} -p {l4} --dport {np} -j {}", s.name, ext_chain(s));
}

/// A NodePort service's `KUBE-EXT-*` chain (`externalTrafficPolicy:
/// Cluster`): mark the traffic for masquerade, then the service chain.
fn iptables_ext_chain(out: &mut String, s: &Svc) {
    if s.node_port.is_none() {
        return;
    }
    let ext = ext_chain(s);
    let _ = writeln!(out, "-A {ext} -m comment --comment \"masquerade traffic for {} external destinations\" -j KUBE-MARK-MASQ", s.name);
    let _ = writeln!(out, "-A {ext} -j {}", svc_chain(s));
}

fn iptables_chain_decls(out: &mut String, s: &Svc) {
    if s.node_port.is_some() {
        let _ = writeln!(out, ":{} - [0:0]", ext_chain(s));
    }
    let _ = writeln!(out, ":{} - [0:0]", svc_chain(s));
    for &ep in &s.endpoints {
        let _ = writeln!(out, ":{} - [0:0]", sep_chain(s, ep));
    }
}

const IPT_FILTER: &str = "*filter
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
";

const IPT_NAT_HEAD: &str = ":KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
";

const IPT_NAT_JUMPS: &str = "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully
";

const IPT_NODEPORTS_LAST: &str = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";

/// The full ruleset kube-proxy's iptables mode restores on a full sync
/// (`iptables-restore --noflush`, every kube-proxy chain declared and so
/// flushed and rewritten). The `nfacct` match of the real KUBE-FORWARD is
/// left out when `nfacct` is false (it needs the xt_nfacct module).
pub fn iptables_restore(svcs: &[Svc], nfacct: bool) -> String {
    let mut out = String::with_capacity(svcs.len() * 2000 + 4096);
    if nfacct {
        out.push_str(IPT_FILTER);
    } else {
        out.push_str(&IPT_FILTER.replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", ""));
    }
    out.push_str("*nat\n");
    out.push_str(IPT_NAT_HEAD);
    for s in svcs {
        iptables_chain_decls(&mut out, s);
    }
    out.push_str(IPT_NAT_JUMPS);
    for s in svcs {
        iptables_services_rule(&mut out, s);
    }
    out.push_str(IPT_NODEPORTS_LAST);
    for s in svcs {
        iptables_nodeport_rule(&mut out, s);
    }
    for s in svcs {
        iptables_ext_chain(&mut out, s);
        iptables_service_chains(&mut out, s);
    }
    out.push_str("COMMIT\n");
    out
}

/// What kube-proxy's partial sync (`MinimizeIPTablesRestore`, on by
/// default since 1.27) restores after `changed` services changed: the
/// whole `KUBE-SERVICES` chain (it lists every service) and the changed
/// services' own chains, with `--noflush` leaving every other chain as is.
pub fn iptables_partial(all: &[Svc], changed: &[&Svc]) -> String {
    let all: Vec<&Svc> = all.iter().collect();
    iptables_sync(&all, &Delta { changed: changed.to_vec(), ..Delta::default() })
}

/// What changed between two syncs, as kube-proxy's change tracker hands
/// it to a partial sync.
#[derive(Clone, Debug, Default)]
pub struct Delta<'a> {
    /// Services added, or whose object or endpoints changed (their state
    /// now): their chains are (re)written.
    pub changed: Vec<&'a Svc>,
    /// Services gone (their last state): their chains are deleted.
    pub removed: Vec<&'a Svc>,
    /// Endpoints a changed service no longer has (with that service's
    /// last state): their endpoint chains are deleted.
    pub stale: Vec<(&'a Svc, (Ipv4Addr, u16))>,
}

impl<'a> Delta<'a> {
    /// The change from `before` to `after` (services matched by name).
    /// A service in both counts as changed when its address or endpoints
    /// differ, or when `touched` says its object changed anyway (kube-proxy
    /// rewrites such a service's chains too).
    pub fn between(before: &'a [Svc], after: &'a [Svc], touched: &dyn Fn(&str) -> bool) -> Delta<'a> {
        use std::collections::HashMap;
        let old: HashMap<&str, &Svc> = before.iter().map(|s| (s.name.as_str(), s)).collect();
        let new: HashMap<&str, &Svc> = after.iter().map(|s| (s.name.as_str(), s)).collect();
        let mut d = Delta::default();
        for s in after {
            match old.get(s.name.as_str()) {
                None => d.changed.push(s),
                Some(o) => {
                    let same = o.ip == s.ip && o.port == s.port && o.proto == s.proto && o.endpoints == s.endpoints;
                    if !same || touched(&s.name) {
                        d.changed.push(s);
                    }
                    for &ep in &o.endpoints {
                        if !s.endpoints.contains(&ep) {
                            d.stale.push((o, ep));
                        }
                    }
                }
            }
        }
        d.removed = before.iter().filter(|s| !new.contains_key(s.name.as_str())).collect();
        d
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty() && self.stale.is_empty()
    }

    /// The iptables chains this change deletes: every chain of a removed
    /// service, and the endpoint chains of stale endpoints.
    fn iptables_deleted_chains(&self) -> std::collections::BTreeSet<String> {
        let mut gone = std::collections::BTreeSet::new();
        for s in &self.removed {
            gone.insert(svc_chain(s));
            for &ep in &s.endpoints {
                gone.insert(sep_chain(s, ep));
            }
            if s.node_port.is_some() {
                gone.insert(ext_chain(s));
            }
        }
        for &(s, ep) in &self.stale {
            gone.insert(sep_chain(s, ep));
        }
        gone
    }
}

/// kube-proxy's partial sync (`MinimizeIPTablesRestore`) for `delta`,
/// with `all` the services now: `KUBE-SERVICES` rewritten with every
/// service, the changed services' chains declared (so flushed) and
/// rewritten, and the chains no longer used (removed services' `KUBE-SVC-*`
/// and `KUBE-SEP-*`, stale endpoints' `KUBE-SEP-*`) declared and deleted
/// with `-X` before `COMMIT`, as kube-proxy does. For `--noflush`.
pub fn iptables_sync(all: &[&Svc], delta: &Delta) -> String {
    let gone = delta.iptables_deleted_chains();
    let mut out = String::with_capacity(all.len() * 200 + gone.len() * 40 + 4096);
    out.push_str("*filter\n:KUBE-SERVICES - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n");
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n*nat\n");
    out.push_str(IPT_NAT_HEAD);
    for s in &delta.changed {
        iptables_chain_decls(&mut out, s);
    }
    for chain in &gone {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    for s in all {
        iptables_services_rule(&mut out, s);
    }
    out.push_str(IPT_NODEPORTS_LAST);
    for s in all {
        iptables_nodeport_rule(&mut out, s);
    }
    for s in &delta.changed {
        iptables_ext_chain(&mut out, s);
        iptables_service_chains(&mut out, s);
    }
    for chain in &gone {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

/// Rules that remove what [`iptables_restore`] installed.
pub fn iptables_flush() -> &'static str {
    "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
}

// ---- nftables --------------------------------------------------------------

fn nft_svc_chain(s: &Svc) -> String {
    let (ns, rest) = s.name.split_once('/').unwrap_or(("default", &s.name));
    let (name, port) = rest.split_once(':').unwrap_or((rest, "p"));
    format!("service-{}-{ns}/{name}/{}/{port}", &hash16(&format!("{}{}", s.name, s.l4()))[..8], s.l4())
}

fn nft_ext_chain(s: &Svc) -> String {
    nft_svc_chain(s).replacen("service-", "external-", 1)
}

fn nft_ep_chain(s: &Svc, ep: (Ipv4Addr, u16)) -> String {
    let (ns, rest) = s.name.split_once('/').unwrap_or(("default", &s.name));
    let (name, port) = rest.split_once(':').unwrap_or((rest, "p"));
    format!("endpoint-{}-{ns}/{name}/{}/{port}__{}/{}", &hash16(&format!("{}{}{}:{}", s.name, s.l4(), ep.0, ep.1))[..8], s.l4(), ep.0, ep.1)
}

/// The fixed part of kube-proxy's nftables table (base chains, helper
/// chains, maps and sets), as `nft -f` input.
const NFT_BASE: &str = r#"add table ip kube-proxy { comment "rules for kube-proxy" ; }
add chain ip kube-proxy mark-for-masquerade
add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000
add chain ip kube-proxy masquerading
add rule ip kube-proxy masquerading mark and 0x4000 == 0 return
add rule ip kube-proxy masquerading mark set mark xor 0x4000
add rule ip kube-proxy masquerading masquerade fully-random
add chain ip kube-proxy services
add chain ip kube-proxy service-endpoints-check
add chain ip kube-proxy firewall-check
add chain ip kube-proxy filter-prerouting { type filter hook prerouting priority -110 ; }
add rule ip kube-proxy filter-prerouting ct state new jump firewall-check
add chain ip kube-proxy filter-input { type filter hook input priority -110 ; }
add rule ip kube-proxy filter-input ct state new jump service-endpoints-check
add chain ip kube-proxy filter-forward { type filter hook forward priority -110 ; }
add rule ip kube-proxy filter-forward ct state new jump service-endpoints-check
add chain ip kube-proxy filter-output { type filter hook output priority -110 ; }
add rule ip kube-proxy filter-output ct state new jump service-endpoints-check
add rule ip kube-proxy filter-output ct state new jump firewall-check
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }
add rule ip kube-proxy nat-prerouting jump services
add chain ip kube-proxy nat-output { type nat hook output priority -100 ; }
add rule ip kube-proxy nat-output jump services
add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }
add rule ip kube-proxy nat-postrouting jump masquerading
add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }
add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }
add map ip kube-proxy firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }
add rule ip kube-proxy firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips
add map ip kube-proxy no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }
add map ip kube-proxy no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }
add rule ip kube-proxy service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule ip kube-proxy service-endpoints-check fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }
add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }
add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips
add rule ip kube-proxy services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
"#;

/// One service's chains, rules and map elements, as kube-proxy's nftables
/// mode writes them (`add chain` + `flush chain` + rules).
fn nft_service(out: &mut String, s: &Svc) {
    // Endpoint chains first: the service chain's vmap refers to them.
    for &ep in &s.endpoints {
        let ec = nft_ep_chain(s, ep);
        let _ = writeln!(out, "add chain ip kube-proxy {ec}");
        let _ = writeln!(out, "flush chain ip kube-proxy {ec}");
        let _ = writeln!(out, "add rule ip kube-proxy {ec} ip saddr {} jump mark-for-masquerade", ep.0);
        let _ = writeln!(out, "add rule ip kube-proxy {ec} meta l4proto {} dnat to {}:{}", s.l4(), ep.0, ep.1);
    }
    let chain = nft_svc_chain(s);
    let _ = writeln!(out, "add chain ip kube-proxy {chain}");
    let _ = writeln!(out, "flush chain ip kube-proxy {chain}");
    let _ = writeln!(
        out,
        "add rule ip kube-proxy {chain} ip daddr {} {} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        s.ip,
        s.l4(),
        s.port
    );
    let eps: Vec<String> = s.endpoints.iter().enumerate().map(|(i, &ep)| format!("{i} : goto {}", nft_ep_chain(s, ep))).collect();
    let _ = writeln!(out, "add rule ip kube-proxy {chain} numgen random mod {} vmap {{ {} }}", s.endpoints.len(), eps.join(" , "));
    let _ = writeln!(out, "add element ip kube-proxy cluster-ips {{ {} }}", s.ip);
    let _ = writeln!(out, "add element ip kube-proxy service-ips {{ {} . {} . {} : goto {chain} }}", s.ip, s.l4(), s.port);
    if let Some(np) = s.node_port {
        // externalTrafficPolicy: Cluster: masquerade, then the service chain.
        let ext = nft_ext_chain(s);
        let _ = writeln!(out, "add chain ip kube-proxy {ext}");
        let _ = writeln!(out, "flush chain ip kube-proxy {ext}");
        let _ = writeln!(out, "add rule ip kube-proxy {ext} jump mark-for-masquerade");
        let _ = writeln!(out, "add rule ip kube-proxy {ext} goto {chain}");
        let _ = writeln!(out, "add element ip kube-proxy service-nodeports {{ {} . {np} : goto {ext} }}", s.l4());
    }
}

/// The full ruleset kube-proxy's nftables mode writes on a full sync into
/// an empty table, as one `nft -f` transaction.
pub fn nft_full(svcs: &[Svc]) -> String {
    let mut out = String::with_capacity(svcs.len() * 2500 + 8192);
    out.push_str(NFT_BASE);
    for s in svcs {
        nft_service(&mut out, s);
    }
    out
}

/// What kube-proxy's nftables partial sync sends after `changed` services
/// changed: only their chains (created or flushed, and rewritten) and map
/// elements.
pub fn nft_partial(changed: &[&Svc]) -> String {
    let mut out = String::new();
    for s in changed {
        nft_service(&mut out, s);
    }
    out
}

/// kube-proxy's nftables partial sync for `delta`, with `all` the
/// services now, as one `nft -f` transaction: a removed service's
/// `service-ips` element (and its `cluster-ips` element, unless another
/// service still has that address) is deleted, then its service chain and
/// endpoint chains; changed services are rewritten as [`nft_partial`]
/// does; then the endpoint chains of stale endpoints are deleted (after
/// the service chain that jumped to them was rewritten). kube-proxy flushes
/// a stale chain at once and deletes it a second later (kernels before 6.2
/// noticed a chain's last map reference going only after a while); here
/// both happen in the same transaction.
pub fn nft_sync(all: &[&Svc], delta: &Delta) -> String {
    let live: std::collections::HashSet<Ipv4Addr> = all.iter().map(|s| s.ip).collect();
    let mut ips_gone = std::collections::BTreeSet::new();
    let mut out = String::new();
    for s in &delta.removed {
        let _ = writeln!(out, "delete element ip kube-proxy service-ips {{ {} . {} . {} }}", s.ip, s.l4(), s.port);
        if !live.contains(&s.ip) && ips_gone.insert(s.ip) {
            let _ = writeln!(out, "delete element ip kube-proxy cluster-ips {{ {} }}", s.ip);
        }
        if let Some(np) = s.node_port {
            let _ = writeln!(out, "delete element ip kube-proxy service-nodeports {{ {} . {np} }}", s.l4());
            let _ = writeln!(out, "delete chain ip kube-proxy {}", nft_ext_chain(s));
        }
        let _ = writeln!(out, "delete chain ip kube-proxy {}", nft_svc_chain(s));
        for &ep in &s.endpoints {
            let _ = writeln!(out, "delete chain ip kube-proxy {}", nft_ep_chain(s, ep));
        }
    }
    for s in &delta.changed {
        nft_service(&mut out, s);
    }
    for &(s, ep) in &delta.stale {
        let _ = writeln!(out, "delete chain ip kube-proxy {}", nft_ep_chain(s, ep));
    }
    out
}

pub fn nft_delete() -> &'static str {
    "delete table ip kube-proxy\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let svcs = generate(3, 2);
        let ipt = iptables_restore(&svcs, false);
        assert!(ipt.contains("--probability 0.5000000000"));
        assert_eq!(ipt.matches("-j DNAT").count(), 6);
        let nft = nft_full(&svcs);
        assert!(nft.contains("numgen random mod 2 vmap"));
        assert_eq!(nft.matches(" dnat to ").count(), 6);
        assert_eq!(to_desired(&svcs).len(), 3);
    }

    #[test]
    fn a_range_is_the_same_services_as_the_whole_set_there() {
        let names = |v: &[Svc]| v.iter().map(|s| (s.name.clone(), s.ip, s.endpoints.clone())).collect::<Vec<_>>();
        assert_eq!(names(&generate_range(3..5, 2)), names(&generate(5, 2)[3..]));
    }

    #[test]
    fn deltas_and_partial_syncs_with_removals() {
        let before = generate(3, 2);
        let mut after = before.clone();
        // svc-0 loses an endpoint and gains one, svc-1 goes, svc-3 comes.
        after[0].endpoints[1] = (Ipv4Addr::new(10, 244, 0, 99), TARGET_PORT);
        after.remove(1);
        let mut extra = generate(4, 2).pop().unwrap();
        extra.name = "bench/svc-3:http".into();
        after.push(extra);
        let d = Delta::between(&before, &after, &|n| n == "bench/svc-2:http");
        let names = |v: &[&Svc]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&d.changed), ["bench/svc-0:http", "bench/svc-2:http", "bench/svc-3:http"]);
        assert_eq!(names(&d.removed), ["bench/svc-1:http"]);
        assert_eq!(d.stale.len(), 1);
        assert_eq!(d.stale[0].1, before[0].endpoints[1]);
        assert!(Delta::between(&before, &before, &|_| false).is_empty());

        let all: Vec<&Svc> = after.iter().collect();
        let ipt = iptables_sync(&all, &d);
        // svc-1's service chain and two endpoint chains, svc-0's stale one.
        assert_eq!(ipt.lines().filter(|l| l.starts_with("-X ")).count(), 4);
        for chain in ipt.lines().filter_map(|l| l.strip_prefix("-X ")) {
            assert!(ipt.contains(&format!(":{chain} - [0:0]")), "{chain} declared");
        }
        // Every service now, and the NodePorts rule.
        assert_eq!(ipt.matches("-A KUBE-SERVICES -m comment").count(), 4);
        let nft = nft_sync(&all, &d);
        assert_eq!(nft.matches("delete element ip kube-proxy service-ips").count(), 1);
        assert_eq!(nft.matches("delete element ip kube-proxy cluster-ips").count(), 1);
        assert_eq!(nft.matches("delete chain").count(), 4);
        // Stale endpoint chains go after the service chain was rewritten.
        let stale = nft.find(&format!("delete chain ip kube-proxy {}", nft_ep_chain(&before[0], before[0].endpoints[1]))).unwrap();
        assert!(stale > nft.find(&format!("flush chain ip kube-proxy {}", nft_svc_chain(&after[0]))).unwrap());
        // A removed service whose address another service keeps: the
        // address stays in cluster-ips.
        let mut renamed = before[0].clone();
        renamed.name = "bench/svc-0:web".into();
        let after2 = vec![renamed];
        let d2 = Delta::between(&before[..1], &after2, &|_| false);
        let all2: Vec<&Svc> = after2.iter().collect();
        let nft2 = nft_sync(&all2, &d2);
        assert!(!nft2.contains("delete element ip kube-proxy cluster-ips"));
        assert!(
            nft2.find("delete element ip kube-proxy service-ips").unwrap() < nft2.find("add element ip kube-proxy service-ips").unwrap()
        );
    }
}
