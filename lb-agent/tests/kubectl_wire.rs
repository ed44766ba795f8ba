//! Checks the fake API server's wire format against the real `kubectl`
//! (list, discovery and watch), so that the kube-rs tests run against
//! something a real client accepts. Runs in the test's own namespace; no
//! root needed. Skipped without kubectl, except under CI=true.

mod fake_api;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use fake_api::{FakeApi, Res};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

fn kubectl_available() -> bool {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and kubectl is not installed");
        }
        eprintln!("SKIPPED: kubectl not installed");
    }
    ok
}

fn service(name: &str, ip: &str) -> Service {
    Service {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some("demo".into()), ..Default::default() },
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Kubectl {
    dir: std::path::PathBuf,
    server: String,
}

impl Kubectl {
    fn new(api: &FakeApi) -> Kubectl {
        let dir = std::env::temp_dir().join(format!("lb-kubectl-{}-{}", std::process::id(), api.port()));
        std::fs::create_dir_all(&dir).unwrap();
        Kubectl { dir, server: api.url() }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", self.dir.join("none"))
            .env("HOME", &self.dir)
            .arg("--server")
            .arg(&self.server)
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(["--request-timeout", "10s"]);
        cmd
    }

    fn get(&self, args: &[&str]) -> String {
        let out = self.command().arg("get").args(args).output().unwrap();
        assert!(out.status.success(), "kubectl get {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn kubectl_lists_and_watches_the_fake_server() {
    if !kubectl_available() {
        return;
    }
    let api = FakeApi::start(None);
    api.apply(&service("web", "10.96.0.10"));
    api.apply(&EndpointSlice {
        metadata: ObjectMeta {
            name: Some("web-1".into()),
            namespace: Some("demo".into()),
            labels: Some([("kubernetes.io/service-name".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint { addresses: vec!["10.244.0.5".into()], ..Default::default() }],
        ..Default::default()
    });
    let kubectl = Kubectl::new(&api);

    // List, through discovery ("svc" is a short name), read back into the
    // k8s-openapi types.
    let text = kubectl.get(&["svc", "-A", "-o", "json"]);
    let services: Vec<Service> = items(&text);
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].metadata.name.as_deref(), Some("web"));
    assert_eq!(services[0].spec.as_ref().unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
    let text = kubectl.get(&["endpointslices.discovery.k8s.io", "-n", "demo", "-o", "json"]);
    let slices: Vec<EndpointSlice> = items(&text);
    assert_eq!(slices[0].endpoints[0].addresses, ["10.244.0.5"]);
    // The default printer too (the fake server does not do server-side
    // tables, so kubectl prints names only, as with an old server).
    let table = kubectl.get(&["svc", "-n", "demo"]);
    assert!(table.lines().any(|l| l.starts_with("web ")), "{table}");

    // Watch: kubectl lists, then watches from the list's resourceVersion.
    let mut child = kubectl
        .command()
        .args(["get", "svc", "-A", "--watch", "--output-watch-events", "-o", "jsonpath={.type} {.object.metadata.name}{\"\\n\"}"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|e| panic!("kubectl printed no {what}: {e}"));
    assert_eq!(next("initial event"), "ADDED web");
    // Wait until kubectl's watch request is open before changing things,
    // so the events come over the watch and not a list.
    common_wait(|| api.requests().iter().any(|r| r.contains("/services?") && r.contains("watch=")));
    api.apply(&service("api", "10.96.0.11"));
    assert_eq!(next("ADDED event"), "ADDED api");
    api.apply(&service("api", "10.96.0.12"));
    assert_eq!(next("MODIFIED event"), "MODIFIED api");
    api.delete(Res::Services, "demo", "api");
    assert_eq!(next("DELETED event"), "DELETED api");
    let _ = child.kill();
    let _ = child.wait();
}

/// The items of kubectl's `kind: List` output, as k8s-openapi types.
fn items<T: serde::de::DeserializeOwned>(text: &str) -> Vec<T> {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["kind"], "List", "{text}");
    serde_json::from_value(v["items"].clone()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn common_wait(mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for kubectl's watch");
        std::thread::sleep(Duration::from_millis(20));
    }
}
