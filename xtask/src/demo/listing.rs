//! Reads the table `lb-agent list` prints (xtask cannot link lb-agent: its
//! build needs the eBPF object that xtask builds).
//!
//! ```text
//!    ID  FRONTEND           SERVICE        BACKENDS
//!     1  10.96.0.10:80/TCP  demo/web:http  10.244.0.12:8080, 10.244.0.13:8080
//!     2  10.96.0.53:53/UDP  demo/dns:dns   (none: rejects)
//! 2 frontends, 2 backends, 0 conntrack entries (of 262144)
//! ```
//!
//! Columns are cut at the offsets of the header's titles, so an empty
//! service name cannot shift them.

use anyhow::{Context as _, Result, bail};

/// One frontend of the listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub id: u32,
    /// `ip:port/PROTO`.
    pub frontend: String,
    /// `namespace/name:port`.
    pub service: String,
    /// `ip:port`, possibly followed by ` (terminating)`; empty when the
    /// frontend rejects.
    pub backends: Vec<String>,
}

const NO_BACKENDS: &str = "(none: rejects)";

/// Parses the output of `lb-agent list`.
pub fn parse(text: &str) -> Result<Vec<Row>> {
    let mut lines = text.lines();
    let header = lines.by_ref().find(|line| line.contains("FRONTEND")).context("no header line (with FRONTEND) in the listing")?;
    let column = |title: &str| header.find(title).with_context(|| format!("no {title} column in the header {header:?}"));
    let (front, service, backends) = (column("FRONTEND")?, column("SERVICE")?, column("BACKENDS")?);
    if !(front < service && service < backends) {
        bail!("unexpected column order in the header {header:?}");
    }
    let mut rows = Vec::new();
    for line in lines {
        let cell = |from: usize, to: Option<usize>| {
            let end = to.unwrap_or(line.len()).min(line.len());
            line.get(from.min(end)..end).unwrap_or("").trim()
        };
        // The summary line ("2 frontends, ...") has no numeric ID column.
        let Ok(id) = cell(0, Some(front)).parse::<u32>() else {
            continue;
        };
        let frontend = cell(front, Some(service)).to_owned();
        if !frontend.contains(':') {
            bail!("unexpected listing row {line:?}");
        }
        let list = cell(backends, None);
        rows.push(Row {
            id,
            frontend,
            service: cell(service, Some(backends)).to_owned(),
            backends: if list == NO_BACKENDS || list.is_empty() {
                Vec::new()
            } else {
                list.split(',').map(|b| b.trim().to_owned()).collect()
            },
        });
    }
    Ok(rows)
}

/// The row of `frontend` (`ip:port/PROTO`), if listed.
pub fn find<'a>(rows: &'a [Row], frontend: &str) -> Option<&'a Row> {
    rows.iter().find(|row| row.frontend == frontend)
}

/// How many backends `frontend` has; `None` when it is not listed.
pub fn backend_count(rows: &[Row], frontend: &str) -> Option<usize> {
    find(rows, frontend).map(|row| row.backends.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "   ID  FRONTEND           SERVICE        BACKENDS
    1  10.96.0.10:80/TCP  demo/web:http  10.244.0.12:8080, 10.244.0.13:8080 (terminating)
    2  10.96.0.53:53/UDP                 (none: rejects)
2 frontends, 2 backends, 4 conntrack entries (of 262144)
";

    #[test]
    fn parses_rows_and_skips_the_summary() {
        let rows = parse(LISTING).unwrap();
        assert_eq!(
            rows,
            [
                Row {
                    id: 1,
                    frontend: "10.96.0.10:80/TCP".into(),
                    service: "demo/web:http".into(),
                    backends: vec!["10.244.0.12:8080".into(), "10.244.0.13:8080 (terminating)".into()],
                },
                Row { id: 2, frontend: "10.96.0.53:53/UDP".into(), service: String::new(), backends: Vec::new() },
            ]
        );
        assert_eq!(backend_count(&rows, "10.96.0.10:80/TCP"), Some(2));
        assert_eq!(backend_count(&rows, "10.96.0.53:53/UDP"), Some(0));
        assert_eq!(backend_count(&rows, "10.96.0.1:443/TCP"), None);
    }

    #[test]
    fn empty_listing() {
        let text = "   ID  FRONTEND  SERVICE  BACKENDS\n0 frontends, 0 backends, 0 conntrack entries (of 10)\n";
        assert!(parse(text).unwrap().is_empty());
        assert!(parse("error: no maps\n").is_err());
    }
}
