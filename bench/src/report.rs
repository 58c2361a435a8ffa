//! What every scenario's report carries, where it goes, the comparison with
//! an earlier report (`--baseline`) and the plots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde_json::{json, Value};

/// The machine the figures come from.
pub fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_default();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_gib": (mem_kib as f64 / (1 << 20) as f64 * 10.0).round() / 10.0,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "load_average": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

/// The commit the binaries were built from, with `-dirty` when the tree had
/// changes; "unknown" outside a git checkout.
pub fn git_revision() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "HEAD"]) {
        Some(rev) if !rev.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        _ => "unknown".into(),
    }
}

/// p50, p99, p99.9 and max of a histogram of microseconds.
pub fn percentiles(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

/// A histogram of microseconds from 1 µs to 10 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

pub fn print_percentiles(name: &str, h: &Histogram<u64>) {
    println!(
        "  {name:<34} p50 {:>9} us   p99 {:>9} us   p99.9 {:>9} us   max {:>9} us   ({} samples)",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len()
    );
}

/// Writes `<out>/<scenario>.json`: the figures, with the scenario, the
/// machine, the git revision and the time of the run added; then, given a
/// baseline, prints every figure's ratio to it.
pub fn write(out: &Path, scenario: &str, mut figures: Value, baseline: Option<&Path>) -> Result<PathBuf> {
    let obj = figures.as_object_mut().context("figures are an object")?;
    obj.insert("scenario".into(), scenario.into());
    obj.insert("machine".into(), machine());
    obj.insert("git_revision".into(), git_revision().into());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    obj.insert("unix_time".into(), now.into());
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    let path = out.join(format!("{scenario}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&figures)?).with_context(|| format!("write {}", path.display()))?;
    println!("  results: {}", path.display());
    if let Some(b) = baseline {
        let text = std::fs::read(b).with_context(|| format!("read the baseline {}", b.display()))?;
        let base: Value =
            serde_json::from_slice(&text).with_context(|| format!("the baseline {} is not JSON", b.display()))?;
        compare(&figures, &base, b);
    }
    Ok(path)
}

/// Every number found at the same place in both reports, with its ratio.
fn compare(now: &Value, base: &Value, file: &Path) {
    let mut now_leaves = Vec::new();
    leaves("", now, &mut now_leaves);
    let mut b = Vec::new();
    leaves("", base, &mut b);
    let base_leaves: HashMap<String, f64> = b.into_iter().collect();
    println!(
        "  against the baseline {} (revision {}):",
        file.display(),
        base["git_revision"].as_str().unwrap_or("unknown")
    );
    let mut shown = 0;
    for (path, v) in now_leaves {
        if path.starts_with("machine.") || path == "unix_time" {
            continue;
        }
        let Some(&old) = base_leaves.get(&path) else { continue };
        let ratio = if old != 0.0 { format!("{:.3}x", v / old) } else { "-".into() };
        println!("    {path:<48} {v:>14.2}  baseline {old:>14.2}  {ratio}");
        shown += 1;
    }
    if shown == 0 {
        println!("    no figure in common (another scenario?)");
    }
}

fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaves(&p, v, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                leaves(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Number(n) => out.push((prefix.to_string(), n.as_f64().unwrap_or(f64::NAN))),
        _ => {}
    }
}

/// The x axis of a latency distribution: the number of nines of the
/// percentile (0 is p0, 1 is p90, 2 is p99, 3 is p99.9).
pub const NINES: &str = "percentile, in nines (1 = p90, 2 = p99, 3 = p99.9)";

/// The latency distribution of a histogram, as (nines, milliseconds) points
/// up to p99.99, for [`plot`].
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    (0..=40)
        .map(|i| {
            let nines = f64::from(i) / 10.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, h.value_at_quantile(q) as f64 / 1e3)
        })
        .collect()
}

pub struct Plot<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_y: bool,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Draws the series as lines with points into an SVG file.
pub fn plot(path: &Path, p: &Plot) -> Result<()> {
    let pts = p.series.iter().flat_map(|(_, s)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    anyhow::ensure!(x0 <= x1 && y0 <= y1, "nothing to plot in {}", path.display());
    if x0 == x1 {
        x1 = x0 + 1.0;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("plot {}: {e:?}", path.display());
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(p.x_label)
                .y_desc(p.y_label)
                .draw()
                .map_err(|e| anyhow::anyhow!("plot {}: {e:?}", path.display()))?;
            for (i, (name, s)) in p.series.iter().enumerate() {
                let c = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(s.iter().copied(), c.stroke_width(2)))
                    .map_err(|e| anyhow::anyhow!("plot {}: {e:?}", path.display()))?
                    .label(name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
                chart
                    .draw_series(s.iter().map(|&pt| Circle::new(pt, 2, c.filled())))
                    .map_err(|e| anyhow::anyhow!("plot {}: {e:?}", path.display()))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| anyhow::anyhow!("plot {}: {e:?}", path.display()))?;
        }};
    }
    let mut builder = ChartBuilder::on(&root);
    builder.caption(p.title, ("sans-serif", 20)).margin(15).x_label_area_size(45).y_label_area_size(70);
    if p.log_y {
        let lo = (y0 * 0.8).max(1e-3);
        draw!(builder.build_cartesian_2d(x0..x1, (lo..y1 * 1.25).log_scale()).map_err(err)?);
    } else {
        draw!(builder.build_cartesian_2d(x0..x1, 0.0..y1 * 1.1).map_err(err)?);
    }
    root.present().map_err(err)?;
    println!("  plot: {}", path.display());
    Ok(())
}
