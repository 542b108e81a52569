//! The browser console: `live`, `replay` and `demo` serve the session over HTTP for the operator in the control
//! room (`/`), the stimulus computer's browser (`/participant`, the reconstruction alone; `/feedback`, the
//! neurofeedback bar) and anyone with the address (`/api/summary`, `/api/trials`), with updates pushed as
//! server-sent events. The pipeline only ever hands the console its newest frame and trial (never waiting), a
//! thread of the console's own encodes frames as PNG, and each browser is sent the newest state: a slow, stalled or
//! hostile browser costs its own connection, never a stage or another browser. Bound to loopback nothing is asked;
//! bound elsewhere every request needs the session's token (see [`access`]). Everything runs on the console's own
//! tokio runtime, two worker threads.

pub mod access;
mod assets;
mod encode;
pub mod hub;
pub mod listener;
mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::display::Frame;
pub use access::{Access, BadToken};
use hub::{Hub, OfferedFrame};

/// How often the summary is refreshed and, when it changed, pushed.
pub const SUMMARY_INTERVAL: Duration = Duration::from_millis(500);

/// How long the console waits at the end for browsers to take their last events before it closes.
const CLOSING_GRACE: Duration = Duration::from_secs(2);

/// Gives the session's summary (as `/api/summary` serves it) whenever the console asks.
pub type SummarySource = Box<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("web console: cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("web console: {0}")]
    Start(std::io::Error),
    #[error(transparent)]
    Token(#[from] BadToken),
}

/// The pipeline's handle: hands over frames and trials, never waiting on a browser.
#[derive(Clone)]
pub struct WebFeed {
    hub: Arc<Hub>,
}

impl WebFeed {
    /// The frame just drawn (a copy; the newest replaces one the encoder has not taken yet).
    pub fn offer_frame(&self, frame: &Frame) {
        let drawn_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        self.hub.offer_frame(OfferedFrame {
            frame: frame.clone(),
            drawn_unix_ms,
        });
    }

    /// A decoded trial, for `/api/trials`.
    pub fn add_trial(&self, trial: serde_json::Value) {
        self.hub.add_trial(trial);
    }
}

/// The running console.
pub struct WebConsole {
    hub: Arc<Hub>,
    /// The address to open, with the token when one is needed.
    pub url: String,
    pub address: SocketAddr,
    encoder: Option<std::thread::JoinHandle<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl WebConsole {
    /// Listens on `address` (port 0: any free one) and serves until [`WebConsole::finish`]; `token` is the
    /// configured token for a non-loopback address (none: a random one).
    pub fn start(
        address: SocketAddr,
        token: Option<&str>,
        summary: SummarySource,
    ) -> Result<WebConsole, WebError> {
        let access = Access::for_address(&address, token)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("web-console")
            .enable_all()
            .build()
            .map_err(WebError::Start)?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(address))
            .map_err(|source| WebError::Bind { address, source })?;
        let bound = listener.local_addr().map_err(WebError::Start)?;
        let url = format!("http://{}/{}", url_host(&bound), access.url_query());
        let hub = Hub::new();
        // a browser that connects at once gets the session's summary, never an empty one
        hub.publish_summary(summary());
        let encoder = encode::spawn(hub.clone()).map_err(WebError::Start)?;
        let console = server::Console {
            hub: hub.clone(),
            access: Arc::new(access),
        };
        let server_hub = hub.clone();
        let server = std::thread::Builder::new()
            .name("web-console".into())
            .spawn(move || {
                runtime.block_on(serve(server_hub, listener, console, summary));
                runtime.shutdown_timeout(Duration::from_millis(200));
            })
            .map_err(WebError::Start)?;
        Ok(WebConsole {
            hub,
            url,
            address: bound,
            encoder: Some(encoder),
            server: Some(server),
        })
    }

    pub fn feed(&self) -> WebFeed {
        WebFeed {
            hub: self.hub.clone(),
        }
    }

    /// Ends the console: the last frame offered is encoded and sent, then `final_summary`, and the streams close.
    pub fn finish(mut self, final_summary: serde_json::Value) {
        self.hub.close_frames();
        if let Some(encoder) = self.encoder.take() {
            let _ = encoder.join();
        }
        self.hub.publish_summary(final_summary);
        self.hub.end();
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

impl Drop for WebConsole {
    fn drop(&mut self) {
        // not finished (an early error): close without waiting
        self.hub.end();
    }
}

/// Serves until the hub ends, refreshing the summary meanwhile; then gives the browsers [`CLOSING_GRACE`] to take
/// their last events.
async fn serve(
    hub: Arc<Hub>,
    listener: tokio::net::TcpListener,
    console: server::Console,
    summary: SummarySource,
) {
    let mut ended = hub.subscribe_ended();
    let shutdown_signal = {
        let mut ended = hub.subscribe_ended();
        async move {
            let _ = ended.wait_for(|e| *e).await;
        }
    };
    let app = server::router(console);
    let limited = listener::LimitedListener::new(listener, hub.clone());
    let served = tokio::spawn(async move {
        axum::serve(limited, app)
            .with_graceful_shutdown(shutdown_signal)
            .await
    });
    let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
    loop {
        tokio::select! {
            _ = ended.wait_for(|e| *e) => break,
            _ = tick.tick() => hub.publish_summary(summary()),
        }
    }
    let _ = tokio::time::timeout(CLOSING_GRACE, served).await;
}

/// The host to print in the URL: the machine's name when bound to every interface.
fn url_host(bound: &SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let mut name = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let end = name.iter().position(|&b| b == 0).unwrap_or(0);
    match std::str::from_utf8(&name[..end]) {
        Ok(host) if ok && !host.is_empty() => format!("{host}:{}", bound.port()),
        _ => bound.to_string(),
    }
}
