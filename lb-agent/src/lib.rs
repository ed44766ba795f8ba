//! lb node agent: turns Services and EndpointSlices into the eBPF
//! datapath's maps.
//!
//! - [`source`] follows the Kubernetes API ([`source::kube`]) or a
//!   directory of YAML ([`source::dir`], read by [`manifest`]);
//! - [`translate`] applies kube-proxy's semantics and produces the desired
//!   [`model`];
//! - [`reconcile`] writes the difference into the pinned maps ([`maps`]);
//! - [`datapath`] loads and attaches the programs;
//! - [`list`] renders what the maps hold;
//! - [`health`] serves `/healthz`, `/readyz` and [`metrics`];
//! - [`northsouth`] adds NodePort, external IP and LoadBalancer frontends
//!   and attaches the XDP program; [`healthcheck`] serves health check
//!   NodePorts.

pub mod batch;
pub mod caps;
pub mod datapath;
pub mod health;
pub mod healthcheck;
pub mod gc;
pub mod layout;
pub mod links;
pub mod linkwatch;
pub mod list;
pub mod maglev;
pub mod manifest;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod netns;
pub mod northsouth;
pub mod reconcile;
pub mod run;
pub mod slice;
pub mod source;
pub mod testrun;
pub mod translate;
pub mod vips;

/// The eBPF object, built by `cargo xtask build-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LB_EBPF_OBJECT_PATH"));

/// Default bpffs directory for the pinned maps.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/lb";
