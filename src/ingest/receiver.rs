//! The ZeroMQ receiver: a drop-in replacement for Pyneal's scanner intake.
//!
//! It binds a PAIR socket, echoes any single non-JSON frame (the handshake, also a sender restarting mid-run),
//! validates each two-frame volume, appends it to the session spool, **then** replies (`received volIdx N`,
//! `... - STOP` when the run is complete), and only after the reply converts the buffer into a [`Volume`] for
//! the pipeline. Every malformed message gets an `error: ...` reply, one log line and a counter; nothing
//! accepted is dropped (the downstream channel is bounded and blocking).
//!
//! What a scanner, a network or a disk may do does not end the run: an index is bounded before it is trusted, a
//! frame larger than the limits is dropped by libzmq before it is held, a volume that cannot be recorded (a full
//! disk) gets an error reply and the run goes on, a peer that connects and stays silent is dropped so that it
//! cannot lock the scanner out, `allow_from` is checked before a peer can send anything ([`super::access`]), a
//! stray volume cannot fix the run's geometry ([`super::geometry`]), and a signal ends the run through the
//! stop flag so that the session is finalised.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::access::{AllowRule, ZapHandler, ZAP_DOMAIN};
use super::geometry::{Admission, Check, Geometry, RunGeometry};
use super::protocol::{self, Limits, Message, ProtocolError, Rejection, VolumeHeader};
use super::spool_scan::{read_c_order, SpoolEntry};
use crate::ingest::recorder::{
    unix_secs_now, MessageLog, Outcome, PeerCounts, RecordError, Recorder, Summary, SPOOL,
};
use crate::volume::{swap_bytes_in_place, ByteOrder, Volume};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("ZeroMQ {context}: {source}")]
    Zmq { context: String, source: zmq::Error },
    #[error("ZeroMQ binding {endpoint}: {source}; is another receiver running there? Choose another endpoint with --bind or receiver.bind")]
    AddressInUse {
        endpoint: String,
        source: zmq::Error,
    },
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
    /// A peer that connects and sends nothing for this long is dropped (the socket is bound afresh); 0 = never.
    pub handshake_timeout_secs: f64,
    /// Who may connect over TCP; empty = anyone.
    pub allow_from: Vec<AllowRule>,
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
    // field order is drop order: the socket closes before the handler, the handler before the context
    socket: zmq::Socket,
    zap: ZapHandler,
    context: zmq::Context,
    settings: ReceiverSettings,
    recorder: Recorder,
    endpoint: String,
    geometry: RunGeometry,
    /// Volumes accepted before their geometry was confirmed, held back from the analysis.
    held: Vec<(Geometry, Volume)>,
    /// A resumed session's volumes, passed downstream (read from the spool one at a time) when the run starts.
    replay: VecDeque<Replay>,
    seq: u64,
    last_message_at: Option<Instant>,
    /// The connection (time) last dropped for silence, so that it is dropped once.
    dropped_knock: Option<Instant>,
    dropped_silent: u64,
    log_failures: u64,
}

/// A resumed session's volume waiting to go downstream.
enum Replay {
    /// In the spool: read when it is its turn.
    Spooled(SpoolEntry),
    /// Held back in memory until its geometry was confirmed.
    Ready(Volume),
}

/// A spooled volume as the analysis takes it.
fn spooled_volume(
    spool: &mut std::fs::File,
    entry: &SpoolEntry,
    dir: &std::path::Path,
) -> Result<Volume, RecordError> {
    let h = &entry.header;
    let data = read_c_order(spool, entry, dir)?;
    Ok(Volume::from_c_order(
        h.index,
        h.dims,
        h.mm_from_voxel,
        h.tr_secs,
        h.dtype,
        &data,
        Instant::now(),
    ))
}

/// How often the loop wakes to check the stop flag and the idle timeout while no message arrives.
const WAKE_INTERVAL_MS: i64 = 100;
/// Room for the JSON header beside the largest volume: libzmq drops a peer that sends a bigger frame before it
/// is ever held in memory (`ZMQ_MAXMSGSIZE`).
const HEADER_ALLOWANCE_BYTES: u64 = 1 << 20;

/// Creates the PAIR socket with its limits and ZAP domain, and binds it.
fn open_socket(
    context: &zmq::Context,
    settings: &ReceiverSettings,
    endpoint: &str,
) -> Result<zmq::Socket, IngestError> {
    let socket = context
        .socket(zmq::PAIR)
        .map_err(zmq_err("creating the PAIR socket"))?;
    socket.set_linger(0).map_err(zmq_err("setting linger"))?;
    socket
        .set_zap_domain(ZAP_DOMAIN)
        .map_err(zmq_err("setting the ZAP domain"))?;
    let max_message_bytes = settings
        .limits
        .max_volume_bytes
        .saturating_add(HEADER_ALLOWANCE_BYTES)
        .min(i64::MAX as u64) as i64;
    socket
        .set_maxmsgsize(max_message_bytes)
        .map_err(zmq_err("setting the largest message"))?;
    socket.bind(endpoint).map_err(|source| match source {
        zmq::Error::EADDRINUSE => IngestError::AddressInUse {
            endpoint: endpoint.to_string(),
            source,
        },
        _ => IngestError::Zmq {
            context: format!("binding {endpoint} (--bind or receiver.bind)"),
            source,
        },
    })?;
    Ok(socket)
}

impl Receiver {
    /// Binds the socket. The endpoint actually bound (with the real port for `tcp://...:0`) is in [`Receiver::endpoint`].
    pub fn bind(settings: ReceiverSettings, recorder: Recorder) -> Result<Receiver, IngestError> {
        let context = zmq::Context::new();
        let zap = ZapHandler::start(&context, settings.allow_from.clone())
            .map_err(zmq_err("starting the ZAP access handler"))?;
        let socket = open_socket(&context, &settings, &settings.bind)?;
        let endpoint = socket
            .get_last_endpoint()
            .map_err(zmq_err("reading the bound endpoint"))?
            .unwrap_or_else(|_| settings.bind.clone());
        Ok(Receiver {
            socket,
            zap,
            context,
            geometry: RunGeometry::new(settings.expected_volumes),
            settings,
            recorder,
            endpoint,
            held: Vec::new(),
            replay: VecDeque::new(),
            seq: 0,
            last_message_at: None,
            dropped_knock: None,
            dropped_silent: 0,
            log_failures: 0,
        })
    }

    /// Binds the socket and goes on with a session reopened after a restart (`ingest::resume`): its spooled
    /// volumes count as received (so `STOP` comes at the right volume and a resent one is a duplicate), decide
    /// the run's geometry as they did live, and go downstream first when the run starts.
    pub fn resume(
        settings: ReceiverSettings,
        recorder: Recorder,
        spooled: Vec<SpoolEntry>,
    ) -> Result<Receiver, IngestError> {
        let mut receiver = Receiver::bind(settings, recorder)?;
        let dir = receiver.recorder.dir().to_path_buf();
        let mut spool = std::fs::File::open(dir.join(SPOOL)).map_err(|source| RecordError::Io {
            dir: dir.clone(),
            context: "opening spool.bin".into(),
            source,
        })?;
        for entry in spooled {
            let h = &entry.header;
            let geometry = Geometry {
                dims: h.dims,
                mm_from_voxel: h.mm_from_voxel,
            };
            match receiver.geometry.check(&geometry, h.index) {
                Ok(Check::New) => {}
                Ok(Check::Duplicate) => continue,
                Err(e) => {
                    tracing::warn!("resuming {}: spooled {}", dir.display(), e.message);
                    continue;
                }
            }
            match receiver.geometry.admit(&geometry, h.index) {
                Admission::Run => receiver.replay.push_back(Replay::Spooled(entry)),
                Admission::Held => {
                    let volume = spooled_volume(&mut spool, &entry, &dir)?;
                    receiver.held.push((geometry, volume));
                }
                Admission::Confirmed { .. } => {
                    for (g, volume) in std::mem::take(&mut receiver.held) {
                        if g == geometry {
                            receiver.replay.push_back(Replay::Ready(volume));
                        }
                    }
                    receiver.replay.push_back(Replay::Spooled(entry));
                }
            }
        }
        tracing::info!(
            "resumed {}: {} volumes already received",
            dir.display(),
            receiver.geometry.accepted_count()
        );
        Ok(receiver)
    }

    /// Passes a resumed session's volumes downstream, in their order of arrival, before anything new.
    fn release_replay(&mut self, downstream: &mut Option<&Sender<Volume>>) {
        let Some(tx) = *downstream else {
            self.replay.clear();
            return;
        };
        let dir = self.recorder.dir().to_path_buf();
        let mut spool = std::fs::File::open(dir.join(SPOOL));
        while let Some(item) = self.replay.pop_front() {
            let volume = match (item, spool.as_mut()) {
                (Replay::Ready(volume), _) => volume,
                (Replay::Spooled(entry), Ok(file)) => match spooled_volume(file, &entry, &dir) {
                    Ok(volume) => volume,
                    Err(e) => {
                        tracing::error!(
                            "resuming: volume {} not analysed: {e}",
                            entry.header.index
                        );
                        continue;
                    }
                },
                (Replay::Spooled(entry), Err(e)) => {
                    tracing::error!("resuming: volume {} not analysed: {e}", entry.header.index);
                    continue;
                }
            };
            if tx.send(volume).is_err() {
                tracing::error!("the analysis has stopped: volumes are still received and recorded, no longer analysed");
                *downstream = None;
                self.replay.clear();
                return;
            }
        }
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
        self.release_replay(&mut downstream);
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
            self.drop_a_silent_peer()?;
            // a signal (Ctrl-C, SIGTERM) interrupts the wait: look at the stop flag again
            let ready = match self.socket.poll(zmq::POLLIN, WAKE_INTERVAL_MS) {
                Err(zmq::Error::EINTR) | Ok(0) => continue,
                other => other.map_err(zmq_err(format!("polling {}", self.endpoint)))?,
            };
            debug_assert!(ready > 0);
            let frames = match self.socket.recv_multipart(zmq::DONTWAIT) {
                Err(zmq::Error::EINTR | zmq::Error::EAGAIN) => continue,
                other => other.map_err(zmq_err(format!("receiving on {}", self.endpoint)))?,
            };
            let received_at = Instant::now();
            self.last_message_at = Some(received_at);
            for volume in self.handle(frames, received_at) {
                if let Some(tx) = downstream {
                    if tx.send(volume).is_err() {
                        tracing::error!("the analysis has stopped: volumes are still received and recorded, no longer analysed");
                        downstream = None;
                    }
                }
            }
            if self.run_complete() {
                tracing::info!(
                    "all {} expected volumes received",
                    self.geometry.accepted_count()
                );
                return Ok(EndReason::Complete);
            }
        }
    }

    /// The handshake deadline: when the latest peer connected more than `handshake_timeout_secs` ago and nothing
    /// has arrived since, it is silent (a hung old sender, a stray client) and, the socket being PAIR, it locks the
    /// scanner out. Closing the socket and binding afresh drops it; a real sender reconnects by itself.
    fn drop_a_silent_peer(&mut self) -> Result<(), IngestError> {
        let timeout = self.settings.handshake_timeout_secs;
        if timeout <= 0.0 {
            return Ok(());
        }
        let Some((knock_at, address)) = self.zap.peers.latest_allowed() else {
            return Ok(());
        };
        let heard_since = self.last_message_at.is_some_and(|m| m >= knock_at);
        if heard_since
            || self.dropped_knock == Some(knock_at)
            || knock_at.elapsed() < Duration::from_secs_f64(timeout)
        {
            return Ok(());
        }
        self.dropped_knock = Some(knock_at);
        self.dropped_silent += 1;
        tracing::warn!(
            "a peer ({}) connected {:.1} s ago and has sent nothing (receiver.handshake_timeout_secs = {timeout}): dropping it and binding {} afresh, so that the scanner can connect",
            if address.is_empty() { "local IPC" } else { &address },
            knock_at.elapsed().as_secs_f64(),
            self.endpoint
        );
        let fresh = zmq::Context::socket(&self.context, zmq::PAIR)
            .map_err(zmq_err("creating the PAIR socket"))?;
        // the old socket must release the address before the new one binds it
        let old = std::mem::replace(&mut self.socket, fresh);
        drop(old);
        let endpoint = self.endpoint.clone();
        let mut last_error = None;
        for _ in 0..50 {
            match open_socket(&self.context, &self.settings, &endpoint) {
                Ok(socket) => {
                    self.socket = socket;
                    return Ok(());
                }
                Err(e) => {
                    last_error = Some(e);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| IngestError::Zmq {
            context: format!("binding {endpoint} afresh"),
            source: zmq::Error::EADDRINUSE,
        }))
    }

    /// Finalises the session recording.
    pub fn finish(self, reason: EndReason, compress: bool) -> Result<Summary, IngestError> {
        let peers = PeerCounts {
            refused: self.zap.peers.refused(),
            dropped_silent: self.dropped_silent,
            log_lines_lost: self.log_failures,
        };
        let dir = self.recorder.close()?;
        let mut summary = super::finalise::finalise_dir(&dir, reason.as_str(), false, compress)?;
        summary.peers = Some(peers);
        super::finalise::write_summary(&dir, &summary)?;
        Ok(summary)
    }

    fn reply(&self, text: &str) {
        // DONTWAIT: a sender that died cannot block the receiver
        if let Err(e) = self.socket.send(text.as_bytes(), zmq::DONTWAIT) {
            tracing::warn!("could not send reply \"{text}\": {e} (sender gone?)");
        }
    }

    /// Appends a line to `messages.jsonl`. The line is a record of the message, not the message itself: when it
    /// cannot be written (a full disk) the run goes on, with one warning for the first failure and every 100th.
    fn log(&mut self, entry: &MessageLog) {
        if let Err(e) = self.recorder.log_message(entry) {
            self.log_failures += 1;
            if self.log_failures % 100 == 1 {
                tracing::warn!(
                    "{e} ({} message lines lost so far; the volumes themselves are in spool.bin)",
                    self.log_failures
                );
            }
        }
    }

    /// Handles one message; returns the volumes it lets go on to the analysis (none, this one, or those held
    /// back until this one confirmed their geometry).
    fn handle(&mut self, frames: Vec<Vec<u8>>, received_at: Instant) -> Vec<Volume> {
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
                self.log(&log);
                return Vec::new();
            }
            Message::Malformed(err) => Err(err),
            Message::Volume { header, data } => self.check_volume(header, data),
        };
        let (header, check) = match checked {
            Ok(h) => h,
            Err(err) => {
                self.reject(err, &mut log, received_at);
                return Vec::new();
            }
        };
        log.vol_idx = Some(header.index);
        if check == Check::Duplicate {
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
            self.log(&log);
            return Vec::new();
        }

        let mut data = frames.into_iter().nth(1).unwrap_or_default();
        if header.byte_order == ByteOrder::Big {
            swap_bytes_in_place(&mut data, header.dtype.itemsize());
        }
        if let Err(e) = self
            .recorder
            .append_volume(&header, &data, arrived_unix_secs)
        {
            // not recorded, so not acknowledged: the sender may send it again once there is room
            let err = ProtocolError {
                kind: Rejection::NotRecorded,
                message: format!("receiver cannot record volume {}: {e}", header.index),
            };
            tracing::error!("{}", err.message);
            self.reject(err, &mut log, received_at);
            return Vec::new();
        }
        let geometry = Geometry {
            dims: header.dims,
            mm_from_voxel: header.mm_from_voxel,
        };
        let admission = self.geometry.admit(&geometry, header.index);
        self.reply(&protocol::volume_reply(
            header.index,
            self.run_complete(),
            false,
        ));
        log.outcome = Outcome::Accepted;
        log.reply_latency_ms = received_at.elapsed().as_secs_f64() * 1e3;
        self.log(&log);
        tracing::debug!(
            "volume {} accepted ({} bytes, reply after {:.3} ms)",
            header.index,
            bytes,
            log.reply_latency_ms
        );
        let volume = Volume::from_c_order(
            header.index,
            header.dims,
            header.mm_from_voxel,
            header.tr_secs,
            header.dtype,
            &data,
            received_at,
        );
        match admission {
            Admission::Run => vec![volume],
            Admission::Held => {
                self.held.push((geometry, volume));
                Vec::new()
            }
            Admission::Confirmed { stray_indices } => {
                if !stray_indices.is_empty() {
                    tracing::warn!(
                        "the run's geometry is {:?} (two volumes agree): the volumes {stray_indices:?} of other shapes or affines are strays, kept in strays/ when the session is finalised and not analysed",
                        geometry.dims
                    );
                }
                // in arrival order, as every other volume goes on
                std::mem::take(&mut self.held)
                    .into_iter()
                    .filter(|(g, _)| g == &geometry)
                    .map(|(_, v)| v)
                    .chain(std::iter::once(volume))
                    .collect()
            }
        }
    }

    fn reject(&mut self, err: ProtocolError, log: &mut MessageLog, received_at: Instant) {
        self.reply(&err.reply());
        tracing::warn!(
            "message {} rejected: {}",
            self.seq,
            err.message.escape_debug()
        );
        log.rejection = Some(err.kind);
        log.error = Some(err.message);
        log.reply_latency_ms = received_at.elapsed().as_secs_f64() * 1e3;
        self.log(log);
    }

    fn run_complete(&self) -> bool {
        self.settings
            .expected_volumes
            .is_some_and(|expected| self.geometry.accepted_count() >= expected)
    }

    fn check_volume(
        &self,
        header: &[u8],
        data: &[u8],
    ) -> Result<(VolumeHeader, Check), ProtocolError> {
        // a known run length bounds the index more tightly, with its own rejection below
        let mut limits = self.settings.limits;
        if let Some(expected) = self.settings.expected_volumes {
            limits.max_volume_index = limits.max_volume_index.max(expected.saturating_sub(1));
        }
        let h = protocol::parse_header(header, limits)?;
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
        protocol::check_buffer(&h, data)?;
        let geometry = Geometry {
            dims: h.dims,
            mm_from_voxel: h.mm_from_voxel,
        };
        let check = self.geometry.check(&geometry, h.index)?;
        Ok((h, check))
    }
}
