//! The capabilities the agent needs, and which of them it lacks.
//!
//! The smallest set, proven by the `privileges` lab test (with only these
//! the agent loads, attaches, serves, adopts its links and uninstalls;
//! without any one it fails): `CAP_BPF` (maps, programs, BTF, links and
//! pins), `CAP_PERFMON` (the verifier's full view for networking programs:
//! packet pointer arithmetic is refused without it) and `CAP_NET_ADMIN`
//! (networking program types, tc, XDP and cgroup attachments).

/// (name, capability number) of every capability the agent needs.
pub const NEEDED: [(&str, u32); 3] = [("CAP_BPF", 39), ("CAP_PERFMON", 38), ("CAP_NET_ADMIN", 12)];

/// The names without the `CAP_` prefix, as a container's
/// `securityContext.capabilities.add` lists them.
pub fn container_names() -> Vec<&'static str> {
    NEEDED.iter().map(|(n, _)| n.trim_start_matches("CAP_")).collect()
}

/// The needed capabilities missing from `cap_eff` (a `CapEff` mask).
pub fn missing_from(cap_eff: u64) -> Vec<&'static str> {
    NEEDED.iter().filter(|(_, bit)| cap_eff & (1u64 << bit) == 0).map(|(n, _)| *n).collect()
}

/// The needed capabilities this process lacks (empty when it cannot tell).
pub fn missing() -> Vec<&'static str> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return Vec::new() };
    let Some(mask) = status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|m| u64::from_str_radix(m.trim(), 16).ok()) else {
        return Vec::new();
    };
    missing_from(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capabilities_are_named() {
        assert!(missing_from(u64::MAX).is_empty());
        assert_eq!(missing_from((1 << 39) | (1 << 12)), vec!["CAP_PERFMON"]);
        assert_eq!(missing_from(0).len(), 3);
        assert_eq!(container_names(), vec!["BPF", "PERFMON", "NET_ADMIN"]);
    }
}
