//! The evaluation's plots, drawn with `plotters` (bitmap backend): the cross-validation curve, true versus decoded
//! attribute scores, and each measure against its permutation null. Labels use the display's built-in bitmap
//! font, so no font files are needed.

use std::path::Path;

use plotters::prelude::*;

use crate::display::font::draw_text;

type Panel<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn range(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-9);
    (lo - pad, hi + pad)
}

/// Draws a frame and returns the chart area (inset for labels).
fn chart<'a, 'b>(
    panel: &'a Panel<'b>,
    x: (f64, f64),
    y: (f64, f64),
) -> Result<Chart<'a, 'b>, std::io::Error> {
    let mut c = ChartBuilder::on(panel)
        .margin_top(28)
        .margin_bottom(22)
        .margin_left(14)
        .margin_right(14)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(err)?;
    c.configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        .axis_style(BLACK.mix(0.6))
        .draw()
        .map_err(err)?;
    c.draw_series(std::iter::once(Rectangle::new(
        [(x.0, y.0), (x.1, y.1)],
        BLACK.mix(0.35),
    )))
    .map_err(err)?;
    Ok(c)
}

/// Writes the RGB buffer with text labels `(x, y, text)` added.
fn save(
    path: &Path,
    rgb: &[u8],
    w: usize,
    h: usize,
    labels: &[(usize, usize, String)],
) -> std::io::Result<()> {
    let mut canvas: Vec<u32> = rgb
        .chunks_exact(3)
        .map(|p| (p[0] as u32) << 16 | (p[1] as u32) << 8 | p[2] as u32)
        .collect();
    for (x, y, text) in labels {
        draw_text(&mut canvas, w, *x, *y, text, 1, 0x0020_2020);
    }
    crate::display::write_png(path, &canvas, w, h)
}

/// Validation MSE against log10(penalty).
pub fn cv_curve(path: &Path, curve: &[(f64, f64)], chosen: f64) -> std::io::Result<()> {
    let (w, h) = (480usize, 320usize);
    let mut buf = vec![255u8; w * h * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        let xs: Vec<f64> = curve.iter().map(|c| c.0.log10()).collect();
        let ys: Vec<f64> = curve.iter().map(|c| c.1).collect();
        let mut c = chart(&root, range(&xs), range(&ys))?;
        c.draw_series(LineSeries::new(
            xs.iter().copied().zip(ys.iter().copied()),
            &BLUE,
        ))
        .map_err(err)?;
        c.draw_series(
            xs.iter()
                .zip(&ys)
                .map(|(x, y)| Circle::new((*x, *y), 3, BLUE.filled())),
        )
        .map_err(err)?;
        let best = curve
            .iter()
            .find(|p| p.0 == chosen)
            .map(|p| (p.0.log10(), p.1));
        if let Some(b) = best {
            c.draw_series(std::iter::once(Circle::new(b, 6, RED.filled())))
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    let (x0, x1) = curve
        .first()
        .zip(curve.last())
        .map(|(a, b)| (a.0, b.0))
        .unwrap_or((0.0, 0.0));
    save(
        path,
        &buf,
        w,
        h,
        &[
            (
                14,
                8,
                format!("CROSS-VALIDATION: MSE VS LOG10 PENALTY (CHOSEN {chosen:.2E} IN RED)"),
            ),
            (14, h - 14, format!("PENALTY {x0:.0E} TO {x1:.0E}")),
        ],
    )
}

/// A row of one panel per item, `panel_w` x `h` pixels each: `draw` fills an item's panel and returns its top and
/// bottom labels.
fn panel_row<T>(
    path: &Path,
    items: &[T],
    (panel_w, h): (usize, usize),
    mut draw: impl FnMut(&T, &Panel<'_>) -> Result<(String, String), std::io::Error>,
) -> std::io::Result<()> {
    let n = items.len().max(1);
    let w = panel_w * n;
    let mut buf = vec![255u8; w * h * 3];
    let mut labels = Vec::new();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w as u32, h as u32)).into_drawing_area();
        let panels = root.split_evenly((1, n));
        for (i, (item, panel)) in items.iter().zip(panels.iter()).enumerate() {
            let (top, bottom) = draw(item, panel)?;
            labels.push((i * panel_w + 14, 8, top));
            labels.push((i * panel_w + 14, h - 14, bottom));
        }
        root.present().map_err(err)?;
    }
    save(path, &buf, w, h, &labels)
}

/// One scatter panel per attribute: true score (x) against decoded score (y).
pub fn attribute_scatter(
    path: &Path,
    attributes: &[(String, Vec<f64>, Vec<f64>)],
) -> std::io::Result<()> {
    panel_row(
        path,
        attributes,
        (260, 280),
        |(name, truth, decoded), panel| {
            let mut c = chart(panel, range(truth), range(decoded))?;
            c.draw_series(
                truth
                    .iter()
                    .zip(decoded)
                    .map(|(x, y)| Circle::new((*x, *y), 3, BLUE.mix(0.8).filled())),
            )
            .map_err(err)?;
            let r = crate::decode::metrics::pearson(truth, decoded);
            Ok((
                format!("{} R={r:.2}", name.to_uppercase()),
                "TRUE (X) VS DECODED (Y)".to_string(),
            ))
        },
    )
}

/// Histograms of permutation nulls with the observed value as a red line.
pub fn null_histograms(path: &Path, measures: &[(String, f64, Vec<f64>)]) -> std::io::Result<()> {
    panel_row(
        path,
        measures,
        (260, 240),
        |(name, observed, null), panel| {
            let mut all = null.clone();
            all.push(*observed);
            let (lo, hi) = range(&all);
            const BINS: usize = 30;
            let width = (hi - lo) / BINS as f64;
            let mut counts = [0usize; BINS];
            for v in null {
                counts[(((v - lo) / width) as usize).min(BINS - 1)] += 1;
            }
            let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
            let mut c = chart(panel, (lo, hi), (0.0, top))?;
            c.draw_series(counts.iter().enumerate().map(|(b, &k)| {
                let x0 = lo + b as f64 * width;
                Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.9, k as f64)],
                    BLUE.mix(0.5).filled(),
                )
            }))
            .map_err(err)?;
            c.draw_series(LineSeries::new(
                [(*observed, 0.0), (*observed, top)],
                RED.stroke_width(2),
            ))
            .map_err(err)?;
            Ok((name.to_uppercase(), format!("OBSERVED {observed:.3}")))
        },
    )
}
