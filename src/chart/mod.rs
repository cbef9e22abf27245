//! Charts of expected perplexity (absolute, lower is better) against memory, cost and decode
//! speed: one curve per model, one Pareto frontier across all of them, the hardware's memory
//! as a line, estimated points hollow, labels placed clear of each other and of the markers.
//! PNG and SVG, drawn with an embedded font so no system font library is needed. One set of
//! charts per perplexity scale: values on different scales are never drawn on one axis.

pub mod labels;

use std::sync::Once;

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plan::estimate::GIB;
use crate::plan::hardware::HardwareProfile;
use crate::plan::quality::Basis;
use crate::plan::PlanRow;
use labels::Rect;

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_err() {
            eprintln!("warning: embedded chart font could not be registered");
        }
    });
}

/// Which x axis a chart has.
#[derive(Clone, Copy, PartialEq)]
enum XAxis {
    Memory,
    Cost,
    Speed,
}

impl XAxis {
    fn stem(self) -> &'static str {
        match self {
            XAxis::Memory => "quality-vs-memory",
            XAxis::Cost => "quality-vs-cost",
            XAxis::Speed => "quality-vs-speed",
        }
    }
    fn label(self) -> &'static str {
        match self {
            XAxis::Memory => {
                "memory: weights + KV cache + buffers, devices and host (GiB, log scale)"
            }
            XAxis::Cost => "$ per million generated tokens (log scale)",
            XAxis::Speed => "decode tokens/s, one sequence (log scale; right is faster)",
        }
    }
    fn value(self, r: &PlanRow) -> Option<f64> {
        let v = match self {
            XAxis::Memory => r.total_bytes as f64 / GIB,
            XAxis::Cost if r.fits => r.usd_per_million_tokens,
            XAxis::Speed if r.fits => r.decode_tokens_per_s,
            _ => return None,
        };
        (v.is_finite() && v > 0.0).then_some(v)
    }
}

/// Points on the lower-left frontier: no other point is both smaller and better.
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

/// Tick values for a log axis over [lo, hi]: 1-2-5 per decade, denser when the span is short.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let sets: [&[f64]; 3] = [
        &[1.0, 2.0, 5.0],
        &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0],
        &[1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    ];
    let mut ticks = Vec::new();
    for set in sets {
        ticks.clear();
        let (d0, d1) = (lo.log10().floor() as i32 - 1, hi.log10().ceil() as i32 + 1);
        for d in d0..=d1 {
            for m in set {
                let v = m * 10f64.powi(d);
                if v >= lo && v <= hi {
                    ticks.push(v);
                }
            }
        }
        if ticks.len() >= 4 {
            break;
        }
    }
    ticks
}

/// A tick label: short and exact for the 1-2-5 values.
fn tick_text(v: f64, axis: XAxis) -> String {
    let num = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        let s = format!("{v:.1}");
        s.trim_end_matches(".0").to_string()
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    match axis {
        XAxis::Cost => format!("${num}"),
        _ => num,
    }
}

fn short_config(r: &PlanRow) -> String {
    let mut parts = vec![r.quant.clone()];
    if r.devices > 1 {
        parts.push(format!("{}x", r.devices));
    }
    if r.gpu_layers < r.n_layer && r.config.contains("layers on GPU") {
        parts.push(format!("{}/{} on GPU", r.gpu_layers, r.n_layer));
    }
    if r.kv_type != crate::plan::estimate::KvType::F16 {
        parts.push(format!("KV {}", r.kv_type.name()));
    }
    if !r.fits {
        parts.push("does not run".into());
    }
    parts.join(" ")
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    rows: &[&PlanRow],
    axis: XAxis,
    hw: &HardwareProfile,
    scale: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let pts: Vec<(&PlanRow, f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((*r, axis.value(r)?, r.ppl?)))
        .collect();
    let mut xs: Vec<f64> = pts.iter().map(|p| p.1).collect();
    if axis == XAxis::Memory {
        xs.push(hw.memory_gb);
    }
    let (xmin, xmax) = xs
        .iter()
        .fold((f64::INFINITY, 0.0f64), |a, &x| (a.0.min(x), a.1.max(x)));
    let (xmin, xmax) = if xmin.is_finite() {
        (xmin / 1.3, xmax * 1.3)
    } else {
        (1.0, 10.0)
    };
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::INFINITY, 0.0f64), |a, p| (a.0.min(p.2), a.1.max(p.2)));
    let (ymin, ymax) = if ymin.is_finite() {
        let pad = ((ymax - ymin) * 0.08).max(ymin * 0.01);
        (ymin - pad, ymax + pad)
    } else {
        (0.0, 1.0)
    };
    let keys: Vec<f64> = log_ticks(xmin, xmax).iter().map(|v| v.log10()).collect();
    let title = match axis {
        XAxis::Memory => format!("Expected perplexity vs memory needed ({})", hw.id),
        XAxis::Cost => format!("Expected perplexity vs cost per million tokens ({})", hw.id),
        XAxis::Speed => format!("Expected perplexity vs decode speed ({})", hw.id),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 26))
        .margin(18)
        .margin_bottom(40)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(xmin.log10()..xmax.log10(), ymin..ymax)
        .map_err(err)?;
    // The x axis is log10 of the value; its ticks are drawn by hand at round values.
    chart
        .configure_mesh()
        .x_labels(0)
        .disable_x_mesh()
        .x_desc(axis.label())
        .y_desc(format!("expected perplexity, lower is better ({scale})"))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    let tick_font = ("sans-serif", 16).into_font().color(&BLACK);
    for &k in &keys {
        chart
            .draw_series(LineSeries::new(
                vec![(k, ymin), (k, ymax)],
                BLACK.mix(0.1).stroke_width(1),
            ))
            .map_err(err)?;
        let (px, py) = chart.backend_coord(&(k, ymin));
        let text = tick_text(10f64.powf(k), axis);
        let (tw, _) = root
            .estimate_text_size(&text, &tick_font)
            .unwrap_or((20, 16));
        root.draw(&PathElement::new(
            vec![(px, py), (px, py + 5)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
        root.draw(&Text::new(
            text,
            (px - tw as i32 / 2, py + 8),
            tick_font.clone(),
        ))
        .map_err(err)?;
    }

    let mut models: Vec<&str> = Vec::new();
    for p in &pts {
        if !models.contains(&p.0.model.as_str()) {
            models.push(&p.0.model);
        }
    }
    let mut markers = Vec::new();
    for (mi, model) in models.iter().enumerate() {
        let color = PALETTE[mi % PALETTE.len()];
        let mut series: Vec<&(&PlanRow, f64, f64)> =
            pts.iter().filter(|p| p.0.model == *model).collect();
        series.sort_by(|a, b| a.1.total_cmp(&b.1));
        chart
            .draw_series(LineSeries::new(
                series
                    .iter()
                    .filter(|p| p.0.fits)
                    .map(|p| (p.1.log10(), p.2)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(model.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        for p in &series {
            let at = (p.1.log10(), p.2);
            markers.push(at);
            if !p.0.fits {
                chart
                    .draw_series(std::iter::once(Cross::new(at, 6, color.stroke_width(2))))
                    .map_err(err)?;
            } else if p.0.ppl_basis == Some(Basis::Estimated) {
                chart
                    .draw_series(std::iter::once(Circle::new(at, 5, WHITE.filled())))
                    .map_err(err)?;
                chart
                    .draw_series(std::iter::once(Circle::new(at, 5, color.stroke_width(2))))
                    .map_err(err)?;
            } else {
                chart
                    .draw_series(std::iter::once(Circle::new(at, 5, color.filled())))
                    .map_err(err)?;
            }
        }
    }
    // One frontier across every model: the best perplexity for what it takes.
    let running: Vec<(f64, f64)> = pts
        .iter()
        .filter(|p| p.0.fits)
        .map(|p| (if axis == XAxis::Speed { -p.1 } else { p.1 }, p.2))
        .collect();
    let mut front: Vec<(f64, f64)> = pareto(&running)
        .into_iter()
        .map(|i| (running[i].0.abs().log10(), running[i].1))
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(front, BLACK.mix(0.55).stroke_width(3)))
        .map_err(err)?
        .label("Pareto frontier (all sizes)")
        .legend(|(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.55).stroke_width(3))
        });
    if axis == XAxis::Memory {
        let red = RGBColor(200, 0, 0);
        let lx = hw.memory_gb.log10();
        chart
            .draw_series(LineSeries::new(
                vec![(lx, ymin), (lx, ymax)],
                red.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("one {} ({:.0} GiB)", hw.id, hw.memory_gb))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
    }
    // Perplexity falls as memory and cost grow (upper right free) but rises with speed (lower
    // right free): the legend goes where the points are not.
    let legend_at = if axis == XAxis::Speed {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    };
    chart
        .configure_series_labels()
        .position(legend_at)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;

    // Labels, placed in pixels around the markers, clear of the legend box.
    let font = ("sans-serif", 13).into_font().color(&BLACK.mix(0.8));
    let (xr, yr) = chart.plotting_area().get_pixel_range();
    let bounds = Rect {
        x0: xr.start,
        y0: yr.start,
        x1: xr.end,
        y1: yr.end,
    };
    let legend_entries = models.len() + 1 + usize::from(axis == XAxis::Memory);
    let legend_w = models
        .iter()
        .map(|m| m.len())
        .chain([28, 12 + hw.id.len()])
        .max()
        .unwrap_or(20) as i32
        * 9
        + 50;
    let legend_h = legend_entries as i32 * 22 + 20;
    let mut obstacles = vec![if axis == XAxis::Speed {
        Rect {
            x0: xr.end - legend_w - 12,
            y0: yr.end - legend_h,
            x1: xr.end,
            y1: yr.end,
        }
    } else {
        Rect {
            x0: xr.end - legend_w - 12,
            y0: yr.start,
            x1: xr.end,
            y1: yr.start + legend_h,
        }
    }];
    let pixel: Vec<(i32, i32)> = markers.iter().map(|m| chart.backend_coord(m)).collect();
    obstacles.extend(pixel.iter().map(|&(x, y)| Rect::around(x, y, 6)));
    // Markers were pushed model by model in x order; labels follow the same order.
    let mut ordered = Vec::new();
    for model in &models {
        let mut series: Vec<&(&PlanRow, f64, f64)> =
            pts.iter().filter(|p| p.0.model == *model).collect();
        series.sort_by(|a, b| a.1.total_cmp(&b.1));
        ordered.extend(series.into_iter().map(|p| short_config(p.0)));
    }
    let sizes: Vec<(i32, i32)> = ordered
        .iter()
        .map(|t| {
            root.estimate_text_size(t, &font)
                .map(|(w, h)| (w as i32 + 2, h as i32 + 2))
                .unwrap_or((t.len() as i32 * 8, 16))
        })
        .collect();
    let placed = labels::place(&pixel, &sizes, bounds, &obstacles);
    for ((text, p), &(px, py)) in ordered.iter().zip(&placed).zip(&pixel) {
        if p.leader {
            let cx = (p.rect.x0 + p.rect.x1) / 2;
            let cy = (p.rect.y0 + p.rect.y1) / 2;
            root.draw(&PathElement::new(
                vec![(px, py), (cx, cy)],
                BLACK.mix(0.3).stroke_width(1),
            ))
            .map_err(err)?;
        }
        root.draw(&Text::new(
            text.clone(),
            (p.rect.x0 + 1, p.rect.y0 + 1),
            font.clone(),
        ))
        .map_err(err)?;
    }
    let (_, h) = root.dim_in_pixel();
    let notes = [
        "filled: published or measured; hollow: estimated; x: no configuration runs; labels: type, and the configuration when it is not one device".to_string(),
        format!("estimates: {}", {
            let id = crate::plan::quality::published().scales.iter().find(|s| s.label == scale).map(|s| s.id.clone());
            crate::plan::quality::fit::summary_line(crate::plan::quality::fit::held_out_median_pct(id.as_deref()))
        }),
    ];
    let note_font = ("sans-serif", 12).into_font().color(&BLACK.mix(0.7));
    for (i, note) in notes.iter().enumerate() {
        root.draw(&Text::new(
            note.clone(),
            (18, h as i32 - 34 + i as i32 * 15),
            note_font.clone(),
        ))
        .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// One chart as PNG bytes (drawn into an RGB buffer, then encoded).
fn png_bytes(rows: &[&PlanRow], axis: XAxis, hw: &HardwareProfile, scale: &str) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let (w, h) = (1280u32, 800u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    draw(
        BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area(),
        rows,
        axis,
        hw,
        scale,
    )?;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&rgb, w, h, image::ColorType::Rgb8)
        .map_err(|e| anyhow::anyhow!("PNG encoding failed: {e}"))?;
    Ok(png)
}

fn svg_text(rows: &[&PlanRow], axis: XAxis, hw: &HardwareProfile, scale: &str) -> Result<String> {
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, (1280, 800)).into_drawing_area(),
        rows,
        axis,
        hw,
        scale,
    )?;
    Ok(svg)
}

/// The quality-vs-memory, -cost and -speed charts (PNG and SVG) of one hardware profile's
/// rows, one set per perplexity scale, as (file name, bytes), drawn in memory.
pub fn render(rows: &[PlanRow], hw: &HardwareProfile) -> Result<Vec<(String, Vec<u8>)>> {
    register_font();
    let mut scales: Vec<&str> = Vec::new();
    for r in rows {
        if let Some(s) = r.ppl_scale.as_deref() {
            if !scales.contains(&s) {
                scales.push(s);
            }
        }
    }
    let mut out = Vec::new();
    for scale in &scales {
        let these: Vec<&PlanRow> = rows
            .iter()
            .filter(|r| r.ppl_scale.as_deref() == Some(*scale))
            .collect();
        let suffix = if scales.len() > 1 {
            format!("-{}", slug(scale))
        } else {
            String::new()
        };
        for axis in [XAxis::Memory, XAxis::Cost, XAxis::Speed] {
            let stem = format!("{}{suffix}", axis.stem());
            out.push((
                format!("{stem}.png"),
                png_bytes(&these, axis, hw, scale).with_context(|| format!("{stem}.png"))?,
            ));
            out.push((
                format!("{stem}.svg"),
                svg_text(&these, axis, hw, scale)
                    .with_context(|| format!("{stem}.svg"))?
                    .into_bytes(),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_keeps_only_undominated_points() {
        let pts = [(1.0, 10.0), (2.0, 5.0), (3.0, 6.0), (4.0, 1.0), (0.5, 20.0)];
        let mut f = pareto(&pts);
        f.sort();
        assert_eq!(f, vec![0, 1, 3, 4]);
    }

    #[test]
    fn log_ticks_are_round_and_enough() {
        assert_eq!(log_ticks(3.0, 150.0), vec![5.0, 10.0, 20.0, 50.0, 100.0]);
        let short = log_ticks(4.0, 9.0);
        assert!(short.len() >= 4, "{short:?}");
        assert_eq!(tick_text(0.5, XAxis::Cost), "$0.5");
        assert_eq!(tick_text(20.0, XAxis::Memory), "20");
        assert_eq!(tick_text(1.5, XAxis::Speed), "1.5");
    }
}
