//! `lb-agent ct`, `stats`, `status` and `explain`: what the pinned maps
//! and links say, read without a running agent, as a table or as JSON
//! (`-o json`, with stable field names).

pub mod conntrack;
pub mod explain;
pub mod stats;
pub mod status;

use std::net::Ipv4Addr;

/// How a command prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// An address as stored in the maps (network order) as text.
pub fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

/// `ip:port` of an address and a port as stored in the maps (both in
/// network order).
pub fn endpoint(addr: u32, port: u16) -> String {
    format!("{}:{}", ip(addr), u16::from_be(port))
}

/// The name of an IP protocol number.
pub fn proto_name(proto: u8) -> String {
    match proto {
        lb_common::IPPROTO_TCP => "TCP".into(),
        lb_common::IPPROTO_UDP => "UDP".into(),
        lb_common::IPPROTO_SCTP => "SCTP".into(),
        lb_common::IPPROTO_ICMP => "ICMP".into(),
        n => n.to_string(),
    }
}

/// Pads the columns of `rows` (the first is the header) to their widest
/// cell, two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(String::len).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
