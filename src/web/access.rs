//! Who may see the console. Bound to a loopback address only this computer can reach it, and nothing is asked. Bound
//! to any other address every request must carry the session's token: as `?token=` in the URL printed at start (the
//! page then keeps it in a cookie and sends it with its own requests), as `Authorization: Bearer`, or as that
//! cookie. The token is 128 random bits unless the configuration names one. No endpoint changes the session, so
//! the token guards what is seen, not what is done.

use std::io::Read;
use std::net::SocketAddr;

/// The cookie the page keeps the token in.
pub const TOKEN_COOKIE: &str = "hyper_rt_token";

/// The shortest token accepted from the configuration.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Whether requests need a token, and which.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Loopback: only this computer can connect.
    Open,
    Token(String),
}

/// A token from the configuration that is too short or holds characters a URL would need escaped.
#[derive(Debug, thiserror::Error)]
#[error("a token must be at least {MIN_TOKEN_CHARS} characters of A-Z, a-z, 0-9, '-' or '_'")]
pub struct BadToken;

impl Access {
    /// The access for a console bound to `address`, with the configured token if any (else a random one).
    pub fn for_address(address: &SocketAddr, configured: Option<&str>) -> Result<Access, BadToken> {
        if address.ip().is_loopback() {
            return Ok(Access::Open);
        }
        match configured {
            Some(token) => {
                check_token(token)?;
                Ok(Access::Token(token.to_string()))
            }
            None => Ok(Access::Token(random_token())),
        }
    }

    /// Whether a request with this query string, `Authorization` and `Cookie` header may pass.
    pub fn allows(
        &self,
        query: Option<&str>,
        authorization: Option<&str>,
        cookie: Option<&str>,
    ) -> bool {
        let Access::Token(token) = self else {
            return true;
        };
        let offered = [
            query.and_then(|q| pair_value(q.split('&'), "token")),
            authorization.and_then(|a| a.strip_prefix("Bearer ")),
            cookie.and_then(|c| pair_value(c.split(';'), TOKEN_COOKIE)),
        ];
        offered
            .into_iter()
            .flatten()
            .any(|candidate| same_in_constant_time(candidate.trim().as_bytes(), token.as_bytes()))
    }

    /// The query to append to the console's URL (`?token=...`), empty when none is needed.
    pub fn url_query(&self) -> String {
        match self {
            Access::Open => String::new(),
            Access::Token(t) => format!("?token={t}"),
        }
    }
}

/// A configured token must be at least [`MIN_TOKEN_CHARS`] characters that need no escaping in a URL.
pub fn check_token(token: &str) -> Result<(), BadToken> {
    let url_safe = token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if token.len() < MIN_TOKEN_CHARS || !url_safe {
        return Err(BadToken);
    }
    Ok(())
}

/// The value of `name` among `name=value` pairs.
fn pair_value<'a>(mut pairs: impl Iterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    pairs.find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key == name).then_some(value)
    })
}

/// Compares without stopping at the first difference, so that timing tells nothing of the token.
fn same_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 128 bits from the kernel's random source as hex; should that be unreadable, a hash of the time and process
/// (still unguessable from outside in practice, and said in the log).
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if let Err(e) = read {
        tracing::warn!(
            "web console: /dev/urandom unreadable ({e}); the token is derived from the clock"
        );
        use sha2::Digest;
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        bytes.copy_from_slice(&sha2::Sha256::digest(seed.as_bytes())[..16]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_open_and_other_addresses_need_the_token() {
        let local: SocketAddr = "127.0.0.1:8090".parse().unwrap();
        assert_eq!(Access::for_address(&local, None).unwrap(), Access::Open);
        assert!(Access::Open.allows(None, None, None));
        let any: SocketAddr = "0.0.0.0:8090".parse().unwrap();
        let Access::Token(token) = Access::for_address(&any, None).unwrap() else {
            panic!("no token on 0.0.0.0");
        };
        assert_eq!(token.len(), 32);
        let other = Access::for_address(&any, None).unwrap();
        assert_ne!(other, Access::Token(token.clone()), "tokens repeat");
        let access = Access::Token(token.clone());
        assert!(!access.allows(None, None, None));
        assert!(!access.allows(Some("token=wrong"), None, None));
        assert!(access.allows(Some(&format!("x=1&token={token}")), None, None));
        assert!(access.allows(None, Some(&format!("Bearer {token}")), None));
        assert!(access.allows(None, None, Some(&format!("a=b; {TOKEN_COOKIE}={token}"))));
        assert!(!access.allows(None, None, Some(&format!("other={token}"))));
        assert_eq!(access.url_query(), format!("?token={token}"));
    }

    #[test]
    fn a_configured_token_must_be_long_and_url_safe() {
        let any: SocketAddr = "[::]:8090".parse().unwrap();
        assert!(Access::for_address(&any, Some("short")).is_err());
        assert!(Access::for_address(&any, Some("sixteen chars &&&")).is_err());
        assert_eq!(
            Access::for_address(&any, Some("lab-console-token-7")).unwrap(),
            Access::Token("lab-console-token-7".into())
        );
    }
}
