//! An in-process stand-in for kube-apiserver, speaking its wire protocol
//! for Services, EndpointSlices and Nodes, so that tests can run the real
//! kube-rs client (and the real `kubectl`) against it.
//!
//! - discovery: `/api`, `/apis`, `/api/v1`, `/apis/discovery.k8s.io/v1`,
//!   `/version`;
//! - list: `GET .../services` (also per namespace) answers a `ServiceList`
//!   with the current `resourceVersion`;
//! - watch: `?watch=true&resourceVersion=N` streams (chunked,
//!   newline-delimited JSON) every event after N, then new ones as they
//!   happen, with a BOOKMARK when idle; a resourceVersion older than the
//!   compacted history gets an ERROR event holding a `410 Gone` `Status`,
//!   as the real API server does;
//! - `down`/`up` stop and restart the server on the same port, dropping
//!   every connection; `drop_connections` cuts the watches only.
//!
//! Objects are k8s-openapi types serialized to JSON; `apply_raw` sends any
//! JSON, for malformed objects.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use k8s_openapi::{
    Resource as _,
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{Status, WatchEvent},
};
use lb_lab::Netns;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    Services,
    EndpointSlices,
    Nodes,
}

impl Res {
    fn kind(self) -> &'static str {
        match self {
            Res::Services => Service::KIND,
            Res::EndpointSlices => EndpointSlice::KIND,
            Res::Nodes => Node::KIND,
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::Services => Service::API_VERSION,
            Res::EndpointSlices => EndpointSlice::API_VERSION,
            Res::Nodes => Node::API_VERSION,
        }
    }

    fn namespaced(self) -> bool {
        self != Res::Nodes
    }

    fn of<T: k8s_openapi::Resource>() -> Res {
        match T::KIND {
            "Service" => Res::Services,
            "EndpointSlice" => Res::EndpointSlices,
            "Node" => Res::Nodes,
            other => panic!("the fake API server does not serve {other}"),
        }
    }
}

type Key = (Res, String, String);

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// (resourceVersion, resource, event type, object)
    events: Vec<(u64, Res, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch.
    epoch: u64,
    conns: Vec<TcpStream>,
    /// Request lines received, e.g. `GET /api/v1/services?...`.
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct FakeApi {
    shared: Arc<Shared>,
    port: u16,
    /// The namespace its socket lives in (`None`: the test's own).
    netns: Option<PathBuf>,
    listener: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl FakeApi {
    /// Starts on 127.0.0.1 of `ns` (a lab node, where the agent runs), or
    /// of the test's own namespace.
    pub fn start(ns: Option<&Netns>) -> FakeApi {
        let mut api = FakeApi {
            shared: Arc::new(Shared { state: Mutex::new(State { rv: 1, ..State::default() }), changed: Condvar::new() }),
            port: 0,
            netns: ns.map(Netns::path),
            listener: None,
        };
        api.port = api.listen(ns, 0);
        api
    }

    /// A port in `ns` on which nothing listens yet, for [`FakeApi::start_on`].
    pub fn free_port(ns: &Netns) -> u16 {
        ns.run(|| bind_below_ephemeral().local_addr().unwrap().port())
    }

    /// Starts on a given port of `ns`.
    pub fn start_on(ns: &Netns, port: u16) -> FakeApi {
        let mut api = FakeApi {
            shared: Arc::new(Shared { state: Mutex::new(State { rv: 1, ..State::default() }), changed: Condvar::new() }),
            port,
            netns: Some(ns.path()),
            listener: None,
        };
        api.listen(Some(ns), port);
        api
    }

    fn listen(&mut self, ns: Option<&Netns>, port: u16) -> u16 {
        let bind = move || match port {
            0 => bind_below_ephemeral(),
            _ => TcpListener::bind(("127.0.0.1", port)).expect("binding the fake API server"),
        };
        let listener = match ns {
            Some(ns) => ns.run(bind),
            None => bind(),
        };
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, shared) = (stop.clone(), self.shared.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        if let Ok(clone) = stream.try_clone() {
                            shared.lock().conns.push(clone);
                        }
                        let shared = shared.clone();
                        std::thread::spawn(move || serve_connection(stream, &shared));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        self.listener = Some((stop, thread));
        port
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Writes a kubeconfig for this server into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        kubeconfig_for(dir, self.port)
    }

    /// Adds or replaces an object (ADDED or MODIFIED).
    pub fn apply<T: k8s_openapi::Resource + serde::Serialize>(&self, obj: &T) {
        let value = serde_json::to_value(obj).unwrap();
        self.apply_raw(Res::of::<T>(), value);
    }

    /// Adds or replaces any JSON as an object of `res`; it only needs
    /// `metadata.name` (and `metadata.namespace`).
    pub fn apply_raw(&self, res: Res, value: Value) {
        self.change(res, value, true, true);
    }

    /// Changes an object without telling the watches, as if the events
    /// were lost: only a relist sees it.
    pub fn apply_silently<T: k8s_openapi::Resource + serde::Serialize>(&self, obj: &T) {
        let value = serde_json::to_value(obj).unwrap();
        self.change(Res::of::<T>(), value, true, false);
    }

    pub fn delete(&self, res: Res, namespace: &str, name: &str) {
        let value = json!({"metadata": {"name": name, "namespace": namespace}});
        self.change(res, value, false, true);
    }

    pub fn delete_silently(&self, res: Res, namespace: &str, name: &str) {
        let value = json!({"metadata": {"name": name, "namespace": namespace}});
        self.change(res, value, false, false);
    }

    fn change(&self, res: Res, mut value: Value, present: bool, notify: bool) {
        let name = value["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let ns = if res.namespaced() { value["metadata"]["namespace"].as_str().unwrap_or("default").to_string() } else { String::new() };
        let key = (res, ns.clone(), name);
        let mut st = self.shared.lock();
        st.rv += 1;
        let rv = st.rv;
        if present {
            let obj = value.as_object_mut().expect("an object");
            obj.insert("apiVersion".into(), res.api_version().into());
            obj.insert("kind".into(), res.kind().into());
            let meta = obj.entry("metadata").or_insert_with(|| json!({}));
            meta["resourceVersion"] = rv.to_string().into();
            if res.namespaced() {
                meta["namespace"] = ns.into();
            }
            let kind = if st.objects.insert(key, value.clone()).is_some() { "MODIFIED" } else { "ADDED" };
            if notify {
                st.events.push((rv, res, kind, value));
            }
        } else if let Some(mut old) = st.objects.remove(&key) {
            old["metadata"]["resourceVersion"] = rv.to_string().into();
            if notify {
                st.events.push((rv, res, "DELETED", old));
            }
        }
        if !notify {
            // The lost events cannot be replayed: watches resuming from
            // before this change must relist.
            st.compacted = rv;
        }
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Ends every watch with an ERROR event holding `410 Gone` and forgets
    /// the history, so the clients must relist.
    pub fn expire_watches(&self) {
        let mut st = self.shared.lock();
        st.compacted = st.rv + 1;
        st.epoch += 1;
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Cuts every open connection (the server keeps listening).
    pub fn drop_connections(&self) {
        let mut st = self.shared.lock();
        st.epoch += 1;
        for c in st.conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        drop(st);
        self.shared.changed.notify_all();
    }

    /// Stops listening and cuts every connection: the server is down.
    pub fn down(&mut self) {
        if let Some((stop, thread)) = self.listener.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
        self.drop_connections();
    }

    /// Listens again on the same port. With `lose_history`, it comes back
    /// like a restarted API server whose watch cache is gone.
    pub fn up(&mut self, ns: Option<&Netns>, lose_history: bool) {
        if lose_history {
            let mut st = self.shared.lock();
            st.compacted = st.rv + 1;
            st.events.clear();
        }
        let port = self.port;
        self.listen(ns, port);
    }

    /// Request lines received so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// How many list (non-watch) requests `path` got.
    pub fn lists_of(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.contains(&format!(" {path}?")) || r.ends_with(&format!(" {path}")))
            .filter(|r| !r.contains("watch=true") && !r.contains("watch=1"))
            .count()
    }
}

/// Listens on 127.0.0.1 at a port below the kernel's ephemeral range
/// (32768 and up by default). A server taken down and listening again on
/// an ephemeral port could find it taken by the agent itself: a
/// connection attempt whose source port happens to be the one it dials,
/// with nothing listening there, connects to itself (TCP simultaneous
/// open), and holds the port ("Address already in use").
fn bind_below_ephemeral() -> TcpListener {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..COUNT {
        let port = FIRST + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % COUNT;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            return listener;
        }
    }
    panic!("binding the fake API server: no free port in {FIRST}..{}", FIRST + COUNT);
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.down();
    }
}

pub fn kubeconfig_for(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://127.0.0.1:{port}\"}}\n\
             users:\n- name: fake\n  user: {{token: fake}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(Request, String)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let line = line.trim_end().to_string();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    if content_length > 0 {
        let mut body = vec![0u8; content_length];
        std::io::Read::read_exact(reader, &mut body).ok()?;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let (path, qs) = target.split_once('?').unwrap_or((&target, ""));
    let query = qs
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect();
    Some((Request { method, path: path.to_string(), query }, line))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some((req, line)) = read_request(&mut reader) {
        shared.lock().requests.push(line);
        if req.method != "GET" {
            let _ = respond(&mut out, 405, &status_json(405, "MethodNotAllowed", "only GET is served"));
            continue;
        }
        let ok = match route(&req.path) {
            Route::Json(v) => respond(&mut out, 200, &v),
            Route::Collection(_, _) if !label_selector_ok(&req.query) => {
                respond(&mut out, 400, &status_json(400, "BadRequest", "unable to parse the label selector"))
            }
            Route::Collection(res, ns) => {
                let watch = matches!(req.query.get("watch").map(String::as_str), Some("true" | "1"));
                if watch {
                    // A watch that ended cleanly leaves the connection
                    // usable for the next request, as with the real server.
                    if stream_watch(&mut out, shared, res, ns.as_deref(), &req.query).is_err() {
                        break;
                    }
                    continue;
                }
                respond(&mut out, 200, &list(shared, res, ns.as_deref(), &req.query))
            }
            Route::NotFound => respond(&mut out, 404, &status_json(404, "NotFound", &format!("{} not found", req.path))),
        };
        if ok.is_err() {
            break;
        }
    }
    // Really close: `FakeApi` holds a clone of every connection.
    let _ = out.shutdown(Shutdown::Both);
}

enum Route {
    Json(Value),
    Collection(Res, Option<String>),
    NotFound,
}

fn resource(name: &str, kind: &str, namespaced: bool, short: &[&str]) -> Value {
    json!({
        "name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind,
        "verbs": ["get", "list", "watch"], "shortNames": short,
    })
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let res_of = |s: &str| match s {
        "services" => Some(Res::Services),
        "nodes" => Some(Res::Nodes),
        _ => None,
    };
    match segs.as_slice() {
        ["version"] => Route::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "platform": "linux/amd64"})),
        ["api"] => Route::Json(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        ["apis"] => Route::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": "discovery.k8s.io",
            "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}}]})),
        ["api", "v1"] => Route::Json(json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            resource("services", "Service", true, &["svc"]), resource("nodes", "Node", false, &["no"])]})),
        ["apis", "discovery.k8s.io", "v1"] => Route::Json(json!({"kind": "APIResourceList",
            "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
            "resources": [resource("endpointslices", "EndpointSlice", true, &[])]})),
        ["api", "v1", r] => res_of(r).map_or(Route::NotFound, |r| Route::Collection(r, None)),
        ["api", "v1", "namespaces", ns, "services"] => Route::Collection(Res::Services, Some(ns.to_string())),
        ["apis", "discovery.k8s.io", "v1", "endpointslices"] => Route::Collection(Res::EndpointSlices, None),
        ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] => {
            Route::Collection(Res::EndpointSlices, Some(ns.to_string()))
        }
        _ => Route::NotFound,
    }
}

fn matches(res: Res, ns: Option<&str>, query: &BTreeMap<String, String>, key: &Key, value: &Value) -> bool {
    if key.0 != res || ns.is_some_and(|ns| ns != key.1) {
        return false;
    }
    matches_field(query, value)
}

/// Whether `v` matches the request's `labelSelector`, as the API server
/// reads it: comma-separated `key`, `!key`, `key=value`, `key!=value`.
/// (A selector with other syntax is refused by [`label_selector_ok`].)
fn matches_labels(query: &BTreeMap<String, String>, v: &Value) -> bool {
    let Some(sel) = query.get("labelSelector") else { return true };
    let label = |k: &str| v["metadata"]["labels"][k].as_str().map(String::from);
    sel.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some(k) = term.strip_prefix('!') {
            label(k.trim()).is_none()
        } else if let Some((k, val)) = term.split_once("!=") {
            label(k.trim()).as_deref() != Some(val.trim())
        } else if let Some((k, val)) = term.split_once('=') {
            label(k.trim()).as_deref() == Some(val.trim().trim_start_matches('='))
        } else {
            label(term.trim()).is_some()
        }
    })
}

/// Whether the request's `labelSelector` has a syntax this server reads.
fn label_selector_ok(query: &BTreeMap<String, String>) -> bool {
    query.get("labelSelector").is_none_or(|sel| {
        sel.split(',').all(|t| {
            let key = t.trim_start_matches('!').split(['=', '!']).next().unwrap_or("");
            !key.is_empty() && !key.contains([' ', '(', ')'])
        })
    })
}

fn list(shared: &Shared, res: Res, ns: Option<&str>, query: &BTreeMap<String, String>) -> Value {
    let st = shared.lock();
    // Pages as the API server cuts them: `limit` items, then a `continue`
    // token (here the offset of the next item).
    let offset: usize = query.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: usize = query.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut matching = st.objects.iter().filter(|(k, v)| matches(res, ns, query, k, v)).skip(offset);
    let page: Vec<(&Key, &Value)> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some();
    let items: Vec<Value> = page
        .into_iter()
        .map(|(_, v)| {
            // Items of a list carry neither kind nor apiVersion.
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("kind");
                o.remove("apiVersion");
            }
            v
        })
        .collect();
    let mut metadata = json!({"resourceVersion": st.rv.to_string()});
    if more {
        metadata["continue"] = (offset + items.len()).to_string().into();
    }
    json!({
        "kind": format!("{}List", res.kind()),
        "apiVersion": res.api_version(),
        "metadata": metadata,
        "items": items,
    })
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    let status = Status {
        code: Some(code.into()),
        reason: Some(reason.into()),
        message: Some(message.into()),
        status: Some("Failure".into()),
        ..Status::default()
    };
    let mut v = serde_json::to_value(status).unwrap();
    v["kind"] = "Status".into();
    v["apiVersion"] = "v1".into();
    v
}

fn respond(out: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        _ => "Error",
    };
    write!(out, "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len())?;
    out.write_all(&body)?;
    out.flush()
}

fn chunk(out: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).unwrap();
    line.push(b'\n');
    write!(out, "{:x}\r\n", line.len())?;
    out.write_all(&line)?;
    out.write_all(b"\r\n")?;
    out.flush()
}

fn stream_watch(out: &mut TcpStream, shared: &Shared, res: Res, ns: Option<&str>, query: &BTreeMap<String, String>) -> std::io::Result<()> {
    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    out.flush()?;
    let from: Option<u64> = query.get("resourceVersion").filter(|s| !s.is_empty() && *s != "0").and_then(|s| s.parse().ok());
    let mut st = shared.lock();
    let epoch = st.epoch;
    let mut sent = match from {
        Some(rv) if rv < st.compacted => {
            let status = status_json(410, "Expired", &format!("too old resource version: {rv} ({})", st.compacted));
            let status: Status = serde_json::from_value(status.clone()).unwrap();
            drop(st);
            let mut ev = serde_json::to_value(WatchEvent::<Value>::ErrorStatus(status)).unwrap();
            ev["object"]["kind"] = "Status".into();
            ev["object"]["apiVersion"] = "v1".into();
            chunk(out, &ev)?;
            return finish(out);
        }
        Some(rv) => rv,
        None => {
            // No resourceVersion: the current objects as ADDED, then news.
            let rv = st.rv;
            let current: Vec<Value> = st.objects.iter().filter(|(k, v)| matches(res, ns, query, k, v)).map(|(_, v)| v.clone()).collect();
            drop(st);
            for v in current {
                chunk(out, &serde_json::to_value(WatchEvent::Added(v)).unwrap())?;
            }
            st = shared.lock();
            rv
        }
    };
    let idle = Duration::from_millis(500);
    let mut last_sent = std::time::Instant::now();
    loop {
        if st.epoch != epoch {
            // expire_watches: a 410 for watches that were open.
            if st.compacted > sent {
                drop(st);
                let status: Status = serde_json::from_value(status_json(410, "Expired", "the watch cache was reset")).unwrap();
                let mut ev = serde_json::to_value(WatchEvent::<Value>::ErrorStatus(status)).unwrap();
                ev["object"]["kind"] = "Status".into();
                ev["object"]["apiVersion"] = "v1".into();
                let _ = chunk(out, &ev);
                return finish(out);
            }
            return Ok(());
        }
        let pending: Vec<(u64, &'static str, Value)> = st
            .events
            .iter()
            .filter(|(rv, r, _, v)| {
                *rv > sent && *r == res && ns.is_none_or(|ns| v["metadata"]["namespace"].as_str() == Some(ns)) && matches_field(query, v)
            })
            .map(|(rv, _, t, v)| (*rv, *t, v.clone()))
            .collect();
        if pending.is_empty() {
            if last_sent.elapsed() >= idle {
                // Every event of this resource up to st.rv has been sent.
                let rv = st.rv;
                drop(st);
                let bookmark = json!({"type": "BOOKMARK", "object": {
                    "kind": res.kind(), "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}}});
                chunk(out, &bookmark)?;
                sent = sent.max(rv);
                last_sent = std::time::Instant::now();
                st = shared.lock();
            } else {
                let wait = idle.saturating_sub(last_sent.elapsed());
                st = shared.changed.wait_timeout(st, wait).unwrap_or_else(|e| e.into_inner()).0;
            }
            continue;
        }
        drop(st);
        for (rv, t, v) in pending {
            let ev = match t {
                "ADDED" => WatchEvent::Added(v),
                "MODIFIED" => WatchEvent::Modified(v),
                _ => WatchEvent::Deleted(v),
            };
            chunk(out, &serde_json::to_value(ev).unwrap())?;
            sent = rv;
        }
        last_sent = std::time::Instant::now();
        st = shared.lock();
    }
}

fn matches_field(query: &BTreeMap<String, String>, v: &Value) -> bool {
    let field = match query.get("fieldSelector").and_then(|f| f.strip_prefix("metadata.name=")) {
        Some(name) => v["metadata"]["name"].as_str() == Some(name),
        None => true,
    };
    field && matches_labels(query, v)
}

fn finish(out: &mut TcpStream) -> std::io::Result<()> {
    out.write_all(b"0\r\n\r\n")?;
    out.flush()
}
