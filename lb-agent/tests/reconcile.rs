//! The reconciler against real pinned maps: a change costs only its own
//! writes however many Services are installed, a backend shared by several
//! frontends lives as long as one uses it (with the union of their flags),
//! a restarted agent takes the maps over without rewriting them, and the
//! in-memory maps the root-free tests use (`reconcile_fake.rs`) answer as
//! the kernel's do, full maps and failures included.

mod common;

use std::collections::BTreeMap;

use common::{Loaded, PinDir, frontend, kernel_tests_enabled};
use lb_agent::{
    datapath::{Datapath, MapSizes},
    maps::Maps,
    model::{Desired, Frontend, FrontendAddr, Protocol},
    reconcile::{
        MapKind, MapStore, Reconciler, Stats,
        dump::dump,
        fake::{FakeMaps, Fault, Faulty, Op},
    },
};
use lb_common::{Backend4, backend_flags, svc_flags};

const SHARED: &str = "10.244.9.9:8080";

/// Service `i` at 10.96.1.i:80 with two backends of its own and the
/// shared one.
fn service(i: u8) -> (FrontendAddr, Frontend) {
    let own = [format!("10.244.1.{i}:8080"), format!("10.244.2.{i}:8080")];
    frontend(&format!("10.96.1.{i}:80"), Protocol::Tcp, &[&own[0], &own[1], SHARED])
}

fn services(range: std::ops::Range<u8>) -> Desired {
    range.map(service).collect()
}

/// LB4_BACKENDS as address -> flags.
fn backends(maps: &Maps) -> BTreeMap<String, u8> {
    maps.backends
        .slots()
        .unwrap()
        .into_iter()
        .filter(|(_, b)| b.addr != 0)
        .map(|(_, b)| {
            let ip = std::net::Ipv4Addr::from(b.addr.to_ne_bytes());
            (format!("{ip}:{}", u16::from_be(b.port)), b.flags)
        })
        .collect()
}

#[test]
fn a_change_writes_only_its_own_entries_and_shared_backends_follow_their_users() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut l = Loaded::new("reconcile", services(1..16));
    assert_eq!(backends(l.reconciler.maps()).len(), 2 * 15 + 1);

    // The same state again: nothing to write.
    let s = l.reconciler.apply(&services(1..16));
    assert_eq!((s.ops, s.added, s.updated, s.removed), (0, 0, 0, 0), "{s:?}");

    // +1 Service: its address, two new backends, rev-NAT, name, three
    // slots and the frontend entry; nothing of the fifteen others.
    let s = l.reconciler.apply(&services(1..17));
    assert_eq!((s.added, s.updated, s.removed), (1, 0, 0), "{s:?}");
    assert_eq!(s.ops, 1 + 2 + 1 + 1 + 3 + 1, "{s:?}");

    // One frontend marks the shared backend terminating: the entry carries
    // the flag while any user says so, and loses it when none does.
    let mut d = services(1..17);
    let (fa, _) = service(3);
    d.get_mut(&fa).unwrap().backends[2].terminating = true;
    l.reconciler.apply(&d);
    assert_eq!(backends(l.reconciler.maps())[SHARED], backend_flags::TERMINATING);
    let s = l.reconciler.apply(&services(1..17));
    assert_eq!(backends(l.reconciler.maps())[SHARED], 0, "{s:?}");

    // Remove all but one Service: their own backends go, the shared one
    // stays for the last user; then it goes with it.
    let s = l.reconciler.apply(&services(7..8));
    assert_eq!(s.removed, 15, "{s:?}");
    let left: Vec<String> = backends(l.reconciler.maps()).into_keys().collect();
    assert_eq!(left, ["10.244.1.7:8080", "10.244.2.7:8080", SHARED]);
    let s = l.reconciler.apply(&Desired::new());
    assert_eq!(s.removed, 1);
    assert!(backends(l.reconciler.maps()).is_empty(), "{s:?}");
    assert!(l.reconciler.maps().vips.entries().unwrap().is_empty(), "no frontend address left");
    // Its slots go a sync later (a packet that read the frontend just
    // before still finds them).
    assert_eq!(l.reconciler.maps().slots.entries().unwrap().len(), 3);
    l.reconciler.apply(&Desired::new());
    assert!(l.reconciler.maps().slots.entries().unwrap().is_empty());
}

#[test]
fn a_restarted_reconciler_rewrites_nothing_and_drops_orphans() {
    if !kernel_tests_enabled() {
        return;
    }
    let l = Loaded::new("reconcile-restart", services(1..9));
    let before = backends(l.reconciler.maps());
    let ids_before: Vec<u32> = (1..9).map(|i| l.reconciler.frontend_id(&service(i).0).unwrap()).collect();
    // An orphan, as an interrupted run could leave behind.
    let mut maps = Maps::open(&l.pins.0).unwrap();
    let orphan = Backend4 { addr: u32::from_ne_bytes([10, 244, 7, 7]), port: 80u16.to_be(), proto: 6, flags: 0, version: 1, _pad: 0 };
    maps.backends.set(60, &orphan).unwrap();

    // A new reconciler over the same pins, as after an agent restart.
    let mut r = Reconciler::recover(maps).unwrap();
    let s = r.apply(&services(1..9));
    assert_eq!((s.added, s.updated, s.removed), (0, 0, 0), "{s:?}");
    assert_eq!(s.ops, 1, "only the orphan is deleted: {s:?}");
    assert_eq!(backends(r.maps()), before);
    let ids_after: Vec<u32> = (1..9).map(|i| r.frontend_id(&service(i).0).unwrap()).collect();
    assert_eq!(ids_after, ids_before);
    // And it goes on incrementally from there.
    let s = r.apply(&services(1..10));
    assert_eq!((s.added, s.ops), (1, 1 + 2 + 1 + 1 + 3 + 1), "{s:?}");
}

/// One apply with `fault` (only) in force; what it did and the maps after.
fn step<M: MapStore>(r: &mut Reconciler<Faulty<M>>, d: &Desired, fault: &Option<Fault>) -> (Stats, String) {
    r.maps_mut().heal();
    if let Some(f) = fault {
        r.maps_mut().inject(f.clone());
    }
    let s = r.apply(d);
    (s, dump(r.maps()).unwrap())
}

/// The same applies through the pinned maps and through `FakeMaps`: the
/// same writes, errors and map dumps at every step, a slots map that fills
/// in the middle of an update and a failed flip (through `Faulty` over
/// either) included. This is what lets `reconcile_fake.rs` stand for the
/// kernel.
#[test]
fn the_fake_maps_answer_as_the_pinned_maps() {
    if !kernel_tests_enabled() {
        return;
    }
    let pins = PinDir::new("reconcile-fake");
    // Room for six slots: an update of a three-backend frontend while
    // four are in use fills the map half way.
    let sizes = MapSizes { services: 8, backends: 8, slots: 6, ct_tcp: 64, ct_any: 64, affinity: 16, ..MapSizes::default() };
    let _dp = Datapath::load(&pins.0, &sizes).unwrap_or_else(|e| panic!("loading the datapath: {e:#}"));
    let mut real = Reconciler::recover(Faulty::new(Maps::open(&pins.0).unwrap())).unwrap();
    let mut fake = Reconciler::recover(Faulty::new(FakeMaps::new(&sizes))).unwrap();
    real.set_maglev_m(7);
    fake.set_maglev_m(7);

    let web = |backends: &[&str], flags: u32| {
        let (a, mut f) = frontend("10.96.0.1:80", Protocol::Tcp, backends);
        f.flags = flags;
        (a, f)
    };
    let dns = frontend("10.96.0.10:53", Protocol::Udp, &["10.244.2.1:53", "10.244.2.2:53"]);
    let two = ["10.244.1.1:8080", "10.244.1.2:8080"];
    let three = ["10.244.1.1:8080", "10.244.1.3:8080", "10.244.1.4:8080"];
    let mut terminating = web(&two, 0);
    terminating.1.backends[0].terminating = true;
    let steps: Vec<(&str, Desired, Option<Fault>)> = vec![
        ("add", [web(&two, svc_flags::MAGLEV), dns.clone()].into_iter().collect(), None),
        ("slots full mid-update", [web(&three, svc_flags::MAGLEV)].into_iter().collect(), None),
        ("room again", [web(&three, svc_flags::MAGLEV)].into_iter().collect(), None),
        ("flip fails", [web(&two, 0)].into_iter().collect(), Some(Fault::on(MapKind::Services, Op::Update))),
        ("healed", [web(&two, 0)].into_iter().collect(), None),
        ("terminating", [terminating].into_iter().collect(), None),
        ("empty", Desired::new(), None),
        ("settled", Desired::new(), None),
    ];
    for (name, d, fault) in &steps {
        let (a, dump_a) = step(&mut real, d, fault);
        let (b, dump_b) = step(&mut fake, d, fault);
        assert_eq!(dump_a, dump_b, "{name}: the pinned maps (left) and the fake (right) differ");
        assert_eq!(a.errors, b.errors, "{name}");
        assert_eq!(
            (a.ops, a.added, a.updated, a.removed, a.maglev_tables),
            (b.ops, b.added, b.updated, b.removed, b.maglev_tables),
            "{name}"
        );
        match *name {
            "slots full mid-update" => assert!(a.errors[0].contains("map LB4_SLOTS is full (6 entries)"), "{:?}", a.errors),
            "flip fails" => assert!(a.errors[0].contains("writing map LB4_SERVICES failed"), "{:?}", a.errors),
            _ => assert!(a.errors.is_empty(), "{name}: {:?}", a.errors),
        }
    }
}
