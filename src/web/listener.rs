//! The console's listening socket, bounded: at most [`MAX_CONNECTIONS`] connections at once (more wait in the
//! kernel's accept queue), and each connection closed when it stops moving: a browser that stops reading for
//! [`WRITE_STALL`], one that sends no request within [`FIRST_REQUEST`], or an idle one after [`IDLE`]. A stalled
//! browser therefore holds one socket's buffers for a few seconds, never the pipeline or another browser.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::hub::{Hub, WebCounters};

/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// A connection whose writes make no progress this long is closed (the browser stopped reading).
pub const WRITE_STALL: Duration = Duration::from_secs(10);
/// A connection must send its first bytes this soon after it is accepted.
pub const FIRST_REQUEST: Duration = Duration::from_secs(10);
/// A connection on which nothing moved either way this long is closed (event streams send a comment every 15 s).
pub const IDLE: Duration = Duration::from_secs(60);
/// How long after a failed accept (out of file descriptors, say) the next is tried.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The bound listener, handing out [`Guarded`] connections.
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    hub: Arc<Hub>,
    failed_accepts: u64,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, hub: Arc<Hub>) -> LimitedListener {
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            hub,
            failed_accepts: 0,
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            // the semaphore is never closed; should it be, accept nothing more
            return std::future::pending().await;
        };
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    // frames are sent whole: no reason to wait for more bytes
                    let _ = stream.set_nodelay(true);
                    return (Guarded::new(stream, slot, self.hub.clone()), peer);
                }
                Err(e) => {
                    self.failed_accepts += 1;
                    if self.failed_accepts == 1 || self.failed_accepts.is_multiple_of(100) {
                        let at = self
                            .inner
                            .local_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        tracing::warn!(
                            "web console on {at}: accepting a connection failed ({} so far): {e}",
                            self.failed_accepts
                        );
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One connection, with its slot and the clocks that close it when it stalls.
pub struct Guarded {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    hub: Arc<Hub>,
    read_any: bool,
    last_progress: Instant,
    write_pending_since: Option<Instant>,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, hub: Arc<Hub>) -> Guarded {
        let now = Instant::now();
        Guarded {
            stream,
            _slot: slot,
            hub,
            read_any: false,
            last_progress: now,
            write_pending_since: None,
            read_timer: Box::pin(tokio::time::sleep_until(now + FIRST_REQUEST)),
            write_timer: Box::pin(tokio::time::sleep_until(now + WRITE_STALL)),
        }
    }

    /// Arms `timer` for `deadline`; an error once it has passed.
    fn expired(
        timer: &mut Pin<Box<Sleep>>,
        deadline: Instant,
        cx: &mut Context<'_>,
        hub: &Hub,
        why: &str,
    ) -> Option<io::Error> {
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                WebCounters::add(&hub.counters.connections_dropped_stalled);
                Some(io::Error::new(io::ErrorKind::TimedOut, why.to_string()))
            }
            Poll::Pending => None,
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.read_any = true;
                    this.last_progress = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let (wait, why) = if this.read_any {
                    (IDLE, "the connection was idle")
                } else {
                    (FIRST_REQUEST, "no request came")
                };
                let deadline = this.last_progress + wait;
                match Self::expired(&mut this.read_timer, deadline, cx, &this.hub, why) {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                this.write_pending_since = None;
                if n > 0 {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let since = *this.write_pending_since.get_or_insert_with(Instant::now);
                let why = "the browser stopped reading";
                match Self::expired(
                    &mut this.write_timer,
                    since + WRITE_STALL,
                    cx,
                    &this.hub,
                    why,
                ) {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Pending,
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
