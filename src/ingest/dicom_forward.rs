//! Receiving images over the DICOM network and sending each volume on as soon as its last frame or slice is in
//! (`hyper-rt send --dicom-listen`, `hyper-rt live --dicom-listen`): the Storage SCP of
//! [`crate::scanner::dicom_net`] feeding the Pyneal-protocol sender, through the same volume assembly as a
//! watched folder.
//!
//! Each C-STORE is answered with the outcome for its instance: success once its volume was acknowledged by the
//! receiver (or, for a slice, held until the rest of its volume comes), a failure status carrying the
//! receiver's error otherwise. So the console's own log shows which images did not make it, and why.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::ingest::sender::{self, ScannerSender, SendError, StreamReport};
use crate::scanner::assemble::{Placed, VolumeAssembler};
use crate::scanner::dicom_net::dimse::status;
use crate::scanner::dicom_net::{
    Received, ScpCounts, ScpError, ScpOptions, StoreOutcome, StoreScp,
};
use crate::stats::latency_line;

/// How often the stop flag and the idle limit are checked while no image comes.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long open associations get to finish once the run is over (the last C-STORE response going out).
const FINISH_GRACE: Duration = Duration::from_secs(2);
/// Received instances waiting for the sender.
const QUEUE: usize = 8;

/// How to listen (see [`forward_dicom`]).
#[derive(Debug, Clone)]
pub struct ListenOptions {
    pub scp: ScpOptions,
    /// The series to send; `None`: the first one an image arrives for.
    pub series: Option<i64>,
    /// Stop after sending this many volumes.
    pub max_volumes: Option<usize>,
    /// Stop after this many seconds without a new volume, once one came (0: never).
    pub idle_secs: f64,
    /// The TR sent with every volume instead of the images' `RepetitionTime`.
    pub tr_override_secs: Option<f64>,
}

/// What listening did.
#[derive(Debug, Default)]
pub struct ListenReport {
    pub stream: StreamReport,
    pub counts: ScpCounts,
    /// Instances answered with a failure after they were read (no TR, a repeated volume, refused by the receiver).
    pub failed: usize,
    /// For each volume sent: milliseconds from its last image's arrival to the receiver's reply.
    pub received_to_acknowledged_ms: Vec<f64>,
}

impl ListenReport {
    /// "image received -> volume acknowledged: p50 .. ms, p95 .. ms, max .. ms over N volumes", if any was sent.
    pub fn latency_summary(&self) -> Option<String> {
        latency_line(
            "image received -> volume acknowledged",
            &self.received_to_acknowledged_ms,
        )
    }
}

/// A storage node listening, and the instances it has read.
pub struct DicomNode {
    scp: StoreScp,
    arrivals: crossbeam_channel::Receiver<Received>,
}

impl DicomNode {
    /// Binds and starts serving associations (images are answered once [`forward_dicom`] takes them).
    pub fn start(options: &ScpOptions) -> Result<DicomNode, ScpError> {
        let (deliveries, arrivals) = crossbeam_channel::bounded::<Received>(QUEUE);
        let scp = StoreScp::start(options.clone(), deliveries)?;
        Ok(DicomNode { scp, arrivals })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.scp.local_addr()
    }
}

/// Sends each complete volume of the followed series that `node` receives to `sender`, until the receiver says
/// STOP, `max_volumes` were sent, `idle_secs` passed without a volume, or `stop` is set. `progress` is called
/// after each reply.
pub fn forward_dicom(
    node: DicomNode,
    options: &ListenOptions,
    sender: &ScannerSender,
    stop: &AtomicBool,
    mut progress: impl FnMut(usize, &str),
) -> Result<ListenReport, SendError> {
    let DicomNode { scp, arrivals } = node;
    let mut assembler = VolumeAssembler::<Instant>::new(options.series);
    let mut report = ListenReport::default();
    let mut notes_said = false;
    let mut other_series_said = HashSet::new();
    let mut last_volume_at: Option<Instant> = None;
    let idle_limit = (options.idle_secs > 0.0).then(|| Duration::from_secs_f64(options.idle_secs));
    let done = |report: &ListenReport| {
        report.stream.stopped_by_receiver
            || options.max_volumes.is_some_and(|n| report.stream.sent >= n)
    };
    while !stop.load(Ordering::Relaxed) && !done(&report) {
        if idle_limit
            .zip(last_volume_at)
            .is_some_and(|(limit, at)| at.elapsed() >= limit)
        {
            tracing::info!("no new volume for {} s: stopping", options.idle_secs);
            break;
        }
        let received = match arrivals.recv_timeout(CHECK_INTERVAL) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let Received {
            file,
            received_at,
            reply,
        } = received;
        if !file.notes.is_empty() && !notes_said {
            file.notes.iter().for_each(|n| tracing::warn!("{n}"));
            notes_said = true;
        }
        let mut placed: Vec<Placed<Instant>> = file
            .volumes
            .into_iter()
            .map(|v| assembler.add_volume(v, received_at))
            .collect();
        if let Some(slice) = file.slice {
            placed.push(assembler.add_slice(slice, received_at));
        }
        let mut outcome = StoreOutcome::Stored;
        // the association logs each failure with the instance and the peer
        let mut failed = |comment: String| {
            if outcome == StoreOutcome::Stored {
                outcome = StoreOutcome::Failed {
                    status: status::PROCESSING_FAILURE,
                    comment,
                };
            }
        };
        for piece in placed {
            let (volume, last_image_at) = match piece {
                Placed::Complete(volume, at) => (volume, at),
                Placed::Held => continue,
                Placed::OtherSeries(series) => {
                    if other_series_said.insert(series) {
                        tracing::info!(
                            "images of series {series} are passed over: following series {}",
                            assembler.series().unwrap_or_default()
                        );
                    }
                    continue;
                }
                Placed::Refused(message) => {
                    failed(message);
                    continue;
                }
            };
            let Some(tr_secs) = options.tr_override_secs.or(volume.tr_secs) else {
                failed(format!("volume {} gives no TR: give --tr", volume.index));
                continue;
            };
            let wire = sender::exported_wire_volume(&volume, tr_secs);
            let t0 = Instant::now();
            let answer = sender.send_volume(&wire)?;
            report
                .stream
                .round_trip_ms
                .push(t0.elapsed().as_secs_f64() * 1e3);
            report.stream.sent += 1;
            report
                .received_to_acknowledged_ms
                .push(last_image_at.elapsed().as_secs_f64() * 1e3);
            last_volume_at = Some(Instant::now());
            progress(volume.index, &answer);
            if answer.starts_with("error:") {
                report.stream.error_replies += 1;
                failed(format!(
                    "the receiver refused volume {}: {answer}",
                    volume.index
                ));
            }
            if answer.contains("STOP") {
                report.stream.stopped_by_receiver = true;
            }
        }
        if outcome != StoreOutcome::Stored {
            report.failed += 1;
        }
        let _ = reply.send(outcome); // the association may have timed out meanwhile
    }
    let held = assembler.held_paths();
    if let Some(first) = held.first() {
        tracing::warn!(
            "{} slices of volumes still missing slices were not sent (first: {})",
            held.len(),
            first.display()
        );
    }
    drop(arrivals); // an image arriving now is answered with a failure at once
    report.counts = scp.finish(FINISH_GRACE);
    Ok(report)
}
