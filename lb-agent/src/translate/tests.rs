use super::*;
use crate::manifest::{Objects, parse_into};

fn run(yaml: &str) -> Translation {
    let mut objects = Objects::default();
    parse_into("t.yaml", yaml, &mut objects);
    assert!(objects.problems.is_empty(), "{:?}", objects.problems);
    translate(&objects.services, &objects.slices)
}

fn fe(ip: &str, port: u16, proto: Protocol) -> FrontendAddr {
    FrontendAddr { ip: ip.parse().unwrap(), port, proto }
}

fn backend_strings(t: &Translation, addr: FrontendAddr) -> Vec<String> {
    t.desired[&addr]
        .slot_backends()
        .map(|b| format!("{}{}", b.addr, if b.terminating { " T" } else { "" }))
        .collect()
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
fn dual_clusterips_keep_the_ipv4_one() {
    let t = run(r#"
apiVersion: v1
kind: Service
metadata: {name: ds}
spec: {clusterIP: 10.96.0.60, clusterIPs: [10.96.0.60, "fd00::60"], ports: [{port: 80}]}
"#);
    assert_eq!(t.desired.keys().copied().collect::<Vec<_>>(), [fe("10.96.0.60", 80, Protocol::Tcp)]);
}
