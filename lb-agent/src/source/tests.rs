use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn svc(name: &str, ip: &str) -> Object {
    let obj = Service {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec { cluster_ip: Some(ip.into()), ..Default::default() }),
        ..Default::default()
    };
    Object::Service(Sourced { origin: String::new(), obj })
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
