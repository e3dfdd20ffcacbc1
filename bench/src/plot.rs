//! Latency-percentile plots (SVG, plotters): one line per histogram, latency against percentile
//! on the usual "nines" axis (50 %, 90 %, 99 %, 99.9 %, …), as HdrHistogram's plotter draws them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Where the plot of a run goes: `--plot` if given, else next to `--json` with `.svg`.
pub fn path_for(plot: Option<&Path>, json: Option<&Path>) -> Option<PathBuf> {
    plot.map(Path::to_path_buf).or_else(|| json.map(|j| j.with_extension("svg")))
}

/// x = −log10(1 − q): 0 at the median's left edge, 1 at 90 %, 2 at 99 %, …
fn nines(q: f64) -> f64 {
    -(1.0 - q).max(1e-7).log10()
}

/// The percentile at x nines: 0 %, 90 %, 99 %, 99.9 %, …
fn label(x: f64) -> String {
    match x.round() as i32 {
        k if k <= 0 => "0%".into(),
        1 => "90%".into(),
        k => format!("{:.*}%", (k - 2) as usize, 100.0 - 10f64.powi(2 - k)),
    }
}

/// Draws `series` (name, latencies in µs) to `path` as SVG.
pub fn percentiles(path: &Path, title: &str, series: &[(&str, &Histogram<u64>)]) -> Result<()> {
    let series: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let mut pts: Vec<(f64, f64)> = h
                .iter_quantiles(2)
                .map(|v| (nines(v.quantile_iterated_to()), h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0))
                .filter(|(x, _)| x.is_finite())
                .collect();
            pts.dedup_by(|a, b| (a.0 - b.0).abs() < 1e-9);
            (*name, pts)
        })
        .collect();
    let max_x = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.0)).fold(2.0_f64, f64::max).min(6.0).ceil();
    let max_y = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.1)).fold(0.001_f64, f64::max) * 1.1;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms")
        .x_labels(max_x as usize + 1)
        .x_label_formatter(&|x| label(*x))
        .draw()?;
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    println!("latency plot written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn nines_axis() {
        assert!((super::nines(0.9) - 1.0).abs() < 1e-9);
        assert!((super::nines(0.999) - 3.0).abs() < 1e-6);
        assert_eq!(super::nines(0.0), 0.0);
        let labels: Vec<String> = (0..6).map(|x| super::label(f64::from(x))).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }
}
