//! PNG plots (plotters, bitmap backend, with the DejaVu Sans font from the
//! `dejavu` crate registered for ab_glyph: no system font needed).

use std::{path::Path, sync::Once};

use anyhow::{Result, anyhow};
use plotters::{prelude::*, style::FontStyle};

use crate::{b2::Position, dp::Kind, report::Report};

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
    /// Index into the palette.
    pub color: usize,
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plotting: {err:?}")
}

/// A line chart with a logarithmic x axis.
pub fn lines(path: &Path, title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<()> {
    register_font();
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (xmin, xmax) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let ymax = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
    if xmin > xmax {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin * 0.7..xmax * 1.4).log_scale(), 0.0..ymax * 1.15)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| fmt_count(*x))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for (i, s) in series.iter().enumerate() {
        let _ = i;
        let color = COLORS[s.color % COLORS.len()];
        let style = color.stroke_width(if s.dashed { 1 } else { 3 });
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style))
            .map_err(e)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Grouped bars: one group per category, one bar per series.
pub fn bars(path: &Path, title: &str, y_desc: &str, categories: &[String], series: &[(String, Vec<f64>)], log: bool) -> Result<()> {
    register_font();
    let ymax = series.iter().flat_map(|s| s.1.iter().copied()).fold(0.0, f64::max).max(1e-9);
    let ymin = series.iter().flat_map(|s| s.1.iter().copied()).filter(|v| *v > 0.0).fold(f64::MAX, f64::min);
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let n = categories.len() as f64;
    let k = series.len().max(1) as f64;
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 22)).margin(15).x_label_area_size(40).y_label_area_size(80);
    let cats = categories.to_vec();
    let fmt_x = move |x: &f64| {
        let i = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 1e-6 { cats.get(i).cloned().unwrap_or_default() } else { String::new() }
    };
    if log {
        let lo = (ymin / 2.0).max(1e-9);
        let mut chart = builder.build_cartesian_2d(0.0..n, (lo..ymax * 3.0).log_scale()).map_err(e)?;
        chart
            .configure_mesh()
            .y_desc(y_desc)
            .x_labels(categories.len() * 2 + 1)
            .x_label_formatter(&fmt_x)
            .disable_x_mesh()
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        for (j, (name, values)) in series.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let w = 0.8 / k;
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 + 0.1 + j as f64 * w;
                    Rectangle::new([(x0, lo), (x0 + w * 0.9, v.max(lo))], color.filled())
                }))
                .map_err(e)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
    } else {
        let mut chart = builder.build_cartesian_2d(0.0..n, 0.0..ymax * 1.2).map_err(e)?;
        chart
            .configure_mesh()
            .y_desc(y_desc)
            .x_labels(categories.len() * 2 + 1)
            .x_label_formatter(&fmt_x)
            .disable_x_mesh()
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(e)?;
        for (j, (name, values)) in series.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let w = 0.8 / k;
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 + 0.1 + j as f64 * w;
                    Rectangle::new([(x0, 0.0), (x0 + w * 0.9, v)], color.filled())
                }))
                .map_err(e)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

pub fn fmt_count(x: f64) -> String {
    if x >= 1000.0 && (x / 1000.0).fract().abs() < 1e-9 { format!("{}k", x / 1000.0) } else { format!("{x}") }
}

/// Writes every plot the report has data for; returns the file names.
pub fn write_all(r: &Report, dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    if let Some(rows) = &r.b1 {
        let name = "bench-b1-per-packet.png";
        let s = |n: &str, f: &dyn Fn(&crate::b1::B1Row) -> f64, color: usize| Series {
            name: n.into(),
            points: rows.iter().map(|r| (r.services as f64, f(r))).collect(),
            dashed: color == 4,
            color,
        };
        lines(
            &dir.join(name),
            "B1: per-packet cost (BPF_PROG_TEST_RUN, one CPU)",
            "services (10 backends each)",
            "ns per packet",
            &[
                s("ClusterIP established (tc)", &|r| r.established_ns, 0),
                s("ClusterIP new flow (tc), overhead off", &|r| r.new_flow_net_ns(), 1),
                s("NodePort established (XDP)", &|r| r.xdp.as_ref().map(|x| x.local.established_ns).unwrap_or(f64::NAN), 2),
                s("NodePort new flow (XDP), overhead off", &|r| r.xdp.as_ref().map(|x| x.local.new_flow_net_ns()).unwrap_or(f64::NAN), 3),
                s("floor: XDP_PASS", &|r| r.floor_ns, 4),
            ]
            .into_iter()
            .filter(|s| s.points.iter().all(|p| p.1.is_finite()))
            .collect::<Vec<_>>(),
        )?;
        out.push(name.to_string());
    }
    if let Some(rows) = &r.b2 {
        let name = "bench-b2-latency.png";
        let mut series = Vec::new();
        for (ci, kind) in Kind::B2.into_iter().enumerate() {
            for (label, f) in [("p99", (|p: &crate::b2::Pcts| p.p99) as fn(&crate::b2::Pcts) -> f64), ("p50", |p| p.p50)] {
                let points: Vec<_> = rows
                    .iter()
                    .filter(|r| r.kind == kind && r.position == Position::Last && r.note.is_none())
                    .map(|r| (r.services as f64, f(&r.request)))
                    .collect();
                if !points.is_empty() {
                    series.push(Series { name: format!("{kind} {label}"), points, dashed: label == "p50", color: ci });
                }
            }
        }
        lines(
            &dir.join(name),
            "B2: connect + request + close, target service last",
            "services (10 endpoints each)",
            "latency (µs)",
            &series,
        )?;
        out.push(name.to_string());
    }
    if let Some(b3) = &r.b3 {
        let name = "bench-b3-programming.png";
        let cats = vec!["full sync".to_string(), "+1 service".to_string(), "+1 endpoint".to_string()];
        let tk = |t: crate::sys::Took| match t {
            crate::sys::Took::Ran(d) | crate::sys::Took::Over(d) => d.as_secs_f64() * 1e3,
            crate::sys::Took::NotRun => 0.0,
        };
        let base = |t: &crate::b3::BaseTimings| vec![tk(t.full), tk(t.add_service), tk(t.add_endpoint)];
        let ms = |t: &crate::b3::Timings| {
            vec![t.full.as_secs_f64() * 1e3, t.add_service.as_secs_f64() * 1e3, t.add_endpoint.as_secs_f64() * 1e3]
        };
        bars(
            &dir.join(name),
            &format!("B3: programming time, {} services × {} endpoints", fmt_count(b3.services as f64), b3.endpoints),
            "milliseconds (log scale)",
            &cats,
            &[
                ("lb agent (maps)".to_string(), ms(&b3.ours)),
                ("iptables-restore, nft backend (a stopped load: its budget)".to_string(), base(&b3.iptables)),
                ("iptables-legacy-restore".to_string(), base(&b3.iptables_legacy)),
                ("nft -f".to_string(), base(&b3.nft)),
            ],
            true,
        )?;
        out.push(name.to_string());
    }
    if let Some(rows) = &r.b4 {
        let name = "bench-b4-throughput.png";
        // One pair of categories per path, each relative to iptables on it.
        let mut paths: Vec<_> = rows.iter().map(|r| r.path).collect();
        paths.dedup();
        let base = |p| rows.iter().find(|r| r.kind == Kind::Iptables && r.path == p);
        let paths: Vec<_> = paths.into_iter().filter(|&p| base(p).is_some()).collect();
        if !paths.is_empty() {
            let cats: Vec<String> = paths.iter().flat_map(|p| [format!("UDP pps, {p}"), format!("TCP bit/s, {p}")]).collect();
            let mut kinds: Vec<Kind> = rows.iter().map(|r| r.kind).collect();
            kinds.sort();
            kinds.dedup();
            let series: Vec<(String, Vec<f64>)> = kinds
                .iter()
                .map(|&k| {
                    let v = paths
                        .iter()
                        .flat_map(|&p| {
                            let b = base(p).expect("filtered");
                            match rows.iter().find(|r| r.kind == k && r.path == p) {
                                Some(r) => [r.udp_pps / b.udp_pps.max(1.0), r.tcp_bps / b.tcp_bps.max(1.0)],
                                None => [0.0, 0.0],
                            }
                        })
                        .collect();
                    (k.to_string(), v)
                })
                .collect();
            bars(&dir.join(name), "B4: throughput through the node, relative to iptables", "× iptables", &cats, &series, false)?;
            out.push(name.to_string());
        }
    }
    Ok(out)
}
