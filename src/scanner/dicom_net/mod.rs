//! The DICOM network receiver: a Storage SCP (C-ECHO and C-STORE over the DICOM upper layer, through dicom-ul)
//! that a scanner console pushes its images to, instead of exporting them into a shared folder.
//!
//! One thread accepts connections; each association is served on a thread of its own (at most
//! [`MAX_ASSOCIATIONS`] at once; one more is rejected as *local limit exceeded*). An association is refused when
//! the called AE title is not this node's or the calling one is not in `allow_ae` (when that list is given).
//! Every presentation context is accepted for its abstract syntax, so that an image of an unsupported SOP class
//! gets a C-STORE failure status naming it rather than a silent negotiation failure; only transfer syntaxes the
//! readers decode (explicit and implicit VR little endian) are accepted, and a context proposing none of them is
//! refused at negotiation with a log line naming it.
//!
//! A received data set is given a file meta group ([`instance`]), optionally kept as a file (`keep_dir`), read by
//! the same readers as an export folder, and handed, as a [`Received`], to whoever turns volumes into a stream
//! (`ingest::dicom_forward`). The C-STORE response waits for that consumer's [`StoreOutcome`], so success means
//! the volume was taken (for a slice: held until its volume is complete). Every failure is a proper DIMSE
//! status, a log line naming the peer, the instance and why, and a count in [`ScpCounts`]; the association and
//! the run go on.
//!
//! Files: [`dimse`] (command sets), [`instance`] (the Part-10 wrapping, the SOP classes read), [`association`]
//! (serving one association).

pub mod association;
pub mod dimse;
pub mod instance;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;

use crate::scanner::export::ExportFile;

/// Associations served at once; one more is rejected (transient, local limit exceeded).
pub const MAX_ASSOCIATIONS: usize = 8;
/// The largest data set taken (a whole-brain multi-frame volume is a few MB); a larger one is drained and
/// refused with *out of resources*, so memory stays bounded whatever a peer sends.
pub const MAX_DATA_SET_BYTES: usize = 128 << 20;

/// How the receiver is set up.
#[derive(Debug, Clone)]
pub struct ScpOptions {
    pub bind: SocketAddr,
    /// This node's AE title: associations must call it.
    pub ae_title: String,
    /// Calling AE titles accepted; empty: any.
    pub allow_ae: Vec<String>,
    /// Keep each received instance here as `<SOPInstanceUID>.dcm`.
    pub keep_dir: Option<PathBuf>,
    /// Seconds an association may stay silent before it is aborted.
    pub idle_timeout_secs: f64,
}

/// What the consumer made of a received instance; the C-STORE response carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOutcome {
    Stored,
    Failed { status: u16, comment: String },
}

/// A received instance, read, waiting for its consumer's outcome.
#[derive(Debug)]
pub struct Received {
    /// What the readers made of it (errors in it name the kept file, else `dicom://AE@address/SOPInstanceUID`).
    pub file: ExportFile,
    pub received_at: Instant,
    /// Where the outcome goes (the association waits on it).
    pub reply: Sender<StoreOutcome>,
}

/// Counts of what the receiver did, for the log and the summary.
#[derive(Debug, Default)]
pub struct ScpCounters {
    pub associations: AtomicU64,
    pub associations_refused: AtomicU64,
    pub contexts_refused: AtomicU64,
    pub echoes: AtomicU64,
    pub stored: AtomicU64,
    pub unsupported_sop_class: AtomicU64,
    pub unreadable: AtomicU64,
    pub not_taken: AtomicU64,
    pub unrecognized_commands: AtomicU64,
    pub too_large: AtomicU64,
    pub keep_failed: AtomicU64,
}

/// A snapshot of [`ScpCounters`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ScpCounts {
    pub associations: u64,
    pub associations_refused: u64,
    pub contexts_refused: u64,
    pub echoes: u64,
    pub stored: u64,
    pub unsupported_sop_class: u64,
    pub unreadable: u64,
    pub not_taken: u64,
    pub unrecognized_commands: u64,
    pub too_large: u64,
    pub keep_failed: u64,
}

impl ScpCounters {
    pub fn snapshot(&self) -> ScpCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ScpCounts {
            associations: get(&self.associations),
            associations_refused: get(&self.associations_refused),
            contexts_refused: get(&self.contexts_refused),
            echoes: get(&self.echoes),
            stored: get(&self.stored),
            unsupported_sop_class: get(&self.unsupported_sop_class),
            unreadable: get(&self.unreadable),
            not_taken: get(&self.not_taken),
            unrecognized_commands: get(&self.unrecognized_commands),
            too_large: get(&self.too_large),
            keep_failed: get(&self.keep_failed),
        }
    }
}

/// The address `--dicom-listen` names: `PORT` (loopback only), or `HOST:PORT` (`0.0.0.0:PORT`: every interface).
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?} is neither a port nor HOST:PORT ({e})"))?
        .next()
        .ok_or_else(|| format!("{text:?} names no address"))
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum ScpError {
    #[error("cannot listen for DICOM on {address} (--dicom-listen): {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("--dicom-store {}: {source}", dir.display())]
    KeepDir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// A running Storage SCP; stopped when dropped.
pub struct StoreScp {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<ScpCounters>,
    /// Associations being served.
    active: Arc<AtomicUsize>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl StoreScp {
    /// Binds `options.bind` and serves associations until stopped, handing each instance read to `deliveries`.
    pub fn start(options: ScpOptions, deliveries: Sender<Received>) -> Result<StoreScp, ScpError> {
        if let Some(dir) = &options.keep_dir {
            std::fs::create_dir_all(dir).map_err(|source| ScpError::KeepDir {
                dir: dir.clone(),
                source,
            })?;
        }
        let listener = TcpListener::bind(options.bind).map_err(|source| ScpError::Bind {
            address: options.bind,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| ScpError::Bind {
            address: options.bind,
            source,
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ScpCounters::default());
        let active = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (stop, counters, active) = (stop.clone(), counters.clone(), active.clone());
            let options = Arc::new(options);
            std::thread::Builder::new()
                .name("dicom-accept".into())
                .spawn(move || accept_loop(listener, options, counters, deliveries, stop, active))
                .map_err(|source| ScpError::Bind {
                    address: local_addr,
                    source,
                })?
        };
        Ok(StoreScp {
            local_addr,
            stop,
            counters,
            active,
            acceptor: Some(acceptor),
        })
    }

    /// The address bound (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops taking associations, gives those open up to `grace` to finish (so the last C-STORE response goes
    /// out before the process ends), and returns the counts.
    pub fn finish(mut self, grace: std::time::Duration) -> ScpCounts {
        self.stop_accepting();
        let deadline = Instant::now() + grace;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        self.counters.snapshot()
    }

    fn stop_accepting(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // wake the blocking accept
        let _ = TcpStream::connect(self.local_addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        // associations in flight finish on their own (their consumer is gone, so they answer with a failure
        // status)
        self.stop_accepting();
    }
}

fn accept_loop(
    listener: TcpListener,
    options: Arc<ScpOptions>,
    counters: Arc<ScpCounters>,
    deliveries: Sender<Received>,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
) {
    for connection in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (socket, peer) = match connection.and_then(|s| s.peer_addr().map(|a| (s, a))) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("DICOM listener on {}: accept failed: {e}", options.bind);
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= MAX_ASSOCIATIONS {
            tracing::warn!(
                "DICOM association from {peer} rejected: {MAX_ASSOCIATIONS} associations are open already"
            );
            bump(&counters.associations_refused);
            association::reject_busy(socket);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let served = {
            let (options, counters, deliveries, active) = (
                options.clone(),
                counters.clone(),
                deliveries.clone(),
                active.clone(),
            );
            std::thread::Builder::new()
                .name(format!("dicom-{peer}"))
                .spawn(move || {
                    association::serve(socket, peer, &options, &counters, &deliveries);
                    active.fetch_sub(1, Ordering::SeqCst);
                })
        };
        if let Err(e) = served {
            active.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("DICOM association from {peer}: no thread to serve it: {e}");
        }
    }
}
