//! B7: a new pod's interface, from its creation to lb's tc programs on it.
//!
//! A pod's first packets must already meet the datapath: until the tcx
//! programs are on the pod's host-side interface, its ClusterIP traffic
//! is not translated. The agent finds new interfaces through rtnetlink link
//! events (`lb_agent::linkwatch`); here the real `lb-agent run` serves a
//! lab node with directory polling effectively off (`--poll-interval-ms
//! 600000`), so link events alone can find the interfaces.
//!
//! Each sample, from a thread inside the node's network namespace: take the
//! time, create a veth pair with `ip link add` (named like the pods'
//! interfaces), then ask the kernel (BPF_PROG_QUERY, `links::query_tcx`)
//! every 100 µs whether both tcx hooks of the new interface carry a
//! program. The figure runs from just before `ip` starts to the first
//! query that sees both programs; the `ip` command's own time (fork, exec,
//! netlink) is in it and is reported next to it. The interface is deleted
//! after each sample.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lb_agent::links;
use lb_lab::NodeLab;

use crate::agent_cmd::{AgentCommand, Source};
use crate::sys;

/// How long one sample waits for the programs before it counts as missed.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time between the kernel queries of one sample.
pub const POLL: Duration = Duration::from_micros(100);

#[derive(Clone, Debug)]
pub struct B7Options {
    /// Interfaces created, one after the other.
    pub pods: usize,
}

#[derive(Clone, Debug)]
pub struct B7Result {
    pub pods: usize,
    /// Creation to both tcx programs attached, per sample that got them (µs).
    pub attached_us: Vec<f64>,
    /// The `ip link add` command alone, per sample (µs).
    pub ip_us: Vec<f64>,
    /// Samples whose programs did not come within [`SAMPLE_TIMEOUT`].
    pub missed: usize,
}

impl B7Result {
    /// The `q` quantile (0..=1) of `v`, nearest rank.
    pub fn quantile(v: &[f64], q: f64) -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[rank - 1]
    }
}

/// One sample: (µs to both programs, µs of `ip link add`), or `None` for
/// the time to the programs when they did not come.
fn sample(name: &str, peer: &str) -> Result<(Option<f64>, f64)> {
    let start = Instant::now();
    let status = Command::new("ip")
        .args(["link", "add", name, "type", "veth", "peer", "name", peer])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running ip")?;
    let ip_us = start.elapsed().as_secs_f64() * 1e6;
    if !status.success() {
        bail!("ip link add {name} failed ({status})");
    }
    let ifindex = lb_agent::host::ifindex(name).with_context(|| format!("ifindex of {name}"))?;
    let attached = loop {
        let both = [true, false].iter().all(|&ingress| links::query_tcx(ifindex, ingress).is_ok_and(|ids| !ids.is_empty()));
        if both {
            break Some(start.elapsed().as_secs_f64() * 1e6);
        }
        if start.elapsed() > SAMPLE_TIMEOUT {
            break None;
        }
        std::thread::sleep(POLL);
    };
    let _ = Command::new("ip").args(["link", "del", name]).status();
    Ok((attached, ip_us))
}

pub fn run(o: &B7Options, agent_bin: Option<&Path>) -> Result<Option<B7Result>> {
    let Some(bin) = agent_bin else {
        eprintln!("lb-bench: B7 needs --agent; not run");
        return Ok(None);
    };
    let lab = NodeLab::new(&["web"]).context("lab")?;
    let dir = std::env::temp_dir().join(format!("lb-bench-{}-b7-manifests", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _dir_guard = crate::b3::DirGuard(dir.clone());
    let pins = sys::Pins::new("b7-agent");
    // The directory is never polled again: interfaces come from link events.
    let mut cmd = AgentCommand::new("B7", Source::Manifests(&dir), pins.path(), "lbp*")
        .poll_interval_ms(600_000)
        .health_addr("off")
        .command(&lab.node, bin);
    let mut child = lab.node.spawn(&mut cmd)?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let result = (|| -> Result<B7Result> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tail = Vec::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("synced manifests") => break,
                Ok(line) => tail.push(line),
                Err(_) => bail!("the agent did not sync within 60 s: {}", tail.join(" | ")),
            }
        }
        // Let the first sync's attachments and the switch to live settle.
        std::thread::sleep(Duration::from_millis(300));
        let mut r = B7Result { pods: o.pods, attached_us: Vec::new(), ip_us: Vec::new(), missed: 0 };
        for i in 0..o.pods {
            let (name, peer) = (format!("lbpb{i}"), format!("lbqb{i}"));
            let (attached, ip_us) = lab.node.run(move || sample(&name, &peer))?;
            r.ip_us.push(ip_us);
            match attached {
                Some(us) => r.attached_us.push(us),
                None => r.missed += 1,
            }
            // Let the agent see the deletion before the next interface.
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(r)
    })();

    sys::stop_agent(&mut child)?;
    drop(child);
    drop(pins);
    drop(lab);
    let r = result?;
    eprintln!(
        "lb-bench: B7 {} interfaces: attached p50 {:.1} ms, p99 {:.1} ms, missed {}",
        r.pods,
        B7Result::quantile(&r.attached_us, 0.5) / 1e3,
        B7Result::quantile(&r.attached_us, 0.99) / 1e3,
        r.missed
    );
    Ok(Some(r))
}

#[cfg(test)]
mod tests {
    use super::B7Result;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(B7Result::quantile(&v, 0.5), 50.0);
        assert_eq!(B7Result::quantile(&v, 0.99), 99.0);
        assert_eq!(B7Result::quantile(&v, 1.0), 100.0);
        assert_eq!(B7Result::quantile(&[7.0], 0.99), 7.0);
        assert!(B7Result::quantile(&[], 0.5).is_nan());
    }
}
