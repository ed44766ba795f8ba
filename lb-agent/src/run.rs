//! `lb-agent run`: load, attach, then keep the maps in sync with a source
//! of Services and EndpointSlices (a manifest directory or the Kubernetes
//! API) until told to stop.
//!
//! Updates are batched: the maps are written at most once per
//! `sync_delay` after the first update of a burst. Nothing is written
//! before the source has listed both kinds completely, so an agent that
//! starts while the API server is down keeps serving what the pinned maps
//! hold.

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use lb_common::Config;
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, info, warn};

use crate::{
    datapath::{Datapath, HostRouting, MapSizes, XdpAttach},
    gc, host,
    linkwatch::{LinkEvent, LinkEvents},
    maps::Maps,
    metrics::Metrics,
    northsouth::{NorthSouth, NorthSouthConfig},
    probes::{self, Heartbeat},
    reconcile::Reconciler,
    source::{self, kube::KubeOptions},
    sync::Syncer,
    translate::TranslateOptions,
};

/// Where Services and EndpointSlices come from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// A directory of manifests, polled every `poll`.
    Dir { path: PathBuf, poll: Duration },
    /// The Kubernetes API server.
    Kube(KubeOptions),
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub source: SourceConfig,
    pub bpffs: PathBuf,
    /// Interface name patterns (`*` wildcards) of pod interfaces.
    pub pod_ifaces: Vec<String>,
    /// cgroup2 directory for the socket hooks; `None` finds the mount.
    pub cgroup: Option<PathBuf>,
    pub socket_lb: bool,
    pub sizes: MapSizes,
    /// How often to look for new interfaces.
    pub poll: Duration,
    /// How long to gather a burst of updates before writing the maps.
    pub sync_delay: Duration,
    /// Address of the health server; `None` disables it.
    pub health_addr: Option<SocketAddr>,
    /// Address of the metrics server; `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    pub translate: TranslateOptions,
    /// Maglev table size M (prime).
    pub maglev_m: u32,
    pub ct_timeouts: lb_common::CtTimeouts,
    /// How often expired conntrack entries are collected.
    pub ct_gc_interval: Duration,
    /// How often the maps are compared with the desired state and any
    /// drift repaired (kube-proxy's `--sync-period`).
    pub sync_period: Duration,
    /// How translated pod traffic reaches a pod of this node.
    pub host_routing: HostRouting,
    /// NodePorts, external and LoadBalancer IPs (XDP on the external
    /// interfaces).
    pub north_south: NorthSouthConfig,
}

/// How long after a sync with map errors it is tried again when nothing
/// else changes: kube-proxy's sync period, after which its failed syncs
/// are retried.
pub const SYNC_RETRY: Duration = Duration::from_secs(30);

/// A period such as `1h`, `15m`, `30s` or `500ms` (a bare number is
/// seconds); at least 100 ms.
pub fn parse_period(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a period (like 1h, 15m, 30s, 500ms)"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("{s:?}: unknown unit {other:?} (h, m, s or ms)")),
    };
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?}: at least 100ms"));
    }
    Ok(d)
}

/// Runs until `shutdown` completes. The programs stay attached when the
/// agent exits (their links are pinned) and the maps stay pinned, so the
/// node keeps serving, and a restarted agent adopts the links and resumes
/// with every ID and flow intact.
pub async fn run(cfg: RunConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let heartbeat = Heartbeat::default();
    heartbeat.beat();
    // Bind first: a taken port is a configuration error worth failing on.
    let health_task = match cfg.health_addr {
        Some(addr) => {
            let listener = probes::bind(addr).with_context(|| format!("binding the health server to {addr} (--health-addr)"))?;
            Some(tokio::spawn(probes::serve(listener, metrics.clone(), heartbeat.clone())))
        }
        None => None,
    };
    let metrics_task = match cfg.metrics_addr {
        Some(addr) => {
            let listener =
                crate::http_server::listen(addr).with_context(|| format!("binding the metrics server to {addr} (--metrics-addr)"))?;
            info!(%addr, "metrics server listening (/metrics)");
            Some(tokio::spawn(probes::serve_metrics(listener, metrics.clone(), cfg.bpffs.clone())))
        }
        None => None,
    };

    let missing = crate::caps::missing();
    if !missing.is_empty() {
        warn!(missing = ?missing, "lb-agent needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (securityContext.capabilities.add): loading the datapath is expected to fail");
    }
    // A named external interface that does not exist is a configuration
    // error: said at once, before the datapath's load (which may take a
    // while on a busy node), not after.
    for name in &cfg.north_south.external_ifaces {
        crate::host::external_ifindex(name)?;
    }
    if cfg.north_south.xdp_mode != XdpAttach::Off {
        cfg.north_south.sysctls.check().context("the node's sysctls (--sysctl-dir)")?;
    }
    let mut dp = Datapath::load_for(&cfg.bpffs, &cfg.sizes, cfg.north_south.xdp_mode)?;
    let logger_task = match aya_log::EbpfLogger::init(&mut dp.ebpf) {
        Ok(logger) => Some(tokio::spawn(poll_kernel_logs(logger))),
        Err(e) => {
            warn!("kernel log messages unavailable: {e}");
            None
        }
    };
    let mut maps = Maps::open(&cfg.bpffs)?;
    // Before the XDP and tc programs are attached (below): a pre-filter new to
    // these pins learns the frontend addresses they already hold.
    let fixed = maps.sync_vip_filter()?;
    if fixed > 0 {
        info!(words = fixed, "frontend pre-filter rebuilt from the pinned frontend addresses");
    }
    let mut reconciler = Reconciler::recover(maps).context("recovering state from the pinned maps")?;
    let cookie = host::current_netns_cookie().context("reading the network namespace cookie")?;
    reconciler.set_maglev_m(cfg.maglev_m);
    let ready = Config::ready(cookie);
    let flags = ready.flags | cfg.host_routing.config_flags();
    reconciler.maps_mut().write_config(&Config { flags, maglev_m: cfg.maglev_m, timeouts: cfg.ct_timeouts, ..ready })?;
    info!(host_routing = %cfg.host_routing, "datapath configured");
    dp.set_host_routing(cfg.host_routing);
    if cfg.socket_lb {
        let cgroup = match &cfg.cgroup {
            Some(c) => host::cgroup2_at(c).context("the cgroup for the socket hooks (--cgroup)")?,
            None => host::find_cgroup2().context("finding the cgroup2 mount for the socket hooks")?,
        };
        dp.attach_cgroup(&cgroup)?;
    }
    // Subscribe before listing, so that no interface slips in between.
    let mut link_events = match LinkEvents::subscribe() {
        Ok(events) => Some(events),
        Err(e) => {
            warn!("no link events ({e}): new pod interfaces are found every {:?}", cfg.poll);
            None
        }
    };
    sync_interfaces(&mut dp, &cfg.pod_ifaces);
    let north_south = NorthSouth::start(&cfg.north_south, &mut dp, &mut reconciler, heartbeat.clone())?;
    let mut syncer = Syncer::new(cfg.translate.clone(), north_south, reconciler, metrics.clone());
    syncer.set_socket_lb(cfg.socket_lb);
    // Links of an earlier agent that this one did not take over are hooks
    // it does not want.
    dp.drop_unadopted();
    dp.release_held_arrays();
    dp.prune_pod_ifaces();
    if !dp.is_live() {
        info!("the attached programs keep serving from the old maps until the rebuilt ones are filled");
    }

    let (tx, mut rx) = mpsc::channel::<source::Batch>(1024);
    let source_tasks = match &cfg.source {
        SourceConfig::Dir { path, poll } => {
            info!(dir = %path.display(), "source: manifest directory");
            vec![tokio::spawn(source::dir::run(path.clone(), cfg.north_south.node_name.clone(), *poll, tx))]
        }
        SourceConfig::Kube(opts) => {
            let client = source::kube::client(opts).await?;
            source::kube::spawn(client, opts, tx, metrics.clone())
        }
    };

    tokio::pin!(shutdown);
    let north_south_on = cfg.north_south.xdp_mode != XdpAttach::Off;
    let mut ticker = tokio::time::interval(cfg.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gc_ticker = tokio::time::interval(cfg.ct_gc_interval);
    gc_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync_ticker = tokio::time::interval_at(tokio::time::Instant::now() + cfg.sync_period, cfg.sync_period);
    resync_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether a sync wrote the maps (a resync before would compare them
    // with nothing).
    let mut synced = false;
    // The first update not yet written to the maps, and when to write.
    let mut oldest_pending: Option<Instant> = None;
    let mut apply_at: Option<tokio::time::Instant> = None;
    // A sync that ended with map errors is tried again after
    // `SYNC_RETRY` even if nothing else changes (kube-proxy's
    // `RetryAfter(syncPeriod)`); new events do not wait for it.
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut waiting_logged = false;
    let mut sources_done = false;
    // An address event (or a periodic look) asks for the node's addresses
    // to be read again; a burst of events is read once, at `apply_at`.
    let mut addresses_dirty = false;
    loop {
        let deadline = match (apply_at, retry_at) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticker.tick() => {
                heartbeat.beat();
                sync_interfaces(&mut dp, &cfg.pod_ifaces);
                if link_events.is_none() {
                    // No address events: look at the addresses instead.
                    addresses_dirty = true;
                    apply_at.get_or_insert_with(tokio::time::Instant::now);
                }
            }
            event = async { link_events.as_mut().unwrap().next().await }, if link_events.is_some() => match event {
                Some(LinkEvent::Address { ifindex, address, added }) => {
                    debug!(ifindex, %address, added, "address event");
                    addresses_dirty = true;
                    apply_at.get_or_insert_with(|| tokio::time::Instant::now() + cfg.sync_delay);
                }
                Some(event) => on_link_event(&mut dp, &cfg.pod_ifaces, north_south_on.then_some(&cfg.north_south.sysctls), event),
                None => {
                    warn!("link events stopped: new pod interfaces are found every {:?}", cfg.poll);
                    link_events = None;
                }
            },
            _ = gc_ticker.tick() => gc::collect(syncer.reconciler_mut(), &cfg.ct_timeouts),
            _ = resync_ticker.tick() => {
                // A pending sync writes first; the resync waits for its next turn.
                if synced && apply_at.is_none() {
                    syncer.resync();
                }
                // In case address events were lost.
                addresses_dirty = true;
                apply_at.get_or_insert_with(tokio::time::Instant::now);
            }
            batch = rx.recv(), if !sources_done => {
                let Some(batch) = batch else {
                    // Keep attaching interfaces and answering health checks.
                    warn!("every source stopped; keeping the current state");
                    sources_done = true;
                    continue;
                };
                let seen = batch.seen;
                for update in batch.updates {
                    syncer.take(update);
                }
                oldest_pending = Some(oldest_pending.map_or(seen, |o| o.min(seen)));
                if apply_at.is_none() {
                    // The first complete state is written at once (the
                    // node is not ready before); later bursts are gathered.
                    let delay = if metrics.ready() { cfg.sync_delay } else { Duration::ZERO };
                    apply_at = Some(tokio::time::Instant::now() + delay);
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                apply_at = None;
                retry_at = None;
                heartbeat.beat();
                let addresses_changed = std::mem::take(&mut addresses_dirty) && syncer.refresh_node_addresses();
                if oldest_pending.is_none() && !addresses_changed {
                    continue;
                }
                if !syncer.ready() {
                    if !waiting_logged {
                        info!("waiting for complete lists of Services and EndpointSlices before writing the maps");
                        waiting_logged = true;
                    }
                    continue;
                }
                let what = match (oldest_pending.is_some(), &cfg.source) {
                    (false, _) => "synced for the node's new addresses",
                    (true, SourceConfig::Dir { .. }) => "synced manifests",
                    (true, SourceConfig::Kube(_)) => "synced from the API server",
                };
                let first = oldest_pending.take().unwrap_or_else(Instant::now);
                let record = syncer.sync(first, what);
                heartbeat.sync_ended(record.map_errors > 0);
                if record.map_errors > 0 {
                    // Still pending: what failed kept its previous state.
                    oldest_pending = Some(first);
                    retry_at = Some(tokio::time::Instant::now() + SYNC_RETRY);
                    info!(
                        "the sync left {} map errors: tried again in {}s, or at the next change",
                        record.map_errors,
                        SYNC_RETRY.as_secs()
                    );
                }
                if !synced {
                    crate::heap::give_back();
                }
                synced = true;
                if !dp.is_live() {
                    // The rebuilt maps hold a complete state now.
                    if let Err(e) = dp.go_live() {
                        warn!("{e:#}");
                    }
                }
            }
        }
    }
    info!("shutting down; the programs stay attached and the maps pinned in {} (`lb-agent uninstall` removes them)", cfg.bpffs.display());
    for task in source_tasks.into_iter().chain(health_task).chain(metrics_task).chain(logger_task) {
        task.abort();
    }
    Ok(())
}

/// Attaches the tc programs to every pod interface and lets go of those
/// gone or no longer matched.
fn sync_interfaces(dp: &mut Datapath, patterns: &[String]) {
    let present = match host::interfaces() {
        Ok(n) => n,
        Err(e) => {
            warn!("listing interfaces: {e}");
            return;
        }
    };
    let gone: Vec<u32> = dp
        .attached_interfaces()
        .filter(|(i, name)| !present.iter().any(|(j, n)| i == j && n == name && is_pod(patterns, n)))
        .map(|(i, _)| i)
        .collect();
    for ifindex in gone {
        dp.forget_interface(ifindex);
    }
    for (ifindex, name) in &present {
        if is_pod(patterns, name)
            && let Err(e) = dp.attach_tc(*ifindex, name)
        {
            warn!("{e:#}");
        }
    }
}

/// A link event: a new pod interface gets the tc programs; with the
/// north-south path on, a new overlay device loose reverse-path filtering
/// (`Sysctls::loosen_rp_filter_on_overlays`; `sysctls` is `None` with the
/// north-south path off).
fn on_link_event(dp: &mut Datapath, patterns: &[String], sysctls: Option<&host::Sysctls>, event: LinkEvent) {
    match event {
        LinkEvent::New { ifindex, name } => {
            if let Some(sysctls) = sysctls
                && !is_pod(patterns, &name)
                && sysctls.loosen_rp_filter_if_overlay(&name)
            {
                warn_generic_xdp_below(dp, &name);
            }
            let known = dp.attached_interfaces().find(|(i, _)| *i == ifindex).map(|(_, n)| n.to_string());
            if known.as_deref().is_some_and(|n| n != name) {
                // Renamed: judge it by its new name.
                dp.forget_interface(ifindex);
            }
            if is_pod(patterns, &name) {
                let started = Instant::now();
                match dp.attach_tc(ifindex, &name) {
                    Ok(crate::datapath::Attached::Already) => {}
                    Ok(_) => {
                        debug!(interface = name, ifindex, attach_us = started.elapsed().as_micros() as u64, "attached on a link event")
                    }
                    Err(e) => warn!("{e:#}"),
                }
            }
        }
        LinkEvent::Gone { ifindex } => dp.forget_interface(ifindex),
        // The run loop re-plans the NodePorts for these.
        LinkEvent::Address { .. } => {}
        LinkEvent::Route => match dp.flush_nexthops() {
            Ok(0) => {}
            Ok(n) => debug!(next_hops = n, "a route changed: the kept FIB answers are forgotten"),
            Err(e) => warn!("forgetting the kept FIB answers after a route change: {e:#}"),
        },
    }
}

/// An overlay device that came after the XDP mode was chosen
/// (`xdp_why::AUTO_OVERLAY` is chosen at attach): warns when its MTU is
/// smaller than that of an interface with generic XDP.
fn warn_generic_xdp_below(dp: &Datapath, overlay: &str) {
    let Ok(overlay_mtu) = host::mtu(overlay) else { return };
    for (ext, mode, why) in dp.xdp_interfaces() {
        if mode == lb_common::xdp_mode::GENERIC && host::mtu(ext).is_ok_and(|m| overlay_mtu < m) {
            crate::datapath::warn_generic_xdp_over_overlay(ext, why, overlay, overlay_mtu);
        }
    }
}

fn is_pod(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| host::glob_match(p, name))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(parse_period("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_period("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_period("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_period(" 500ms "), Ok(Duration::from_millis(500)));
        for bad in ["", "h", "1d", "-1s", "50ms", "1.5h"] {
            assert!(parse_period(bad).is_err(), "{bad:?}");
        }
    }
}
