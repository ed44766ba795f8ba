//! lb node agent: turns Services and EndpointSlices into the eBPF
//! datapath's maps.
//!
//! The sync path ([`sync::Syncer`]), in order:
//! - [`source`] follows the Kubernetes API ([`source::kube`]) or a
//!   directory of YAML ([`source::dir`], read by [`source::manifest`]) into a
//!   [`source::Store`];
//! - [`translate`] applies kube-proxy's semantics and produces the desired
//!   [`model`];
//! - [`northsouth::plan`] adds this node's frontends: NodePorts, external
//!   and LoadBalancer IPs, `internalTrafficPolicy: Local` (kept from one
//!   sync to the next by [`northsouth::Planner`]);
//! - [`reconcile`] writes the difference into the pinned maps ([`maps`]).
//!
//! Around it:
//! - [`datapath`] loads the programs and attaches them through pinned
//!   links ([`links`]) that outlive the agent; [`layout`] decides which
//!   pinned maps a new agent may reuse; [`linkwatch`] finds new pod
//!   interfaces; [`host`] holds the host plumbing (interfaces, routes,
//!   sysctls, bpffs, cgroup2);
//! - [`run`] is `lb-agent run`: the loop around all of this;
//!   [`stale_sockets`] destroys host UDP sockets left connected to a
//!   removed backend (through [`sock_diag`]);
//! - [`list`] renders what the maps hold; [`inspect`] holds `lb-agent ct`,
//!   `stats`, `status` and `explain`;
//! - [`probes`] serves `/healthz`, `/livez`, `/readyz` and [`metrics`];
//!   [`service_health`] serves the Services' health check NodePorts.

pub mod batch;
pub mod caps;
pub mod carry;
pub mod datapath;
pub mod datapath_metrics;
pub mod fd_limit;
pub mod gc;
pub mod heap;
pub mod host;
pub mod http_server;
pub mod inspect;
pub mod kernel_probe;
pub mod layout;
pub mod links;
pub mod linkwatch;
pub mod list;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod northsouth;
pub mod probes;
pub mod reconcile;
pub mod run;
pub mod service_health;
pub mod sock_diag;
pub mod source;
pub mod stale_sockets;
pub mod sync;
pub mod topology;
pub mod translate;
pub mod vip_filter;
pub mod vips;

/// The eBPF object, built by `cargo xtask build-ebpf` (empty when the
/// crate was built without it; see `build.rs`).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT_PATH"));

/// Default bpffs directory for the pinned maps.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/lb";
