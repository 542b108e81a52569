//! The ZeroMQ receiver: a drop-in replacement for Pyneal's scanner intake.
//!
//! It binds a PAIR socket, echoes any single non-JSON frame (the handshake, also a sender restarting mid-run),
//! validates each two-frame volume, appends it to the session spool, **then** replies (`received volIdx N`,
//! `... - STOP` when the run is complete), and only after the reply converts the buffer into a [`Volume`] for
//! the pipeline. Every malformed message gets an `error: ...` reply, one log line and a counter; nothing
//! accepted is dropped (the downstream channel is bounded and blocking).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::protocol::{self, Limits, Message, ProtocolError, Rejection, VolumeHeader};
use crate::ingest::recorder::{unix_secs_now, MessageLog, Outcome, RecordError, Recorder, Summary};
use crate::volume::{swap_bytes_in_place, Affine, ByteOrder, Volume};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ZeroMQ {context}: {source}")]
    Zmq { context: String, source: zmq::Error },
    #[error(transparent)]
    Record(#[from] RecordError),
}

fn zmq_err(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> IngestError {
    let context = context.into();
    move |source| IngestError::Zmq { context, source }
}

/// Receiver settings (from `[receiver]` in the config).
#[derive(Debug, Clone)]
pub struct ReceiverSettings {
    pub bind: String,
    /// Volumes in the run, when known: the last one's reply says STOP and later indices are refused.
    pub expected_volumes: Option<usize>,
    pub idle_timeout_secs: f64,
    pub limits: Limits,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Every expected volume arrived.
    Complete,
    /// No message for `idle_timeout_secs`.
    IdleTimeout,
    /// Ctrl-C, a closed window, or the pipeline asked to stop.
    Interrupted,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Complete => "complete",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::Interrupted => "interrupted",
        }
    }
}

/// A bound receiver with its session recorder.
pub struct Receiver {
    _context: zmq::Context,
    socket: zmq::Socket,
    settings: ReceiverSettings,
    recorder: Recorder,
    endpoint: String,
    accepted: Vec<bool>,
    accepted_count: usize,
    geometry: Option<([usize; 3], Affine)>,
    seq: u64,
    last_message_at: Option<Instant>,
}

/// How often the loop wakes to check the stop flag and the idle timeout while no message arrives.
const WAKE_INTERVAL_MS: i64 = 100;

impl Receiver {
    /// Binds the socket. The endpoint actually bound (with the real port for `tcp://...:0`) is in [`Receiver::endpoint`].
    pub fn bind(settings: ReceiverSettings, recorder: Recorder) -> Result<Receiver, IngestError> {
        let context = zmq::Context::new();
        let socket = context
            .socket(zmq::PAIR)
            .map_err(zmq_err("creating the PAIR socket"))?;
        socket.set_linger(0).map_err(zmq_err("setting linger"))?;
        socket
            .bind(&settings.bind)
            .map_err(zmq_err(format!("binding {}", settings.bind)))?;
        let endpoint = socket
            .get_last_endpoint()
            .map_err(zmq_err("reading the bound endpoint"))?
            .unwrap_or_else(|_| settings.bind.clone());
        Ok(Receiver {
            _context: context,
            socket,
            settings,
            recorder,
            endpoint,
            accepted: Vec::new(),
            accepted_count: 0,
            geometry: None,
            seq: 0,
            last_message_at: None,
        })
    }

    /// The bound endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The session folder being written.
    pub fn session_dir(&self) -> &std::path::Path {
        self.recorder.dir()
    }

    /// Receives until the run is complete, the idle timeout passes, or `stop` is set, passing each accepted volume
    /// `downstream`. If downstream goes away (the analysis failed), the intake goes on receiving and recording:
    /// the scanner is never left waiting and no volume is lost, whatever happens after the intake.
    pub fn run(
        &mut self,
        downstream: Option<&Sender<Volume>>,
        stop: &AtomicBool,
    ) -> Result<EndReason, IngestError> {
        let mut downstream = downstream;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(EndReason::Interrupted);
            }
            if let Some(last) = self.last_message_at {
                let idle = self.settings.idle_timeout_secs;
                if idle > 0.0 && last.elapsed() >= Duration::from_secs_f64(idle) {
                    tracing::info!("no message for {idle} s: ending the run");
                    return Ok(EndReason::IdleTimeout);
                }
            }
            let ready = self
                .socket
                .poll(zmq::POLLIN, WAKE_INTERVAL_MS)
                .map_err(zmq_err("polling"))?;
            if ready == 0 {
                continue;
            }
            let frames = self
                .socket
                .recv_multipart(0)
                .map_err(zmq_err("receiving"))?;
            let received_at = Instant::now();
            self.last_message_at = Some(received_at);
            if let Some(volume) = self.handle(frames, received_at)? {
                if let Some(tx) = downstream {
                    if tx.send(volume).is_err() {
                        tracing::error!("the analysis has stopped: volumes are still received and recorded, no longer analysed");
                        downstream = None;
                    }
                }
            }
            if self.run_complete() {
                tracing::info!("all {} expected volumes received", self.accepted_count);
                return Ok(EndReason::Complete);
            }
        }
    }

    /// Finalises the session recording.
    pub fn finish(self, reason: EndReason, compress: bool) -> Result<Summary, IngestError> {
        Ok(self.recorder.finalise(reason.as_str(), compress)?)
    }

    fn reply(&self, text: &str) {
        // DONTWAIT: a sender that died cannot block the receiver
        if let Err(e) = self.socket.send(text.as_bytes(), zmq::DONTWAIT) {
            tracing::warn!("could not send reply \"{text}\": {e} (sender gone?)");
        }
    }

    /// Handles one message; returns the accepted volume, if any.
    fn handle(
        &mut self,
        frames: Vec<Vec<u8>>,
        received_at: Instant,
    ) -> Result<Option<Volume>, IngestError> {
        self.seq += 1;
        let arrived_unix_secs = unix_secs_now();
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        let mut log = MessageLog {
            seq: self.seq,
            arrived_unix_secs,
            frames: frames.len(),
            bytes,
            outcome: Outcome::Rejected,
            vol_idx: None,
            rejection: None,
            error: None,
            reply_latency_ms: 0.0,
        };
        let checked = match protocol::classify(&frames) {
            Message::Handshake(text) => {
                if let Err(e) = self.socket.send(text, zmq::DONTWAIT) {
                    tracing::warn!("could not echo the handshake: {e}");
                }
                tracing::info!(
                    "handshake \"{}\" echoed",
                    String::from_utf8_lossy(text).escape_debug()
                );
                log.outcome = Outcome::Handshake;
                log.reply_latency_ms = received_at.elapsed().as_secs_f64() * 1e3;
                self.recorder.log_message(&log)?;
                return Ok(None);
            }
            Message::Malformed(err) => Err(err),
            Message::Volume { header, data } => self.check_volume(header, data),
        };
        let header = match checked {
            Ok(h) => h,
            Err(err) => {
                self.reply(&err.reply());
                tracing::warn!("message {} rejected: {}", self.seq, err.message);
                log.rejection = Some(err.kind);
                log.error = Some(err.message);
                log.reply_latency_ms = received_at.elapsed().as_secs_f64() * 1e3;
                self.recorder.log_message(&log)?;
                return Ok(None);
            }
        };
        log.vol_idx = Some(header.index);
        if self.accepted.get(header.index).copied().unwrap_or(false) {
            self.reply(&protocol::volume_reply(
                header.index,
                self.run_complete(),
                true,
            ));
            tracing::warn!(
                "volume {} arrived again: duplicate ignored, the first copy kept",
                header.index
            );
            log.outcome = Outcome::Duplicate;
            log.reply_latency_ms = received_at.elapsed().as_secs_f64() * 1e3;
            self.recorder.log_message(&log)?;
            return Ok(None);
        }

        let mut data = frames.into_iter().nth(1).unwrap_or_default();
        if header.byte_order == ByteOrder::Big {
            swap_bytes_in_place(&mut data, header.dtype.itemsize());
        }
        if let Err(e) = self
            .recorder
            .append_volume(&header, &data, arrived_unix_secs)
        {
            self.reply(&format!(
                "error: receiver cannot record volume {}: {e}",
                header.index
            ));
            return Err(e.into());
        }
        if self.accepted.len() <= header.index {
            self.accepted.resize(header.index + 1, false);
        }
        self.accepted[header.index] = true;
        self.accepted_count += 1;
        if self.geometry.is_none() {
            self.geometry = Some((header.dims, header.mm_from_voxel));
        }
        self.reply(&protocol::volume_reply(
            header.index,
            self.run_complete(),
            false,
        ));
        log.outcome = Outcome::Accepted;
        log.reply_latency_ms = received_at.elapsed().as_secs_f64() * 1e3;
        self.recorder.log_message(&log)?;
        tracing::debug!(
            "volume {} accepted ({} bytes, reply after {:.3} ms)",
            header.index,
            bytes,
            log.reply_latency_ms
        );
        Ok(Some(Volume::from_c_order(
            header.index,
            header.dims,
            header.mm_from_voxel,
            header.tr_secs,
            header.dtype,
            &data,
            received_at,
        )))
    }

    fn run_complete(&self) -> bool {
        self.settings
            .expected_volumes
            .is_some_and(|expected| self.accepted_count >= expected)
    }

    fn check_volume(&self, header: &[u8], data: &[u8]) -> Result<VolumeHeader, ProtocolError> {
        let h = protocol::parse_header(header, self.settings.limits)?;
        protocol::check_buffer(&h, data)?;
        if let Some(expected) = self.settings.expected_volumes.filter(|e| h.index >= *e) {
            return Err(ProtocolError {
                kind: Rejection::IndexBeyondExpected,
                message: format!(
                    "volIdx {} is beyond the expected {expected} volumes (0 to {})",
                    h.index,
                    expected.saturating_sub(1)
                ),
            });
        }
        if let Some((dims, affine)) = &self.geometry {
            if *dims != h.dims {
                return Err(ProtocolError {
                    kind: Rejection::GeometryChanged,
                    message: format!("shape {:?} differs from this run's {:?}", h.dims, dims),
                });
            }
            if affine != &h.mm_from_voxel {
                return Err(ProtocolError {
                    kind: Rejection::GeometryChanged,
                    message: "affine differs from this run's first volume".to_string(),
                });
            }
        }
        Ok(h)
    }
}
