//! The scanner side: streams volumes exactly as Pyneal Scanner does (PAIR socket that connects, handshake echo,
//! two-frame volumes, lock-step replies, stop on `STOP`). Used by `hyper-rt send`, by the simulator's
//! `--stream`, by the demo and by the intake benchmark.

use std::time::{Duration, Instant};

use super::protocol;
use crate::nifti::NiftiImage;
use crate::volume::{x_fastest_to_c_order, Affine, Dtype, ExportedVolume};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("ZeroMQ {context}: {source}")]
    Zmq { context: String, source: zmq::Error },
    #[error("no {what} from {endpoint} within {secs} s (is the receiver running?)")]
    Timeout {
        what: String,
        endpoint: String,
        secs: f64,
    },
    #[error("handshake failed: sent {sent:?}, got back {got:?}")]
    Handshake { sent: String, got: String },
}

fn zmq_err(context: impl Into<String>) -> impl FnOnce(zmq::Error) -> SendError {
    let context = context.into();
    move |source| SendError::Zmq { context, source }
}

/// A connected, handshaken sender.
pub struct ScannerSender {
    _context: zmq::Context,
    socket: zmq::Socket,
    endpoint: String,
    handshake: String,
    reply_timeout_secs: f64,
}

/// How often the handshake is re-sent while no echo has come back. libzmq's PAIR socket drops a connection
/// that arrives before the previous peer's is torn down (a sender restarted within milliseconds), and with it
/// the first handshake; re-sending makes the restart reliable. Extra echoes are skipped.
const HANDSHAKE_RESEND_MS: i64 = 500;

/// One volume ready for the wire.
pub struct WireVolume {
    pub index: usize,
    pub dtype: Dtype,
    pub dims: [usize; 3],
    pub mm_from_voxel: Affine,
    pub tr_secs: f64,
    /// BIDS `SliceTiming` (seconds), sent as the header's `sliceTiming` when known.
    pub slice_timing_secs: Option<Vec<f64>>,
    /// Little-endian, C order (z fastest).
    pub c_order_le: Vec<u8>,
}

impl ScannerSender {
    /// Connects and performs the handshake (`reply_timeout_secs` 0 waits forever).
    pub fn connect(
        endpoint: &str,
        handshake: &str,
        reply_timeout_secs: f64,
    ) -> Result<ScannerSender, SendError> {
        let context = zmq::Context::new();
        let socket = context
            .socket(zmq::PAIR)
            .map_err(zmq_err("creating the PAIR socket"))?;
        socket.set_linger(0).map_err(zmq_err("setting linger"))?;
        socket
            .connect(endpoint)
            .map_err(zmq_err(format!("connecting to {endpoint}")))?;
        let sender = ScannerSender {
            _context: context,
            socket,
            endpoint: endpoint.to_string(),
            handshake: handshake.to_string(),
            reply_timeout_secs,
        };
        let started = Instant::now();
        loop {
            sender
                .socket
                .send(handshake.as_bytes(), 0)
                .map_err(zmq_err("sending the handshake"))?;
            let ready = sender
                .socket
                .poll(zmq::POLLIN, HANDSHAKE_RESEND_MS)
                .map_err(zmq_err("polling for the echo"))?;
            if ready > 0 {
                break;
            }
            if reply_timeout_secs > 0.0 && started.elapsed().as_secs_f64() >= reply_timeout_secs {
                return Err(SendError::Timeout {
                    what: "handshake echo".into(),
                    endpoint: endpoint.to_string(),
                    secs: reply_timeout_secs,
                });
            }
        }
        let echo = sender.wait_reply("handshake echo")?;
        if echo != handshake {
            return Err(SendError::Handshake {
                sent: handshake.to_string(),
                got: echo,
            });
        }
        Ok(sender)
    }

    fn wait_reply(&self, what: &str) -> Result<String, SendError> {
        if self.reply_timeout_secs > 0.0 {
            let ready = self
                .socket
                .poll(
                    zmq::POLLIN,
                    (self.reply_timeout_secs * 1000.0).ceil() as i64,
                )
                .map_err(zmq_err("polling for a reply"))?;
            if ready == 0 {
                return Err(SendError::Timeout {
                    what: what.to_string(),
                    endpoint: self.endpoint.clone(),
                    secs: self.reply_timeout_secs,
                });
            }
        }
        let bytes = self
            .socket
            .recv_bytes(0)
            .map_err(zmq_err("receiving a reply"))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Sends one volume and returns the receiver's reply.
    pub fn send_volume(&self, v: &WireVolume) -> Result<String, SendError> {
        let header = protocol::header_json(
            v.index,
            v.dtype,
            v.dims,
            &v.mm_from_voxel,
            v.tr_secs,
            v.slice_timing_secs.as_deref(),
        );
        self.socket
            .send(header.as_bytes(), zmq::SNDMORE)
            .map_err(zmq_err("sending a header"))?;
        self.socket
            .send(&v.c_order_le[..], 0)
            .map_err(zmq_err("sending a volume buffer"))?;
        loop {
            let reply = self.wait_reply(&format!("reply to volume {}", v.index))?;
            if reply != self.handshake {
                return Ok(reply); // an echo of a re-sent handshake is not a reply
            }
        }
    }
}

impl WireVolume {
    /// A volume for the wire from little-endian voxel bytes stored x fastest (converted to the wire's C order).
    pub fn from_x_fastest(
        index: usize,
        dtype: Dtype,
        dims: [usize; 3],
        mm_from_voxel: Affine,
        tr_secs: f64,
        x_fastest_le: &[u8],
    ) -> WireVolume {
        let c_order_le = x_fastest_to_c_order(x_fastest_le, dims, dtype.itemsize());
        WireVolume {
            index,
            dtype,
            dims,
            mm_from_voxel,
            tr_secs,
            slice_timing_secs: None,
            c_order_le,
        }
    }
}

/// A volume read from a scanner's export, in its wire form, sent with `tr_secs`.
pub fn exported_wire_volume(volume: &ExportedVolume, tr_secs: f64) -> WireVolume {
    let mut wire = WireVolume::from_x_fastest(
        volume.index,
        volume.dtype,
        volume.dims,
        volume.mm_from_voxel,
        tr_secs,
        &volume.voxel_bytes,
    );
    wire.slice_timing_secs = volume.slice_timing_secs.clone();
    wire
}

/// The values a NIfTI volume is sent with: native type when unscaled; with scaling, float64 computed as
/// nibabel's `get_fdata` does (`raw * slope + inter` in double precision).
pub fn nifti_wire_volume(img: &NiftiImage, t: usize, tr_secs: f64) -> WireVolume {
    let (dtype, x_fastest) = match img.scaling {
        None => (img.dtype, img.volume_bytes(t).to_vec()),
        Some(_) => (
            Dtype::Float64,
            img.volume_values(t)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    };
    WireVolume::from_x_fastest(t, dtype, img.dims, img.mm_from_voxel, tr_secs, &x_fastest)
}

/// When each volume leaves: every `tr_secs / speed` seconds from the first, or at once for speed = infinity.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub tr_secs: f64,
    pub speed: f64,
}

impl Pacing {
    /// Waits until volume number `n` (counted from the first one sent) is due.
    pub fn wait_for(&self, started: Instant, n: usize) {
        if !self.speed.is_finite() {
            return;
        }
        let due = started + Duration::from_secs_f64(n as f64 * self.tr_secs / self.speed);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// Counts of a finished stream.
#[derive(Debug, Default, Clone)]
pub struct StreamReport {
    pub sent: usize,
    pub error_replies: usize,
    pub stopped_by_receiver: bool,
    pub round_trip_ms: Vec<f64>,
}

/// Streams volumes in order, paced, calling `progress` after each reply. Stops early on `STOP`.
pub fn stream<I>(
    sender: &ScannerSender,
    volumes: I,
    pacing: Pacing,
    mut progress: impl FnMut(usize, &str),
) -> Result<StreamReport, SendError>
where
    I: IntoIterator<Item = WireVolume>,
{
    let mut report = StreamReport::default();
    let started = Instant::now();
    for (n, volume) in volumes.into_iter().enumerate() {
        pacing.wait_for(started, n);
        let t0 = Instant::now();
        let reply = sender.send_volume(&volume)?;
        report.round_trip_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        report.sent += 1;
        if reply.starts_with("error:") {
            report.error_replies += 1;
            tracing::warn!("receiver rejected volume {}: {}", volume.index, reply);
        }
        progress(volume.index, &reply);
        if reply.contains("STOP") {
            report.stopped_by_receiver = true;
            break;
        }
    }
    Ok(report)
}
