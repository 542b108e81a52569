//! Outputs for the stimulus computer: a Pyneal-compatible results server (docs/protocols.md section 2: one request
//! per TCP connection, the volume index as ASCII digits, one JSON line back) that serves many clients at once so
//! a slow or dead client delays nobody, in bounded memory (at most 512 connections served at once, the latest
//! [`RESULTS_KEPT`] volumes' results kept), and a ZeroMQ PUB stream of one JSON message per volume and per trial.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Results by volume index, shared by the pipeline (writer) and the server (reader).
pub type ResultsStore = Arc<Mutex<RecentResults>>;

/// How many volumes' results the server keeps: the latest 4,096 (a run of over 30 minutes at a TR of 0.5 s),
/// so that a session of any length holds bounded memory. Clients ask for the volume just acquired.
pub const RESULTS_KEPT: usize = 4096;

/// The latest [`RESULTS_KEPT`] volumes' results by index; the oldest is forgotten first.
#[derive(Debug, Default)]
pub struct RecentResults {
    by_index: HashMap<usize, serde_json::Value>,
    arrival: VecDeque<usize>,
}

impl RecentResults {
    pub fn insert(&mut self, index: usize, result: serde_json::Value) {
        if self.by_index.insert(index, result).is_none() {
            self.arrival.push_back(index);
        }
        while self.arrival.len() > RESULTS_KEPT {
            if let Some(oldest) = self.arrival.pop_front() {
                self.by_index.remove(&oldest);
            }
        }
    }

    pub fn get(&self, index: usize) -> Option<&serde_json::Value> {
        self.by_index.get(&index)
    }

    pub fn len(&self) -> usize {
        self.by_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }
}

/// How long a client may take to send its request before the server gives up on it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connections served at once; more wait in the kernel's accept queue, so memory stays bounded however
/// many clients connect.
const MAX_CONNECTIONS: usize = 512;

/// How long the server waits after a failed accept (for example, out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The results server: runs on its own tokio runtime until `stop` is set.
pub struct ResultsServer {
    pub port: u16,
    handle: Option<std::thread::JoinHandle<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ResultsServer {
    /// Binds `host:port` (port 0 picks a free one) and serves from `store`.
    pub fn start(host: &str, port: u16, store: ResultsStore) -> std::io::Result<ResultsServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind((host, port)))?;
        let port = listener.local_addr()?.port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let handle = std::thread::Builder::new()
            .name("results-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut failed_accepts = 0u64;
                    loop {
                        let slot = tokio::select! {
                            _ = &mut rx => break,
                            slot = slots.clone().acquire_owned() => match slot {
                                Ok(slot) => slot,
                                Err(_) => break,
                            },
                        };
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => {
                                    let store = store.clone();
                                    tokio::spawn(async move {
                                        serve(stream, store).await;
                                        drop(slot);
                                    });
                                }
                                Err(e) => {
                                    failed_accepts += 1;
                                    if failed_accepts == 1 || failed_accepts.is_multiple_of(100) {
                                        tracing::warn!(
                                            "results server on port {port}: accepting a connection failed \
                                             ({failed_accepts} so far): {e}"
                                        );
                                    }
                                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                                }
                            }
                        }
                    }
                });
            })?;
        Ok(ResultsServer {
            port,
            handle: Some(handle),
            shutdown: Some(tx),
        })
    }

    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Parses a request: up to 16 bytes of ASCII digits (zero-padded or not), optional trailing whitespace.
pub fn parse_request(bytes: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.is_empty() || text.len() > 16 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

async fn serve(mut stream: tokio::net::TcpStream, store: ResultsStore) {
    let mut buf = [0u8; 16];
    let mut len = 0;
    // read until the digits stop (a newline, the client half-closing, a full buffer, or a pause)
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        loop {
            match stream.read(&mut buf[len..]).await {
                Ok(0) => break,
                Ok(n) => {
                    len += n;
                    if len == buf.len() || buf[..len].iter().any(|b| !b.is_ascii_digit()) {
                        break;
                    }
                    // Pyneal clients send the index in one write and wait: a short pause ends the request
                    match tokio::time::timeout(
                        Duration::from_millis(50),
                        stream.peek(&mut [0u8; 1]),
                    )
                    .await
                    {
                        Ok(Ok(_)) => continue,
                        _ => break,
                    }
                }
                Err(_) => break,
            }
        }
    })
    .await;
    let reply = match (read, parse_request(&buf[..len])) {
        (Ok(()), Some(index)) => {
            let found = store.lock().ok().and_then(|s| s.get(index).cloned());
            match found {
                Some(serde_json::Value::Object(mut map)) => {
                    map.insert("foundResults".into(), serde_json::Value::Bool(true));
                    serde_json::Value::Object(map)
                }
                _ => serde_json::json!({"foundResults": false}),
            }
        }
        _ => {
            serde_json::json!({"foundResults": false, "error": "request must be the volume index as ASCII digits (at most 16)"})
        }
    };
    // a client that never reads cannot hold the connection: the reply is small, the write bounded in time
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let _ = stream.write_all(format!("{reply}\n").as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A ZeroMQ PUB socket on its own thread; messages are `"<topic> <json>"`.
pub struct Publisher {
    tx: Option<crossbeam_channel::Sender<(String, serde_json::Value)>>,
    handle: Option<std::thread::JoinHandle<()>>,
    pub endpoint: String,
}

impl Publisher {
    pub fn start(endpoint: &str) -> Result<Publisher, zmq::Error> {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::PUB)?;
        socket.set_linger(500)?;
        socket.bind(endpoint)?;
        let bound = socket
            .get_last_endpoint()?
            .unwrap_or_else(|_| endpoint.to_string());
        let (tx, rx) = crossbeam_channel::bounded::<(String, serde_json::Value)>(256);
        let handle = std::thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let _context = context;
                for (topic, value) in rx.iter() {
                    if let Err(e) = socket.send(format!("{topic} {value}").as_bytes(), 0) {
                        tracing::warn!("PUB send failed: {e}");
                    }
                }
            })
            .map_err(|_| zmq::Error::EFAULT)?;
        Ok(Publisher {
            tx: Some(tx),
            handle: Some(handle),
            endpoint: bound,
        })
    }

    /// Queues a message (PUB never blocks on slow subscribers; ZeroMQ drops for them at its high-water mark).
    pub fn publish(&self, topic: &str, value: serde_json::Value) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((topic.to_string(), value));
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_digits_only() {
        assert_eq!(parse_request(b"0024"), Some(24));
        assert_eq!(parse_request(b"7\n"), Some(7));
        assert_eq!(parse_request(b"abc"), None);
        assert_eq!(parse_request(b""), None);
        assert_eq!(parse_request(b"12345678901234567"), None);
    }

    #[test]
    fn only_the_latest_results_are_kept() {
        let mut kept = RecentResults::default();
        for i in 0..RESULTS_KEPT + 10 {
            kept.insert(i, serde_json::json!({ "volIdx": i }));
        }
        kept.insert(RESULTS_KEPT + 9, serde_json::json!({ "again": true }));
        assert_eq!(kept.len(), RESULTS_KEPT);
        assert!(kept.get(9).is_none() && kept.get(10).is_some());
        assert_eq!(
            kept.get(RESULTS_KEPT + 9),
            Some(&serde_json::json!({ "again": true }))
        );
    }
}
