//! The latency-percentile plot, written as plain SVG: the classic `HdrHistogram` chart, latency
//! (log scale) against percentile on a "number of nines" axis (log of 1 / (1 - q)), so the
//! tail from p90 to p99.999 gets as much room as the median.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 30.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 60.0;
/// The x axis ends at p99.999 (five nines); beyond that the samples are too few to plot.
const NINES_MAX: f64 = 5.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One line on the plot.
pub struct Series<'a> {
    pub label: String,
    pub histogram: &'a Histogram<u64>,
}

/// (nines, latency µs) points of one histogram, up to the axis end.
fn points(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for step in histogram.iter_quantiles(5) {
        let quantile = step.quantile_iterated_to();
        let nines = if quantile >= 1.0 {
            NINES_MAX
        } else {
            (-(1.0 - quantile).log10()).min(NINES_MAX)
        };
        out.push((
            nines,
            (step.value_iterated_to() as f64 / 1_000.0).max(0.001),
        ));
        if nines >= NINES_MAX {
            break;
        }
    }
    out
}

/// The decades the y axis spans, covering every point.
fn decades(all: &[(f64, f64)]) -> (i32, i32) {
    let low = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let high = all.iter().map(|p| p.1).fold(0.0, f64::max);
    if !low.is_finite() {
        return (0, 3);
    }
    let low_decade = low.log10().floor() as i32;
    let high_decade = (high.log10().ceil() as i32).max(low_decade + 1);
    (low_decade, high_decade)
}

pub fn svg(title: &str, series: &[Series]) -> String {
    let curves: Vec<_> = series.iter().map(|s| points(s.histogram)).collect();
    let (low_decade, high_decade) = decades(&curves.concat());
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x = |nines: f64| MARGIN_LEFT + nines / NINES_MAX * plot_w;
    let y = |us: f64| {
        let span = f64::from(high_decade - low_decade);
        MARGIN_TOP + plot_h - (us.log10() - f64::from(low_decade)) / span * plot_h
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        WIDTH / 2.0,
        escape(title)
    );
    for (nines, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ] {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"{MARGIN_TOP}\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"#ddd\"/><text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\">{label}</text>",
            x(nines), MARGIN_TOP + plot_h, MARGIN_TOP + plot_h + 18.0
        );
    }
    for decade in low_decade..=high_decade {
        let us = 10_f64.powi(decade);
        let _ = writeln!(
            out,
            "<line x1=\"{MARGIN_LEFT}\" y1=\"{0:.1}\" x2=\"{1:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/><text x=\"{2:.1}\" y=\"{3:.1}\" text-anchor=\"end\">{4}</text>",
            y(us), MARGIN_LEFT + plot_w, MARGIN_LEFT - 6.0, y(us) + 4.0, format_us(us)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\n<text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">latency (log scale)</text>",
        MARGIN_LEFT + plot_w / 2.0, HEIGHT - 14.0, MARGIN_TOP + plot_h / 2.0, MARGIN_TOP + plot_h / 2.0
    );
    for (i, (curve, one)) in curves.iter().zip(series).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = curve
            .iter()
            .map(|&(n, us)| format!("{:.1},{:.1}", x(n), y(us)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        let legend_y = MARGIN_TOP + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"14\" height=\"4\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            MARGIN_LEFT + 12.0, legend_y - 4.0, MARGIN_LEFT + 32.0, legend_y, escape(&one.label)
        );
    }
    out.push_str("</svg>\n");
    out
}

fn format_us(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{} s", us / 1_000_000.0)
    } else if us >= 1_000.0 {
        format!("{} ms", us / 1_000.0)
    } else {
        format!("{us} µs")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_histogram, record_ns};

    #[test]
    fn plot_is_svg_with_one_line_per_series() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for i in 1..=10_000_u64 {
            record_ns(&mut a, i * 100);
            record_ns(&mut b, i * 300);
        }
        let text = svg(
            "e2e <latency>",
            &[
                Series {
                    label: "A".into(),
                    histogram: &a,
                },
                Series {
                    label: "B".into(),
                    histogram: &b,
                },
            ],
        );
        assert!(text.starts_with("<svg"));
        assert!(text.trim_end().ends_with("</svg>"));
        assert_eq!(text.matches("<polyline").count(), 2);
        assert!(text.contains("e2e &lt;latency&gt;"));
        assert!(!text.contains("NaN") && !text.contains("inf"));
    }

    #[test]
    fn decades_cover_the_points() {
        assert_eq!(decades(&[(0.0, 15.0), (5.0, 2_500.0)]), (1, 4));
        assert_eq!(decades(&[]), (0, 3));
    }
}
