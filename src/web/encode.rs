//! The frame encoder, on a thread of its own so that no pipeline stage ever waits on it: it takes the newest frame
//! the generator offered, compresses the reconstruction and the true stimulus as PNG (lossless: the browser shows
//! exactly the session's `frames/` image) and publishes one JSON event for every browser. Frames offered faster than
//! it encodes are skipped and counted.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

use super::hub::{EncodedFrame, Hub, OfferedFrame, WebCounters};
use crate::generate::rgb8_from_0rgb;

/// Starts the encoder thread; it ends once the hub's frames are closed and the last one offered is published.
pub fn spawn(hub: Arc<Hub>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("web-encoder".into())
        .spawn(move || {
            let mut seq = 0u64;
            loop {
                let offered = match hub.take_offered(Duration::from_millis(200)) {
                    Some(offered) => offered,
                    None if hub.frames_closed() => break,
                    None => continue,
                };
                seq += 1;
                match frame_event(&offered, seq) {
                    Ok(json) => hub.publish_frame(EncodedFrame {
                        seq,
                        json: Arc::from(json),
                    }),
                    Err(e) => {
                        WebCounters::add(&hub.counters.frame_encoding_failures);
                        tracing::warn!(
                            "web console: volume {}'s frame could not be encoded: {e}",
                            offered.frame.volume_index
                        );
                    }
                }
            }
        })
}

/// A square 0RGB image as a `data:` URL of its PNG.
pub fn png_data_url(pixels: &[u32], side: usize) -> Result<String, image::ImageError> {
    let mut png = Vec::with_capacity(pixels.len());
    PngEncoder::new_with_quality(
        Cursor::new(&mut png),
        CompressionType::Fast,
        FilterType::Sub,
    )
    .write_image(
        &rgb8_from_0rgb(pixels),
        side as u32,
        side as u32,
        ExtendedColorType::Rgb8,
    )?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&png)
    ))
}

/// The `frame` event's JSON: what the console shows of one frame.
pub fn frame_event(offered: &OfferedFrame, seq: u64) -> Result<String, image::ImageError> {
    let frame = &offered.frame;
    let overlay = &frame.overlay;
    let stimulus = frame
        .stimulus
        .as_deref()
        .map(|s| png_data_url(s, frame.side))
        .transpose()?;
    Ok(serde_json::json!({
        "seq": seq,
        "volume": frame.volume_index,
        "trial": frame.trial_index,
        "run_secs": overlay.run_secs,
        "status": overlay.status,
        "label": overlay.label,
        "feedback": overlay.feedback,
        "attributes": overlay.attributes,
        "latency_ms": overlay.latency_ms,
        "drawn_unix_ms": offered.drawn_unix_ms,
        "side": frame.side,
        "reconstruction": png_data_url(&frame.reconstruction, frame.side)?,
        "stimulus": stimulus,
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::{Frame, Overlay};

    #[test]
    fn the_png_holds_exactly_the_frame_s_pixels() {
        let side = 5;
        let pixels: Vec<u32> = (0..side * side)
            .map(|i| (i as u32 * 0x010203) & 0xFF_FFFF)
            .collect();
        let url = png_data_url(&pixels, side).unwrap();
        let b64 = url.strip_prefix("data:image/png;base64,").unwrap();
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let decoded = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(decoded.as_raw(), &rgb8_from_0rgb(&pixels));
    }

    #[test]
    fn the_event_names_its_volume_trial_and_stimulus() {
        let offered = OfferedFrame {
            frame: Frame {
                volume_index: 12,
                trial_index: Some(3),
                side: 2,
                reconstruction: vec![0xFF0000; 4],
                stimulus: Some(vec![0x00FF00; 4]),
                overlay: Overlay {
                    feedback: Some(0.25),
                    ..Overlay::default()
                },
            },
            drawn_unix_ms: 1.5e12,
        };
        let event: serde_json::Value =
            serde_json::from_str(&frame_event(&offered, 9).unwrap()).unwrap();
        assert_eq!(event["seq"], 9);
        assert_eq!(event["volume"], 12);
        assert_eq!(event["trial"], 3);
        assert_eq!(event["feedback"], 0.25);
        assert!(event["stimulus"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,"));
    }
}
