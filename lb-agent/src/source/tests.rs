use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn svc(name: &str, ip: &str) -> Object {
    let obj = Service {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec { cluster_ip: Some(ip.into()), ..Default::default() }),
        ..Default::default()
    };
    Object::Service(Box::new(Sourced { origin: String::new(), obj }))
}

fn key(name: &str) -> ObjectKey {
    ObjectKey { namespace: "ns".into(), name: name.into() }
}

fn invalid(name: &str) -> Invalid {
    Invalid { kind: Kind::Service, key: Some(key(name)), problem: format!("Service ns/{name}: bad") }
}

fn names(store: &Store) -> Vec<String> {
    store.services().map(|s| s.obj.metadata.name.clone().unwrap()).collect()
}

fn ip(store: &Store, name: &str) -> String {
    store.services.get(&key(name)).and_then(|s| s.obj.spec.as_ref()?.cluster_ip.clone()).unwrap()
}

#[test]
fn ready_only_after_both_kinds_are_listed() {
    let mut store = Store::default();
    store.apply(Update::Applied(svc("a", "10.0.0.1")));
    assert!(!store.ready());
    store.apply(Update::Listed { kind: Kind::Service, objects: vec![svc("a", "10.0.0.1")], invalid: vec![] });
    assert!(!store.ready());
    store.apply(Update::Listed { kind: Kind::EndpointSlice, objects: vec![], invalid: vec![] });
    assert!(store.ready());
}

#[test]
fn relist_replaces_and_invalid_objects_keep_their_last_valid_version() {
    let mut store = Store::default();
    store.apply(Update::Listed {
        kind: Kind::Service,
        objects: vec![svc("a", "10.0.0.1"), svc("b", "10.0.0.2"), svc("c", "10.0.0.3")],
        invalid: vec![],
    });
    // A watch event turns b invalid: its old version stays.
    store.apply(Update::Invalid(invalid("b")));
    assert_eq!(names(&store), ["a", "b", "c"]);
    assert_eq!(store.skipped(), 1);
    // A relist without c (deleted while the watch was down), with b still
    // invalid and a new invalid d.
    store.apply(Update::Listed { kind: Kind::Service, objects: vec![svc("a", "10.0.0.9")], invalid: vec![invalid("b"), invalid("d")] });
    assert_eq!(names(&store), ["a", "b"]);
    assert_eq!(ip(&store, "a"), "10.0.0.9");
    assert_eq!(store.skipped(), 2);
    // A valid b clears its problem; deleting d clears the other.
    store.apply(Update::Applied(svc("b", "10.0.0.8")));
    store.apply(Update::Deleted { kind: Kind::Service, key: key("d") });
    assert_eq!(store.skipped(), 0);
    assert_eq!(ip(&store, "b"), "10.0.0.8");
    store.apply(Update::Deleted { kind: Kind::Service, key: key("b") });
    assert_eq!(names(&store), ["a"]);
}

#[test]
fn duplicate_in_a_list_keeps_the_first() {
    let mut store = Store::default();
    store.apply(Update::Listed { kind: Kind::Service, objects: vec![svc("a", "10.0.0.1"), svc("a", "10.0.0.2")], invalid: vec![] });
    assert_eq!(ip(&store, "a"), "10.0.0.1");
    assert_eq!(store.skipped(), 1);
}

fn timed_slice(name: &str, service: &str, secs: u64) -> Object {
    let obj = Slice {
        namespace: Some("ns".into()),
        name: Some(name.into()),
        service: Some(service.into()),
        address_type: "IPv4".into(),
        trigger_time: (secs > 0).then(|| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)),
        ..Default::default()
    };
    Object::EndpointSlice(Sourced { origin: String::new(), obj })
}

fn trigger_secs(store: &mut Store) -> Vec<u64> {
    let mut v: Vec<u64> = store.take_trigger_times().iter().map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).collect();
    v.sort();
    v
}

#[test]
fn trigger_times_of_changed_slices_are_taken_once() {
    let mut store = Store::default();
    // A list: every slice with a trigger time is a change.
    store.apply(Update::Listed {
        kind: Kind::EndpointSlice,
        objects: vec![timed_slice("a-1", "a", 10), timed_slice("b-1", "b", 0)],
        invalid: vec![],
    });
    assert_eq!(trigger_secs(&mut store), [10]);
    assert_eq!(trigger_secs(&mut store), [] as [u64; 0], "taken once");
    // A relist with nothing new is no change.
    store.apply(Update::Listed {
        kind: Kind::EndpointSlice,
        objects: vec![timed_slice("a-1", "a", 10), timed_slice("b-1", "b", 0)],
        invalid: vec![],
    });
    assert_eq!(trigger_secs(&mut store), [] as [u64; 0]);
    // Updates, one of them repeated unchanged, one without annotation.
    store.apply(Update::Applied(timed_slice("a-1", "a", 20)));
    store.apply(Update::Applied(timed_slice("a-1", "a", 20)));
    store.apply(Update::Applied(timed_slice("a-2", "a", 21)));
    store.apply(Update::Applied(timed_slice("c-1", "c", 30)));
    store.apply(Update::Applied(timed_slice("b-1", "b", 0)));
    assert_eq!(trigger_secs(&mut store), [20, 21, 30]);
    // A deletion drops its Service's pending changes (as kube-proxy).
    store.apply(Update::Applied(timed_slice("a-1", "a", 40)));
    store.apply(Update::Applied(timed_slice("c-1", "c", 41)));
    store.apply(Update::Deleted { kind: Kind::EndpointSlice, key: key("a-2") });
    assert_eq!(trigger_secs(&mut store), [41]);
}
