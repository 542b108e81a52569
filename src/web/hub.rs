//! What the browser console knows of the session, shared by the pipeline (which writes it without ever waiting on
//! a browser) and the server's connections (which read it): the newest frame waiting to be encoded, the newest
//! encoded frame and the last few before it, the newest summary, every decoded trial (up to [`TRIALS_KEPT`]), and
//! the console's own counters. Every part is bounded: a client that reads slowly, or not at all, skips frames
//! instead of queueing them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::display::Frame;

/// How many encoded frames a browser that connects is sent first (the strip of the latest reconstructions).
pub const FRAMES_KEPT: usize = 8;

/// How many decoded trials `/api/trials` keeps: over 16 hours of one trial a second; the oldest go first.
pub const TRIALS_KEPT: usize = 60_000;

/// One frame as the browsers receive it: its sequence number and its event's JSON.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    pub seq: u64,
    pub json: Arc<str>,
}

/// The console's own counters, shown in the summary.
#[derive(Debug, Default)]
pub struct WebCounters {
    pub clients_connected: AtomicU64,
    pub clients_served: AtomicU64,
    pub frames_offered: AtomicU64,
    pub frames_encoded: AtomicU64,
    /// Frames replaced by a newer one before the encoder got to them.
    pub frames_skipped_by_encoder: AtomicU64,
    pub frame_encoding_failures: AtomicU64,
    /// Requests refused for want of the token.
    pub requests_refused: AtomicU64,
    /// Connections closed because the browser stopped reading (or never sent its request).
    pub connections_dropped_stalled: AtomicU64,
}

impl WebCounters {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "clients_connected": get(&self.clients_connected),
            "clients_served": get(&self.clients_served),
            "frames_offered": get(&self.frames_offered),
            "frames_encoded": get(&self.frames_encoded),
            "frames_skipped_by_encoder": get(&self.frames_skipped_by_encoder),
            "frame_encoding_failures": get(&self.frame_encoding_failures),
            "requests_refused": get(&self.requests_refused),
            "connections_dropped_stalled": get(&self.connections_dropped_stalled),
        })
    }
}

/// A frame handed over by the pipeline, with the wall-clock time it was drawn (Unix ms, for the browser latency).
pub struct OfferedFrame {
    pub frame: Frame,
    pub drawn_unix_ms: f64,
}

/// Decoded trials, the oldest forgotten past [`TRIALS_KEPT`].
#[derive(Debug, Default)]
pub struct TrialLog {
    pub trials: VecDeque<serde_json::Value>,
    pub forgotten: usize,
}

/// The shared state.
pub struct Hub {
    offered: Mutex<Option<OfferedFrame>>,
    offered_ready: Condvar,
    frames: watch::Sender<Option<EncodedFrame>>,
    recent_frames: Mutex<VecDeque<EncodedFrame>>,
    summary: watch::Sender<Arc<str>>,
    trials: Mutex<TrialLog>,
    /// Set when the pipeline will offer no more frames: the encoder finishes the one waiting and ends.
    frames_closed: AtomicBool,
    /// Set when the session is over: the encoder and every browser's stream end.
    ended: watch::Sender<bool>,
    pub counters: WebCounters,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub {
            offered: Mutex::new(None),
            offered_ready: Condvar::new(),
            frames: watch::channel(None).0,
            recent_frames: Mutex::new(VecDeque::with_capacity(FRAMES_KEPT + 1)),
            summary: watch::channel(Arc::from("{}")).0,
            trials: Mutex::new(TrialLog::default()),
            frames_closed: AtomicBool::new(false),
            ended: watch::channel(false).0,
            counters: WebCounters::default(),
        })
    }

    /// The pipeline's side: keeps `frame` as the one to encode next, replacing (and counting) one not yet taken.
    /// Never waits on the encoder or a browser.
    pub fn offer_frame(&self, frame: OfferedFrame) {
        WebCounters::add(&self.counters.frames_offered);
        if let Ok(mut slot) = self.offered.lock() {
            if slot.replace(frame).is_some() {
                WebCounters::add(&self.counters.frames_skipped_by_encoder);
            }
            self.offered_ready.notify_one();
        }
    }

    /// The encoder's side: the newest offered frame, waiting up to `wait` for one; `None` when there was none.
    pub fn take_offered(&self, wait: Duration) -> Option<OfferedFrame> {
        let slot = self.offered.lock().ok()?;
        let (mut slot, _) = self
            .offered_ready
            .wait_timeout_while(slot, wait, |s| s.is_none())
            .ok()?;
        slot.take()
    }

    /// Publishes an encoded frame to every browser and keeps it among the recent ones.
    pub fn publish_frame(&self, frame: EncodedFrame) {
        WebCounters::add(&self.counters.frames_encoded);
        if let Ok(mut recent) = self.recent_frames.lock() {
            recent.push_back(frame.clone());
            while recent.len() > FRAMES_KEPT {
                recent.pop_front();
            }
        }
        self.frames.send_replace(Some(frame));
    }

    pub fn recent_frames(&self) -> Vec<EncodedFrame> {
        self.recent_frames
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn subscribe_frames(&self) -> watch::Receiver<Option<EncodedFrame>> {
        self.frames.subscribe()
    }

    /// Publishes the summary with the console's own counters under `web`, unless it is the one the browsers
    /// already have.
    pub fn publish_summary(&self, mut summary: serde_json::Value) {
        if let Some(fields) = summary.as_object_mut() {
            fields.insert("web".into(), self.counters.json());
        }
        let json: Arc<str> = Arc::from(summary.to_string());
        self.summary.send_if_modified(|current| {
            if **current == *json {
                false
            } else {
                *current = json;
                true
            }
        });
    }

    pub fn summary(&self) -> Arc<str> {
        self.summary.borrow().clone()
    }

    pub fn subscribe_summary(&self) -> watch::Receiver<Arc<str>> {
        self.summary.subscribe()
    }

    pub fn add_trial(&self, trial: serde_json::Value) {
        if let Ok(mut log) = self.trials.lock() {
            log.trials.push_back(trial);
            while log.trials.len() > TRIALS_KEPT {
                log.trials.pop_front();
                log.forgotten += 1;
            }
        }
    }

    /// `/api/trials`: every decoded trial kept, and how many older ones were forgotten.
    pub fn trials_json(&self) -> String {
        match self.trials.lock() {
            Ok(log) => {
                serde_json::json!({"trials": log.trials, "forgotten": log.forgotten}).to_string()
            }
            Err(_) => r#"{"trials":[],"forgotten":0}"#.to_string(),
        }
    }

    /// No more frames will be offered.
    pub fn close_frames(&self) {
        self.frames_closed.store(true, Ordering::SeqCst);
        self.offered_ready.notify_all();
    }

    pub fn frames_closed(&self) -> bool {
        self.frames_closed.load(Ordering::SeqCst)
    }

    /// The session is over: every browser's stream sends the last summary and ends.
    pub fn end(&self) {
        self.close_frames();
        self.ended.send_replace(true);
    }

    pub fn subscribe_ended(&self) -> watch::Receiver<bool> {
        self.ended.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::display::Overlay;

    fn frame(volume_index: usize) -> OfferedFrame {
        OfferedFrame {
            frame: Frame {
                volume_index,
                trial_index: None,
                side: 1,
                reconstruction: vec![0],
                stimulus: None,
                overlay: Overlay::default(),
            },
            drawn_unix_ms: 0.0,
        }
    }

    #[test]
    fn the_encoder_gets_the_newest_frame_and_the_replaced_ones_are_counted() {
        let hub = Hub::new();
        for v in 0..5 {
            hub.offer_frame(frame(v));
        }
        let taken = hub.take_offered(Duration::from_millis(1)).unwrap();
        assert_eq!(taken.frame.volume_index, 4);
        assert!(hub.take_offered(Duration::from_millis(1)).is_none());
        let c = &hub.counters;
        assert_eq!(c.frames_offered.load(Ordering::Relaxed), 5);
        assert_eq!(c.frames_skipped_by_encoder.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn recent_frames_and_trials_stay_bounded() {
        let hub = Hub::new();
        for seq in 0..(FRAMES_KEPT as u64 + 5) {
            hub.publish_frame(EncodedFrame {
                seq,
                json: Arc::from("{}"),
            });
        }
        let recent = hub.recent_frames();
        assert_eq!(recent.len(), FRAMES_KEPT);
        assert_eq!(recent[0].seq, 5);
        for t in 0..TRIALS_KEPT + 3 {
            hub.add_trial(serde_json::json!({ "trial": t }));
        }
        let log: serde_json::Value = serde_json::from_str(&hub.trials_json()).unwrap();
        assert_eq!(log["forgotten"], 3);
        assert_eq!(log["trials"][0]["trial"], 3);
        assert_eq!(log["trials"].as_array().unwrap().len(), TRIALS_KEPT);
    }

    #[test]
    fn an_unchanged_summary_is_not_sent_again() {
        let hub = Hub::new();
        let mut rx = hub.subscribe_summary();
        rx.borrow_and_update();
        hub.publish_summary(serde_json::json!({"volumes": 1}));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        hub.publish_summary(serde_json::json!({"volumes": 1}));
        assert!(!rx.has_changed().unwrap());
    }
}
