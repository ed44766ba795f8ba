//! A deterministic churn of Services, as a busy cluster makes it: every
//! step adds and removes filler Services (up to [`MAX_FILLERS`]), scales
//! one Service between 0 and 4 endpoints, renames its port, flips it
//! between random and Maglev selection, and toggles its session affinity.
//! The soak test and the churn benchmark drive lb (as manifests) and
//! kube-proxy's rulesets (as rule syncs) with the same steps.

use std::{collections::BTreeMap, net::Ipv4Addr};

/// At most this many filler Services at once.
pub const MAX_FILLERS: usize = 200;
/// The Service that is scaled, renamed, flipped and toggled.
pub const SCALED: &str = "scaled";

/// One Service of the churn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChurnSvc {
    pub name: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The ServicePort's name (the EndpointSlice port carries the same).
    pub port_name: String,
    pub target_port: u16,
    pub endpoints: Vec<Ipv4Addr>,
    pub maglev: bool,
    pub affinity: bool,
}

/// What a step changed.
#[derive(Clone, Debug, Default)]
pub struct Change {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Services whose object or endpoints changed.
    pub updated: Vec<String>,
}

pub struct Churn {
    state: u64,
    step: u64,
    next_filler: u32,
    scaled_pods: Vec<Ipv4Addr>,
    filler_pods: Vec<Ipv4Addr>,
    pub services: BTreeMap<String, ChurnSvc>,
}

impl Churn {
    /// A churn whose scaled Service picks from `scaled_pods` (up to four)
    /// and whose fillers point at `filler_pods`, at `scaled_ip`.
    pub fn new(scaled_ip: Ipv4Addr, scaled_pods: Vec<Ipv4Addr>, filler_pods: Vec<Ipv4Addr>, seed: u64) -> Churn {
        let mut services = BTreeMap::new();
        services.insert(
            SCALED.to_string(),
            ChurnSvc {
                name: SCALED.to_string(),
                ip: scaled_ip,
                port: 80,
                port_name: "http".into(),
                target_port: 8080,
                endpoints: scaled_pods.iter().copied().take(2).collect(),
                maglev: false,
                affinity: false,
            },
        );
        Churn { state: seed | 1, step: 0, next_filler: 0, scaled_pods, filler_pods, services }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rand() % n }
    }

    /// The scaled Service's endpoints now.
    pub fn scaled_endpoints(&self) -> &[Ipv4Addr] {
        &self.services[SCALED].endpoints
    }

    /// One step of churn.
    pub fn step(&mut self) -> Change {
        self.step += 1;
        let mut change = Change::default();
        // Fillers: remove up to 20, add up to 20 (at most MAX_FILLERS).
        let fillers: Vec<String> = self.services.keys().filter(|k| *k != SCALED).cloned().collect();
        let remove = self.below(21) as usize;
        for _ in 0..remove.min(fillers.len()) {
            let left: Vec<String> = self.services.keys().filter(|k| *k != SCALED).cloned().collect();
            if left.is_empty() {
                break;
            }
            let name = left[self.below(left.len() as u64) as usize].clone();
            self.services.remove(&name);
            change.removed.push(name);
        }
        let room = MAX_FILLERS.saturating_sub(self.services.len() - 1);
        let add = (self.below(21) as usize).min(room);
        for _ in 0..add {
            let n = self.next_filler;
            self.next_filler += 1;
            let name = format!("churn-{n:05}");
            let pods = self.filler_pods.len().max(1) as u64;
            let first = self.below(pods) as usize;
            let endpoints: Vec<Ipv4Addr> =
                self.filler_pods.iter().cycle().skip(first).take(2.min(self.filler_pods.len())).copied().collect();
            let ip = Ipv4Addr::new(10, 97, (n / 250 % 250) as u8, (n % 250) as u8 + 1);
            self.services.insert(
                name.clone(),
                ChurnSvc {
                    name: name.clone(),
                    ip,
                    port: 80,
                    port_name: "http".into(),
                    target_port: 8080,
                    endpoints,
                    maglev: false,
                    affinity: false,
                },
            );
            change.added.push(name);
        }
        // The scaled Service: 0 to 4 endpoints; its port renamed every 3rd
        // step, Maglev flipped every 4th, affinity toggled every 5th.
        let count = self.below(5) as usize;
        let mut pods = self.scaled_pods.clone();
        for i in (1..pods.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            pods.swap(i, j);
        }
        let step = self.step;
        let s = self.services.get_mut(SCALED).expect("the scaled Service");
        s.endpoints = pods.into_iter().take(count).collect();
        s.endpoints.sort();
        if step.is_multiple_of(3) {
            s.port_name = if s.port_name == "http" { "web".into() } else { "http".into() };
        }
        if step.is_multiple_of(4) {
            s.maglev = !s.maglev;
        }
        if step.is_multiple_of(5) {
            s.affinity = !s.affinity;
        }
        change.updated.push(SCALED.to_string());
        change
    }
}

/// A Service and its EndpointSlice as manifest YAML (namespace `churn`).
pub fn manifest(s: &ChurnSvc) -> String {
    let eps: String = s.endpoints.iter().map(|ip| format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n")).collect();
    let eps = if eps.is_empty() { "[]\n".to_string() } else { format!("\n{eps}") };
    let selection = if s.maglev { "maglev" } else { "random" };
    let affinity = if s.affinity { "ClientIP" } else { "None" };
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: churn
  annotations: {{lb.dev/backend-selection: {selection}}}
spec:
  clusterIP: {ip}
  sessionAffinity: {affinity}
  ports: [{{name: {pn}, port: {port}, protocol: TCP, targetPort: {pn}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: churn, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: {pn}, port: {tp}, protocol: TCP}}]
endpoints: {eps}"#,
        name = s.name,
        ip = s.ip,
        pn = s.port_name,
        port = s.port,
        tp = s.target_port,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_deterministic_and_busy() {
        let pods = |n: u8| (0..n).map(|i| Ipv4Addr::new(10, 244, 0, 20 + i)).collect::<Vec<_>>();
        let mut a = Churn::new(Ipv4Addr::new(10, 96, 0, 30), pods(4), pods(3), 7);
        let mut b = Churn::new(Ipv4Addr::new(10, 96, 0, 30), pods(4), pods(3), 7);
        let mut sizes = Vec::new();
        let (mut maglev, mut affinity, mut zero, mut names) = (false, false, false, std::collections::BTreeSet::new());
        for _ in 0..300 {
            let (ca, cb) = (a.step(), b.step());
            assert_eq!((ca.added, ca.removed), (cb.added, cb.removed), "deterministic");
            assert!(a.services.len() <= MAX_FILLERS + 1);
            sizes.push(a.services.len());
            let s = &a.services[SCALED];
            assert!(s.endpoints.len() <= 4);
            maglev |= s.maglev;
            affinity |= s.affinity;
            zero |= s.endpoints.is_empty();
            names.insert(s.port_name.clone());
        }
        assert!(sizes.iter().max().unwrap() > &150, "gets busy: {:?}", sizes.iter().max());
        assert!(maglev && affinity && zero && names.len() == 2);
        assert!(manifest(&a.services[SCALED]).contains("kind: EndpointSlice"));
    }
}
