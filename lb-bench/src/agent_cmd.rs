//! The one `lb-agent run` command line of the benchmarks that start a real
//! agent (B3's memory, B6's churn, B7's new interfaces, `--api-rss`): the
//! flags they all pass, and their differences as options, so that a flag
//! every run needs is added here once.
//!
//! Every run: no socket hooks (`--no-socket-lb`), its own bpffs directory,
//! `RUST_LOG=info` without colours, stdin and stdout closed, stderr piped
//! (the benchmarks read the agent's "synced" lines from it), and a soft
//! limit of [`START_NOFILE`] open files, as a DaemonSet often starts. The
//! command line is logged.

use std::{
    io,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
};

use lb_agent::datapath::MapSizes;
use lb_lab::Netns;

use crate::sys;

/// The soft limit of open files every agent starts with: systemd's default
/// for a service, which a DaemonSet's container often inherits, where the
/// benchmark's shell allows far more. The agent raises it to the hard limit
/// at start, as kube-proxy (Go) does; the hard limit stays the shell's.
pub const START_NOFILE: u64 = 1024;

/// Where the agent reads Services and EndpointSlices from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A manifest directory (`--manifests`).
    Manifests(&'a Path),
    /// An API server (`--kubeconfig`; `KUBECONFIG` is cleared so that only
    /// this one is used).
    Kubeconfig(&'a Path),
}

/// An `lb-agent run` command line (see the module docs for what every one
/// has).
#[derive(Clone, Debug)]
pub struct AgentCommand<'a> {
    /// For the log line: which benchmark runs it.
    bench: &'a str,
    source: Source<'a>,
    bpffs: &'a Path,
    pod_ifaces: &'a str,
    poll_interval_ms: Option<u64>,
    xdp_mode: Option<&'a str>,
    health_addr: Option<&'a str>,
    /// `--services-size`, `--backends-size`, `--slots-size`.
    sizes: Option<(u32, u32, u32)>,
}

impl<'a> AgentCommand<'a> {
    /// `bench`'s agent on `source`, its maps pinned under `bpffs`, the tc
    /// program on interfaces named `pod_ifaces`; the agent's defaults for
    /// everything else.
    pub fn new(bench: &'a str, source: Source<'a>, bpffs: &'a Path, pod_ifaces: &'a str) -> AgentCommand<'a> {
        AgentCommand { bench, source, bpffs, pod_ifaces, poll_interval_ms: None, xdp_mode: None, health_addr: None, sizes: None }
    }

    /// `--poll-interval-ms` (of the manifest directory and the interfaces).
    pub fn poll_interval_ms(mut self, ms: u64) -> Self {
        self.poll_interval_ms = Some(ms);
        self
    }

    /// `--xdp-mode`.
    pub fn xdp_mode(mut self, mode: &'a str) -> Self {
        self.xdp_mode = Some(mode);
        self
    }

    /// `--health-addr` (`off`, or an address).
    pub fn health_addr(mut self, addr: &'a str) -> Self {
        self.health_addr = Some(addr);
        self
    }

    /// The sizes of the Service, backend and slot maps from `sizes`.
    pub fn map_sizes(self, sizes: &MapSizes) -> Self {
        self.sizes(sizes.services, sizes.backends, sizes.slots)
    }

    /// `--services-size`, `--backends-size`, `--slots-size`.
    pub fn sizes(mut self, services: u32, backends: u32, slots: u32) -> Self {
        self.sizes = Some((services, backends, slots));
        self
    }

    /// The arguments after the program.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["run".to_string()];
        let mut flag = |name: &str, value: String| {
            args.push(name.to_string());
            args.push(value);
        };
        match self.source {
            Source::Manifests(dir) => flag("--manifests", dir.display().to_string()),
            Source::Kubeconfig(file) => flag("--kubeconfig", file.display().to_string()),
        }
        flag("--bpffs", self.bpffs.display().to_string());
        flag("--pod-ifaces", self.pod_ifaces.to_string());
        if let Some(ms) = self.poll_interval_ms {
            flag("--poll-interval-ms", ms.to_string());
        }
        if let Some(mode) = self.xdp_mode {
            flag("--xdp-mode", mode.to_string());
        }
        if let Some(addr) = self.health_addr {
            flag("--health-addr", addr.to_string());
        }
        args.push("--no-socket-lb".to_string());
        if let Some((services, backends, slots)) = self.sizes {
            args.extend(
                [("--services-size", services), ("--backends-size", backends), ("--slots-size", slots)]
                    .into_iter()
                    .flat_map(|(name, n)| [name.to_string(), n.to_string()]),
            );
        }
        args
    }

    /// The command running `bin` in `ns` (not started), logged.
    pub fn command(&self, ns: &Netns, bin: &Path) -> Command {
        let mut cmd = ns.command(bin);
        cmd.args(self.args())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Source::Kubeconfig(_) = self.source {
            cmd.env_remove("KUBECONFIG");
        }
        // SAFETY: the closure runs in the child between fork and exec, and
        // makes two async-signal-safe system calls only.
        unsafe { cmd.pre_exec(start_nofile) };
        eprintln!("lb-bench: {} agent command: {}", self.bench, sys::command_line(&cmd));
        cmd
    }
}

/// Lowers this process's soft limit of open files to [`START_NOFILE`]
/// (the agent's child, before exec).
fn start_nofile() -> io::Result<()> {
    lb_agent::fd_limit::set_soft(|soft, _| soft.min(START_NOFILE)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_flags_and_options() {
        let bare = AgentCommand::new("B7", Source::Manifests(Path::new("/m")), Path::new("/p"), "lbp*");
        assert_eq!(bare.args().join(" "), "run --manifests /m --bpffs /p --pod-ifaces lbp* --no-socket-lb");
        let all = AgentCommand::new("api-rss", Source::Kubeconfig(Path::new("/k")), Path::new("/p"), "none*")
            .poll_interval_ms(50)
            .xdp_mode("off")
            .health_addr("off")
            .sizes(1, 2, 3);
        assert_eq!(
            all.args().join(" "),
            "run --kubeconfig /k --bpffs /p --pod-ifaces none* --poll-interval-ms 50 --xdp-mode off --health-addr off \
             --no-socket-lb --services-size 1 --backends-size 2 --slots-size 3"
        );
    }

    /// The soft limit drops to 1,024 (or stays below it), the hard one
    /// stays: what a child sees after [`start_nofile`].
    #[test]
    fn an_agent_starts_at_a_daemonsets_open_files_limit() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ulimit -Sn; ulimit -Hn"]);
        // SAFETY: as in `AgentCommand::command`.
        unsafe { cmd.pre_exec(start_nofile) };
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: a valid rlimit for the kernel to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        let shown = |n: u64| if n == libc::RLIM_INFINITY { "unlimited".to_string() } else { n.to_string() };
        assert_eq!(out, format!("{}\n{}\n", shown(l.rlim_cur.min(START_NOFILE)), shown(l.rlim_max)));
    }
}
