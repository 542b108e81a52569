//! Stimulus onsets sent live by the stimulus computer on a ZeroMQ PUB socket, added to the trial schedule as
//! they arrive.

use crate::preprocess::trials::ScheduledTrial;

/// Stimulus onsets arriving live on a ZeroMQ SUB socket as JSON `{"onset": seconds from the run's first volume,
/// "stim_id": n, "duration": s, "trial_type": "..."}` (only `onset` is required). Malformed messages are logged,
/// counted and skipped.
pub struct OnsetSubscriber {
    _context: zmq::Context,
    socket: zmq::Socket,
    pub malformed: std::cell::Cell<usize>,
}

impl OnsetSubscriber {
    pub fn connect(endpoint: &str) -> anyhow::Result<OnsetSubscriber> {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::SUB)?;
        socket.set_subscribe(b"")?;
        socket
            .connect(endpoint)
            .map_err(|e| anyhow::anyhow!("onsets: connecting to {endpoint}: {e}"))?;
        Ok(OnsetSubscriber {
            _context: context,
            socket,
            malformed: std::cell::Cell::new(0),
        })
    }

    /// Every onset that has arrived, without waiting.
    pub fn drain(&self, next_index: &mut usize) -> Vec<ScheduledTrial> {
        let mut out = Vec::new();
        while let Ok(bytes) = self.socket.recv_bytes(zmq::DONTWAIT) {
            let parsed: Option<ScheduledTrial> =
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| {
                        let onset = v
                            .get("onset")?
                            .as_f64()
                            .filter(|o| o.is_finite() && *o >= 0.0)?;
                        Some(ScheduledTrial {
                            index: 0,
                            onset_secs: onset,
                            duration_secs: v
                                .get("duration")
                                .and_then(|d| d.as_f64())
                                .unwrap_or(0.0),
                            trial_type: v
                                .get("trial_type")
                                .and_then(|t| t.as_str())
                                .unwrap_or("live")
                                .to_string(),
                            stim_id: v
                                .get("stim_id")
                                .and_then(|s| s.as_u64())
                                .map(|s| s as usize),
                        })
                    });
            match parsed {
                Some(mut trial) => {
                    trial.index = *next_index;
                    *next_index += 1;
                    out.push(trial);
                }
                None => {
                    self.malformed.set(self.malformed.get() + 1);
                    tracing::warn!(
                        "onsets: ignored a message that is not {{\"onset\": seconds, ...}}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
            }
        }
        out
    }
}
