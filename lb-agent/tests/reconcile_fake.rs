//! The reconciler against maps in memory (`reconcile::fake`), without
//! root: table-driven cases from a desired state to the exact map dump
//! (`reconcile::dump`), every rollback path among them (a map full in the
//! middle of an update, a failed flip of the slot generation, a failed
//! backend or Maglev write), recovery from maps an older agent left
//! (orphans, half-written updates), the purge of a shared backend's flows,
//! and a sweep that fails each write of an update in turn.
//!
//! A failing case prints the whole dump it got; `LB_BLESS=1` prints every
//! case's dump instead of comparing, to write new goldens from (read them
//! before pasting them in).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
};

use lb_agent::{
    datapath::MapSizes,
    maps::MapsError,
    model::{self, Backend, BackendAddr, Cidr, Desired, Frontend, FrontendAddr, IpFamily, Protocol},
    reconcile::{
        CtMap, MapFamily, MapKind, MapStore, Reconciler, Stats,
        dump::dump,
        fake::{FakeMaps, Fault, Faulty, Op},
    },
};
use lb_common::{
    Affinity4, Affinity4Key, Backend4, CT_REPLY, CT_SERVICE, CtEntryOf, CtKeyOf, CtTimeouts, RevNat4, SCOPE_INTERNAL, Service4Key,
    Service4Value, Slot, SlotKey, Vip4, svc_flags, vip_flags,
};

/// Small maps, so that a test can fill one.
fn sizes() -> MapSizes {
    MapSizes { services: 16, backends: 16, slots: 64, ct_tcp: 64, ct_any: 64, affinity: 16, ..MapSizes::default() }
}

/// The Maglev table size of the tests (prime, small enough to read).
const M: u32 = 7;

type Rec = Reconciler<Faulty<FakeMaps>>;

fn reconciler_over(maps: FakeMaps) -> Rec {
    let mut r = Reconciler::recover(Faulty::new(maps)).expect("recover");
    r.set_maglev_m(M);
    r
}

fn reconciler() -> Rec {
    reconciler_over(FakeMaps::new(&sizes()))
}

/// A frontend from one line: `ip:port/PROTO name [flags] = backends`, the
/// flags among `maglev`, `affinity=<s>`, `nodeport`, `local`,
/// `hasinternal`, and `internal` for the in-cluster entry
/// (`SCOPE_INTERNAL`); a backend `ip:port`, `~` after it for terminating.
fn frontend(line: &str) -> Frontend {
    frontend_of(line)
}

/// [`frontend`] of either family: `[fd00::1]:80/TCP web = [fd00::a]:8080`.
fn frontend_of<A: IpFamily>(line: &str) -> Frontend<A> {
    let (head, backends) = line.split_once(" = ").unwrap_or((line.trim_end_matches(" ="), ""));
    let mut words = head.split_whitespace();
    let (ip_port, proto) = words.next().unwrap().split_once('/').unwrap();
    let proto = match proto {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        p => panic!("protocol {p}"),
    };
    let sa: std::net::SocketAddr = ip_port.parse().unwrap();
    let mut addr = FrontendAddr::new(A::of(sa.ip()).expect("the family's address"), sa.port(), proto);
    let name = format!("test/{}", words.next().unwrap());
    let (mut flags, mut affinity_timeout) = (0, 0);
    for w in words {
        match w {
            "maglev" => flags |= svc_flags::MAGLEV,
            "nodeport" => flags |= svc_flags::NODE_PORT,
            "local" => flags |= svc_flags::EXT_LOCAL,
            "hasinternal" => flags |= svc_flags::HAS_INTERNAL,
            "internal" => addr = addr.internal(),
            w if w.starts_with("affinity=") => {
                flags |= svc_flags::AFFINITY;
                affinity_timeout = w["affinity=".len()..].parse().unwrap();
            }
            w => panic!("flag {w}"),
        }
    }
    let backends = backends
        .split_whitespace()
        .map(|b| {
            let (b, terminating) = b.strip_suffix('~').map_or((b, false), |b| (b, true));
            let sa: std::net::SocketAddr = b.parse().unwrap();
            let ip = A::of(sa.ip()).expect("the family's address");
            Backend { addr: BackendAddr { ip, port: sa.port(), proto }, terminating, node_name: None, zone: None, hints: None }
        })
        .collect();
    Frontend { addr, name, backends, flags, affinity_timeout }
}

fn desired(lines: &[&str]) -> Desired {
    lines.iter().map(|l| frontend(l)).map(|f| (f.addr, f)).collect()
}

/// Lines without their indentation and without blank lines.
fn lines(text: &str) -> Vec<&str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

fn blessing() -> bool {
    std::env::var("LB_BLESS").is_ok_and(|v| v == "1")
}

/// Compares a dump with its golden text.
fn check_dump(case: &str, got: &str, want: &str) {
    if blessing() {
        println!("=== {case}\n{got}");
        return;
    }
    assert_eq!(lines(got), lines(want), "{case}: the maps differ; they hold:\n{got}");
}

/// The errors of an apply, each containing its expected part, in order.
fn check_errors(case: &str, stats: &Stats, want: &[&str]) {
    if blessing() {
        println!("=== {case} errors\n{:#?}", stats.errors);
        return;
    }
    assert_eq!(stats.errors.len(), want.len(), "{case}: errors {:#?}", stats.errors);
    for (got, want) in stats.errors.iter().zip(want) {
        assert!(got.contains(want), "{case}: error {got:?} does not say {want:?}");
    }
}

fn ip(addr: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(addr.to_ne_bytes())
}

/// What the datapath serves, free of IDs, versions and generations: per
/// frontend its flags, name and backends in slot order (with their flags),
/// and its Maglev table as backend addresses. Two maps that serve the same
/// give the same view.
fn view(maps: &impl MapStore) -> BTreeMap<String, String> {
    let backends: BTreeMap<u32, Backend4> = maps.backends::<Ipv4Addr>().unwrap().into_iter().filter(|(_, b)| b.addr != 0).collect();
    let name_of = |id: u32| backends.get(&id).map_or(format!("?{id}"), |b| format!("{}:{}/{}", ip(b.addr), u16::from_be(b.port), b.flags));
    let mut out = BTreeMap::new();
    for (k, v) in maps.services::<Ipv4Addr>().unwrap() {
        let slots: Vec<String> = (0..v.count)
            .map(|slot| match maps.slot(&SlotKey { frontend_id: v.frontend_id, slot, generation: v.generation }).unwrap() {
                Some(s) => name_of(s.backend_id),
                None => format!("?slot{slot}"),
            })
            .collect();
        let name = maps.name(v.frontend_id).unwrap().map(|n| lb_agent::maps::svc_name_str(&n)).unwrap_or_default();
        let maglev = maps.maglev_table(v.frontend_id).unwrap().map(|t| t.iter().map(|id| name_of(*id)).collect::<Vec<_>>().join(" "));
        let key = format!("{}:{}/{}", ip(k.addr), u16::from_be(k.port), k.proto);
        out.insert(
            key,
            format!("{name} flags {:#x} timeout {} slots [{}] maglev {maglev:?}", v.flags, v.affinity_timeout, slots.join(" ")),
        );
    }
    let mut all: Vec<String> = backends.keys().map(|id| name_of(*id)).collect();
    all.sort();
    out.insert("backends".into(), all.join(" "));
    let mut vips: Vec<String> = maps.vips::<Ipv4Addr>().unwrap().into_iter().map(|(a, v)| format!("{} {:#x}", ip(a), v.flags)).collect();
    vips.sort();
    out.insert("vips".into(), vips.join(" "));
    out
}

/// What must hold whenever an apply has returned, whatever failed: every
/// frontend entry has its address in `LB4_VIPS`, its rev-NAT slot, all its
/// slots, each naming a live backend, and a Maglev table (if any) that
/// names only its own slot backends. No packet can see a half-written
/// frontend.
fn check_consistent(case: &str, maps: &impl MapStore, stats: &Stats) {
    // A frontend whose address did not fit is written, and waits for it.
    let vips_full = stats.errors.iter().any(|e| e.contains("LB4_VIPS"));
    let backends: BTreeMap<u32, Backend4> = maps.backends::<Ipv4Addr>().unwrap().into_iter().filter(|(_, b)| b.addr != 0).collect();
    let vips: BTreeMap<u32, u32> = maps.vips::<Ipv4Addr>().unwrap().into_iter().map(|(a, v)| (a, v.flags)).collect();
    let revnat: BTreeMap<u32, RevNat4> = maps.revnats::<Ipv4Addr>().unwrap().into_iter().collect();
    let text = || dump(maps).unwrap();
    for (k, v) in maps.services::<Ipv4Addr>().unwrap() {
        let fe = format!("{}:{}", ip(k.addr), u16::from_be(k.port));
        let kind = lb_agent::vips::kind(v.flags);
        assert!(vips_full || vips.get(&k.addr).is_some_and(|f| f & kind != 0), "{case}: {fe} is not in LB4_VIPS as {kind:#x}:\n{}", text());
        let r = revnat.get(&v.frontend_id).copied().unwrap_or(RevNat4 { addr: 0, port: 0, version: 0 });
        assert!(r.addr == k.addr && r.port == k.port, "{case}: {fe}'s rev-NAT slot {} holds {r:?}:\n{}", v.frontend_id, text());
        let mut slot_backends = Vec::new();
        for slot in 0..v.count {
            let s = maps.slot(&SlotKey { frontend_id: v.frontend_id, slot, generation: v.generation }).unwrap();
            let s = s.unwrap_or_else(|| panic!("{case}: {fe} has no slot {slot}:\n{}", text()));
            let b = backends
                .get(&s.backend_id)
                .unwrap_or_else(|| panic!("{case}: {fe}'s slot {slot} names a backend that is gone:\n{}", text()));
            assert_eq!(b.proto, k.proto, "{case}: {fe}");
            slot_backends.push(s.backend_id);
        }
        if let Some(table) = maps.maglev_table(v.frontend_id).unwrap() {
            assert!(v.flags & svc_flags::MAGLEV != 0 || table.iter().all(|id| backends.contains_key(id)), "{case}: {fe}");
            for id in &table {
                assert!(
                    backends.contains_key(id) && slot_backends.contains(id),
                    "{case}: {fe}'s Maglev table names backend {id}, which is not one of its slot backends {slot_backends:?}:\n{}",
                    text()
                );
            }
        }
    }
}

/// After two applies of the same state nothing is left of what is gone:
/// every rev-NAT slot in use, name and Maglev table belongs to a frontend,
/// and every slot to a live generation.
fn check_no_leftovers(case: &str, maps: &impl MapStore) {
    // Both families' frontend entries: slots, names and tables are by the
    // frontend ID they share.
    let mut services: Vec<(Option<Service4Key>, Service4Value)> =
        maps.services::<Ipv4Addr>().unwrap().into_iter().map(|(k, v)| (Some(k), v)).collect();
    services.extend(maps.services::<Ipv6Addr>().unwrap().into_iter().map(|(_, v)| (None, v)));
    let ids: Vec<u32> = services.iter().map(|(_, v)| v.frontend_id).collect();
    let text = || dump(maps).unwrap();
    for (k, _) in maps.slots().unwrap() {
        let live = services.iter().any(|(_, v)| v.frontend_id == k.frontend_id && v.generation == k.generation && k.slot < v.count);
        assert!(live, "{case}: slot {k:?} is not live:\n{}", text());
    }
    let ids4: Vec<u32> = services.iter().filter(|(k, _)| k.is_some()).map(|(_, v)| v.frontend_id).collect();
    let ids6: Vec<u32> = services.iter().filter(|(k, _)| k.is_none()).map(|(_, v)| v.frontend_id).collect();
    for (id, r) in maps.revnats::<Ipv4Addr>().unwrap() {
        assert!(r.addr == 0 || ids4.contains(&id), "{case}: LB4_REVNAT slot {id} without an IPv4 frontend:\n{}", text());
    }
    for (id, r) in maps.revnats::<Ipv6Addr>().unwrap() {
        assert!(r.addr == [0; 4] || ids6.contains(&id), "{case}: LB6_REVNAT slot {id} without an IPv6 frontend:\n{}", text());
    }
    for (id, _) in maps.names().unwrap() {
        assert!(ids.contains(&id), "{case}: name {id} without a frontend:\n{}", text());
    }
    for id in maps.maglev_ids().unwrap() {
        assert!(ids.contains(&id), "{case}: Maglev table {id} without a frontend:\n{}", text());
    }
}

/// A reconciler that went through `steps` with nothing failing.
fn reference(steps: &[&Desired]) -> Rec {
    let mut r = reconciler();
    for d in steps {
        let s = r.apply(d);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
    }
    r
}

/// One step of the table: the maps before it (set up without faults), the
/// capacities and failures it meets, and what it must leave.
struct Case {
    name: &'static str,
    /// Desired states applied in turn first, with nothing failing.
    setup: &'static [&'static [&'static str]],
    /// Maps made full at so many entries for the step.
    full: &'static [(MapKind, u32)],
    /// Operations that fail in the step.
    faults: fn() -> Vec<Fault>,
    /// The desired state of the step.
    step: &'static [&'static str],
    /// The errors it reports (a part of each, in order).
    errors: &'static [&'static str],
    /// The maps after it.
    dump: &'static str,
}

fn no_faults() -> Vec<Fault> {
    Vec::new()
}

const WEB: &str = "10.96.0.1:80/TCP web = 10.244.1.1:8080 10.244.1.2:8080";
const WEB3: &str = "10.96.0.1:80/TCP web = 10.244.1.1:8080 10.244.1.2:8080 10.244.1.3:8080";
const WEB_MAGLEV: &str = "10.96.0.1:80/TCP web maglev = 10.244.1.1:8080 10.244.1.2:8080";
const WEB_MAGLEV13: &str = "10.96.0.1:80/TCP web maglev = 10.244.1.1:8080 10.244.1.3:8080";
const API: &str = "10.96.0.2:443/TCP api = 10.244.1.1:8080";
const DNS: &str = "10.96.0.10:53/UDP dns = 10.244.2.1:53 10.244.2.2:53";
/// An externalTrafficPolicy: Local NodePort without a local endpoint, and
/// its entry for clients inside the cluster.
const NP_LOCAL: &str = "192.168.50.1:30080/TCP np nodeport local hasinternal =";
const NP_IN_CLUSTER: &str = "192.168.50.1:30080/TCP np nodeport internal = 10.244.1.1:8080";

fn cases() -> Vec<Case> {
    vec![
        // The plain paths.
        Case {
            name: "add: address, backends, rev-NAT, name, slots, then the frontend",
            setup: &[],
            full: &[],
            faults: no_faults,
            step: &[WEB, DNS],
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                  10.96.0.10 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                  10.96.0.10:53/UDP id 2 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                  2/0: 3 4
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.2.1:53/UDP
                  4 v1 10.244.2.2:53/UDP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v1 10.96.0.10:53
                LB_SVC_NAMES
                  1 test/web
                  2 test/dns
            ",
        },
        Case {
            name: "update: the other generation is written, then the frontend flips to it",
            setup: &[&[WEB]],
            full: &[],
            faults: no_faults,
            step: &[WEB3],
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 1 count 3
                LB4_SLOTS
                  1/0: 1 2
                  1/1: 1 2 3
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.1.3:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "the next apply deletes the generation that stopped being live",
            setup: &[&[WEB], &[WEB3]],
            full: &[],
            faults: no_faults,
            step: &[WEB3],
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 1 count 3
                LB4_SLOTS
                  1/1: 1 2 3
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.1.3:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "remove: the frontend entry first, rev-NAT slot and backends cleared with their versions",
            setup: &[&[WEB, DNS]],
            full: &[],
            faults: no_faults,
            step: &[DNS],
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.10 ClusterIP
                LB4_SERVICES
                  10.96.0.10:53/UDP id 2 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                  2/0: 3 4
                LB4_BACKENDS
                  1 v1 -
                  2 v1 -
                  3 v1 10.244.2.1:53/UDP
                  4 v1 10.244.2.2:53/UDP
                LB4_REVNAT
                  1 v1 -
                  2 v1 10.96.0.10:53
                LB_SVC_NAMES
                  2 test/dns
            ",
        },
        Case {
            name: "a shared backend is terminating while one of its frontends says so",
            setup: &[&[WEB, API]],
            full: &[],
            faults: no_faults,
            step: &["10.96.0.1:80/TCP web = 10.244.1.1:8080~ 10.244.1.2:8080", API],
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                  10.96.0.2 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 1 count 1
                  10.96.0.2:443/TCP id 2 gen 0 count 1
                LB4_SLOTS
                  1/0: 1 2
                  1/1: 2
                  2/0: 1
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP terminating
                  2 v1 10.244.1.2:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v1 10.96.0.2:443
                LB_SVC_NAMES
                  1 test/web
                  2 test/api
            ",
        },
        Case {
            name: "Maglev: the table goes in before the frontend",
            setup: &[],
            full: &[],
            faults: no_faults,
            step: &[WEB_MAGLEV],
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2 Maglev
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
                LB4_MAGLEV
                  1: 1 1 2 1 2 1 2
            ",
        },
        Case {
            name: "Maglev: a changed backend set patches the table",
            setup: &[&[WEB_MAGLEV]],
            full: &[],
            faults: no_faults,
            step: &[WEB_MAGLEV13],
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 1 count 2 Maglev
                LB4_SLOTS
                  1/0: 1 2
                  1/1: 1 3
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 -
                  3 v1 10.244.1.3:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
                LB4_MAGLEV
                  1: 1 1 3 1 3 1 3
            ",
        },
        // Rollbacks.
        Case {
            name: "slots full while adding: the new frontend is not added, what it wrote is undone",
            setup: &[&[WEB]],
            full: &[(MapKind::Slots, 3)],
            faults: no_faults,
            step: &[WEB, DNS],
            errors: &["frontend test/dns (10.96.0.10:53/UDP): map LB4_SLOTS is full (3 entries)"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                  4 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v1 -
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "slots full in the middle of an update: the frontend keeps its previous state",
            setup: &[&[WEB]],
            full: &[(MapKind::Slots, 4)],
            faults: no_faults,
            step: &[WEB3],
            errors: &["frontend test/web (10.96.0.1:80/TCP): map LB4_SLOTS is full (4 entries)"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "services full: a new frontend is refused, what it wrote is undone",
            setup: &[&[WEB]],
            full: &[(MapKind::Services, 1)],
            faults: no_faults,
            step: &[WEB, DNS],
            errors: &["frontend test/dns (10.96.0.10:53/UDP): map LB4_SERVICES is full (1 entries)"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                  4 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v1 -
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "frontend IDs run out: a new frontend is refused",
            setup: &[&[WEB]],
            full: &[(MapKind::RevNat, 2)],
            faults: no_faults,
            step: &[WEB, DNS],
            errors: &["frontend test/dns (10.96.0.10:53/UDP): map LB4_REVNAT is full (2 entries)"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                  4 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "backend IDs run out: the frontend serves with the backends it has",
            setup: &[&[WEB]],
            full: &[(MapKind::Backends, 3)],
            faults: no_faults,
            step: &[WEB3],
            errors: &["backend 10.244.1.3:8080: map LB4_BACKENDS is full (3 entries); raise --backends-size"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "addresses full: the frontend is written and its address waits for room",
            setup: &[&[WEB]],
            full: &[(MapKind::Vips, 1)],
            faults: no_faults,
            step: &[WEB, DNS],
            errors: &[
                "frontend test/dns (10.96.0.10:53/UDP): map LB4_VIPS is full (1 entries)",
                "frontend address 10.96.0.10: map LB4_VIPS is full (1 entries)",
            ],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                  10.96.0.10:53/UDP id 2 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                  2/0: 3 4
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.2.1:53/UDP
                  4 v1 10.244.2.2:53/UDP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v1 10.96.0.10:53
                LB_SVC_NAMES
                  1 test/web
                  2 test/dns
            ",
        },
        Case {
            name: "the flip of the slot generation fails: the frontend keeps its previous state",
            setup: &[&[WEB]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Services, Op::Update)],
            step: &[WEB3],
            errors: &["frontend test/web (10.96.0.1:80/TCP): writing map LB4_SERVICES failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "the flip of a Maglev frontend fails: its table is put back",
            setup: &[&[WEB_MAGLEV]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Services, Op::Update)],
            step: &[WEB_MAGLEV13],
            errors: &["frontend test/web (10.96.0.1:80/TCP): writing map LB4_SERVICES failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2 Maglev
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
                LB4_MAGLEV
                  1: 1 1 2 1 2 1 2
            ",
        },
        Case {
            name: "the flip to Maglev fails: the new table is removed",
            setup: &[&[WEB]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Services, Op::Update)],
            step: &[WEB_MAGLEV],
            errors: &["frontend test/web (10.96.0.1:80/TCP): writing map LB4_SERVICES failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "the Maglev table write fails: table and slots stay as they were",
            setup: &[&[WEB_MAGLEV]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Maglev, Op::Update).once()],
            step: &[WEB_MAGLEV13],
            errors: &["frontend test/web (10.96.0.1:80/TCP): writing map LB4_MAGLEV failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2 Maglev
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
                LB4_MAGLEV
                  1: 1 1 2 1 2 1 2
            ",
        },
        Case {
            name: "a new backend's write fails: the frontend serves with the others",
            setup: &[&[WEB]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Backends, Op::Update)],
            step: &[WEB3],
            errors: &["backend 10.244.1.3:8080: writing map LB4_BACKENDS failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "a shared backend's new flags fail: tried again",
            setup: &[&[WEB, API]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Backends, Op::Update)],
            step: &["10.96.0.1:80/TCP web = 10.244.1.1:8080~ 10.244.1.2:8080", API],
            // Its flags while web's new uses count, then its final ones.
            errors: &[
                "backend 10.244.1.1:8080: writing map LB4_BACKENDS failed",
                "backend 10.244.1.1:8080: writing map LB4_BACKENDS failed",
            ],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                  10.96.0.2 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 1 count 1
                  10.96.0.2:443/TCP id 2 gen 0 count 1
                LB4_SLOTS
                  1/0: 1 2
                  1/1: 2
                  2/0: 1
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v1 10.96.0.2:443
                LB_SVC_NAMES
                  1 test/web
                  2 test/api
            ",
        },
        Case {
            name: "removing an unused backend fails: tried again",
            setup: &[&[WEB3]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Backends, Op::Update)],
            step: &[WEB],
            errors: &["removing backend 10.244.1.3:8080: writing map LB4_BACKENDS failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 1 count 2
                LB4_SLOTS
                  1/0: 1 2 3
                  1/1: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.1.3:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "a new frontend's name fails: everything it wrote is undone",
            setup: &[],
            full: &[],
            faults: || vec![Fault::on(MapKind::Names, Op::Update)],
            step: &[WEB],
            errors: &["frontend test/web (10.96.0.1:80/TCP): writing map LB_SVC_NAMES failed"],
            dump: "
                LB4_BACKENDS
                  1 v1 -
                  2 v1 -
                LB4_REVNAT
                  1 v1 -
            ",
        },
        Case {
            name: "removing a frontend fails: it stays whole",
            setup: &[&[WEB, DNS]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Services, Op::Delete)],
            step: &[WEB],
            errors: &["removing frontend test/dns (10.96.0.10:53/UDP): writing map LB4_SERVICES failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                  10.96.0.10 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                  10.96.0.10:53/UDP id 2 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                  2/0: 3 4
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.2.1:53/UDP
                  4 v1 10.244.2.2:53/UDP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v1 10.96.0.10:53
                LB_SVC_NAMES
                  1 test/web
                  2 test/dns
            ",
        },
        Case {
            name: "clearing a removed frontend's name fails: its ID is held until it is cleared",
            setup: &[&[WEB, DNS]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Names, Op::Delete)],
            step: &[WEB],
            errors: &["removing frontend test/dns (10.96.0.10:53/UDP): writing map LB_SVC_NAMES failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                  2/0: 3 4
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                  4 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v1 -
                LB_SVC_NAMES
                  1 test/web
                  2 test/dns
            ",
        },
        Case {
            name: "deleting the old generation fails: tried again at the next apply",
            setup: &[&[WEB], &[WEB3]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Slots, Op::Delete)],
            step: &[WEB3],
            errors: &["deleting old slots: batch operation on map LB4_SLOTS failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 1 count 3
                LB4_SLOTS
                  1/0: 1 2
                  1/1: 1 2 3
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.1.3:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Case {
            name: "deleting the old generation fails and the frontend flips back to it: the new slots stay",
            setup: &[&[WEB], &[WEB3]],
            full: &[],
            faults: || vec![Fault::on(MapKind::Slots, Op::Delete)],
            step: &[WEB],
            errors: &["deleting old slots: batch operation on map LB4_SLOTS failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                  1/1: 1 2 3
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
    ]
}

#[test]
fn table() {
    for case in cases() {
        let setup: Vec<Desired> = case.setup.iter().map(|s| desired(s)).collect();
        let step = desired(case.step);
        let mut maps = FakeMaps::new(&sizes());
        for &(map, n) in case.full {
            maps.set_max_entries(map, n);
        }
        let mut r = reconciler_over(maps);
        for d in &setup {
            let s = r.apply(d);
            assert!(s.errors.is_empty(), "{}: setup: {:?}", case.name, s.errors);
        }
        for f in (case.faults)() {
            r.maps_mut().inject(f);
        }
        let stats = r.apply(&step);
        check_errors(case.name, &stats, case.errors);
        check_dump(case.name, &dump(r.maps()).unwrap(), case.dump);
        check_consistent(case.name, r.maps(), &stats);

        // Healed (with room: an agent restarted with bigger maps where the
        // IDs ran out), the next applies bring the maps to what a run
        // without failures has, and then there is nothing left to do.
        r.maps_mut().heal();
        let fresh = FakeMaps::new(&sizes());
        for map in MapKind::ALL {
            r.maps_mut().inner_mut().set_max_entries(map, fresh.max_entries(map));
        }
        if case.full.iter().any(|(m, _)| matches!(m, MapKind::Backends | MapKind::RevNat)) {
            r = reconciler_over(r.maps().inner().clone());
        }
        for _ in 0..2 {
            let s = r.apply(&step);
            assert!(s.errors.is_empty(), "{}: after healing: {:?}", case.name, s.errors);
        }
        let steps: Vec<&Desired> = setup.iter().chain([&step, &step]).collect();
        let want = reference(&steps);
        assert_eq!(view(r.maps()), view(want.maps()), "{}: healed", case.name);
        check_consistent(case.name, r.maps(), &Stats::default());
        check_no_leftovers(case.name, r.maps());
        let s = r.apply(&step);
        assert_eq!((s.ops, s.errors.len()), (0, 0), "{}: nothing left to do: {s:?}", case.name);
    }
}

/// Maps an earlier agent left, and what a new one makes of them.
struct Recovery {
    name: &'static str,
    /// What the earlier agent had programmed.
    before: &'static [&'static [&'static str]],
    /// What it left besides: an interrupted run, or another version.
    leave: fn(&mut FakeMaps),
    /// Operations that fail in the new agent's first apply.
    faults: fn() -> Vec<Fault>,
    /// The new agent's desired state.
    desired: &'static [&'static str],
    /// The map writes of its first apply.
    ops: u64,
    errors: &'static [&'static str],
    /// The maps after its first apply.
    dump: &'static str,
}

fn leave_nothing(_: &mut FakeMaps) {}

fn service_key(addr: [u8; 4], port: u16, proto: u8) -> Service4Key {
    Service4Key { addr: u32::from_ne_bytes(addr), port: port.to_be(), proto, scope: lb_common::SCOPE_EXTERNAL }
}

fn backend(addr: [u8; 4], port: u16, proto: u8, version: u16) -> Backend4 {
    Backend4 { addr: u32::from_ne_bytes(addr), port: port.to_be(), proto, flags: 0, version, _pad: 0 }
}

fn slot(frontend_id: u32, generation: u16, slot: u16) -> SlotKey {
    SlotKey { frontend_id, slot, generation }
}

fn recoveries() -> Vec<Recovery> {
    vec![
        Recovery {
            name: "an in-cluster entry is taken over with the external entry at its address",
            before: &[&[NP_LOCAL, NP_IN_CLUSTER]],
            leave: leave_nothing,
            faults: no_faults,
            desired: &[NP_LOCAL, NP_IN_CLUSTER],
            ops: 0,
            errors: &[],
            dump: "
                LB4_VIPS
                  192.168.50.1 NodePort
                LB4_SERVICES
                  192.168.50.1:30080/TCP id 1 gen 0 count 0 NodePort,ExtLocal,HasInternal
                  192.168.50.1:30080/TCP scope 1 id 2 gen 0 count 1 NodePort
                LB4_SLOTS
                  2/0: 1
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                LB4_REVNAT
                  1 v1 192.168.50.1:30080
                  2 v1 192.168.50.1:30080
                LB_SVC_NAMES
                  1 test/np
                  2 test/np
            ",
        },
        Recovery {
            name: "orphans of an interrupted run go; the frontends are taken over as they are",
            before: &[&[WEB, DNS]],
            leave: |m| {
                // A backend nothing uses.
                m.set_backend::<Ipv4Addr>(9, &backend([10, 244, 7, 7], 80, 6, 1)).unwrap();
                // An add interrupted before its frontend entry.
                let half = RevNat4 { addr: u32::from_ne_bytes([10, 96, 0, 5]), port: 80u16.to_be(), version: 1 };
                m.set_revnat::<Ipv4Addr>(5, &half).unwrap();
                m.insert_name(5, &lb_agent::maps::svc_name("test/half")).unwrap();
                m.insert_slot(&slot(5, 0, 0), &Slot { backend_id: 1 }).unwrap();
                m.write_maglev(5, &[1; M as usize]).unwrap();
                // An address without a frontend.
                m.insert_vip::<Ipv4Addr>(u32::from_ne_bytes([10, 96, 0, 99]), &Vip4 { flags: vip_flags::CLUSTER_IP }).unwrap();
                // An update of web interrupted before its flip: the other
                // generation written.
                for (i, b) in [1, 2, 9].into_iter().enumerate() {
                    m.insert_slot(&slot(1, 1, i as u16), &Slot { backend_id: b }).unwrap();
                }
            },
            faults: no_faults,
            desired: &[WEB, DNS],
            // The orphan backend and the address.
            ops: 2,
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                  10.96.0.10 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                  10.96.0.10:53/UDP id 2 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                  2/0: 3 4
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.2.1:53/UDP
                  4 v1 10.244.2.2:53/UDP
                  9 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v1 10.96.0.10:53
                  5 v1 -
                LB_SVC_NAMES
                  1 test/web
                  2 test/dns
            ",
        },
        Recovery {
            name: "an update interrupted after its flip: the old generation goes",
            before: &[&[WEB], &[WEB3]],
            leave: leave_nothing,
            faults: no_faults,
            desired: &[WEB3],
            ops: 0,
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 1 count 3
                LB4_SLOTS
                  1/1: 1 2 3
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.1.3:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Recovery {
            name: "a frontend entry missing a slot is rewritten into the other generation",
            before: &[&[WEB]],
            leave: |m| {
                m.remove_slot(&slot(1, 0, 1)).unwrap();
            },
            faults: no_faults,
            desired: &[WEB],
            // Two slots and the flip.
            ops: 3,
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 1 count 2
                LB4_SLOTS
                  1/0: 1
                  1/1: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
            ",
        },
        Recovery {
            name: "entries this agent does not write go before their slots and IDs are reused",
            before: &[&[WEB]],
            leave: |m| {
                // A scope this agent has no use for.
                let mut other_scope = service_key([10, 96, 0, 1], 80, 6);
                other_scope.scope = SCOPE_INTERNAL + 1;
                m.insert_service::<Ipv4Addr>(
                    &other_scope,
                    &Service4Value { frontend_id: 3, count: 1, generation: 0, flags: 0, affinity_timeout: 0 },
                )
                .unwrap();
                m.insert_slot(&slot(3, 0, 0), &Slot { backend_id: 1 }).unwrap();
                // SCTP, with a backend of its own.
                let sctp = service_key([10, 96, 0, 7], 9, 132);
                m.insert_service::<Ipv4Addr>(
                    &sctp,
                    &Service4Value { frontend_id: 2, count: 1, generation: 0, flags: 0, affinity_timeout: 0 },
                )
                .unwrap();
                m.set_revnat::<Ipv4Addr>(2, &RevNat4 { addr: sctp.addr, port: sctp.port, version: 1 }).unwrap();
                m.insert_slot(&slot(2, 0, 0), &Slot { backend_id: 8 }).unwrap();
                m.set_backend::<Ipv4Addr>(8, &backend([10, 244, 8, 8], 9, 132, 1)).unwrap();
                m.insert_vip::<Ipv4Addr>(sctp.addr, &Vip4 { flags: vip_flags::CLUSTER_IP }).unwrap();
            },
            faults: no_faults,
            desired: &[WEB, DNS],
            // dns added (its address, two backends, rev-NAT slot, name,
            // two slots, the frontend entry), the SCTP address removed.
            ops: 9,
            errors: &[],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                  10.96.0.10 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2
                  10.96.0.10:53/UDP id 2 gen 0 count 2
                LB4_SLOTS
                  1/0: 1 2
                  2/0: 3 4
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 10.244.2.1:53/UDP
                  4 v1 10.244.2.2:53/UDP
                  8 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                  2 v2 10.96.0.10:53
                LB_SVC_NAMES
                  1 test/web
                  2 test/dns
            ",
        },
        Recovery {
            name: "the first flip after a restart fails: the Maglev table read back is put back",
            before: &[&[WEB_MAGLEV]],
            leave: leave_nothing,
            faults: || vec![Fault::on(MapKind::Services, Op::Update)],
            desired: &[WEB_MAGLEV13],
            ops: 0,
            errors: &["frontend test/web (10.96.0.1:80/TCP): writing map LB4_SERVICES failed"],
            dump: "
                LB4_VIPS
                  10.96.0.1 ClusterIP
                LB4_SERVICES
                  10.96.0.1:80/TCP id 1 gen 0 count 2 Maglev
                LB4_SLOTS
                  1/0: 1 2
                LB4_BACKENDS
                  1 v1 10.244.1.1:8080/TCP
                  2 v1 10.244.1.2:8080/TCP
                  3 v1 -
                LB4_REVNAT
                  1 v1 10.96.0.1:80
                LB_SVC_NAMES
                  1 test/web
                LB4_MAGLEV
                  1: 1 1 2 1 2 1 2
            ",
        },
    ]
}

#[test]
fn recovery() {
    for case in recoveries() {
        let mut earlier = reconciler();
        for d in case.before {
            let s = earlier.apply(&desired(d));
            assert!(s.errors.is_empty(), "{}: {:?}", case.name, s.errors);
        }
        let mut maps = earlier.maps().inner().clone();
        (case.leave)(&mut maps);
        let want = desired(case.desired);
        let mut r = reconciler_over(maps);
        for f in (case.faults)() {
            r.maps_mut().inject(f);
        }
        let stats = r.apply(&want);
        check_errors(case.name, &stats, case.errors);
        if !blessing() && case.errors.is_empty() {
            assert_eq!(stats.ops, case.ops, "{}: {stats:?}", case.name);
        }
        check_dump(case.name, &dump(r.maps()).unwrap(), case.dump);
        check_consistent(case.name, r.maps(), &stats);
        r.maps_mut().heal();
        for _ in 0..2 {
            let s = r.apply(&want);
            assert!(s.errors.is_empty(), "{}: {:?}", case.name, s.errors);
        }
        assert_eq!(view(r.maps()), view(reference(&[&want]).maps()), "{}", case.name);
        check_no_leftovers(case.name, r.maps());
        let s = r.apply(&want);
        assert_eq!(s.ops, 0, "{}: {s:?}", case.name);
    }
}

const NOW: u64 = 1_000_000_000_000;

/// Both conntrack entries of a UDP flow from `client` to `frontend`,
/// translated to `backend`, as the datapath writes them.
fn udp_flow(maps: &mut FakeMaps, client: ([u8; 4], u16), frontend: ([u8; 4], u16), backend: ([u8; 4], u16), ids: (u32, u32)) {
    let ip = |a: ([u8; 4], u16)| (Ipv4Addr::from(a.0), a.1);
    udp_flow_of(maps, ip(client), ip(frontend), ip(backend), ids);
}

/// [`udp_flow`] in family `A`'s conntrack map (versions 1).
fn udp_flow_of<A: MapFamily>(maps: &mut FakeMaps, client: (A, u16), frontend: (A, u16), backend: (A, u16), ids: (u32, u32)) {
    let (c, f, b) = (A::vip_key(client.0), A::vip_key(frontend.0), A::vip_key(backend.0));
    let entry = |nat_saddr, nat_sport: u16, nat_daddr, nat_dport: u16| CtEntryOf {
        last_seen: NOW,
        nat_saddr,
        nat_daddr,
        nat_sport: nat_sport.to_be(),
        nat_dport: nat_dport.to_be(),
        backend_id: ids.1,
        frontend_id: ids.0,
        seq: 0,
        tcp_flags: 0,
        peer_flags: 0,
        flags: 0,
        _pad: 0,
        frontend_version: 1,
        backend_version: 1,
    };
    let service = CtKeyOf::new(c, f, client.1.to_be(), frontend.1.to_be(), 17, CT_SERVICE);
    maps.insert_ct_of::<A>(&service, &entry(c, client.1, b, backend.1));
    let reply = CtKeyOf::new(b, c, backend.1.to_be(), client.1.to_be(), 17, CT_REPLY);
    maps.insert_ct_of::<A>(&reply, &entry(f, frontend.1, c, client.1));
    assert_eq!(entry(c, client.1, b, backend.1).twin_key(&service), reply);
}

/// The conntrack and affinity sections of a dump.
fn flows(maps: &impl MapStore) -> String {
    let text = dump(maps).unwrap();
    let start = text.find("LB4_CT_ANY").unwrap_or(text.len());
    text[start..].to_string()
}

#[test]
fn a_backend_that_leaves_one_frontend_but_serves_another_loses_only_that_frontends_flows() {
    const A: &str = "10.96.0.71:53/UDP a = 10.244.1.10:5353 10.244.1.11:5353";
    const A_WITHOUT_SHARED: &str = "10.96.0.71:53/UDP a = 10.244.1.11:5353";
    const B: &str = "10.96.0.72:53/UDP b = 10.244.1.10:5353";
    let mut r = reconciler();
    assert!(r.apply(&desired(&[A, B])).errors.is_empty());
    // IDs: a 1, b 2; backends 10.244.1.10 1, 10.244.1.11 2.
    let client = [10, 244, 0, 11];
    let maps = r.maps_mut().inner_mut();
    udp_flow(maps, (client, 5000), ([10, 96, 0, 71], 53), ([10, 244, 1, 10], 5353), (1, 1));
    udp_flow(maps, (client, 5001), ([10, 96, 0, 71], 53), ([10, 244, 1, 11], 5353), (1, 2));
    udp_flow(maps, (client, 5002), ([10, 96, 0, 72], 53), ([10, 244, 1, 10], 5353), (2, 1));
    let affinity = |frontend_id| Affinity4Key { client: u32::from_ne_bytes(client) as u64, frontend_id, frontend_version: 1, _pad: 0 };
    let to_shared = Affinity4 { last_used: NOW, backend_id: 1, backend_version: 1, _pad: 0 };
    maps.insert_affinity(&affinity(1), &to_shared);
    maps.insert_affinity(&affinity(2), &to_shared);

    // The shared backend leaves a: its flows of a wait for the next
    // garbage collection (the sync walks no flows).
    let s = r.apply(&desired(&[A_WITHOUT_SHARED, B]));
    assert_eq!((s.purges_queued, s.errors.len()), (1, 0), "{s:?}");
    assert_eq!(r.pending_purges(), 1);

    // A collection that fails keeps the purge for the next one.
    r.maps_mut().inject(Fault::on(MapKind::CtAny, Op::Delete));
    let e = r.collect_conntrack(&CtTimeouts::DEFAULT, NOW).unwrap_err();
    assert!(matches!(e, MapsError::Batch { name: "LB4_CT_ANY", .. }), "{e}");
    assert_eq!(r.pending_purges(), 1, "kept for the next collection");
    r.maps_mut().heal();

    let gc = r.collect_conntrack(&CtTimeouts::DEFAULT, NOW).unwrap();
    assert_eq!((gc.purged, gc.invalid, gc.deleted, gc.affinity_deleted, gc.remaining), (2, 0, 2, 1, 4), "{gc:?}");
    assert_eq!(r.pending_purges(), 0);
    check_dump(
        "purged",
        &flows(r.maps()),
        "
        LB4_CT_ANY
          10.244.0.11:5001 -> 10.96.0.71:53 UDP service: frontend 1 v1 backend 2 v1
          10.244.0.11:5002 -> 10.96.0.72:53 UDP service: frontend 2 v1 backend 1 v1
          10.244.1.10:5353 -> 10.244.0.11:5002 UDP reply: frontend 2 v1 backend 1 v1
          10.244.1.11:5353 -> 10.244.0.11:5001 UDP reply: frontend 1 v1 backend 2 v1
        LB4_AFFINITY
          10.244.0.11 frontend 2 v1: backend 1 v1
        ",
    );

    // b goes: its flows are invalid at once (its rev-NAT slot is cleared)
    // and the next collection deletes them; a's flow stays.
    assert!(r.apply(&desired(&[A_WITHOUT_SHARED])).errors.is_empty());
    let gc = r.collect_conntrack(&CtTimeouts::DEFAULT, NOW).unwrap();
    assert_eq!((gc.invalid, gc.deleted, gc.affinity_deleted, gc.remaining), (2, 2, 1, 2), "{gc:?}");
    check_dump(
        "invalid",
        &flows(r.maps()),
        "
        LB4_CT_ANY
          10.244.0.11:5001 -> 10.96.0.71:53 UDP service: frontend 1 v1 backend 2 v1
          10.244.1.11:5353 -> 10.244.0.11:5001 UDP reply: frontend 1 v1 backend 2 v1
        ",
    );
}

/// Fails each write of an update in turn (the Nth of them, once): every
/// time the datapath sees each frontend whole, old or new, and once
/// healed the next applies reach what a run without failures has.
#[test]
fn every_failed_write_of_an_update_leaves_each_frontend_old_or_new() {
    let before = desired(&[WEB_MAGLEV, DNS, API]);
    let after = desired(&[
        WEB_MAGLEV13,
        "10.96.0.10:53/UDP dns = 10.244.2.1:53~ 10.244.2.2:53 10.244.2.3:53",
        "10.96.0.3:80/TCP new affinity=30 = 10.244.3.1:80 10.244.1.1:8080",
    ]);
    let (old, new) = (view(reference(&[&before]).maps()), view(reference(&[&before, &after]).maps()));
    let healed = view(reference(&[&before, &after, &after]).maps());

    let mut probe = reconciler();
    probe.apply(&before);
    probe.maps_mut().clear_issued();
    probe.apply(&after);
    let writes = probe.maps().issued().iter().filter(|i| i.is_write()).count();
    assert!(writes > 20, "{writes} writes");

    for n in 0..writes {
        let case = format!("write {n} of {writes} fails");
        let mut r = reconciler();
        r.apply(&before);
        r.maps_mut().inject(Fault::nth_write(n));
        let s = r.apply(&after);
        let failed: Vec<_> = r.maps().issued().into_iter().filter(|i| i.failed).collect();
        assert_eq!(failed.len(), 1, "{case}");
        assert!(!s.errors.is_empty(), "{case}: the failure of {failed:?} is reported");
        check_consistent(&case, r.maps(), &s);
        let a_backend_failed = s.errors.iter().any(|e| e.starts_with("backend "));
        for (fe, line) in view(r.maps()) {
            if fe == "backends" || fe == "vips" || a_backend_failed {
                continue;
            }
            assert!(
                old.get(&fe) == Some(&line) || new.get(&fe) == Some(&line),
                "{case} ({failed:?}, {:?}): {fe} is neither old nor new: {line}\nold: {:?}\nnew: {:?}",
                s.errors,
                old.get(&fe),
                new.get(&fe)
            );
        }
        r.maps_mut().heal();
        for _ in 0..2 {
            let s = r.apply(&after);
            assert!(s.errors.is_empty(), "{case}: {:?}", s.errors);
        }
        assert_eq!(view(r.maps()), healed, "{case}: healed");
        check_no_leftovers(&case, r.maps());
        let s = r.apply(&after);
        assert_eq!(s.ops, 0, "{case}: {s:?}");
    }
}

/// A frontend that could not have one of its backends (the backend IDs
/// ran out) gets it at the next apply once there is room, without its
/// Service changing.
#[test]
fn a_backend_that_did_not_fit_is_added_once_there_is_room() {
    const OTHER: &str = "10.96.0.9:80/TCP other = 10.244.9.9:80";
    let mut maps = FakeMaps::new(&sizes());
    maps.set_max_entries(MapKind::Backends, 4); // IDs 1 to 3
    let mut r = reconciler_over(maps);
    assert!(r.apply(&desired(&[WEB, OTHER])).errors.is_empty());
    let s = r.apply(&desired(&[WEB3, OTHER]));
    check_errors("full", &s, &["backend 10.244.1.3:8080: map LB4_BACKENDS is full (4 entries)"]);
    // other goes, which frees an ID once the apply has settled.
    let s = r.apply(&desired(&[WEB3]));
    check_errors("room", &s, &["backend 10.244.1.3:8080: map LB4_BACKENDS is full (4 entries)"]);
    let s = r.apply(&desired(&[WEB3]));
    check_errors("added", &s, &[]);
    assert_eq!(view(r.maps())["10.96.0.1:80/6"], view(reference(&[&desired(&[WEB3])]).maps())["10.96.0.1:80/6"]);
}

/// loadBalancerSourceRanges: a write that fails is reported and tried
/// again by the next call.
#[test]
fn source_ranges_that_fail_are_tried_again() {
    let lb = "10.96.0.1:80/TCP web nodeport = 10.244.1.1:8080";
    let d = desired(&[lb]);
    let mut r = reconciler();
    let mut s = r.apply(&d);
    let cidrs: Vec<Cidr> = ["10.0.0.0/8", "192.168.1.0/24"].iter().map(|c| c.parse().unwrap()).collect();
    let ranges: BTreeMap<FrontendAddr, Vec<Cidr>> = d.keys().map(|a| (*a, cidrs.clone())).collect();
    r.maps_mut().inject(Fault::on(MapKind::SrcRanges, Op::Update).after(1));
    r.apply_source_ranges(&ranges, &mut s);
    check_errors("ranges", &s, &["source range of frontend 1: writing map LB4_SRC_RANGES failed"]);
    r.maps_mut().heal();
    let mut s = Stats::default();
    r.apply_source_ranges(&ranges, &mut s);
    assert_eq!((s.ops, s.errors.len()), (1, 0), "{s:?}");
    let mut s = Stats::default();
    r.apply_source_ranges(&BTreeMap::<FrontendAddr, Vec<Cidr>>::new(), &mut s);
    assert_eq!((s.ops, s.errors.len()), (2, 0), "{s:?}");
    assert!(r.maps().src_ranges::<std::net::Ipv4Addr>().unwrap().is_empty());
    let _ = CtMap::BOTH;
}

/// IPv6 loadBalancerSourceRanges go to `LB6_SRC_RANGES` through the same
/// path: only the IPv6 CIDRs of an IPv6 frontend, its failed writes retried,
/// shown by the dump.
#[test]
fn ipv6_source_ranges_have_their_own_map() {
    let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let fa = FrontendAddr::new(ip("fd00:60::10"), 80, Protocol::Tcp);
    let be = Backend::ready(BackendAddr { ip: ip("fd00:244::1"), port: 8080, proto: Protocol::Tcp });
    let flags = svc_flags::LOAD_BALANCER | svc_flags::SOURCE_RANGES;
    let d6: Desired<Ipv6Addr> =
        [(fa, Frontend { addr: fa, name: "test/lb6".into(), backends: vec![be], flags, affinity_timeout: 0 })].into_iter().collect();
    let mut r = reconciler();
    let mut s = r.apply_dual(&[], &[&d6]);
    let cidrs: Vec<Cidr> = ["fd00:50::/64", "10.0.0.0/8", "2001:db8::1/128"].iter().map(|c| c.parse().unwrap()).collect();
    let ranges: BTreeMap<FrontendAddr<Ipv6Addr>, Vec<Cidr>> = [(fa, cidrs)].into();
    r.maps_mut().inject(Fault::on(MapKind::SrcRanges6, Op::Update).after(1));
    r.apply_source_ranges(&ranges, &mut s);
    check_errors("ranges6", &s, &["source range of frontend 1: writing map LB6_SRC_RANGES failed"]);
    r.maps_mut().heal();
    let mut s = Stats::default();
    r.apply_source_ranges(&ranges, &mut s);
    assert_eq!((s.ops, s.errors.len()), (1, 0), "{s:?}");
    assert!(r.maps().src_ranges::<Ipv4Addr>().unwrap().is_empty(), "the IPv4 CIDR is nowhere");
    let text = dump(r.maps()).unwrap();
    assert!(text.contains("LB6_SRC_RANGES\n  1 2001:db8::1/128\n  1 fd00:50::/64\n"), "{text}");
    let mut s = Stats::default();
    r.apply_source_ranges(&BTreeMap::<FrontendAddr<Ipv6Addr>, Vec<Cidr>>::new(), &mut s);
    assert_eq!((s.ops, s.errors.len()), (2, 0), "{s:?}");
    assert!(r.maps().src_ranges::<Ipv6Addr>().unwrap().is_empty());
}

/// Drift repair: entries deleted, overwritten or added behind the
/// reconciler's back are put right, and a repair of intact maps changes
/// nothing.
#[test]
fn drift_is_repaired() {
    let mut r = reconciler();
    let d = desired(&[
        "10.96.0.1:80/TCP web = 10.244.1.1:8080 10.244.1.2:8080",
        "10.96.0.2:53/UDP dns maglev = 10.244.1.3:53 10.244.1.4:53~",
        "192.168.1.1:30080/TCP np nodeport = 10.244.1.1:8080",
    ]);
    let stats = r.apply(&d);
    assert!(stats.errors.is_empty(), "{:?}", stats.errors);
    let r2 = r.apply(&desired(&[
        "10.96.0.1:80/TCP web = 10.244.1.1:8080",
        "10.96.0.2:53/UDP dns maglev = 10.244.1.3:53 10.244.1.4:53~",
        "192.168.1.1:30080/TCP np nodeport = 10.244.1.1:8080",
    ]));
    assert!(r2.errors.is_empty());
    let good = dump(r.maps()).unwrap();
    assert_eq!(r.repair().total(), 0, "intact maps need no repair");

    let web = r.frontend_id(&frontend("10.96.0.1:80/TCP web").addr).unwrap();
    let dns = r.frontend_id(&frontend("10.96.0.2:53/UDP dns").addr).unwrap();
    let m = r.maps_mut().inner_mut();
    let web_key = service_key([10, 96, 0, 1], 80, 6);
    let web_value = m.services::<Ipv4Addr>().unwrap().into_iter().find(|(k, _)| *k == web_key).unwrap().1;
    // A frontend deleted, another overwritten, one added.
    m.remove_service::<Ipv4Addr>(&service_key([192, 168, 1, 1], 30080, 6)).unwrap();
    let mut bad = web_value;
    bad.count = 9;
    m.insert_service::<Ipv4Addr>(&web_key, &bad).unwrap();
    m.insert_service::<Ipv4Addr>(
        &service_key([10, 96, 0, 99], 80, 6),
        &Service4Value { frontend_id: 15, count: 0, generation: 0, flags: 0, affinity_timeout: 0 },
    )
    .unwrap();
    // A slot, a backend, a rev-NAT slot, a name, an address, a Maglev table.
    // (In the live generation: the other one waits for deletion by the
    // next apply.)
    let live = web_value.generation;
    let (slot_key, _) = m.slots().unwrap().into_iter().find(|(k, _)| k.frontend_id == web && k.generation == live).unwrap();
    m.insert_slot(&slot_key, &Slot { backend_id: 14 }).unwrap();
    m.insert_slot(&SlotKey { frontend_id: web, slot: 5, generation: slot_key.generation }, &Slot { backend_id: 1 }).unwrap();
    let (bid, mut b) = m.backends::<Ipv4Addr>().unwrap().into_iter().find(|(_, b)| b.addr != 0).unwrap();
    b.port = 1;
    m.set_backend::<Ipv4Addr>(bid, &b).unwrap();
    m.set_backend::<Ipv4Addr>(13, &Backend4 { addr: 1, port: 2, proto: 6, flags: 0, version: 0, _pad: 0 }).unwrap();
    m.set_revnat::<Ipv4Addr>(web, &RevNat4 { addr: 0, port: 0, version: 0 }).unwrap();
    m.remove_name(dns).unwrap();
    m.remove_vip::<Ipv4Addr>(u32::from_ne_bytes([10, 96, 0, 2])).unwrap();
    m.insert_vip::<Ipv4Addr>(u32::from_ne_bytes([10, 96, 0, 77]), &Vip4 { flags: vip_flags::CLUSTER_IP }).unwrap();
    m.write_maglev(dns, &[0; M as usize]).unwrap();
    assert_ne!(dump(r.maps()).unwrap(), good);

    let repairs = r.repair();
    assert!(repairs.errors.is_empty(), "{:?}", repairs.errors);
    check_dump("after repair", &dump(r.maps()).unwrap(), &good);
    let per_map: BTreeMap<&str, u64> = repairs.repaired.iter().map(|(k, n)| (k.name(), *n)).collect();
    assert_eq!(
        per_map,
        BTreeMap::from([
            (MapKind::Services.name(), 3),
            (MapKind::Slots.name(), 2),
            (MapKind::Backends.name(), 2),
            (MapKind::RevNat.name(), 1),
            (MapKind::Names.name(), 1),
            (MapKind::Vips.name(), 2),
            (MapKind::Maglev.name(), 1),
        ])
    );
    assert_eq!(r.repair().total(), 0, "repaired maps stay as they are");
    // The next apply finds no frontend to write (it only deletes the
    // generation of slots that was waiting for it).
    let again = r.apply(&desired(&[
        "10.96.0.1:80/TCP web = 10.244.1.1:8080",
        "10.96.0.2:53/UDP dns maglev = 10.244.1.3:53 10.244.1.4:53~",
        "192.168.1.1:30080/TCP np nodeport = 10.244.1.1:8080",
    ]));
    assert_eq!((again.added, again.updated, again.removed), (0, 0, 0), "{again:?}");
    assert_eq!(r.repair().total(), 0);
}

// ---- Dual stack ------------------------------------------------------------

fn desired6(lines: &[&str]) -> Desired<Ipv6Addr> {
    lines.iter().map(|l| frontend_of::<Ipv6Addr>(l)).map(|f| (f.addr, f)).collect()
}

/// A dual-stack Service: its IPv4 ClusterIP and its IPv6 one.
const WEB4: &str = "10.96.0.1:80/TCP web = 10.244.1.1:8080 10.244.1.2:8080";
const WEB6: &str = "[fd00:96::1]:80/TCP web = [fd00:244::1]:8080 [fd00:244::2]:8080";

/// The frontend IDs of each family's frontend entries, and the IDs whose
/// rev-NAT slot each family has in use.
fn ids_by_family(maps: &impl MapStore) -> (BTreeSet<u32>, BTreeSet<u32>, BTreeSet<u32>, BTreeSet<u32>) {
    let fe4: BTreeSet<u32> = maps.services::<Ipv4Addr>().unwrap().iter().map(|(_, v)| v.frontend_id).collect();
    let fe6: BTreeSet<u32> = maps.services::<Ipv6Addr>().unwrap().iter().map(|(_, v)| v.frontend_id).collect();
    let rev4: BTreeSet<u32> = maps.revnats::<Ipv4Addr>().unwrap().iter().filter(|(_, r)| r.addr != 0).map(|(id, _)| *id).collect();
    let rev6: BTreeSet<u32> = maps.revnats::<Ipv6Addr>().unwrap().iter().filter(|(_, r)| r.addr != [0; 4]).map(|(id, _)| *id).collect();
    (fe4, fe6, rev4, rev6)
}

/// A dual-stack Service added, its IPv6 backends changed, its IPv6
/// ClusterIP removed, then the whole Service: the exact maps at each step.
#[test]
fn a_dual_stack_service_is_written_in_both_families_maps() {
    let mut r = reconciler();
    let s = r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[WEB6])]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(s.added, 2);
    check_dump(
        "added",
        &dump(r.maps()).unwrap(),
        "
        LB4_VIPS
          10.96.0.1 ClusterIP
        LB6_VIPS
          fd00:96::1 ClusterIP
        LB4_SERVICES
          10.96.0.1:80/TCP id 1 gen 0 count 2
        LB6_SERVICES
          [fd00:96::1]:80/TCP id 2 gen 0 count 2
        LB4_SLOTS
          1/0: 1 2
          2/0: 1 2
        LB4_BACKENDS
          1 v1 10.244.1.1:8080/TCP
          2 v1 10.244.1.2:8080/TCP
        LB6_BACKENDS
          1 v1 [fd00:244::1]:8080/TCP
          2 v1 [fd00:244::2]:8080/TCP
        LB4_REVNAT
          1 v1 10.96.0.1:80
        LB6_REVNAT
          2 v1 [fd00:96::1]:80
        LB_SVC_NAMES
          1 test/web
          2 test/web
        ",
    );
    // Slot 2/0 names IPv6 backends 1 and 2 (LB6_BACKENDS), not the IPv4
    // ones with the same IDs.

    // One IPv6 backend replaced by another: a new slot generation of the
    // IPv6 frontend only.
    let web6b = "[fd00:244::1]:8080 [fd00:244::3]:8080";
    let web6b = format!("[fd00:96::1]:80/TCP web = {web6b}");
    let s = r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[&web6b])]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!((s.added, s.updated, s.removed), (0, 1, 0));
    let s = r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[&web6b])]);
    assert_eq!((s.ops, s.added, s.updated, s.removed), (2, 0, 0, 0), "only the old generation's two slots are deleted: {s:?}");
    check_dump(
        "IPv6 backends changed",
        &dump(r.maps()).unwrap(),
        "
        LB4_VIPS
          10.96.0.1 ClusterIP
        LB6_VIPS
          fd00:96::1 ClusterIP
        LB4_SERVICES
          10.96.0.1:80/TCP id 1 gen 0 count 2
        LB6_SERVICES
          [fd00:96::1]:80/TCP id 2 gen 1 count 2
        LB4_SLOTS
          1/0: 1 2
          2/1: 1 3
        LB4_BACKENDS
          1 v1 10.244.1.1:8080/TCP
          2 v1 10.244.1.2:8080/TCP
        LB6_BACKENDS
          1 v1 [fd00:244::1]:8080/TCP
          2 v1 -
          3 v1 [fd00:244::3]:8080/TCP
        LB4_REVNAT
          1 v1 10.96.0.1:80
        LB6_REVNAT
          2 v1 [fd00:96::1]:80
        LB_SVC_NAMES
          1 test/web
          2 test/web
        ",
    );

    // The IPv6 ClusterIP goes (the Service becomes single-stack).
    let s = r.apply_dual(&[&desired(&[WEB4])], &[]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!((s.added, s.updated, s.removed), (0, 0, 1));
    r.apply_dual(&[&desired(&[WEB4])], &[]);
    check_dump(
        "IPv6 frontend removed",
        &dump(r.maps()).unwrap(),
        "
        LB4_VIPS
          10.96.0.1 ClusterIP
        LB4_SERVICES
          10.96.0.1:80/TCP id 1 gen 0 count 2
        LB4_SLOTS
          1/0: 1 2
        LB4_BACKENDS
          1 v1 10.244.1.1:8080/TCP
          2 v1 10.244.1.2:8080/TCP
        LB6_BACKENDS
          1 v1 -
          2 v1 -
          3 v1 -
        LB4_REVNAT
          1 v1 10.96.0.1:80
        LB6_REVNAT
          2 v1 -
        LB_SVC_NAMES
          1 test/web
        ",
    );
    check_no_leftovers("IPv6 frontend removed", r.maps());

    // The whole Service goes.
    let s = r.apply_dual(&[], &[]);
    assert_eq!(s.removed, 1);
    r.apply_dual(&[], &[]);
    let (fe4, fe6, rev4, rev6) = ids_by_family(r.maps());
    assert!(fe4.is_empty() && fe6.is_empty() && rev4.is_empty() && rev6.is_empty());
    assert!(r.maps().vips::<Ipv6Addr>().unwrap().is_empty() && r.maps().slots().unwrap().is_empty());
}

/// Frontend IDs are one space for both families: a new frontend of either
/// family never gets an ID a frontend of the other holds, through adds and
/// removals that free IDs on both sides; each family's rev-NAT array has
/// its own frontends' IDs only. Backend IDs are per family.
#[test]
fn ipv4_and_ipv6_frontends_never_share_an_id() {
    let mut r = reconciler();
    let v4 = |n: u8| format!("10.96.0.{n}:80/TCP s{n} = 10.244.1.{n}:8080");
    let v6 = |n: u8| format!("[fd00:96::{n:x}]:80/TCP s{n} = [fd00:244::{n:x}]:8080");
    // Rounds of adds and removals: the reconciler's 16 IDs go round more
    // than once, so freed IDs of one family are handed to the other.
    let mut seen_shared = false;
    let mut owner: BTreeMap<u32, &str> = BTreeMap::new();
    for round in 0u8..12 {
        let four: Vec<String> = (0..3).map(|i| v4(round * 3 + i + 1)).collect();
        let six: Vec<String> = (0..3).map(|i| v6(round * 3 + i + 1)).collect();
        let four: Vec<&str> = four.iter().map(String::as_str).collect();
        let six: Vec<&str> = six.iter().map(String::as_str).collect();
        let s = r.apply_dual(&[&desired(&four)], &[&desired6(&six)]);
        assert!(s.errors.is_empty(), "round {round}: {:?}", s.errors);
        assert_eq!((s.added, s.removed), (6, if round == 0 { 0 } else { 6 }), "round {round}");
        // The slots of the removed frontends go with the next apply.
        r.apply_dual(&[&desired(&four)], &[&desired6(&six)]);
        let (fe4, fe6, rev4, rev6) = ids_by_family(r.maps());
        assert_eq!((fe4.len(), fe6.len()), (3, 3), "round {round}");
        assert!(fe4.is_disjoint(&fe6), "round {round}: IPv4 {fe4:?} and IPv6 {fe6:?} frontends share an ID");
        assert_eq!(rev4, fe4, "round {round}: LB4_REVNAT holds the IPv4 frontends' IDs only");
        assert_eq!(rev6, fe6, "round {round}: LB6_REVNAT holds the IPv6 frontends' IDs only");
        for id in &fe4 {
            seen_shared |= owner.insert(*id, "v4") == Some("v6");
        }
        for id in &fe6 {
            seen_shared |= owner.insert(*id, "v6") == Some("v4");
        }
        // Backend IDs: each family from its own array, 1.. in use.
        let b6: BTreeSet<u32> =
            r.maps().backends::<Ipv6Addr>().unwrap().iter().filter(|(_, b)| b.addr != [0; 4]).map(|(i, _)| *i).collect();
        assert_eq!(b6.len(), 3, "round {round}");
        check_no_leftovers(&format!("round {round}"), r.maps());
    }
    assert!(seen_shared, "an ID went from one family to the other in the rounds");
    // A restart reads both families' IDs back.
    let maps = std::mem::replace(r.maps_mut(), Faulty::new(FakeMaps::new(&sizes()))).into_inner();
    let mut r = reconciler_over(maps);
    let s = r.apply_dual(&[&desired(&[&v4(200)])], &[&desired6(&[&v6(200)])]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let (fe4, fe6, _, _) = ids_by_family(r.maps());
    assert!(fe4.is_disjoint(&fe6), "after a restart: {fe4:?} {fe6:?}");
}

/// A full `LB6_SERVICES` refuses a new IPv6 frontend with the map's name
/// and size, leaving nothing of it behind; a failed flip of an IPv6
/// frontend keeps its previous state; the IPv4 side is untouched by both.
#[test]
fn a_failed_ipv6_write_keeps_the_previous_state() {
    let mut r = reconciler();
    let s = r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[WEB6])]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let before = dump(r.maps()).unwrap();

    // A new IPv6 frontend does not fit.
    r.maps_mut().inner_mut().set_max_entries(MapKind::Services6, 1);
    let dns6 = "[fd00:96::a]:53/UDP dns = [fd00:244::5]:53";
    let s = r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[WEB6, dns6])]);
    check_errors("LB6_SERVICES full", &s, &["frontend test/dns ([fd00:96::a]:53/UDP): map LB6_SERVICES is full (1 entries)"]);
    check_consistent("LB6_SERVICES full", r.maps(), &s);
    // Nothing of it is left but the versions of the backend slot and the
    // frontend ID it took (both free again); its address is gone.
    let after = dump(r.maps()).unwrap();
    let extra: Vec<&str> = lines(&after).into_iter().filter(|l| !lines(&before).contains(l)).collect();
    assert_eq!(extra, ["3 v1 -", "3 v1 -"], "{after}");
    check_dump(
        "LB6_SERVICES full",
        &after,
        "
        LB4_VIPS
          10.96.0.1 ClusterIP
        LB6_VIPS
          fd00:96::1 ClusterIP
        LB4_SERVICES
          10.96.0.1:80/TCP id 1 gen 0 count 2
        LB6_SERVICES
          [fd00:96::1]:80/TCP id 2 gen 0 count 2
        LB4_SLOTS
          1/0: 1 2
          2/0: 1 2
        LB4_BACKENDS
          1 v1 10.244.1.1:8080/TCP
          2 v1 10.244.1.2:8080/TCP
        LB6_BACKENDS
          1 v1 [fd00:244::1]:8080/TCP
          2 v1 [fd00:244::2]:8080/TCP
          3 v1 -
        LB4_REVNAT
          1 v1 10.96.0.1:80
        LB6_REVNAT
          2 v1 [fd00:96::1]:80
          3 v1 -
        LB_SVC_NAMES
          1 test/web
          2 test/web
        ",
    );
    r.maps_mut().inner_mut().set_max_entries(MapKind::Services6, 16);

    // The flip of an IPv6 frontend to new backends fails.
    let before = dump(r.maps()).unwrap();
    r.maps_mut().inject(Fault::on(MapKind::Services6, Op::Update));
    let web6b = "[fd00:96::1]:80/TCP web = [fd00:244::1]:8080 [fd00:244::9]:8080";
    let s = r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[web6b])]);
    check_errors("flip fails", &s, &["frontend test/web ([fd00:96::1]:80/TCP): writing map LB6_SERVICES failed"]);
    check_consistent("flip fails", r.maps(), &s);
    r.maps_mut().heal();
    let s = r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[WEB6])]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[WEB6])]);
    let after = dump(r.maps()).unwrap();
    // Only the backend the failed update wrote is left, free.
    let extra: Vec<&str> = lines(&after).into_iter().filter(|l| !lines(&before).contains(l)).collect();
    assert_eq!(extra, ["4 v1 -"], "the maps went back to the previous state:\n{after}");
}

/// An agent restart over dual-stack maps: recovery reads both families
/// and the same desired state needs no write at all.
#[test]
fn a_restart_over_dual_stack_maps_writes_nothing() {
    let mut r = reconciler();
    // (Not Maglev: a restart does not know the M of an installed table and
    // checks it with one patch, as for IPv4.)
    let d4 = desired(&[WEB4, "10.96.0.2:53/UDP dns affinity=60 = 10.244.1.3:53 10.244.1.4:53"]);
    let d6 = desired6(&[WEB6, "[fd00:96::2]:53/UDP dns affinity=60 = [fd00:244::3]:53 [fd00:244::4]:53~"]);
    let s = r.apply_dual(&[&d4], &[&d6]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    r.apply_dual(&[&d4], &[&d6]);
    let before = dump(r.maps()).unwrap();
    assert!(before.contains("LB6_SERVICES") && before.contains("terminating"), "{before}");

    let maps = std::mem::replace(r.maps_mut(), Faulty::new(FakeMaps::new(&sizes()))).into_inner();
    let mut r = reconciler_over(maps);
    let s = r.apply_dual(&[&d4], &[&d6]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let writes: Vec<_> = r.maps().issued().into_iter().filter(|i| i.is_write()).collect();
    assert!(writes.is_empty(), "a restart rewrote {writes:?} ({s:?})");
    assert_eq!((s.ops, s.added, s.updated, s.removed), (0, 0, 0, 0), "{s:?}");
    check_dump("after a restart", &dump(r.maps()).unwrap(), &before);
    assert_eq!(r.repair().total(), 0, "nothing to repair after a restart");
}

/// Drift in the IPv6 maps is repaired like drift in the IPv4 ones.
#[test]
fn drift_in_the_ipv6_maps_is_repaired() {
    let mut r = reconciler();
    let s = r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[WEB6, "[fd00:96::2]:53/UDP dns = [fd00:244::3]:53"])]);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let good = dump(r.maps()).unwrap();
    assert_eq!(r.repair().total(), 0);
    let web6 = r.frontend_id(&frontend_of::<Ipv6Addr>(WEB6).addr).unwrap();
    let m = r.maps_mut().inner_mut();
    let dns_key =
        lb_common::Service6Key { addr: lb_common::addr6("fd00:96::2".parse().unwrap()), port: 53u16.to_be(), proto: 17, scope: 0 };
    m.remove_service::<Ipv6Addr>(&dns_key).unwrap();
    let stray =
        lb_common::Backend6 { addr: lb_common::addr6("fd00::bad".parse().unwrap()), port: 1, proto: 6, flags: 0, version: 0, _pad: 0 };
    m.set_backend::<Ipv6Addr>(9, &stray).unwrap();
    m.set_revnat::<Ipv6Addr>(web6, &lb_common::RevNat6 { addr: [0; 4], port: 0, version: 0 }).unwrap();
    // The IPv6 frontend's ID in the IPv4 rev-NAT array: not IPv4's.
    m.set_revnat::<Ipv4Addr>(web6, &RevNat4 { addr: 1, port: 2, version: 0 }).unwrap();
    m.remove_vip::<Ipv6Addr>(lb_common::addr6("fd00:96::1".parse().unwrap())).unwrap();
    m.insert_vip::<Ipv6Addr>(lb_common::addr6("fd00:96::77".parse().unwrap()), &Vip4 { flags: vip_flags::CLUSTER_IP }).unwrap();
    assert_ne!(dump(r.maps()).unwrap(), good);
    let repairs = r.repair();
    assert!(repairs.errors.is_empty(), "{:?}", repairs.errors);
    check_dump("after repair", &dump(r.maps()).unwrap(), &good);
    let per_map: BTreeMap<&str, u64> = repairs.repaired.iter().map(|(k, n)| (k.name(), *n)).collect();
    assert_eq!(
        per_map,
        BTreeMap::from([
            (MapKind::Services6.name(), 1),
            (MapKind::Backends6.name(), 1),
            (MapKind::RevNat.name(), 1),
            (MapKind::RevNat6.name(), 1),
            (MapKind::Vips6.name(), 2),
        ])
    );
}

/// The frontend ID of family `A`'s frontend at `ip`.
fn frontend_id_of<A: MapFamily>(maps: &impl MapStore, ip: A) -> u32 {
    maps.services::<A>().unwrap().into_iter().find(|(k, _)| A::service_parts(k).0 == ip).map(|(_, v)| v.frontend_id).unwrap()
}

/// The backend ID of family `A`'s backend at `ip`.
fn backend_id_of<A: MapFamily>(maps: &impl MapStore, ip: A) -> u32 {
    maps.backends::<A>().unwrap().into_iter().find(|(_, b)| A::backend_slot(b).ip == Some(ip)).map(|(id, _)| id).unwrap()
}

/// Family `A`'s flows (both maps) as `direction src -> dst` lines, sorted.
fn flows_of<A: MapFamily>(maps: &impl MapStore) -> Vec<String> {
    let mut out: Vec<String> = CtMap::BOTH
        .iter()
        .flat_map(|m| maps.ct_entries::<A>(*m).unwrap())
        .map(|(k, e)| {
            let r = lb_agent::inspect::conntrack::row::<A>(&k, &e, String::new(), NOW);
            format!("{} {} -> {}", r.direction, r.src, r.dst)
        })
        .collect();
    out.sort();
    out
}

/// The IPv6 conntrack is collected as the IPv4 one is, by the same pass:
/// a backend that leaves one frontend loses that frontend's flows only
/// (purge), a removed frontend's flows go (invalid), flows time out, and
/// the IPv4 flows are judged apart (their own backend IDs).
#[test]
fn ipv6_flows_are_collected_like_ipv4_ones() {
    const A6: &str = "[fd00:96::71]:53/UDP a = [fd00:244::10]:5353 [fd00:244::11]:5353";
    const A6_WITHOUT_SHARED: &str = "[fd00:96::71]:53/UDP a = [fd00:244::11]:5353";
    const B6: &str = "[fd00:96::72]:53/UDP b = [fd00:244::10]:5353";
    let mut r = reconciler();
    assert!(r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[A6, B6])]).errors.is_empty());
    let ip6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    let (a, b) = (frontend_id_of(r.maps(), ip6("fd00:96::71")), frontend_id_of(r.maps(), ip6("fd00:96::72")));
    let (shared, other) = (backend_id_of(r.maps(), ip6("fd00:244::10")), backend_id_of(r.maps(), ip6("fd00:244::11")));
    let web = frontend_id_of(r.maps(), Ipv4Addr::new(10, 96, 0, 1));
    let web_be = backend_id_of(r.maps(), Ipv4Addr::new(10, 244, 1, 1));
    let client = ip6("fd00:10:244::b");
    let maps = r.maps_mut().inner_mut();
    udp_flow_of(maps, (client, 5000), (ip6("fd00:96::71"), 53), (ip6("fd00:244::10"), 5353), (a, shared));
    udp_flow_of(maps, (client, 5001), (ip6("fd00:96::71"), 53), (ip6("fd00:244::11"), 5353), (a, other));
    udp_flow_of(maps, (client, 5002), (ip6("fd00:96::72"), 53), (ip6("fd00:244::10"), 5353), (b, shared));
    // An IPv4 flow (backend IDs are per family: judged against the IPv4
    // ones, it stays until it times out).
    udp_flow(maps, ([10, 244, 0, 11], 6000), ([10, 96, 0, 1], 80), ([10, 244, 1, 1], 8080), (web, web_be));
    let gc = r.collect_conntrack(&CtTimeouts::DEFAULT, NOW).unwrap();
    assert_eq!((gc.deleted, gc.remaining), (0, 8), "{gc:?}");
    let fill = |gc: &lb_agent::reconcile::GcStats, map: &str| gc.fills.iter().find(|f| f.map == map).map(|f| (f.remaining, f.capacity));
    assert_eq!(fill(&gc, "LB6_CT_ANY"), Some((6, r.maps().max_entries(MapKind::CtAny6))), "{gc:?}");
    assert_eq!(fill(&gc, "LB4_CT_ANY").map(|f| f.0), Some(2));

    // The shared backend leaves a: a's flow to it goes at the next
    // collection, b's stays.
    let s = r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[A6_WITHOUT_SHARED, B6])]);
    assert_eq!((s.purges_queued, s.errors.len()), (1, 0), "{s:?}");
    let gc = r.collect_conntrack(&CtTimeouts::DEFAULT, NOW).unwrap();
    assert_eq!((gc.purged, gc.invalid, gc.deleted, gc.remaining), (2, 0, 2, 6), "{gc:?}");
    assert_eq!(
        flows_of::<Ipv6Addr>(r.maps()),
        [
            "reply [fd00:244::10]:5353 -> [fd00:10:244::b]:5002",
            "reply [fd00:244::11]:5353 -> [fd00:10:244::b]:5001",
            "service [fd00:10:244::b]:5001 -> [fd00:96::71]:53",
            "service [fd00:10:244::b]:5002 -> [fd00:96::72]:53",
        ]
    );

    // b goes: its flow is invalid and is deleted.
    assert!(r.apply_dual(&[&desired(&[WEB4])], &[&desired6(&[A6_WITHOUT_SHARED])]).errors.is_empty());
    let gc = r.collect_conntrack(&CtTimeouts::DEFAULT, NOW).unwrap();
    assert_eq!((gc.invalid, gc.deleted, gc.remaining), (2, 2, 4), "{gc:?}");
    assert_eq!(
        flows_of::<Ipv6Addr>(r.maps()),
        ["reply [fd00:244::11]:5353 -> [fd00:10:244::b]:5001", "service [fd00:10:244::b]:5001 -> [fd00:96::71]:53"]
    );

    // A collection that fails on the IPv6 map is reported with its name.
    r.maps_mut().inject(Fault::on(MapKind::CtAny6, Op::Read));
    let e = r.collect_conntrack(&CtTimeouts::DEFAULT, NOW).unwrap_err();
    assert!(matches!(e, MapsError::Batch { name: "LB6_CT_ANY", .. }), "{e}");
    r.maps_mut().heal();

    // Past the UDP timeout, both families' flows time out.
    let gc = r.collect_conntrack(&CtTimeouts::DEFAULT, NOW + 3_600_000_000_000).unwrap();
    assert_eq!((gc.deleted, gc.remaining), (4, 0), "{gc:?}");
    assert!(flows_of::<Ipv6Addr>(r.maps()).is_empty());
}

/// `Reconciler::allows`, which decides whether a host socket connected to
/// a backend may go on: a frontend allows its backends, a terminating one
/// it still keeps included, and nothing else: not a backend it lost (even
/// one another frontend still has), not under an ID that now names
/// another address, and nothing once it is gone.
#[test]
fn a_frontend_allows_its_backends_and_nothing_else() {
    let mut r = reconciler();
    let dns = "10.96.0.2:53/UDP dns = 10.244.1.3:53 10.244.1.4:53~";
    let other = "10.96.0.3:53/UDP other = 10.244.1.5:53";
    assert!(r.apply(&desired(&[dns, other])).errors.is_empty());
    let id = r.frontend_id(&frontend(dns).addr).unwrap();
    let at = (Ipv4Addr::new(10, 96, 0, 2), 53);
    let be = |last: u8| BackendAddr { ip: Ipv4Addr::new(10, 244, 1, last), port: 53, proto: Protocol::Udp };
    assert!(r.allows(id, at, &be(3)));
    assert!(r.allows(id, at, &be(4)), "a terminating backend it keeps");
    assert!(!r.allows(id, at, &be(5)), "another frontend's backend");
    assert!(!r.allows(id, (Ipv4Addr::new(10, 96, 0, 3), 53), &be(3)), "the ID with another address");

    let shrunk = "10.96.0.2:53/UDP dns = 10.244.1.4:53";
    let other2 = "10.96.0.3:53/UDP other = 10.244.1.5:53 10.244.1.3:53";
    assert!(r.apply(&desired(&[shrunk, other2])).errors.is_empty());
    assert!(!r.allows(id, at, &be(3)), "a backend it lost, though another frontend has it");
    assert!(r.allows(id, at, &be(4)));
    assert!(r.apply(&desired(&[other2])).errors.is_empty());
    assert!(!r.allows(id, at, &be(4)), "a frontend that is gone");

    // An externalTrafficPolicy: Local address has two entries: each ID
    // allows its own entry's backends.
    let external = "192.168.1.10:30053/UDP np nodeport local hasinternal = 10.244.1.3:53";
    let internal = "192.168.1.10:30053/UDP np nodeport internal = 10.244.1.3:53 10.244.2.3:53";
    assert!(r.apply(&desired(&[other2, external, internal])).errors.is_empty());
    let (ext, int) = (r.frontend_id(&frontend(external).addr).unwrap(), r.frontend_id(&frontend(internal).addr).unwrap());
    let at = (Ipv4Addr::new(192, 168, 1, 10), 30053);
    let remote = BackendAddr { ip: Ipv4Addr::new(10, 244, 2, 3), port: 53, proto: Protocol::Udp };
    assert!(r.allows(ext, at, &be(3)) && r.allows(int, at, &be(3)));
    assert!(r.allows(int, at, &remote), "the in-cluster entry's backend on another node");
    assert!(!r.allows(ext, at, &remote), "which the external entry does not have");
    let tcp = BackendAddr { proto: Protocol::Tcp, ..be(3) };
    assert!(!r.allows(int, at, &tcp), "nor over another protocol");
}

/// An apply told where the desired state changed (as a sync that patched
/// its plan tells it) writes the very maps and ops an apply that looks at
/// every frontend writes, through additions, changes, removals and a
/// later part's frontend replacing an earlier one's.
#[test]
fn an_apply_told_what_changed_writes_what_a_whole_apply_writes() {
    const API2: &str = "10.96.0.2:443/TCP api = 10.244.1.2:8080";
    let steps: Vec<[Desired; 2]> = vec![
        [desired(&[WEB, DNS]), desired(&[])],
        [desired(&[WEB, DNS, API]), desired(&[])],
        [desired(&[WEB3, DNS, API]), desired(&[])],
        [desired(&[WEB3, DNS, API]), desired(&[API2])],
        [desired(&[WEB3, API]), desired(&[API2])],
        [desired(&[WEB3, API]), desired(&[])],
        [desired(&[WEB_MAGLEV, API, NP_LOCAL, NP_IN_CLUSTER]), desired(&[])],
        [desired(&[WEB_MAGLEV13, API, NP_IN_CLUSTER]), desired(&[WEB3])],
        [desired(&[]), desired(&[])],
    ];
    let (mut told, mut whole) = (reconciler(), reconciler());
    let no_ipv6 = BTreeSet::new();
    let mut before: [Desired; 2] = Default::default();
    for (i, step) in steps.iter().enumerate() {
        let parts: Vec<&Desired> = step.iter().collect();
        let changed = model::differing(&model::merged(&before.iter().collect::<Vec<_>>()), &model::merged(&parts));
        let s = told.apply_changed(&parts, &[], Some((&changed, &no_ipv6)));
        let w = whole.apply_all(&parts);
        assert!(s.errors.is_empty() && w.errors.is_empty(), "step {i}: {:?} {:?}", s.errors, w.errors);
        assert_eq!(dump(told.maps()).unwrap(), dump(whole.maps()).unwrap(), "step {i}");
        assert_eq!((s.ops, s.added, s.updated, s.removed), (w.ops, w.added, w.updated, w.removed), "step {i}");
        before = step.clone();
    }
}

/// A frontend whose write failed keeps its previous state; the next apply
/// writes it although it is told nothing changed, and the ones after, told
/// nothing again, write nothing more (but the old slots' deletion).
#[test]
fn a_frontend_that_failed_is_written_by_the_next_apply_whatever_it_is_told() {
    let (before, after) = (desired(&[WEB, DNS]), desired(&[WEB3, DNS]));
    let (web, nothing, no_ipv6) = (BTreeSet::from([frontend(WEB).addr]), BTreeSet::new(), BTreeSet::new());
    let mut r = reconciler();
    assert!(r.apply(&before).errors.is_empty());
    r.maps_mut().inject(Fault::any_write());
    let s = r.apply_changed(&[&after], &[], Some((&web, &no_ipv6)));
    assert!(!s.errors.is_empty(), "the write failed");
    r.maps_mut().heal();
    let s = r.apply_changed(&[&after], &[], Some((&nothing, &no_ipv6)));
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(view(r.maps()), view(reference(&[&before, &after]).maps()));
    let s = r.apply_changed(&[&after], &[], Some((&nothing, &no_ipv6)));
    assert_eq!((s.added, s.updated, s.removed), (0, 0, 0), "{s:?}");
    let s = r.apply_changed(&[&after], &[], Some((&nothing, &no_ipv6)));
    assert_eq!(s.ops, 0, "{s:?}");
}
