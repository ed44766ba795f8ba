//! The `lb-agent run` process of the demo, its pinned maps and its log.

use std::{
    fs,
    io::{Read as _, Seek as _, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use lb_lab::Netns;

use super::{interrupt, listing};
use crate::util;

/// How long the agent gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// An `lb-agent run` in the lab's node namespace. Dropping it stops the
/// agent (SIGTERM, then SIGKILL) and removes its pinned maps.
pub struct Agent {
    bin: PathBuf,
    pub pins: PathBuf,
    pub log: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
    /// How much of the log [`Agent::new_log_lines`] has shown.
    log_seen: u64,
}

impl Agent {
    /// Starts `bin run` inside `node`, logging to `log`.
    ///
    /// Must be called from a thread that outlives the agent: the child gets
    /// `PR_SET_PDEATHSIG` for the spawning thread (see `Netns::command`).
    pub fn start(node: &Netns, bin: &Path, manifests: &Path, pins: &Path, log: &Path, poll_ms: u64) -> Result<Agent> {
        Agent::start_with(node, bin, manifests, pins, log, poll_ms, &[])
    }

    /// [`Agent::start`] with more arguments for `run`.
    pub fn start_with(node: &Netns, bin: &Path, manifests: &Path, pins: &Path, log: &Path, poll_ms: u64, extra: &[&str]) -> Result<Agent> {
        // A pin dir of an earlier run with the same pid: start from scratch.
        if pins.exists() {
            remove_pins(bin, pins)?;
        }
        let mut args = vec![
            "run".to_owned(),
            "--manifests".to_owned(),
            manifests.display().to_string(),
            "--bpffs".to_owned(),
            pins.display().to_string(),
            "--pod-ifaces".to_owned(),
            "lbp*".to_owned(),
            "--poll-interval-ms".to_owned(),
            poll_ms.to_string(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let log_file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = node.command(bin);
        cmd.args(&args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log fd")?)
            .stderr(log_file);
        // Its own process group: Ctrl-C in the terminal reaches the demo
        // only, which then stops the agent in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = node.spawn(&mut cmd).context("starting lb-agent in the node namespace")?.into_inner();
        Ok(Agent { bin: bin.to_owned(), pins: pins.to_owned(), log: log.to_owned(), args, child: Some(child), log_seen: 0 })
    }

    /// `lb-agent <args>` as a shell command line.
    pub fn command_line(&self) -> String {
        let quoted: Vec<String> = self.args.iter().map(|a| if a.contains('*') { format!("'{a}'") } else { a.clone() }).collect();
        format!("lb-agent {}", quoted.join(" "))
    }

    /// The output of `lb-agent list --bpffs <pins>`.
    pub fn list(&self) -> Result<String> {
        util::output(Command::new(&self.bin).arg("list").arg("--bpffs").arg(&self.pins))
    }

    /// Waits until the listing satisfies `done`; fails (with the last
    /// listing) after `timeout`, or at once if the agent exits. Returns the
    /// rows and how long it took.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[listing::Row]) -> bool,
    ) -> Result<(Vec<listing::Row>, Duration)> {
        let started = Instant::now();
        loop {
            interrupt::check()?;
            if let Some(status) = self.exited()? {
                bail!("lb-agent exited ({status}) while the demo waited for {what}");
            }
            let last = match self.list() {
                Ok(text) => {
                    let rows = listing::parse(&text).with_context(|| format!("reading the output of `lb-agent list`:\n{text}"))?;
                    if done(&rows) {
                        return Ok((rows, started.elapsed()));
                    }
                    text
                }
                // Before the agent has pinned its maps.
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > timeout {
                bail!("timed out after {} s waiting for {what}; `lb-agent list` last showed:\n{}", timeout.as_secs(), last.trim_end());
            }
            interrupt::sleep(Duration::from_millis(50))?;
        }
    }

    /// The exit status, if the agent has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => child.try_wait().context("checking on lb-agent"),
            None => bail!("lb-agent was stopped"),
        }
    }

    /// The log lines written since the last call that an operator would
    /// care about (syncs, warnings, errors), without timestamps.
    pub fn new_log_lines(&mut self) -> Vec<String> {
        let Ok(mut file) = fs::File::open(&self.log) else {
            return Vec::new();
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.log_seen)).is_err() || file.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        // Only whole lines; a partial last line waits for the next call.
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        self.log_seen += complete as u64;
        text[..complete]
            .lines()
            .filter(|line| line.contains("synced manifests") || line.contains("WARN") || line.contains("ERROR"))
            .map(strip_timestamp)
            .collect()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops the agent (SIGTERM, as the kubelet would; SIGKILL after a
    /// grace period) and removes its pinned maps. Returns what happened.
    pub fn stop(&mut self) -> Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok("already stopped".to_owned());
        };
        let how = match child.try_wait() {
            Ok(Some(status)) => format!("had already exited ({status})"),
            _ => {
                let pid = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
                // SAFETY: kill(2) on our own, not yet reaped, child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let deadline = Instant::now() + STOP_GRACE;
                loop {
                    if let Ok(Some(status)) = child.try_wait() {
                        break if status.success() { "stopped (SIGTERM)".to_owned() } else { format!("stopped (SIGTERM), {status}") };
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        break format!("killed (no exit {} s after SIGTERM)", STOP_GRACE.as_secs());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        remove_pins(&self.bin, &self.pins)?;
        Ok(how)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("demo: cleanup: {e:#}");
        }
    }
}

/// `lb-agent uninstall --bpffs <pins>` (detaches the programs, whose
/// links outlive the agent), then removes whatever is left.
pub fn remove_pins(bin: &Path, pins: &Path) -> Result<()> {
    let cleanup = util::output(Command::new(bin).arg("uninstall").arg("--bpffs").arg(pins));
    if pins.exists() {
        fs::remove_dir_all(pins).with_context(|| format!("removing {}", pins.display())).with_context(|| match &cleanup {
            Ok(_) => "`lb-agent uninstall` left the pin directory behind".to_owned(),
            Err(e) => format!("{e:#}"),
        })?;
    }
    Ok(())
}

/// `2025-01-01T00:00:00.000000Z  INFO lb_agent::run: synced ...` ->
/// `INFO lb_agent::run: synced ...`.
fn strip_timestamp(line: &str) -> String {
    let mut parts = line.splitn(2, ' ');
    match (parts.next(), parts.next()) {
        (Some(first), Some(rest)) if first.contains('T') && first.ends_with('Z') => rest.trim_start().to_owned(),
        _ => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn strip_timestamp() {
        assert_eq!(
            super::strip_timestamp("2025-11-29T12:47:00.123456Z  INFO lb_agent::run: synced manifests frontends=2"),
            "INFO lb_agent::run: synced manifests frontends=2"
        );
        assert_eq!(super::strip_timestamp("no timestamp here"), "no timestamp here");
    }
}
