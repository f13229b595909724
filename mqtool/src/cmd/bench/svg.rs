//! `mqtool bench --svg FILE`: latency and throughput against message size,
//! shmq beside the kernel's mq, drawn from the run's own figures as a
//! hand-written SVG (no plotting dependency).
//!
//! Left: the send+receive pair (ns, lower is better). Right: streaming
//! 1->1 at depth 10 (bytes per second, higher is better). Both axes are
//! logarithmic; each point is a median, its bar the lowest and highest
//! repetition.

use super::{Row, Unit, size};
use crate::output;
use std::fmt::Write as _;

/// One series' point: message size, median, lowest and highest repetition.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Point {
    len: usize,
    median: f64,
    lo: f64,
    hi: f64,
}

/// The points of one peer in one panel.
struct Series {
    name: &'static str,
    color: &'static str,
    points: Vec<Point>,
}

/// A panel: title, how to label a value, and its series.
struct Panel {
    title: &'static str,
    label: fn(f64) -> String,
    series: [Series; 2],
}

const SHMQ_COLOR: &str = "#1f77b4";
const KERNEL_COLOR: &str = "#d62728";

fn point(len: usize, median: f64, reps: &[f64], scale: f64) -> Point {
    let lo = reps.iter().copied().fold(median, f64::min);
    let hi = reps.iter().copied().fold(median, f64::max);
    Point {
        len,
        median: median * scale,
        lo: lo * scale,
        hi: hi * scale,
    }
}

/// The two panels from the rows of a run: the pairs (`pair`, `pair-16b` …)
/// and the 1->1 streams at depth 10 (`stream-10`, `stream-4kib-10` …).
fn panels(rows: &[Row]) -> [Panel; 2] {
    let pick = |latency: bool| {
        let mut shmq = Vec::new();
        let mut kernel = Vec::new();
        for r in rows.iter().filter(|r| r.baseline.is_none()) {
            let wanted = if latency {
                r.unit == Unit::Nanos && (r.case == "pair" || r.case.starts_with("pair-"))
            } else {
                r.unit == Unit::PerSec && r.case.starts_with("stream-") && r.case.ends_with("-10")
            };
            if !wanted {
                continue;
            }
            // Throughput in bytes per second.
            let scale = if latency { 1.0 } else { r.msg_len as f64 };
            shmq.push(point(r.msg_len, r.shmq, &r.shmq_reps, scale));
            if let Some(k) = r.kernel {
                kernel.push(point(r.msg_len, k, &r.other_reps, scale));
            }
        }
        shmq.sort_by_key(|p| p.len);
        kernel.sort_by_key(|p| p.len);
        [
            Series {
                name: "shmq",
                color: SHMQ_COLOR,
                points: shmq,
            },
            Series {
                name: "kernel mq",
                color: KERNEL_COLOR,
                points: kernel,
            },
        ]
    };
    [
        Panel {
            title: "Latency: send+receive pair, one thread (lower is better)",
            label: output::nanos,
            series: pick(true),
        },
        Panel {
            title: "Throughput: streaming 1->1, depth 10 (higher is better)",
            label: super::byte_rate,
            series: pick(false),
        },
    ]
}

/// `text` cut into lines of at most about `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let line = lines.last_mut().expect("one line at least");
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(format!("  {word}"));
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// `&`, `<`, `>` and quotes for SVG text.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const WIDTH: f64 = 1000.0;
const PANEL_W: f64 = 400.0;
const PANEL_H: f64 = 300.0;
const TOP: f64 = 90.0;
const LEFTS: [f64; 2] = [80.0, 580.0];

/// The whole picture. `subtitle` describes the run; `warnings` are shown
/// in red beneath.
pub fn render(rows: &[Row], subtitle: &str, warnings: &[String]) -> String {
    let warnings: Vec<String> = warnings
        .iter()
        .flat_map(|w| wrap(&format!("warning: {w}"), 150))
        .collect();
    let height = TOP + PANEL_H + 70.0 + 18.0 * warnings.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">shmq and the kernel's mq against message size</text>
<text x="{}" y="44" text-anchor="middle" fill="#444">{}</text>"##,
        WIDTH / 2.0,
        WIDTH / 2.0,
        xml(subtitle)
    );
    // Legend.
    for (i, (name, color)) in [("shmq", SHMQ_COLOR), ("kernel mq", KERNEL_COLOR)]
        .into_iter()
        .enumerate()
    {
        let x = WIDTH / 2.0 - 110.0 + 130.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="62" x2="{}" y2="62" stroke="{color}" stroke-width="2"/><circle cx="{}" cy="62" r="3.5" fill="{color}"/><text x="{}" y="66">{name}</text>"#,
            x + 30.0,
            x + 15.0,
            x + 36.0
        );
    }
    for (panel, left) in panels(rows).iter().zip(LEFTS) {
        draw_panel(&mut s, panel, left);
    }
    for (i, w) in warnings.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="20" y="{}" fill="#b00000">{}</text>"##,
            TOP + PANEL_H + 70.0 + 18.0 * i as f64,
            xml(w)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn draw_panel(s: &mut String, p: &Panel, left: f64) {
    let bottom = TOP + PANEL_H;
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" font-size="13">{}</text>
    <rect x="{left}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#888"/>"##,
        left + PANEL_W / 2.0,
        TOP - 8.0,
        xml(p.title)
    );
    let all: Vec<&Point> = p.series.iter().flat_map(|s| &s.points).collect();
    if all.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">no figures</text>"#,
            left + PANEL_W / 2.0,
            TOP + PANEL_H / 2.0
        );
        return;
    }
    // x: log2 of the size, over the sizes measured (at least a factor 4).
    let lens = all.iter().map(|p| (p.len as f64).log2());
    let (x0, x1) = (
        lens.clone().fold(f64::INFINITY, f64::min) - 0.5,
        lens.fold(f64::NEG_INFINITY, f64::max) + 0.5,
    );
    // y: log10 of the value, whole decades around every bar.
    let vals = all
        .iter()
        .flat_map(|p| [p.lo, p.hi, p.median])
        .filter(|v| *v > 0.0);
    let y0 = vals.clone().fold(f64::INFINITY, f64::min).log10().floor();
    let y1 = vals
        .fold(f64::NEG_INFINITY, f64::max)
        .log10()
        .ceil()
        .max(y0 + 1.0);
    let x = |len: usize| left + ((len as f64).log2() - x0) / (x1 - x0) * PANEL_W;
    let y = |v: f64| bottom - (v.max(f64::MIN_POSITIVE).log10() - y0) / (y1 - y0) * PANEL_H;
    // Decade grid lines and labels.
    let mut d = y0;
    while d <= y1 + 1e-9 {
        let yy = y(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + PANEL_W,
            left - 6.0,
            yy + 4.0,
            xml(&(p.label)(10f64.powf(d)))
        );
        d += 1.0;
    }
    // One tick per size measured.
    let mut lens: Vec<usize> = all.iter().map(|p| p.len).collect();
    lens.sort_unstable();
    lens.dedup();
    for len in lens {
        let xx = x(len);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{bottom}" x2="{xx:.1}" y2="{}" stroke="#888"/><text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"##,
            bottom + 5.0,
            bottom + 19.0,
            size(len)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">message size</text>"#,
        left + PANEL_W / 2.0,
        bottom + 38.0
    );
    for series in &p.series {
        if series.points.is_empty() {
            continue;
        }
        let path: Vec<String> = series
            .points
            .iter()
            .map(|pt| format!("{:.1},{:.1}", x(pt.len), y(pt.median)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"><title>{}</title></polyline>"#,
            path.join(" "),
            series.color,
            series.name
        );
        for pt in &series.points {
            let (xx, color) = (x(pt.len), series.color);
            let _ = writeln!(
                s,
                r#"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="{color}" stroke-width="1.5"/><circle cx="{xx:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{}, {}: {} (repetitions {} to {})</title></circle>"#,
                y(pt.lo),
                y(pt.hi),
                y(pt.median),
                series.name,
                size(pt.len),
                xml(&(p.label)(pt.median)),
                xml(&(p.label)(pt.lo)),
                xml(&(p.label)(pt.hi)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(case: &str, unit: Unit, len: usize, shmq: f64, kernel: Option<f64>) -> Row {
        Row {
            case: case.into(),
            description: case.into(),
            unit,
            msg_len: len,
            shmq,
            kernel,
            baseline: None,
            shmq_reps: vec![shmq * 0.9, shmq, shmq * 1.2],
            other_reps: kernel.map(|k| vec![k, k * 1.5]).unwrap_or_default(),
            kernel_depth: None,
            notes: Vec::new(),
            csw: None,
            kernel_csw: None,
            peer: "rust",
        }
    }

    #[test]
    fn points_come_from_the_runs_rows() {
        let rows = [
            row("pair", Unit::Nanos, 64, 40.0, Some(600.0)),
            row("pair-16b", Unit::Nanos, 16, 35.0, Some(550.0)),
            row("pair-64kib", Unit::Nanos, 65536, 9000.0, None),
            row("stream-10", Unit::PerSec, 64, 2e6, Some(2e5)),
            row("stream-256", Unit::PerSec, 64, 4e6, Some(1e6)),
            row("mpsc4-10", Unit::PerSec, 64, 1e6, Some(1e6)),
        ];
        let [lat, thr] = panels(&rows);
        let lens: Vec<_> = lat.series[0].points.iter().map(|p| p.len).collect();
        assert_eq!(lens, [16, 64, 65536]);
        assert_eq!(lat.series[1].points.len(), 2, "no kernel figure at 64 KiB");
        assert_eq!(lat.series[0].points[1].lo, 36.0);
        assert_eq!(lat.series[0].points[1].hi, 48.0);
        // Depth 10 only; throughput in bytes per second.
        assert_eq!(thr.series[0].points.len(), 1);
        assert_eq!(thr.series[0].points[0].median, 2e6 * 64.0);
        assert_eq!(thr.series[1].points[0].hi, 2e5 * 1.5 * 64.0);

        let svg = render(&rows, "a <test> run", &["busy".into()]);
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;test&gt; run"));
        assert!(svg.contains("warning: busy"));
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "  cc"]);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 3 + 2 + 1 + 1 + 2);
    }
}
