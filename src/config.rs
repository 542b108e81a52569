//! Typed configuration: built-in defaults < a TOML file < command-line flags.
//!
//! Every key is documented in `config/default.toml`, which a test keeps identical to [`Config::default`].
//! Files may set any subset of keys. Unknown keys and wrong types are errors that name the file, the key and
//! the line, because a mistyped key silently ignored in a scanner session costs a participant's time.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub receiver: ReceiverConfig,
    pub session: SessionConfig,
    pub sender: SenderConfig,
}

/// The scanner intake (`hyper-rt receive`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    pub bind: String,
    pub expected_volumes: usize,
    pub idle_timeout_secs: f64,
    pub max_volume_bytes: u64,
    pub max_dim: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            bind: "tcp://127.0.0.1:5555".into(),
            expected_volumes: 0,
            idle_timeout_secs: 30.0,
            max_volume_bytes: 256 << 20,
            max_dim: 2048,
        }
    }
}

/// Session recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    pub root: PathBuf,
    pub compress: bool,
    pub recover_on_start: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig { root: PathBuf::from("sessions"), compress: true, recover_on_start: true }
    }
}

/// The Pyneal-Scanner-compatible sender (`hyper-rt send`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    pub connect: String,
    pub handshake: String,
    pub reply_timeout_secs: f64,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            connect: "tcp://127.0.0.1:5555".into(),
            handshake: "hello from pyneal_scanner ".into(),
            reply_timeout_secs: 60.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key} {problem}")]
    Invalid { path: PathBuf, key: &'static str, problem: String },
}

impl Config {
    /// Loads `path` over the built-in defaults, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else { return Ok(Config::default()) };
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config = Config::parse(&text, path)?;
        Ok(config)
    }

    /// Parses TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_path_buf(), message: e.to_string() })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks value ranges that types alone do not express.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid = |key, problem: &str| ConfigError::Invalid { path: origin.to_path_buf(), key, problem: problem.into() };
        if !(self.receiver.idle_timeout_secs.is_finite() && self.receiver.idle_timeout_secs >= 0.0) {
            return Err(invalid("receiver.idle_timeout_secs", "must be a finite number >= 0"));
        }
        if self.receiver.max_volume_bytes == 0 {
            return Err(invalid("receiver.max_volume_bytes", "must be positive"));
        }
        if self.receiver.max_dim == 0 {
            return Err(invalid("receiver.max_dim", "must be positive"));
        }
        if !(self.receiver.bind.starts_with("tcp://") || self.receiver.bind.starts_with("ipc://")) {
            return Err(invalid("receiver.bind", "must start with tcp:// or ipc://"));
        }
        if !(self.sender.reply_timeout_secs.is_finite() && self.sender.reply_timeout_secs >= 0.0) {
            return Err(invalid("sender.reply_timeout_secs", "must be a finite number >= 0"));
        }
        if self.sender.handshake.is_empty() || self.sender.handshake.trim_start().starts_with('{') {
            return Err(invalid("sender.handshake", "must be a non-empty string that is not JSON"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_documents_exactly_the_built_in_defaults() {
        let text = include_str!("../config/default.toml");
        let parsed = Config::parse(text, Path::new("config/default.toml")).unwrap();
        assert_eq!(parsed, Config::default());
        // every key of the serialised defaults appears in the file
        let defaults = toml::to_string(&Config::default()).unwrap();
        for line in defaults.lines().filter(|l| l.contains(" = ")) {
            let key = line.split(" = ").next().unwrap();
            assert!(text.contains(&format!("\n{key} = ")), "config/default.toml lacks {key}");
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_file() {
        let err = Config::parse("[receiver]\nbindd = \"x\"\n", Path::new("my.toml")).unwrap_err().to_string();
        assert!(err.contains("my.toml") && err.contains("bindd"), "{err}");
        let err = Config::parse("[receiver]\nexpected_volumes = \"ten\"\n", Path::new("my.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("my.toml") && err.contains("expected_volumes"), "{err}");
        let err = Config::parse("[receiver]\nidle_timeout_secs = -1.0\n", Path::new("my.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("receiver.idle_timeout_secs"), "{err}");
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let c = Config::parse("[receiver]\nexpected_volumes = 12\n", Path::new("p.toml")).unwrap();
        assert_eq!(c.receiver.expected_volumes, 12);
        assert_eq!(c.receiver.bind, ReceiverConfig::default().bind);
        assert_eq!(c.session, SessionConfig::default());
    }
}
