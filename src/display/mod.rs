//! What the operator (or the participant) sees: frames composed from the newest reconstruction, the true
//! stimulus when known, and overlays (volume, run time, framewise-displacement trace, per-stage latency,
//! attribute-score bars, status), shown in a minifb window or written as PNG files when there is no display.
//!
//! Operator layout (1024 x 672): reconstruction at [`RECON_RECT`], stimulus at [`STIMULUS_RECT`], the overlay
//! panel below. Participant view: the reconstruction alone, 512 x 512. Feedback view: the feedback value as a bar.

pub mod font;

use std::path::{Path, PathBuf};

/// (x, y, width, height) of the reconstruction in the operator view.
pub const RECON_RECT: (usize, usize, usize, usize) = (0, 0, 512, 512);
/// (x, y, width, height) of the true stimulus in the operator view.
pub const STIMULUS_RECT: (usize, usize, usize, usize) = (512, 0, 512, 512);
pub const OPERATOR_SIZE: (usize, usize) = (1024, 672);

/// Which view the window shows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum View {
    Operator,
    /// The reconstruction only.
    Participant,
    /// The neurofeedback value only, as a bar.
    Feedback,
}

/// Overlay contents.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pub volume: usize,
    pub run_secs: f64,
    pub fd_history_mm: Vec<f64>,
    pub latency_ms: Vec<(String, f64)>,
    pub attributes: Vec<(String, f64)>,
    pub feedback: Option<f64>,
    pub status: String,
    pub label: String,
}

/// One displayable frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub volume_index: usize,
    pub trial_index: Option<usize>,
    pub side: usize,
    /// Packed 0RGB, side x side.
    pub reconstruction: Vec<u32>,
    pub stimulus: Option<Vec<u32>>,
    pub overlay: Overlay,
}

fn blit_scaled(
    canvas: &mut [u32],
    width: usize,
    rect: (usize, usize, usize, usize),
    image: &[u32],
    side: usize,
) {
    let (x0, y0, w, h) = rect;
    for y in 0..h {
        let sy = y * side / h;
        for x in 0..w {
            let sx = x * side / w;
            canvas[(y0 + y) * width + x0 + x] = image[sy * side + sx];
        }
    }
}

fn fill(canvas: &mut [u32], width: usize, rect: (usize, usize, usize, usize), colour: u32) {
    let (x0, y0, w, h) = rect;
    for y in y0..y0 + h {
        for x in x0..x0 + w {
            if let Some(p) = canvas.get_mut(y * width + x) {
                *p = colour;
            }
        }
    }
}

const TEXT: u32 = 0x00E0_E0E0;
const DIM: u32 = 0x0020_2020;

/// Renders `frame` in `view`; returns the pixels and the size.
pub fn compose(frame: &Frame, view: View) -> (Vec<u32>, usize, usize) {
    match view {
        View::Participant => {
            let mut canvas = vec![0u32; 512 * 512];
            blit_scaled(
                &mut canvas,
                512,
                (0, 0, 512, 512),
                &frame.reconstruction,
                frame.side,
            );
            (canvas, 512, 512)
        }
        View::Feedback => {
            let (w, h) = (512, 512);
            let mut canvas = vec![0u32; w * h];
            let value = frame.overlay.feedback.unwrap_or(0.0).clamp(-1.0, 1.0);
            let bar = ((value + 1.0) / 2.0 * 400.0) as usize;
            fill(
                &mut canvas,
                w,
                (56, 400 - bar + 56, 400, bar),
                if value >= 0.0 {
                    0x0040_C060
                } else {
                    0x00C0_5040
                },
            );
            font::draw_text(
                &mut canvas,
                w,
                56,
                20,
                &format!("FEEDBACK {value:+.2}"),
                3,
                TEXT,
            );
            (canvas, w, h)
        }
        View::Operator => {
            let (w, h) = OPERATOR_SIZE;
            let mut canvas = vec![0x0010_1010u32; w * h];
            blit_scaled(
                &mut canvas,
                w,
                RECON_RECT,
                &frame.reconstruction,
                frame.side,
            );
            match &frame.stimulus {
                Some(stim) => blit_scaled(&mut canvas, w, STIMULUS_RECT, stim, frame.side),
                None => {
                    fill(&mut canvas, w, STIMULUS_RECT, DIM);
                    font::draw_text(
                        &mut canvas,
                        w,
                        STIMULUS_RECT.0 + 140,
                        250,
                        "NO STIMULUS KNOWN",
                        2,
                        TEXT,
                    );
                }
            }
            font::draw_text(
                &mut canvas,
                w,
                RECON_RECT.0 + 6,
                6,
                "RECONSTRUCTION",
                1,
                TEXT,
            );
            font::draw_text(&mut canvas, w, STIMULUS_RECT.0 + 6, 6, "STIMULUS", 1, TEXT);
            let o = &frame.overlay;
            font::draw_text(
                &mut canvas,
                w,
                8,
                520,
                &format!(
                    "VOL {}  T {:.1} S  TRIAL {}",
                    o.volume,
                    o.run_secs,
                    frame
                        .trial_index
                        .map(|t| t.to_string())
                        .unwrap_or("-".into())
                ),
                2,
                TEXT,
            );
            let latency: Vec<String> = o
                .latency_ms
                .iter()
                .map(|(n, v)| format!("{n} {v:.0}"))
                .collect();
            font::draw_text(
                &mut canvas,
                w,
                8,
                542,
                &format!("MS {}", latency.join(" ")),
                1,
                TEXT,
            );
            font::draw_text(
                &mut canvas,
                w,
                8,
                556,
                &o.status,
                1,
                if o.status.starts_with("OK") {
                    0x0060_E060
                } else {
                    0x00F0_C040
                },
            );
            font::draw_text(&mut canvas, w, 8, 570, &o.label, 1, 0x0090_9090);
            // framewise displacement trace, 0 to 1 mm over the last 100 volumes
            let trace = (8, 590, 480, 74);
            fill(&mut canvas, w, trace, DIM);
            font::draw_text(
                &mut canvas,
                w,
                trace.0 + 4,
                trace.1 + 4,
                "FD 0-1 MM",
                1,
                TEXT,
            );
            let recent: Vec<f64> = o
                .fd_history_mm
                .iter()
                .rev()
                .take(100)
                .rev()
                .copied()
                .collect();
            for (i, fd) in recent.iter().enumerate() {
                let x = trace.0 + i * trace.2 / 100;
                let height = ((fd.clamp(0.0, 1.0)) * (trace.3 - 2) as f64) as usize;
                fill(
                    &mut canvas,
                    w,
                    (
                        x,
                        trace.1 + trace.3 - height,
                        (trace.2 / 100).max(1),
                        height.max(1),
                    ),
                    if *fd > 0.5 { 0x00F0_5050 } else { 0x0050_A0F0 },
                );
            }
            // attribute bars, scores -3 to 3 around the centre line
            for (i, (name, score)) in o.attributes.iter().enumerate() {
                let y = 520 + i * 30;
                font::draw_text(&mut canvas, w, 540, y + 4, name, 1, TEXT);
                let (bx, bw) = (620, 380);
                fill(&mut canvas, w, (bx, y, bw, 18), DIM);
                let centre = bx + bw / 2;
                let len = ((score.clamp(-3.0, 3.0)).abs() / 3.0 * (bw / 2) as f64) as usize;
                let start = if *score >= 0.0 { centre } else { centre - len };
                fill(
                    &mut canvas,
                    w,
                    (start, y + 2, len.max(1), 14),
                    if *score >= 0.0 {
                        0x0040_C060
                    } else {
                        0x00C0_6040
                    },
                );
                fill(&mut canvas, w, (centre, y, 1, 18), TEXT);
            }
            (canvas, w, h)
        }
    }
}

/// Writes a composed canvas as PNG.
pub fn write_png(path: &Path, canvas: &[u32], width: usize, height: usize) -> std::io::Result<()> {
    let rgb: Vec<u8> = canvas
        .iter()
        .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
        .collect();
    let img = image::RgbImage::from_raw(width as u32, height as u32, rgb)
        .ok_or_else(|| std::io::Error::other("canvas size"))?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(std::io::Error::other)
}

/// Where frames go.
pub enum Sink {
    Window(Box<minifb::Window>),
    Headless(PathBuf),
}

impl Sink {
    /// A window, or minifb's reason when there is none (no display).
    pub fn window(title: &str, view: View) -> Result<Sink, minifb::Error> {
        let (w, h) = match view {
            View::Operator => OPERATOR_SIZE,
            _ => (512, 512),
        };
        minifb::Window::new(title, w, h, minifb::WindowOptions::default())
            .map(|w| Sink::Window(Box::new(w)))
    }

    /// Shows (or writes) a frame; returns false when the window was closed.
    pub fn show(&mut self, frame: &Frame, view: View) -> std::io::Result<bool> {
        let (canvas, w, h) = compose(frame, view);
        match self {
            Sink::Window(window) => {
                if !window.is_open() || window.is_key_down(minifb::Key::Escape) {
                    return Ok(false);
                }
                window
                    .update_with_buffer(&canvas, w, h)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(true)
            }
            Sink::Headless(dir) => {
                write_png(
                    &dir.join(format!("frame_{:05}.png", frame.volume_index)),
                    &canvas,
                    w,
                    h,
                )?;
                Ok(true)
            }
        }
    }

    /// Keeps the window responsive between frames; returns false when it was closed.
    pub fn idle(&mut self) -> bool {
        match self {
            Sink::Window(window) => {
                window.update();
                window.is_open() && !window.is_key_down(minifb::Key::Escape)
            }
            Sink::Headless(_) => true,
        }
    }
}
