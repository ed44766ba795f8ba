//! What the datapath counted and how full its maps are, read from the
//! pinned maps at each scrape, in the Prometheus text format: the same
//! figures as `lb-agent stats`, plus the build's version.

use std::fmt::Write as _;

use crate::{
    inspect::stats,
    list,
    maps::{Maps, MapsError},
};

/// A label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The datapath's metrics, read from `maps` now.
pub fn render(maps: &Maps) -> Result<String, MapsError> {
    let mut out = String::new();
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    head(&mut out, "lb_build_info", "gauge", "The agent's version (always 1).");
    let _ = writeln!(out, "lb_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    head(
        &mut out,
        "lb_datapath_packets_total",
        "counter",
        "Packets the datapath dropped, rejected or handled specially, by reason (lb-agent stats; drop=\"true\" for drops and rejects).",
    );
    for r in stats::reasons(maps)? {
        let _ = writeln!(out, "lb_datapath_packets_total{{reason=\"{}\",drop=\"{}\"}} {}", r.reason, r.drop, r.packets);
    }
    let listed = list::listed(maps)?;
    for (name, help, get) in [
        (
            "lb_frontend_packets_total",
            "Packets to a frontend that the datapath translated.",
            (|l: &list::Listed| l.packets) as fn(&list::Listed) -> u64,
        ),
        ("lb_frontend_bytes_total", "Bytes of those packets.", |l| l.bytes),
        ("lb_frontend_new_flows_total", "New flows (and translated sockets) to a frontend.", |l| l.new_flows),
    ] {
        head(&mut out, name, "counter", help);
        for l in &listed {
            let _ = writeln!(
                out,
                "{name}{{service=\"{}\",frontend=\"{}\",scope=\"{}\"}} {}",
                label(&l.row.service),
                label(&l.row.frontend),
                l.row.scope,
                get(l)
            );
        }
    }
    let fills = stats::fills(maps)?;
    head(&mut out, "lb_map_entries", "gauge", "Entries in a datapath map.");
    for f in &fills {
        let _ = writeln!(out, "lb_map_entries{{map=\"{}\"}} {}", f.map, f.entries);
    }
    head(&mut out, "lb_map_max_entries", "gauge", "Capacity of a datapath map.");
    for f in &fills {
        let _ = writeln!(out, "lb_map_max_entries{{map=\"{}\"}} {}", f.map, f.max_entries);
    }
    Ok(out)
}
