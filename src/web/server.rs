//! The console's HTTP routes (all `GET`: nothing here changes the session) and the event stream every page listens
//! to. Each browser's stream holds only the newest frame and the newest summary (a `watch` per browser), so a slow
//! browser skips frames instead of queueing them, and no browser waits on another.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use tokio::sync::watch;

use super::access::{Access, TOKEN_COOKIE};
use super::assets;
use super::hub::{EncodedFrame, Hub, WebCounters};

/// What every handler sees.
#[derive(Clone)]
pub struct Console {
    pub hub: Arc<Hub>,
    pub access: Arc<Access>,
}

/// The routes, behind the token check.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/", get(|| async { html(assets::CONSOLE_HTML) }))
        .route(
            "/participant",
            get(|| async { html(assets::PARTICIPANT_HTML) }),
        )
        .route("/feedback", get(|| async { html(assets::FEEDBACK_HTML) }))
        .route("/assets/{name}", get(asset))
        .route("/events", get(events))
        .route("/api/summary", get(summary))
        .route("/api/trials", get(trials))
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

fn html(body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::asset(&name) {
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("no asset {name}")).into_response(),
    }
}

async fn summary(State(console): State<Console>) -> Response {
    json(console.hub.summary().to_string())
}

async fn trials(State(console): State<Console>) -> Response {
    json(console.hub.trials_json())
}

/// Refuses a request without the token (where one is needed); keeps a token that came in the URL as a cookie, so
/// that the page's own requests and a reload carry it; adds the headers that keep the pages to themselves.
async fn guard(State(console): State<Console>, request: Request, next: Next) -> Response {
    let (allowed, token_in_url) = {
        let header_text =
            |name: header::HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
        let query = request.uri().query();
        let allowed = console.access.allows(
            query,
            header_text(header::AUTHORIZATION),
            header_text(header::COOKIE),
        );
        (allowed, query.is_some_and(|q| q.contains("token=")))
    };
    if !allowed {
        WebCounters::add(&console.hub.counters.requests_refused);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CACHE_CONTROL, "no-store")],
            "this hyper-rt console needs its token: open the address printed when the session started \
             (it ends in ?token=...)\n",
        )
            .into_response();
    }
    let keep_token = match console.access.as_ref() {
        Access::Token(token) if token_in_url => HeaderValue::from_str(&format!(
            "{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        ))
        .ok(),
        _ => None,
    };
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    if let Some(cookie) = keep_token {
        headers.insert(header::SET_COOKIE, cookie);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// `/events`: server-sent events `summary` (the session's state), `recent` (the frames drawn before the browser
/// connected, oldest first) and `frame` (each frame as it is drawn), with a comment every 15 s so that a browser
/// that went away is noticed.
async fn events(
    State(console): State<Console>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let subscription = Subscription::new(console.hub);
    let stream = futures_util::stream::unfold(subscription, |mut s| async move {
        s.next_event().await.map(|event| (Ok(event), s))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// One browser's view of the hub: the recent frames it is sent first, then the newest of each kind.
struct Subscription {
    hub: Arc<Hub>,
    history: VecDeque<EncodedFrame>,
    frames: watch::Receiver<Option<EncodedFrame>>,
    summary: watch::Receiver<Arc<str>>,
    ended: watch::Receiver<bool>,
    last_seq: u64,
    summary_due: bool,
    finished: bool,
}

impl Subscription {
    fn new(hub: Arc<Hub>) -> Subscription {
        hub.counters
            .clients_connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        WebCounters::add(&hub.counters.clients_served);
        let mut frames = hub.subscribe_frames();
        frames.borrow_and_update();
        Subscription {
            history: hub.recent_frames().into(),
            frames,
            summary: hub.subscribe_summary(),
            ended: hub.subscribe_ended(),
            hub,
            last_seq: 0,
            summary_due: true,
            finished: false,
        }
    }

    fn summary_event(&mut self) -> Event {
        let json = self.summary.borrow_and_update().clone();
        Event::default().event("summary").data(&*json)
    }

    /// A frame: `frame` as it is drawn, `recent` for those drawn before this browser connected.
    fn frame_event(&mut self, frame: &EncodedFrame, kind: &'static str) -> Event {
        self.last_seq = frame.seq;
        Event::default().event(kind).data(&*frame.json)
    }

    /// The next event for this browser; `None` once the session has ended and its last summary was sent.
    async fn next_event(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        if self.summary_due {
            self.summary_due = false;
            return Some(self.summary_event());
        }
        while let Some(frame) = self.history.pop_front() {
            if frame.seq > self.last_seq {
                return Some(self.frame_event(&frame, "recent"));
            }
        }
        /// What woke the stream.
        enum Woken {
            Frame,
            Summary,
            Ended,
            Closed,
        }
        loop {
            let woken = tokio::select! {
                biased;
                changed = self.frames.changed() => match changed {
                    Ok(()) => Woken::Frame,
                    Err(_) => Woken::Closed,
                },
                changed = self.summary.changed() => match changed {
                    Ok(()) => Woken::Summary,
                    Err(_) => Woken::Closed,
                },
                _ = self.ended.wait_for(|e| *e) => Woken::Ended,
            };
            match woken {
                Woken::Frame => {
                    let newest = self.frames.borrow_and_update().clone();
                    if let Some(frame) = newest.filter(|f| f.seq > self.last_seq) {
                        return Some(self.frame_event(&frame, "frame"));
                    }
                }
                Woken::Summary => return Some(self.summary_event()),
                // the session is over (or the console going away): the final summary, then the end
                Woken::Ended => {
                    self.finished = true;
                    return Some(self.summary_event());
                }
                Woken::Closed => return None,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub
            .counters
            .clients_connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
