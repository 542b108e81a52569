//! The display, on the pipeline's own thread: the newest frame shown in the window (or written as PNG without a
//! display), older ones skipped; a closed window ends the run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver as Rx, RecvTimeoutError};

use super::stats::LiveStats;
use crate::display::{Frame, Sink, View};

pub(super) fn headless_sink(session_dir: &Path) -> std::io::Result<Sink> {
    let dir = session_dir.join("display");
    std::fs::create_dir_all(&dir)?;
    Ok(Sink::Headless(dir))
}

/// Shows frames (newest first) until `stop`, or the frame channel closes once the intake is over (a window whose
/// generator stopped early stays open and responsive while the run goes on); a closed window sets `stop`.
pub(super) fn display_loop(
    sink: &mut Option<Sink>,
    frames: &Rx<(Frame, Instant)>,
    view: View,
    stats: &Arc<Mutex<LiveStats>>,
    stop: &AtomicBool,
    intake_over: &AtomicBool,
) {
    loop {
        let first = match frames.recv_timeout(std::time::Duration::from_millis(30)) {
            Ok(f) => f,
            Err(no_frame) => {
                // keep the window responsive; end once nothing more can come
                if let Some(s) = sink.as_mut() {
                    if !s.idle() {
                        tracing::info!("window closed: ending the run");
                        stop.store(true, Ordering::SeqCst);
                    }
                }
                let stopping = stop.load(Ordering::SeqCst);
                match no_frame {
                    RecvTimeoutError::Timeout if stopping && frames.is_empty() => return,
                    RecvTimeoutError::Disconnected
                        if stopping || intake_over.load(Ordering::SeqCst) =>
                    {
                        return
                    }
                    // the generator stopped early: the run goes on
                    RecvTimeoutError::Disconnected => {
                        std::thread::sleep(std::time::Duration::from_millis(30))
                    }
                    RecvTimeoutError::Timeout => {}
                }
                continue;
            }
        };
        let mut newest = first;
        while let Ok(f) = frames.try_recv() {
            newest = f;
        }
        let (frame, arrived_at) = newest;
        let shown = match sink.as_mut() {
            Some(s) => s.show(&frame, view).unwrap_or_else(|e| {
                tracing::warn!("display: {e}");
                true
            }),
            None => true,
        };
        if let Ok(mut s) = stats.lock() {
            s.frames_shown += 1;
            s.end_to_end_ms
                .push(arrived_at.elapsed().as_secs_f64() * 1e3);
        }
        if !shown {
            tracing::info!("window closed: ending the run");
            stop.store(true, Ordering::SeqCst);
        }
    }
}
