//! The plots of the benchmarks, standalone SVGs written by hand (a few dozen elements need no
//! plotting library), sharing one frame, grid, legend and line style:
//!
//! - [`latency_svg`]: the latency distribution, one line per scenario, latency (ms) against
//!   percentile, the percentile axis stretched towards the tail (`1 / (1 - q)` on a log
//!   scale, as HdrHistogram's plots do) so p99 and p99.9 get as much room as the median, and
//!   the latency axis logarithmic so a 0.2 ms median and a 5 ms maximum are both readable;
//! - [`series_svg`]: values over time (`weft-bench soak`: each process's memory), both axes
//!   linear, with shaded spans of the time axis (the windows compared).

use std::fmt::Write as _;

/// The quantiles every run records for the plot ([`crate::load::RunResult::spectrum`]).
pub const QUANTILES: [f64; 12] = [
    0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

/// One line of the plot: a scenario's latency (ms) at each of [`QUANTILES`].
#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 56.0;
/// The highest quantile on the axis: beyond it is the maximum, drawn at the axis' end.
const TAIL: f64 = 0.9999;
const COLOURS: [&str; 6] = [
    "#2b6cb0", "#c05621", "#2f855a", "#805ad5", "#b83280", "#4a5568",
];

/// Where quantile `q` goes on the x axis, from 0 (q = 0) to 1 (q ≥ [`TAIL`]).
fn x_of(q: f64) -> f64 {
    let stretch = |q: f64| (1.0 / (1.0 - q.min(TAIL))).log10();
    stretch(q) / stretch(TAIL)
}

/// A round number at or above `v` for the top of the latency axis: 1, 2 or 5 × 10ⁿ.
fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || v.is_infinite() {
        return 1.0;
    }
    let base = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * base)
        .find(|&c| c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * base)
}

/// A round number at or below `v` for the bottom of the latency axis: 1, 2 or 5 × 10ⁿ.
fn nice_floor(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || v.is_infinite() {
        return 0.01;
    }
    let base = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .iter()
        .map(|m| m * base)
        .find(|&c| c <= v * (1.0 + 1e-12))
        .unwrap_or(base)
}

/// The 1, 2, 5 × 10ⁿ marks from `bottom` to `top`.
fn marks(bottom: f64, top: f64) -> Vec<f64> {
    let mut out = vec![];
    let mut base = 10f64.powf(bottom.log10().floor());
    while base <= top * (1.0 + 1e-9) {
        for m in [1.0, 2.0, 5.0] {
            let v = m * base;
            if v >= bottom * (1.0 - 1e-9) && v <= top * (1.0 + 1e-9) {
                out.push(v);
            }
        }
        base *= 10.0;
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The plot as an SVG document.
pub fn latency_svg(title: &str, lines: &[Line]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let values = || {
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let top_ms = nice_ceiling(values().fold(0.0, f64::max));
    let bottom_ms = nice_floor(values().fold(f64::INFINITY, f64::min)).min(top_ms / 10.0);
    let span = (top_ms / bottom_ms).log10();
    let px = |q: f64| LEFT + x_of(q) * plot_w;
    let py = |ms: f64| {
        let at = (ms.max(bottom_ms) / bottom_ms).log10() / span;
        TOP + plot_h - at.clamp(0.0, 1.0) * plot_h
    };
    let mut out = open(title);
    // Grid and axes: latency at 1, 2, 5 × 10ⁿ, percentiles at their usual marks.
    for ms in marks(bottom_ms, top_ms) {
        y_mark(&mut out, py(ms), &trim(ms));
    }
    for (q, label) in [
        (0.0, "0%"),
        (0.5, "50%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
    ] {
        x_mark(&mut out, px(q), label);
    }
    frame(
        &mut out,
        "percentile (max at the right edge)",
        "latency (ms, log scale)",
    );
    for (i, line) in lines.iter().enumerate() {
        let points: Vec<String> = line
            .points
            .iter()
            .filter(|(q, ms)| q.is_finite() && ms.is_finite())
            .map(|&(q, ms)| format!("{:.1},{:.1}", px(q), py(ms)))
            .collect();
        polyline(&mut out, &points, i);
        legend(&mut out, i, &line.name);
    }
    out.push_str("</svg>\n");
    out
}

/// A shaded span of a [`series_svg`] plot's x axis, labelled at its top.
#[derive(Debug, Clone)]
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: String,
}

/// Values over time as an SVG document: one line per [`Line`] (its points `(x, y)`; a point
/// with a NaN coordinate breaks the line, as when a process is down), both axes linear and
/// ending on round numbers, the y axis from a round number below the smallest value (so a
/// change of a few percent shows), and `bands` shaded behind the lines.
pub fn series_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
    bands: &[Band],
) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let finite = || {
        lines
            .iter()
            .flat_map(|l| l.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let x_max = finite().map(|p| p.0).fold(0.0, f64::max);
    let (x_step, x_top) = linear_ticks(0.0, x_max);
    let y_min = finite().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_max = finite().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (y_min, y_max) = if y_min.is_finite() {
        (y_min, y_max)
    } else {
        (0.0, 1.0)
    };
    let (y_step, y_top) = linear_ticks(y_min, y_max);
    let y_bottom = ((y_min / y_step).floor() * y_step)
        .max(0.0)
        .min(y_top - y_step);
    let px = |x: f64| LEFT + (x / x_top).clamp(0.0, 1.0) * plot_w;
    let py = |y: f64| TOP + plot_h - ((y - y_bottom) / (y_top - y_bottom)).clamp(0.0, 1.0) * plot_h;
    let mut out = open(title);
    for b in bands {
        let (x0, x1) = (px(b.from), px(b.to));
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h:.1}" fill="#edf2f7"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#4a5568">{}</text>"##,
            (x1 - x0).max(0.0),
            (x0 + x1) / 2.0,
            TOP + 12.0,
            escape(&b.label)
        );
    }
    for k in 0..=((y_top - y_bottom) / y_step).round() as u32 {
        let y = y_bottom + f64::from(k) * y_step;
        y_mark(&mut out, py(y), &trim(y));
    }
    for k in 0..=(x_top / x_step).round() as u32 {
        let x = f64::from(k) * x_step;
        x_mark(&mut out, px(x), &trim(x));
    }
    frame(&mut out, x_label, y_label);
    for (i, line) in lines.iter().enumerate() {
        for segment in line
            .points
            .split(|(x, y)| !(x.is_finite() && y.is_finite()))
            .filter(|s| !s.is_empty())
        {
            let points: Vec<String> = segment
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            polyline(&mut out, &points, i);
        }
        legend(&mut out, i, &line.name);
    }
    out.push_str("</svg>\n");
    out
}

/// A tick step of 1, 2 or 5 × 10ⁿ giving about five ticks from `low` to `high`, and the
/// first tick at or above `high` (or within 1 % of a step below it).
fn linear_ticks(low: f64, high: f64) -> (f64, f64) {
    let span = (high - low).max(high.abs() * 0.01).max(1e-9);
    let step = nice_ceiling(span / 5.0);
    // A value a hair past a tick (a sample taken as a run ends) does not add a whole step.
    let top = ((high / step - 0.01).ceil() * step).max(step);
    (step, top)
}

/// The document's start: the white page and the title.
fn open(title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/><text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    out
}

/// A horizontal grid line at `y`, labelled on the left.
fn y_mark(out: &mut String, y: f64, label: &str) {
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e2e8f0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
        WIDTH - RIGHT,
        LEFT - 6.0,
        y + 4.0,
    );
}

/// A vertical grid line at `x`, labelled below the plot.
fn x_mark(out: &mut String, x: f64, label: &str) {
    let bottom = HEIGHT - BOTTOM;
    let _ = writeln!(
        out,
        r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e2e8f0"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
        bottom + 18.0
    );
}

/// The plot's border and the two axis titles.
fn frame(out: &mut String, x_label: &str, y_label: &str) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#718096"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        escape(x_label),
        TOP + plot_h / 2.0,
        escape(y_label)
    );
}

/// Line `i`'s points (already in pixels), in its colour.
fn polyline(out: &mut String, points: &[String], i: usize) {
    let colour = COLOURS[i % COLOURS.len()];
    let _ = writeln!(
        out,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
        points.join(" ")
    );
}

/// Line `i`'s entry in the legend, right of the plot.
fn legend(out: &mut String, i: usize, name: &str) {
    let colour = COLOURS[i % COLOURS.len()];
    let ly = TOP + 10.0 + 20.0 * i as f64;
    let lx = WIDTH - RIGHT + 14.0;
    let _ = writeln!(
        out,
        r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
        lx + 18.0,
        lx + 24.0,
        ly + 4.0,
        escape(name)
    );
}

/// `0.5`, `2`, `12.5`: a tick label without trailing zeros.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_gets_room_and_the_axis_ends_at_the_last_mark() {
        assert_eq!(x_of(0.0), 0.0);
        assert!((x_of(0.9999) - 1.0).abs() < 1e-12);
        assert_eq!(x_of(1.0), 1.0);
        // 90 %, 99 %, 99.9 % equally spaced, a quarter of the axis each.
        assert!((x_of(0.9) - 0.25).abs() < 1e-9);
        assert!((x_of(0.99) - 0.5).abs() < 1e-9);
        assert!((x_of(0.999) - 0.75).abs() < 1e-9);
    }

    #[test]
    fn the_latency_axis_ends_on_a_round_number() {
        assert_eq!(nice_ceiling(0.37), 0.5);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_floor(0.37), 0.2);
        assert_eq!(nice_floor(0.1), 0.1);
        assert_eq!(nice_floor(7.0), 5.0);
        assert_eq!(nice_floor(0.0), 0.01);
        assert_eq!(marks(0.05, 2.0), [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]);
    }

    #[test]
    fn one_polyline_and_legend_entry_per_line_with_names_escaped() {
        let line = |name: &str, scale: f64| Line {
            name: name.into(),
            points: QUANTILES.iter().map(|&q| (q, scale * (1.0 + q))).collect(),
        };
        let svg = latency_svg(
            "p99 at 1,000 req/s",
            &[line("direct", 0.1), line("weft <mTLS>", 0.4)],
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">weft &lt;mTLS&gt;</text>"), "{svg}");
        // Every point of a line is inside the plot area.
        for poly in svg.lines().filter(|l| l.starts_with("<polyline")) {
            let pts = poly.split('"').nth(1).unwrap();
            assert_eq!(pts.split(' ').count(), QUANTILES.len());
            for p in pts.split(' ') {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
                assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "{y}");
            }
        }
        // The latency axis runs from 0.1 ms (the smallest value) to 1 ms (the largest value
        // is 0.8 ms), log scale.
        assert!(
            svg.contains(">1</text>") && svg.contains(">0.1</text>"),
            "{svg}"
        );
        assert!(!svg.contains(">0.05</text>"), "{svg}");
        assert!(!svg.contains(">2</text>"), "{svg}");
        let y = |ms: &str| -> f64 {
            let line = svg
                .lines()
                .find(|l| l.ends_with(&format!(">{ms}</text>")) && l.starts_with("<line"))
                .unwrap();
            line.split("y1=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        // Equal ratios, equal distances: 0.1 → 0.2 and 0.5 → 1 are as long as each other.
        assert!(
            ((y("0.1") - y("0.2")) - (y("0.5") - y("1"))).abs() < 0.2,
            "{svg}"
        );
    }

    #[test]
    fn a_series_plot_breaks_lines_at_gaps_and_ends_its_axes_on_round_numbers() {
        let lines = [
            Line {
                name: "web proxy".into(),
                points: vec![(0.0, 9.5), (15.0, 11.0), (30.002, 11.2)],
            },
            Line {
                name: "api-2 proxy".into(),
                points: vec![
                    (0.0, 8.5),
                    (1.0, 9.0),
                    (2.0, f64::NAN),
                    (3.0, 9.1),
                    (4.0, 9.2),
                ],
            },
        ];
        let bands = [Band {
            from: 2.0,
            to: 5.0,
            label: "after warm-up".into(),
        }];
        let svg = series_svg("Soak", "minutes", "VmRSS (MiB)", &lines, &bands);
        assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
        assert!(svg.contains(">after warm-up</text>"), "{svg}");
        // The time axis ends at 30 (the last sample a hair past it), the memory axis spans
        // 8 to 12 in steps of 1.
        assert!(
            svg.contains(">30</text>") && !svg.contains(">40</text>"),
            "{svg}"
        );
        for mark in [">8</text>", ">12</text>"] {
            assert!(svg.contains(mark), "{mark}: {svg}");
        }
        assert!(
            !svg.contains(">7</text>") && !svg.contains(">13</text>"),
            "{svg}"
        );
        assert_eq!(linear_ticks(0.0, 30.0), (10.0, 30.0));
        assert_eq!(linear_ticks(0.0, 31.0), (10.0, 40.0));
    }
}
