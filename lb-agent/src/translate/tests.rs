use super::*;
use crate::model::{BackendSelection, ServiceRef, TrafficPolicy};
use crate::source::manifest::{Objects, parse_into};
use std::net::{IpAddr, Ipv6Addr};

fn run(yaml: &str) -> Translation {
    let mut objects = Objects::default();
    parse_into("t.yaml", yaml, &mut objects);
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    translate(&objects.services, &objects.slices, &TranslateOptions::default())
}

fn fe(ip: &str, port: u16, proto: Protocol) -> FrontendAddr {
    FrontendAddr::new(ip.parse().unwrap(), port, proto)
}

fn backend_strings(t: &Translation, addr: FrontendAddr) -> Vec<String> {
    t.desired[&addr].slot_backends().map(|b| format!("{}{}", b.addr, if b.terminating { " T" } else { "" })).collect()
}

const MULTI_PORT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: web, protocol: TCP}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.0.12]
  conditions: {ready: true}
- addresses: [10.244.0.13]
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.0.14]
- addresses: [10.244.0.12]
  conditions: {ready: true}
"#;

#[test]
fn multi_port_named_ports_merged_slices() {
    let t = run(MULTI_PORT);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    assert_eq!(t.desired.len(), 2);
    let http = fe("10.96.0.10", 80, Protocol::Tcp);
    // targetPort "web" is ignored: the slice port named like the
    // ServicePort ("http") gives 8080. 10.244.0.12 is deduplicated across
    // slices; a nil `ready` counts as ready; terminating is left out while
    // something is ready.
    assert_eq!(backend_strings(&t, http), ["10.244.0.12:8080", "10.244.0.14:8080"]);
    assert_eq!(t.desired[&http].name, "demo/web:http");
    // The terminating endpoint is carried for its established flows.
    let all: Vec<_> = t.desired[&http].backends.iter().map(|b| (b.addr.to_string(), b.terminating)).collect();
    assert_eq!(all.last().unwrap(), &("10.244.0.13:8080".to_string(), true));
    let dns = fe("10.96.0.10", 53, Protocol::Udp);
    assert_eq!(backend_strings(&t, dns), ["10.244.0.12:5353", "10.244.0.14:5353"]);
}

#[test]
fn terminating_endpoints_used_only_when_nothing_is_ready() {
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.0.13]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [10.244.0.15]
  conditions: {ready: false, serving: false, terminating: true}
- addresses: [10.244.0.16]
  conditions: {ready: false}
"#);
    let addr = fe("10.96.0.20", 80, Protocol::Tcp);
    assert_eq!(backend_strings(&t, addr), ["10.244.0.13:8080 T"]);
    assert_eq!(t.desired[&addr].name, "default/s:80");
}

#[test]
fn no_matching_port_name_means_no_backends() {
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: a}
spec: {clusterIP: 10.96.0.30, ports: [{name: grpc, port: 9000, targetPort: grpc}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: a, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.0.12]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: other, namespace: b, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: grpc, port: 9000}]
endpoints: [{addresses: [10.244.0.99]}]
"#);
    // The frontend exists (so it rejects), with no backend: the slice in
    // namespace b belongs to another Service.
    assert!(t.desired[&fe("10.96.0.30", 9000, Protocol::Tcp)].backends.is_empty());
}

#[test]
fn services_that_are_not_ours() {
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.com}
---
apiVersion: v1
kind: Service
metadata: {name: other-proxy, labels: {service.kubernetes.io/service-proxy-name: foo}}
spec: {clusterIP: 10.96.0.40, ports: [{port: 80}]}
"#);
    assert!(t.desired.is_empty(), "{:?}", t.desired);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
}

#[test]
fn invalid_fields_are_named_and_the_rest_applies() {
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: badip, namespace: x}
spec: {clusterIP: 10.96.0.999, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ports, namespace: x}
spec:
  clusterIP: 10.96.0.50
  ports:
  - {name: a, port: 0}
  - {name: b, port: 70000}
  - {name: c, port: 9, protocol: SCTP}
  - {name: d, port: 80}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ports-1, namespace: x, labels: {kubernetes.io/service-name: ports}}
addressType: IPv4
ports: [{name: d, port: 8080}]
endpoints:
- addresses: [not-an-ip]
- addresses: [10.244.0.12]
"#);
    let problems: Vec<_> = t.problems.iter().cloned().collect();
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(has("Service x/badip: field spec.clusterIP[0]: invalid IP address \"10.96.0.999\""), "{problems:#?}");
    assert!(has("Service x/ports: field spec.ports[0].port: 0 is not a port"), "{problems:#?}");
    assert!(has("field spec.ports[1].port: 70000 is not a port"), "{problems:#?}");
    assert!(has("field spec.ports[2].protocol: SCTP is not supported"), "{problems:#?}");
    assert!(has("EndpointSlice x/ports-1: field endpoints[0].addresses[0]"), "{problems:#?}");
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert_eq!(t.desired.len(), 1);
    assert_eq!(backend_strings(&t, fe("10.96.0.50", 80, Protocol::Tcp)), ["10.244.0.12:8080"]);
}

#[test]
fn dual_clusterips_give_a_frontend_per_family() {
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: ds}
spec: {clusterIP: 10.96.0.60, clusterIPs: [10.96.0.60, "fd00::60"], ports: [{port: 80}]}
"#);
    assert_eq!(t.desired.keys().copied().collect::<Vec<_>>(), [fe("10.96.0.60", 80, Protocol::Tcp)]);
    let v6: Vec<String> = t.desired6.keys().map(ToString::to_string).collect();
    assert_eq!(v6, ["[fd00::60]:80/TCP"]);
}

fn run_with(yaml: &str, opts: &TranslateOptions) -> Translation {
    let mut objects = Objects::default();
    parse_into("t.yaml", yaml, &mut objects);
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    translate(&objects.services, &objects.slices, opts)
}

const FULL: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: lb
  namespace: prod
  annotations: {lb.dev/backend-selection: maglev}
spec:
  type: LoadBalancer
  clusterIP: 10.96.1.1
  clusterIPs: [10.96.1.1, "fd00::1"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: PreferDualStack
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 31000
  externalIPs: [192.0.2.10]
  loadBalancerSourceRanges: [203.0.113.0/24]
  ports:
  - {name: http, port: 80, nodePort: 30080}
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.7}, {hostname: lb.example.com}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: prod, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.1.5]
  nodeName: node-a
  zone: zone-1
"#;

#[test]
fn service_semantics_become_flags_and_model() {
    let t = run(FULL);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let fe = &t.desired[&fe("10.96.1.1", 80, Protocol::Tcp)];
    use lb_common::svc_flags::*;
    assert_eq!(fe.flags, AFFINITY | MAGLEV | EXT_LOCAL | INT_LOCAL);
    assert_eq!(fe.affinity_timeout, 300);
    assert_eq!(fe.backends[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(fe.backends[0].zone.as_deref(), Some("zone-1"));
    // Only the ClusterIPs are frontends for now: one per family; the
    // IPv6 one has no endpoints (no IPv6 slice), so it rejects.
    assert_eq!(t.desired.len(), 1);
    let fe6 = &t.desired6[&FrontendAddr::new("fd00::1".parse().unwrap(), 80, Protocol::Tcp)];
    assert!(fe6.backends.is_empty());
    assert_eq!(fe6.flags, fe.flags);

    let m = &t.services[&ServiceRef { namespace: "prod".into(), name: "lb".into() }];
    assert_eq!(m.service_type, ServiceType::LoadBalancer);
    assert_eq!(m.cluster_ips.len(), 2);
    assert_eq!(m.ip_families, ["IPv4", "IPv6"]);
    assert_eq!(m.ip_family_policy.as_deref(), Some("PreferDualStack"));
    assert_eq!(m.ports[0].node_port, Some(30080));
    assert_eq!(m.external_ips, ["192.0.2.10".parse::<IpAddr>().unwrap()]);
    assert_eq!(m.load_balancer_ips, ["198.51.100.7".parse::<IpAddr>().unwrap()]);
    assert_eq!(m.source_ranges[0].to_string(), "203.0.113.0/24");
    assert_eq!(m.health_check_node_port, Some(31000));
    assert_eq!(m.external_traffic_policy, TrafficPolicy::Local);
    assert_eq!(m.backend_selection, BackendSelection::Maglev);
    assert_ne!(m.flags & SOURCE_RANGES, 0);
}

#[test]
fn affinity_default_timeout_and_agent_default_selection() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {clusterIP: 10.96.2.1, sessionAffinity: ClientIP, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, annotations: {lb.dev/backend-selection: random}}
spec: {clusterIP: 10.96.2.2, ports: [{port: 80}]}
"#;
    let maglev = TranslateOptions { default_selection: BackendSelection::Maglev };
    let t = run_with(yaml, &maglev);
    let a = &t.desired[&fe("10.96.2.1", 80, Protocol::Tcp)];
    assert_eq!(a.affinity_timeout, DEFAULT_AFFINITY_TIMEOUT);
    assert_eq!(a.flags, lb_common::svc_flags::AFFINITY | lb_common::svc_flags::MAGLEV);
    // The annotation overrides the agent default.
    assert_eq!(t.desired[&fe("10.96.2.2", 80, Protocol::Tcp)].flags, 0);
    let t = run(yaml);
    assert_eq!(t.desired[&fe("10.96.2.1", 80, Protocol::Tcp)].flags, lb_common::svc_flags::AFFINITY);
}

#[test]
fn invalid_north_south_fields_are_named() {
    let t = run_with(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: bad
  namespace: ns
  annotations: {lb.dev/backend-selection: roundrobin}
spec:
  type: LoadBalancer
  clusterIP: 10.96.3.1
  externalIPs: [192.0.2.300]
  loadBalancerSourceRanges: [10.0.0.0/33, nonsense]
  healthCheckNodePort: 70000
  externalTrafficPolicy: Sometimes
  ipFamilies: [IPv5]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}
  ports: [{port: 80, nodePort: 99999}]
status:
  loadBalancer: {ingress: [{ip: not-an-ip}]}
"#,
        &TranslateOptions { default_selection: BackendSelection::Maglev },
    );
    let problems: Vec<_> = t.problems.iter().cloned().collect();
    for needle in [
        "Service ns/bad: annotation lb.dev/backend-selection: \"roundrobin\"",
        "Service ns/bad: field spec.externalIPs[0]",
        "Service ns/bad: field spec.loadBalancerSourceRanges[0]",
        "Service ns/bad: field spec.loadBalancerSourceRanges[1]",
        "Service ns/bad: field spec.healthCheckNodePort: 70000",
        "Service ns/bad: field spec.externalTrafficPolicy",
        "Service ns/bad: field spec.ipFamilies[0]",
        "Service ns/bad: field spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0",
        "Service ns/bad: field spec.ports[0].nodePort: 99999",
        "Service ns/bad: field status.loadBalancer.ingress[0].ip",
    ] {
        assert!(problems.iter().any(|p| p.contains(needle)), "missing {needle:?} in {problems:#?}");
    }
    assert_eq!(problems.len(), 10, "{problems:#?}");
    // The ClusterIP frontend still works, with the agent default (maglev)
    // for the invalid annotation.
    let f = &t.desired[&fe("10.96.3.1", 80, Protocol::Tcp)];
    assert_eq!(f.flags, lb_common::svc_flags::AFFINITY | lb_common::svc_flags::MAGLEV);
    assert_eq!(f.affinity_timeout, DEFAULT_AFFINITY_TIMEOUT);
}

#[test]
fn ipv6_endpoint_in_an_ipv4_slice_is_named() {
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec: {clusterIP: 10.96.4.1, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: x, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: ["fd00::5"]
- addresses: [10.244.4.5]
"#);
    let problems: Vec<_> = t.problems.iter().cloned().collect();
    assert!(
        problems.iter().any(|p| p.contains("EndpointSlice x/s-1: field endpoints[0].addresses[0]") && p.contains("IPv6")),
        "{problems:#?}"
    );
    assert_eq!(backend_strings(&t, fe("10.96.4.1", 80, Protocol::Tcp)), ["10.244.4.5:8080"]);
}

mod incremental {
    use super::*;
    use crate::source::{Kind, Object, ObjectKey, Store, Update};

    fn objects(yaml: &str) -> Vec<Object> {
        let mut o = Objects::default();
        parse_into("t.yaml", yaml, &mut o);
        assert!(o.problems.is_empty(), "{:?}", o.problems);
        o.services.into_iter().map(|s| Object::Service(Box::new(s))).chain(o.slices.into_iter().map(Object::EndpointSlice)).collect()
    }

    fn service(name: &str, ip: &str, endpoints: &[&str]) -> String {
        let eps: String = endpoints.iter().map(|e| format!("- addresses: [{e}]\n")).collect();
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: x, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{eps}"
        )
    }

    /// The incremental translation equals a full one of the same store.
    fn check(t: &mut Translator, store: &mut Store) {
        let services: Vec<_> = store.services().cloned().collect();
        let slices: Vec<_> = store.slices().cloned().collect();
        let full = translate(&services, &slices, &TranslateOptions::default());
        let inc = t.update(store, &TranslateOptions::default());
        assert_eq!(inc.desired, full.desired);
        assert_eq!(inc.desired6, full.desired6);
        assert_eq!(inc.services, full.services);
        assert_eq!(inc.problems, full.problems);
    }

    fn listed(store: &mut Store, yaml: &str) {
        let (svcs, slices): (Vec<Object>, Vec<Object>) = objects(yaml).into_iter().partition(|o| o.kind() == Kind::Service);
        store.apply(Update::Listed { kind: Kind::Service, objects: svcs, invalid: vec![] });
        store.apply(Update::Listed { kind: Kind::EndpointSlice, objects: slices, invalid: vec![] });
    }

    #[test]
    fn follows_every_kind_of_change_like_a_full_translation() {
        let mut store = Store::default();
        let mut t = Translator::default();
        let base = [
            service("a", "10.96.0.1", &["10.244.0.1", "10.244.0.2"]),
            service("b", "10.96.0.2", &["10.244.0.3"]),
            service("c", "10.96.0.3", &[]),
            format!("---{MULTI_PORT}"),
        ]
        .concat();
        listed(&mut store, &base);
        check(&mut t, &mut store);
        assert_eq!(t.translation().desired.len(), 5);

        // Nothing changed: nothing to redo, same result.
        check(&mut t, &mut store);

        // An endpoint added to one slice.
        for o in objects(&service("a", "10.96.0.1", &["10.244.0.1", "10.244.0.2", "10.244.0.9"])) {
            store.apply(Update::Applied(o));
        }
        check(&mut t, &mut store);
        assert_eq!(t.translation().desired[&fe("10.96.0.1", 80, Protocol::Tcp)].backends.len(), 3);

        // A slice moves to another Service (its label changes): both redo.
        let moved = service("c", "10.96.0.3", &["10.244.0.7"]).replace("name: c-1", "name: b-1");
        for o in objects(&moved) {
            if o.kind() == Kind::EndpointSlice {
                store.apply(Update::Applied(o));
            }
        }
        check(&mut t, &mut store);
        assert_eq!(backend_strings(t.translation(), fe("10.96.0.2", 80, Protocol::Tcp)), Vec::<String>::new());
        assert_eq!(backend_strings(t.translation(), fe("10.96.0.3", 80, Protocol::Tcp)), ["10.244.0.7:8080"]);

        // A Service deleted; an invalid one added (its problem comes and goes with it).
        store.apply(Update::Deleted { kind: Kind::Service, key: ObjectKey::new(Some("x"), Some("a")) });
        for o in objects(&service("bad", "not-an-ip", &[])) {
            store.apply(Update::Applied(o));
        }
        check(&mut t, &mut store);
        assert!(!t.translation().problems.is_empty());
        store.apply(Update::Deleted { kind: Kind::Service, key: ObjectKey::new(Some("x"), Some("bad")) });
        check(&mut t, &mut store);
        assert!(t.translation().problems.is_empty());

        // A relist that changes one Service and drops another.
        let relist =
            [service("b", "10.96.0.2", &["10.244.0.3", "10.244.0.4"]), service("c", "10.96.0.3", &[]), format!("---{MULTI_PORT}")].concat();
        listed(&mut store, &relist);
        check(&mut t, &mut store);
        assert_eq!(t.translation().desired.len(), 4);
    }

    /// An endpoint two slices of one Service list (during a migration
    /// between slices) takes its node from the first slice by name, in an
    /// incremental translation as in a full one, whatever order the slices
    /// came in.
    #[test]
    fn an_endpoint_in_two_slices_takes_the_first_slice_by_name_whatever_came_first() {
        let mut store = Store::default();
        let mut t = Translator::default();
        listed(&mut store, &service("a", "10.96.0.1", &[]));
        check(&mut t, &mut store);
        let slice = |name: &str, node: &str| {
            format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: x, labels: {{kubernetes.io/service-name: a}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n- addresses: [10.244.0.1]\n  nodeName: {node}\n"
            )
        };
        for yaml in [slice("a-z", "node-z"), slice("a-b", "node-b")] {
            for o in objects(&yaml) {
                store.apply(Update::Applied(o));
            }
            check(&mut t, &mut store);
        }
        let backends = &t.translation().desired[&fe("10.96.0.1", 80, Protocol::Tcp)].backends;
        assert_eq!(backends.len(), 1);
        assert_eq!(backends[0].node_name.as_deref(), Some("node-b"));
    }

    #[test]
    fn ipv6_frontends_follow_changes_and_conflicts_like_ipv4_ones() {
        let mut store = Store::default();
        let mut t = Translator::default();
        let dual = |name: &str, ip6: &str, eps: &[&str]| {
            let eps: String = eps.iter().map(|e| format!("- addresses: [\"{e}\"]\n")).collect();
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: x}}\nspec:\n  clusterIPs: [\"{ip6}\"]\n  ipFamilies: [IPv6]\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-6, namespace: x, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv6\nports: [{{name: http, port: 8080}}]\nendpoints:\n{eps}"
            )
        };
        let fe6 = |ip: &str| FrontendAddr::new(ip.parse::<Ipv6Addr>().unwrap(), 80, Protocol::Tcp);
        listed(&mut store, &[dual("a", "fd00:96::1", &["fd00:244::1"]), service("v4", "10.96.0.1", &["10.244.0.1"])].concat());
        check(&mut t, &mut store);
        assert_eq!(t.translation().desired6[&fe6("fd00:96::1")].backends[0].addr.to_string(), "[fd00:244::1]:8080");
        assert_eq!(t.translation().desired.len(), 1);
        // b claims a's IPv6 address: a keeps it, b is named in a problem.
        for o in objects(&dual("b", "fd00:96::1", &["fd00:244::2"])) {
            store.apply(Update::Applied(o));
        }
        let tr = t.update(&mut store, &TranslateOptions::default());
        assert_eq!(tr.desired6[&fe6("fd00:96::1")].name, "x/a:http");
        assert!(tr.problems.iter().any(|p| p.contains("Service x/b") && p.contains("[fd00:96::1]:80/TCP already belongs to x/a:http")));
        // a goes: b takes the address over; the IPv4 Service is untouched.
        store.apply(Update::Deleted { kind: Kind::Service, key: ObjectKey::new(Some("x"), Some("a")) });
        check(&mut t, &mut store);
        assert_eq!(t.translation().desired6[&fe6("fd00:96::1")].name, "x/b:http");
        assert_eq!(t.translation().desired6[&fe6("fd00:96::1")].backends[0].addr.to_string(), "[fd00:244::2]:8080");
        assert_eq!(t.translation().desired.len(), 1);
        store.apply(Update::Deleted { kind: Kind::Service, key: ObjectKey::new(Some("x"), Some("b")) });
        check(&mut t, &mut store);
        assert!(t.translation().desired6.is_empty());
    }

    #[test]
    fn a_taken_address_goes_to_the_other_service_once_freed() {
        let mut store = Store::default();
        let mut t = Translator::default();
        listed(&mut store, &service("a", "10.96.0.1", &["10.244.0.1"]));
        t.update(&mut store, &TranslateOptions::default());
        // b claims a's address: a keeps it, b is named in a problem.
        for o in objects(&service("b", "10.96.0.1", &["10.244.0.2"])) {
            store.apply(Update::Applied(o));
        }
        let tr = t.update(&mut store, &TranslateOptions::default());
        assert_eq!(tr.desired[&fe("10.96.0.1", 80, Protocol::Tcp)].name, "x/a:http");
        assert!(tr.problems.iter().any(|p| p.contains("Service x/b") && p.contains("already belongs to x/a:http")), "{:?}", tr.problems);
        // a goes: b takes the address, and the problem is gone.
        store.apply(Update::Deleted { kind: Kind::Service, key: ObjectKey::new(Some("x"), Some("a")) });
        check(&mut t, &mut store);
        assert_eq!(t.translation().desired[&fe("10.96.0.1", 80, Protocol::Tcp)].name, "x/b:http");
    }
}

#[test]
fn nil_serving_is_true() {
    // `serving` absent on a terminating, not-ready endpoint: the API's
    // default is true, so it serves when nothing is ready (it used to be
    // read as "same as ready", i.e. not serving).
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: 10.96.0.21, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.0.13]
  conditions: {ready: false, terminating: true}
- addresses: [10.244.0.14]
  conditions: {ready: false, serving: false, terminating: true}
"#);
    assert_eq!(backend_strings(&t, fe("10.96.0.21", 80, Protocol::Tcp)), ["10.244.0.13:8080 T"]);
}

#[test]
fn ingress_ips_in_proxy_mode_are_not_programmed() {
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec: {type: LoadBalancer, clusterIP: 10.96.0.22, trafficDistribution: PreferClose, ports: [{port: 80, nodePort: 30080}]}
status:
  loadBalancer:
    ingress:
    - {ip: 192.0.2.1, ipMode: VIP}
    - {ip: 192.0.2.2, ipMode: Proxy}
    - {ip: 192.0.2.3}
"#);
    assert!(t.problems.is_empty(), "{:?}", t.problems);
    let m = &t.services[&ServiceRef { namespace: "x".into(), name: "s".into() }];
    let ips: Vec<String> = m.load_balancer_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["192.0.2.1", "192.0.2.3"]);
    assert_eq!(m.traffic_distribution.as_deref(), Some("PreferClose"));
}

mod dual_stack {
    use super::*;

    const DUAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::a"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.0.11]
- addresses: [10.244.0.12]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: ["fd00:244::11"]
- addresses: ["fd00:244::12"]
  conditions: {ready: false, serving: true, terminating: true}
- addresses: ["fd00:244::13"]
  conditions: {ready: true}
"#;

    fn fe6(ip: &str, port: u16, proto: Protocol) -> FrontendAddr<Ipv6Addr> {
        FrontendAddr::new(ip.parse().unwrap(), port, proto)
    }

    fn backends6(t: &Translation, addr: FrontendAddr<Ipv6Addr>) -> Vec<String> {
        t.desired6[&addr].slot_backends().map(|b| b.addr.to_string()).collect()
    }

    #[test]
    fn a_dual_stack_service_has_frontends_of_each_family_with_that_familys_endpoints() {
        let t = run(DUAL);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.desired.len(), 2);
        assert_eq!(t.desired6.len(), 2);
        assert_eq!(backend_strings(&t, fe("10.96.0.10", 80, Protocol::Tcp)), ["10.244.0.11:8080", "10.244.0.12:8080"]);
        let http6 = fe6("fd00:96::a", 80, Protocol::Tcp);
        // Ready first; the terminating one is carried for its flows only.
        assert_eq!(backends6(&t, http6), ["[fd00:244::11]:8080", "[fd00:244::13]:8080"]);
        let all: Vec<_> = t.desired6[&http6].backends.iter().map(|b| (b.addr.to_string(), b.terminating)).collect();
        assert_eq!(all.last().unwrap(), &("[fd00:244::12]:8080".to_string(), true));
        assert_eq!(backends6(&t, fe6("fd00:96::a", 53, Protocol::Udp)), ["[fd00:244::11]:5353", "[fd00:244::13]:5353"]);
        // Same label, flags and affinity as the IPv4 frontend.
        let (v4, v6) = (&t.desired[&fe("10.96.0.10", 80, Protocol::Tcp)], &t.desired6[&http6]);
        assert_eq!(v6.name, "demo/web:http");
        assert_eq!((v6.name.as_str(), v6.flags, v6.affinity_timeout), (v4.name.as_str(), v4.flags, v4.affinity_timeout));
        assert_eq!(http6.to_string(), "[fd00:96::a]:80/TCP");
        let m = &t.services[&ServiceRef { namespace: "demo".into(), name: "web".into() }];
        assert_eq!(m.ip_families, ["IPv4", "IPv6"]);
        assert_eq!(m.ip_family_policy.as_deref(), Some("RequireDualStack"));
        assert_eq!(m.cluster_ips, ["10.96.0.10".parse::<IpAddr>().unwrap(), "fd00:96::a".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn an_ipv6_only_service_is_served_and_ignores_ipv4_slices() {
        // Used to be dropped (IPv4 frontends only).
        let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: v6, namespace: x}
spec:
  clusterIP: "fd00:96::20"
  clusterIPs: ["fd00:96::20"]
  ipFamilies: [IPv6]
  ipFamilyPolicy: SingleStack
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: v6-a, namespace: x, labels: {kubernetes.io/service-name: v6}}
addressType: IPv6
ports: [{port: 8080}]
endpoints:
- addresses: ["fd00:244::5"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: v6-b, namespace: x, labels: {kubernetes.io/service-name: v6}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.0.5]
"#);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert!(t.desired.is_empty());
        assert_eq!(backends6(&t, fe6("fd00:96::20", 80, Protocol::Tcp)), ["[fd00:244::5]:8080"]);
    }

    #[test]
    fn an_ipv4_endpoint_in_an_ipv6_slice_is_named() {
        let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec: {clusterIPs: ["fd00:96::30"], ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: x, labels: {kubernetes.io/service-name: s}}
addressType: IPv6
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.4.5]
- addresses: ["fd00:244::6"]
- addresses: ["not-an-ip"]
"#);
        assert!(
            t.problems
                .iter()
                .any(|p| p.contains("EndpointSlice x/s-1: field endpoints[0].addresses[0]")
                    && p.contains("is an IPv4 address in an IPv6 slice")),
            "{:?}",
            t.problems
        );
        assert!(
            t.problems.iter().any(|p| p.contains("endpoints[2].addresses[0]") && p.contains("is not an IPv6 address")),
            "{:?}",
            t.problems
        );
        assert_eq!(backends6(&t, fe6("fd00:96::30", 80, Protocol::Tcp)), ["[fd00:244::6]:8080"]);
    }
}
