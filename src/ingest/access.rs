//! Who may connect to the intake: `--allow-from` rules, checked by a ZAP handler.
//!
//! ZAP (ZeroMQ RFC 27) is libzmq's own authentication hook: when a socket has a ZAP domain, libzmq asks a REP
//! socket bound at `inproc://zeromq.zap.01` in the same context about every peer **before** the peer can send
//! anything, giving its IP address. The handler here answers `200` for an allowed address and `400` otherwise,
//! logs each refusal with the address, and notes when and from where the latest peer connected, which the
//! receiver uses for its handshake deadline (a peer that connected and stays silent is dropped).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// The endpoint libzmq sends ZAP requests to (fixed by RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// The domain the receiver's socket sets, so that libzmq consults the handler even for the NULL mechanism.
pub const ZAP_DOMAIN: &str = "hyper-rt";
/// How often the handler wakes to check whether it should stop.
const POLL_MS: i64 = 100;

/// An `--allow-from` entry that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("\"{entry}\" is not an IP address or a network such as 192.168.2.0/24: {why}")]
pub struct AllowRuleError {
    entry: String,
    why: String,
}

/// One allowed address or network (`192.168.2.10`, `192.168.2.0/24`, `::1`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowRule {
    network: IpAddr,
    prefix_bits: u8,
}

impl AllowRule {
    pub fn parse(entry: &str) -> Result<AllowRule, AllowRuleError> {
        let fail = |why: String| AllowRuleError {
            entry: entry.to_string(),
            why,
        };
        let (address, prefix) = match entry.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (entry.trim(), None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|e: std::net::AddrParseError| fail(e.to_string()))?;
        let max_bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix_bits = match prefix {
            None => max_bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= max_bits)
                .ok_or_else(|| fail(format!("the prefix length must be 0 to {max_bits}")))?,
        };
        Ok(AllowRule {
            network,
            prefix_bits,
        })
    }

    /// Whether `address` lies in this network (an IPv4 address mapped into IPv6 counts as IPv4).
    pub fn allows(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                prefix_matches(&n.octets(), &a.octets(), self.prefix_bits)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                prefix_matches(&n.octets(), &a.octets(), self.prefix_bits)
            }
            _ => false,
        }
    }
}

fn prefix_matches(network: &[u8], address: &[u8], prefix_bits: u8) -> bool {
    let full_bytes = usize::from(prefix_bits / 8);
    if network[..full_bytes] != address[..full_bytes] {
        return false;
    }
    let rest_bits = prefix_bits % 8;
    if rest_bits == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest_bits);
    network[full_bytes] & mask == address[full_bytes] & mask
}

/// Whether a peer at `address` (as ZAP gives it: an IP address for TCP, empty for IPC) may connect. IPC peers
/// are local processes and always may; an empty rule list allows everyone.
pub fn is_allowed(rules: &[AllowRule], address: &str) -> bool {
    if rules.is_empty() || address.is_empty() {
        return true;
    }
    match address.parse::<IpAddr>() {
        Ok(ip) => rules.iter().any(|r| r.allows(ip)),
        Err(_) => false,
    }
}

/// What the handler has seen, shared with the receiver.
#[derive(Debug, Default)]
pub struct PeerLog {
    /// When the latest peer was let in, and its address.
    latest_allowed: Mutex<Option<(Instant, String)>>,
    refused: AtomicU64,
}

impl PeerLog {
    /// When the latest allowed peer connected, and from where.
    pub fn latest_allowed(&self) -> Option<(Instant, String)> {
        self.latest_allowed.lock().ok().and_then(|g| g.clone())
    }

    /// Peers refused by `--allow-from` so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn note_allowed(&self, address: &str) {
        if let Ok(mut g) = self.latest_allowed.lock() {
            *g = Some((Instant::now(), address.to_string()));
        }
    }
}

/// The running handler; it stops when dropped.
pub struct ZapHandler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub peers: Arc<PeerLog>,
}

impl ZapHandler {
    /// Binds the handler in `context` (before any socket with [`ZAP_DOMAIN`] binds) and starts its thread.
    pub fn start(context: &zmq::Context, rules: Vec<AllowRule>) -> Result<ZapHandler, zmq::Error> {
        let socket = context.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(ZAP_ENDPOINT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(PeerLog::default());
        let (thread_stop, thread_peers) = (stop.clone(), peers.clone());
        let thread = std::thread::Builder::new()
            .name("zap-handler".into())
            .spawn(move || serve(socket, &rules, &thread_stop, &thread_peers))
            .map_err(|_| zmq::Error::EMFILE)?;
        Ok(ZapHandler {
            stop,
            thread: Some(thread),
            peers,
        })
    }
}

impl Drop for ZapHandler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: zmq::Socket, rules: &[AllowRule], stop: &AtomicBool, peers: &PeerLog) {
    while !stop.load(Ordering::Relaxed) {
        match socket.poll(zmq::POLLIN, POLL_MS) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(zmq::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!("ZAP handler: polling failed ({e}); access checks stop");
                return;
            }
        }
        let frames = match socket.recv_multipart(0) {
            Ok(f) => f,
            Err(zmq::Error::EINTR) => continue,
            Err(e) => {
                tracing::error!("ZAP handler: receiving failed ({e}); access checks stop");
                return;
            }
        };
        // version, request id, domain, address, routing id, mechanism, credentials...
        let field = |i: usize| frames.get(i).map(|f| f.as_slice()).unwrap_or_default();
        let address = String::from_utf8_lossy(field(3)).to_string();
        let allowed = is_allowed(rules, &address);
        if allowed {
            peers.note_allowed(&address);
            tracing::info!("peer {} connected", shown(&address));
        } else {
            peers.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "refused a connection from {} (not in receiver.allow_from / --allow-from)",
                shown(&address)
            );
        }
        let (code, text): (&[u8], &[u8]) = if allowed {
            (b"200", b"OK")
        } else {
            (b"400", b"address not allowed")
        };
        let reply: [&[u8]; 6] = [b"1.0", field(1), code, text, b"", b""];
        if let Err(e) = socket.send_multipart(reply, 0) {
            tracing::warn!("ZAP handler: could not answer libzmq ({e})");
        }
    }
}

/// An address as logged: escaped, and named for IPC.
fn shown(address: &str) -> String {
    if address.is_empty() {
        "(local IPC)".to_string()
    } else {
        address.escape_debug().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_addresses_and_networks() {
        let rules: Vec<AllowRule> = ["192.168.2.10", "10.1.0.0/16", "fd00::/8"]
            .iter()
            .map(|e| AllowRule::parse(e).unwrap())
            .collect();
        for (address, want) in [
            ("192.168.2.10", true),
            ("192.168.2.11", false),
            ("10.1.255.3", true),
            ("10.2.0.1", false),
            ("::ffff:10.1.0.9", true),
            ("fd12::1", true),
            ("fe80::1", false),
            ("", true),
            ("not an address", false),
        ] {
            assert_eq!(is_allowed(&rules, address), want, "{address}");
        }
        assert!(is_allowed(&[], "203.0.113.9"));
        let odd = AllowRule::parse("172.16.0.0/12").unwrap();
        assert!(odd.allows("172.31.1.1".parse().unwrap()));
        assert!(!odd.allows("172.32.0.1".parse().unwrap()));
        for bad in ["192.168.2", "10.0.0.0/33", "host.example", "::1/129"] {
            assert!(AllowRule::parse(bad).is_err(), "{bad}");
        }
    }
}
