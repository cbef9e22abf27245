//! Charts of quality loss versus memory and versus cost, one curve per model, the Pareto
//! frontier highlighted and the hardware's memory drawn as a line. PNG and SVG, drawn with an
//! embedded font so no system font library is needed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::plan::PlanRow;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_err() {
            eprintln!("warning: embedded chart font could not be registered");
        }
    });
}

/// One chart: x from a row accessor, y the quality loss.
struct ChartSpec<'a> {
    file_stem: &'a str,
    note: &'a str,
    title: String,
    x_label: &'a str,
    x: fn(&PlanRow) -> f64,
    x_line: Option<(f64, String)>,
    log_x: bool,
}

/// Points (x, y) on the lower-left frontier: no other point is both smaller and better.
pub fn pareto(points: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len()).collect();
    idx.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[a].1.total_cmp(&points[b].1))
    });
    let mut best = f64::INFINITY;
    let mut out = Vec::new();
    for i in idx {
        if points[i].1 < best {
            best = points[i].1;
            out.push(i);
        }
    }
    out
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    rows: &[&PlanRow],
    spec: &ChartSpec,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| ((spec.x)(r), r.quality_delta_pct.unwrap_or(f64::NAN)))
        .collect();
    let valid: Vec<(f64, f64)> = pts
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite() && *x > 0.0)
        .collect();
    let (mut x0, mut x1) = valid
        .iter()
        .fold((f64::INFINITY, 0.0f64), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    if let Some((lx, _)) = &spec.x_line {
        x1 = x1.max(*lx * 1.05);
        x0 = x0.min(*lx * 0.95);
    }
    let y1 = valid.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.1;
    // A log axis only labels whole decades: use it when the data spans one.
    let log_x = spec.log_x && x1 / x0 > 8.0;
    let (x0, x1) = if log_x {
        (x0 * 0.8, x1 * 1.25)
    } else {
        (0.0, x1 * 1.08)
    };
    let caption = spec.title.clone();
    let mut chart_builder = ChartBuilder::on(&root);
    chart_builder
        .caption(caption, ("sans-serif", 26))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(spec.x_label)
                .y_desc(format!("perplexity increase over FP16 (%) - {}", spec.note))
                .label_style(("sans-serif", 16))
                .axis_desc_style(("sans-serif", 18))
                .draw()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let mut models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
            models.dedup();
            let palette = [
                RGBColor(31, 119, 180),
                RGBColor(255, 127, 14),
                RGBColor(44, 160, 44),
                RGBColor(214, 39, 40),
                RGBColor(148, 103, 189),
                RGBColor(140, 86, 75),
            ];
            for (mi, model) in models.iter().enumerate() {
                let color = palette[mi % palette.len()];
                let mut series: Vec<(f64, f64)> = rows
                    .iter()
                    .zip(&pts)
                    .filter(|(r, p)| {
                        r.model == *model && p.0.is_finite() && p.1.is_finite() && p.0 > 0.0
                    })
                    .map(|(_, p)| *p)
                    .collect();
                series.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?
                    .label(model.to_string())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                    });
                chart
                    .draw_series(series.iter().map(|p| Circle::new(*p, 4, color.filled())))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            }
            // Quant labels next to each point.
            chart
                .draw_series(
                    rows.iter()
                        .zip(&pts)
                        .filter(|(_, p)| p.0.is_finite() && p.1.is_finite() && p.0 > 0.0)
                        .map(|(r, p)| {
                            Text::new(
                                r.quant.clone(),
                                (p.0, p.1),
                                ("sans-serif", 12).into_font().color(&BLACK.mix(0.7)),
                            )
                        }),
                )
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let front: Vec<(f64, f64)> = pareto(&valid).into_iter().map(|i| valid[i]).collect();
            chart
                .draw_series(LineSeries::new(front.clone(), BLACK.stroke_width(3)))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
                .label("Pareto frontier")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(3))
                });
            chart
                .draw_series(
                    front
                        .iter()
                        .map(|p| Circle::new(*p, 7, BLACK.stroke_width(2))),
                )
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            if let Some((lx, label)) = &spec.x_line {
                let red = RGBColor(200, 0, 0);
                chart
                    .draw_series(LineSeries::new(
                        vec![(*lx, 0.0), (*lx, y1)],
                        red.stroke_width(2),
                    ))
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?
                    .label(label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 16))
                .draw()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }};
    }
    if log_x {
        body!(chart_builder
            .build_cartesian_2d((x0..x1).log_scale(), 0.0..y1)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?);
    } else {
        body!(chart_builder
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?);
    }
    root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(())
}

/// Write quality-vs-memory and quality-vs-cost charts (PNG and SVG) for the rows of one
/// hardware profile. Returns the files written.
pub fn write_charts(
    rows: &[PlanRow],
    hardware_memory_gb: f64,
    hardware_label: &str,
    quality_note: &str,
    dir: &Path,
) -> Result<Vec<PathBuf>> {
    register_font();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create chart folder", dir.display()))?;
    let rows: Vec<&PlanRow> = rows
        .iter()
        .filter(|r| r.quality_delta_pct.is_some())
        .collect();
    let specs = [
        ChartSpec {
            file_stem: "quality-vs-memory",
            note: quality_note,
            title: format!("Quality loss vs memory needed ({hardware_label})"),
            x_label: "memory: weights + KV cache + buffers (GB)",
            x: |r| r.total_bytes as f64 / 1e9,
            x_line: Some((
                hardware_memory_gb,
                format!("{hardware_label} memory ({hardware_memory_gb:.0} GB)"),
            )),
            log_x: true,
        },
        ChartSpec {
            file_stem: "quality-vs-cost",
            note: quality_note,
            title: format!("Quality loss vs cost per million tokens ({hardware_label})"),
            x_label: "$ per million generated tokens",
            x: |r| {
                if r.fits {
                    r.usd_per_million_tokens
                } else {
                    f64::NAN
                }
            },
            x_line: None,
            log_x: true,
        },
    ];
    let mut written = Vec::new();
    for spec in &specs {
        let png = dir.join(format!("{}.png", spec.file_stem));
        draw(
            BitMapBackend::new(&png, (1200, 750)).into_drawing_area(),
            &rows,
            spec,
        )
        .with_context(|| png.display().to_string())?;
        let svg = dir.join(format!("{}.svg", spec.file_stem));
        draw(
            SVGBackend::new(&svg, (1200, 750)).into_drawing_area(),
            &rows,
            spec,
        )
        .with_context(|| svg.display().to_string())?;
        written.push(png);
        written.push(svg);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::pareto;

    #[test]
    fn pareto_keeps_only_undominated_points() {
        let pts = [(1.0, 10.0), (2.0, 5.0), (3.0, 6.0), (4.0, 1.0), (0.5, 20.0)];
        let mut f = pareto(&pts);
        f.sort();
        assert_eq!(f, vec![0, 1, 3, 4]);
    }
}
