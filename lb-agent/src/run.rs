//! `lb-agent run`: load, attach, then keep the maps in sync with the
//! manifest directory until told to stop.

use std::{
    future::Future,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context;
use lb_common::{Config, config_flags};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use crate::{
    datapath::{Datapath, MapSizes},
    manifest, maps::Maps, netns,
    reconcile::Reconciler,
    translate,
};

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub manifests: PathBuf,
    pub bpffs: PathBuf,
    /// Interface name patterns (`*` wildcards) of pod interfaces.
    pub pod_ifaces: Vec<String>,
    /// cgroup2 directory for the socket hooks; `None` finds the mount.
    pub cgroup: Option<PathBuf>,
    pub socket_lb: bool,
    pub sizes: MapSizes,
    /// How often to look for changed manifests and new interfaces.
    pub poll: Duration,
}

/// Runs until `shutdown` completes. Programs detach when the agent exits;
/// the maps stay pinned, so a restarted agent resumes with every ID and
/// flow intact.
pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut dp = Datapath::load(&cfg.bpffs, &cfg.sizes)?;
    let logger_task = match aya_log::EbpfLogger::init(&mut dp.ebpf) {
        Ok(logger) => Some(tokio::spawn(poll_kernel_logs(logger))),
        Err(e) => {
            warn!("kernel log messages unavailable: {e}");
            None
        }
    };
    let maps = Maps::open(&cfg.bpffs)?;
    let mut reconciler = Reconciler::recover(maps).context("recovering state from the pinned maps")?;
    let cookie = netns::current_netns_cookie().context("reading the network namespace cookie")?;
    reconciler.maps_mut().write_config(&Config {
        host_netns_cookie: cookie,
        flags: config_flags::READY,
        _pad: 0,
    })?;
    if cfg.socket_lb {
        let cgroup = match &cfg.cgroup {
            Some(c) => c.clone(),
            None => netns::find_cgroup2().context("finding the cgroup2 mount for the socket hooks")?,
        };
        dp.attach_cgroup(&cgroup)?;
    }

    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(cfg.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Vec<(PathBuf, SystemTime, u64)>> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {}
        }
        sync_interfaces(&mut dp, &cfg.pod_ifaces);
        match fingerprint(&cfg.manifests) {
            Ok(fp) if seen.as_ref() != Some(&fp) => {
                if sync_manifests(&cfg.manifests, &mut reconciler) {
                    seen = Some(fp);
                }
            }
            Ok(_) => {}
            Err(e) => warn!(
                "cannot list {}: {e}; keeping the current state",
                cfg.manifests.display()
            ),
        }
    }
    info!("shutting down; maps stay pinned in {}", cfg.bpffs.display());
    if let Some(task) = logger_task {
        task.abort();
    }
    Ok(())
}

/// Reads, translates and applies the manifest directory. Returns false if
/// the directory could not be read (nothing was changed then).
fn sync_manifests(dir: &Path, reconciler: &mut Reconciler) -> bool {
    let started = Instant::now();
    let objects = match manifest::read_dir(dir) {
        Ok(o) => o,
        Err(e) => {
            warn!("cannot read {}: {e}; keeping the current state", dir.display());
            return false;
        }
    };
    let translation = translate::translate(&objects.services, &objects.slices);
    let stats = reconciler.apply(&translation.desired);
    info!(
        frontends = translation.desired.len(),
        added = stats.added,
        updated = stats.updated,
        removed = stats.removed,
        map_ops = stats.ops,
        skipped = objects.problems.len() + translation.problems.len(),
        errors = stats.errors.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "synced manifests"
    );
    true
}

fn fingerprint(dir: &Path) -> std::io::Result<Vec<(PathBuf, SystemTime, u64)>> {
    let mut fp = Vec::new();
    for file in manifest::manifest_files(dir)? {
        let meta = std::fs::metadata(&file)?;
        fp.push((file, meta.modified()?, meta.len()));
    }
    Ok(fp)
}

fn sync_interfaces(dp: &mut Datapath, patterns: &[String]) {
    let names = match netns::interface_names() {
        Ok(n) => n,
        Err(e) => {
            warn!("listing interfaces: {e}");
            return;
        }
    };
    dp.forget_interfaces(&names);
    for name in &names {
        if patterns.iter().any(|p| netns::glob_match(p, name)) {
            if let Err(e) = dp.attach_tc(name) {
                warn!("{e:#}");
            }
        }
    }
}

/// Forwards the programs' aya-log messages to tracing (at their level;
/// the datapath logs at debug).
async fn poll_kernel_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd
    // holds it; nothing else closes that fd.
    let registered = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll kernel logs: {e}");
            return;
        }
    };
    loop {
        match fd.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(e) => {
                debug!("kernel log polling stopped: {e}");
                return;
            }
        }
    }
}
