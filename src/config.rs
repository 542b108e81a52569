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
    pub dicom: DicomConfig,
    pub simulate: SimulateConfig,
    pub live: LiveConfig,
}

/// The live session; see `config/default.toml` for each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    pub decoder: Option<PathBuf>,
    pub events: Option<PathBuf>,
    pub onsets: Option<String>,
    pub mode: LiveMode,
    pub sliding_volumes: usize,
    pub stimuli: Option<PathBuf>,
    pub weights: Option<PathBuf>,
    pub device: crate::generate::DeviceChoice,
    /// The GPU to run on, in CUDA's numbering.
    pub gpu: usize,
    pub precision: crate::generate::Precision,
    pub upsample: crate::generate::UpsampleConv,
    pub launch: crate::generate::GpuLaunch,
    pub display: DisplayMode,
    pub view: crate::display::View,
    pub results_host: String,
    pub results_port: u16,
    pub publish: String,
    pub feedback_attribute: String,
    pub feedback_scale: f64,
    /// A folder of attribute directions to use instead of the embedded ones.
    pub boundaries: Option<PathBuf>,
    /// A scanner export folder (Siemens or GE DICOM, Philips PAR/REC) `live` follows itself.
    pub export_folder: Option<PathBuf>,
    /// The series to follow there; none: the first to gain a file after the start.
    pub export_series: Option<i64>,
    /// The browser console's address (`ADDR:PORT`, port 0: any free one), or "off".
    pub web: String,
    /// The token the console asks for when bound to a non-loopback address; none: a random one each session.
    pub web_token: Option<String>,
}

impl LiveConfig {
    /// The browser console's address; `None` when it is off.
    pub fn web_address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        if self.web.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        self.web.parse().map(Some).map_err(|_| {
            format!(
                "{:?} is neither ADDR:PORT (such as 127.0.0.1:8090 or 0.0.0.0:8090) nor \"off\"",
                self.web
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LiveMode {
    Trials,
    Sliding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DisplayMode {
    Window,
    Headless,
    None,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            decoder: None,
            events: None,
            onsets: None,
            mode: LiveMode::Trials,
            sliding_volumes: 3,
            stimuli: None,
            weights: None,
            device: crate::generate::DeviceChoice::Auto,
            gpu: 0,
            precision: crate::generate::Precision::F32,
            upsample: crate::generate::UpsampleConv::Phased,
            launch: crate::generate::GpuLaunch::Graph,
            display: DisplayMode::Window,
            view: crate::display::View::Operator,
            results_host: "127.0.0.1".into(),
            results_port: 5556,
            publish: "tcp://127.0.0.1:5557".into(),
            feedback_attribute: "smile".into(),
            feedback_scale: 3.0,
            boundaries: None,
            export_folder: None,
            export_series: None,
            web: "127.0.0.1:8090".into(),
            web_token: None,
        }
    }
}

/// The scanner intake (`hyper-rt receive`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    pub bind: String,
    pub expected_volumes: Option<usize>,
    pub idle_timeout_secs: f64,
    pub max_volume_bytes: u64,
    pub max_dim: usize,
    /// The highest `volIdx` taken when `expected_volumes` is not set.
    pub max_volume_index: usize,
    /// A peer that connects and sends nothing for this long is dropped and the socket bound afresh. 0 = never.
    pub handshake_timeout_secs: f64,
    /// Addresses (`192.168.2.10`) or networks (`192.168.2.0/24`) that may connect over TCP; empty = any.
    pub allow_from: Vec<String>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            bind: "tcp://127.0.0.1:5555".into(),
            expected_volumes: None,
            idle_timeout_secs: 30.0,
            max_volume_bytes: 256 << 20,
            max_dim: 2048,
            max_volume_index: 9999,
            handshake_timeout_secs: 5.0,
            allow_from: Vec::new(),
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
        SessionConfig {
            root: PathBuf::from("sessions"),
            compress: true,
            recover_on_start: true,
        }
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

/// The DICOM network receiver (`send --dicom-listen`, `live --dicom-listen`); see `config/default.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomConfig {
    /// Where `live` listens for images (`PORT` on loopback, or `HOST:PORT`); none: it does not.
    pub listen: Option<String>,
    /// This node's AE title, which the scanner's destination must call.
    pub ae_title: String,
    /// Calling AE titles accepted; empty = any.
    pub allow_ae: Vec<String>,
    /// Keep each received image as `<SOPInstanceUID>.dcm` in this folder.
    pub store: Option<PathBuf>,
    /// The series to take; none: the first an image arrives for.
    pub series: Option<i64>,
    /// Seconds an association may stay silent before it is aborted.
    pub idle_timeout_secs: f64,
}

impl Default for DicomConfig {
    fn default() -> Self {
        DicomConfig {
            listen: None,
            ae_title: "HYPER-RT".into(),
            allow_ae: Vec::new(),
            store: None,
            series: None,
            idle_timeout_secs: 300.0,
        }
    }
}

/// Whether `title` is a valid AE title: 1 to 16 characters of printable ASCII, no backslash, not all spaces.
pub fn check_ae_title(title: &str) -> Result<(), String> {
    if title.trim().is_empty() || title.len() > 16 {
        return Err(format!("AE title {title:?} must be 1 to 16 characters"));
    }
    if !title
        .bytes()
        .all(|b| (0x20..0x7F).contains(&b) && b != b'\\')
    {
        return Err(format!(
            "AE title {title:?} may hold only printable ASCII characters other than backslash"
        ));
    }
    Ok(())
}

/// The synthetic subject (`hyper-rt simulate`); see `config/default.toml` for each key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimulateConfig {
    pub subject: String,
    pub dims: [usize; 3],
    pub voxel_mm: f64,
    pub tr_secs: f64,
    pub stim_secs: f64,
    pub blank_secs: f64,
    pub lead_in_secs: f64,
    pub lead_out_secs: f64,
    pub train_runs: usize,
    pub train_trials_per_run: usize,
    pub test_runs: usize,
    pub test_faces: usize,
    pub test_repeats: usize,
    pub latent_size: usize,
    pub responsive_voxels: usize,
    pub clusters: usize,
    pub signal_percent: f64,
    pub visual_percent: f64,
    pub snr: f64,
    pub ar1: f64,
    pub drift_percent: f64,
    pub max_motion_mm: f64,
    pub max_motion_deg: f64,
    pub jerk_probability: f64,
    pub session_offset_mm: f64,
    pub session_offset_deg: f64,
    pub output: SimOutput,
    pub seed: u64,
}

/// Voxel type of simulated runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimOutput {
    Int16,
    Float32,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            subject: "01".into(),
            dims: [64, 64, 36],
            voxel_mm: 3.0,
            tr_secs: 1.5,
            stim_secs: 1.5,
            blank_secs: 3.0,
            lead_in_secs: 6.0,
            lead_out_secs: 15.0,
            train_runs: 6,
            train_trials_per_run: 175,
            test_runs: 3,
            test_faces: 36,
            test_repeats: 14,
            latent_size: 512,
            responsive_voxels: 6000,
            clusters: 12,
            signal_percent: 1.0,
            visual_percent: 1.5,
            snr: 4.0,
            ar1: 0.3,
            drift_percent: 1.0,
            max_motion_mm: 2.0,
            max_motion_deg: 2.0,
            jerk_probability: 0.01,
            session_offset_mm: 2.0,
            session_offset_deg: 2.0,
            output: SimOutput::Int16,
            seed: 1,
        }
    }
}

impl SimulateConfig {
    /// Volumes in a run of `trials` trials.
    pub fn volumes_for(&self, trials: usize) -> usize {
        let secs = self.lead_in_secs
            + trials as f64 * (self.stim_secs + self.blank_secs)
            + self.lead_out_secs;
        (secs / self.tr_secs).ceil() as usize
    }

    /// Trials in each test run (the presentations are spread evenly).
    pub fn test_trials_per_run(&self) -> usize {
        (self.test_faces * self.test_repeats).div_ceil(self.test_runs.max(1))
    }

    /// Checks the ranges; errors name the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = |key: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err((key, format!("must be a positive number, got {v}")))
            }
        };
        positive("simulate.tr_secs", self.tr_secs)?;
        positive("simulate.stim_secs", self.stim_secs)?;
        positive("simulate.voxel_mm", self.voxel_mm)?;
        positive("simulate.snr", self.snr)?;
        positive("simulate.signal_percent", self.signal_percent)?;
        for (key, v) in [
            ("simulate.blank_secs", self.blank_secs),
            ("simulate.lead_in_secs", self.lead_in_secs),
            ("simulate.lead_out_secs", self.lead_out_secs),
            ("simulate.visual_percent", self.visual_percent),
            ("simulate.drift_percent", self.drift_percent),
            ("simulate.max_motion_mm", self.max_motion_mm),
            ("simulate.max_motion_deg", self.max_motion_deg),
            ("simulate.session_offset_mm", self.session_offset_mm),
            ("simulate.session_offset_deg", self.session_offset_deg),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err((key, format!("must be a finite number >= 0, got {v}")));
            }
        }
        if !(0.0..1.0).contains(&self.ar1) {
            return Err((
                "simulate.ar1",
                format!("must be in [0, 1), got {}", self.ar1),
            ));
        }
        if !(0.0..=1.0).contains(&self.jerk_probability) {
            return Err((
                "simulate.jerk_probability",
                format!("must be in [0, 1], got {}", self.jerk_probability),
            ));
        }
        if self.dims.iter().any(|&d| !(4..=512).contains(&d)) {
            return Err((
                "simulate.dims",
                format!("each size must be 4 to 512 voxels, got {:?}", self.dims),
            ));
        }
        if self.latent_size == 0 || self.responsive_voxels == 0 || self.clusters == 0 {
            return Err((
                "simulate.responsive_voxels",
                "latent_size, responsive_voxels and clusters must be positive".into(),
            ));
        }
        if self.train_runs == 0 || self.train_trials_per_run == 0 {
            return Err((
                "simulate.train_runs",
                "at least one training run with one trial is needed".into(),
            ));
        }
        if self.test_runs > 0 && (self.test_faces == 0 || self.test_repeats == 0) {
            return Err((
                "simulate.test_faces",
                "test runs need test_faces and test_repeats > 0".into(),
            ));
        }
        let longest = self.volumes_for(self.train_trials_per_run.max(self.test_trials_per_run()));
        if longest > i16::MAX as usize {
            return Err((
                "simulate.test_repeats",
                format!("a run would need {longest} volumes; a NIfTI-1 file holds at most 32767 (use more runs or fewer trials)"),
            ));
        }
        Ok(())
    }
}

/// Lays a command-line flag over a config value: the flag, when given, replaces it (a flag `T` also sets an
/// `Option<T>` key). Precedence: built-in defaults < config file < flags.
pub fn overlay<T: Clone, U: From<T>>(value: &mut U, flag: &Option<T>) {
    if let Some(v) = flag {
        *value = U::from(v.clone());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key} {problem}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        problem: String,
    },
}

impl Config {
    /// Loads `path` over the built-in defaults, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Config::parse(&text, path)?;
        Ok(config)
    }

    /// Parses TOML text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Checks value ranges that types alone do not express.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, problem: &str| ConfigError::Invalid {
            path: origin.to_path_buf(),
            key,
            problem: problem.into(),
        };
        if !(self.receiver.idle_timeout_secs.is_finite() && self.receiver.idle_timeout_secs >= 0.0)
        {
            return Err(invalid(
                "receiver.idle_timeout_secs",
                "must be a finite number >= 0",
            ));
        }
        if self.receiver.max_volume_bytes == 0 {
            return Err(invalid("receiver.max_volume_bytes", "must be positive"));
        }
        if self.receiver.max_dim == 0 {
            return Err(invalid("receiver.max_dim", "must be positive"));
        }
        // a NIfTI-1 file holds at most 32767 volumes, and the recording is one file
        if self.receiver.max_volume_index >= i16::MAX as usize {
            return Err(invalid(
                "receiver.max_volume_index",
                "must be below 32767 (a NIfTI-1 recording holds at most 32767 volumes)",
            ));
        }
        if let Some(n) = self.receiver.expected_volumes {
            if n == 0 || n > i16::MAX as usize {
                return Err(invalid(
                    "receiver.expected_volumes",
                    "must be 1 to 32767 (a NIfTI-1 recording holds at most 32767 volumes)",
                ));
            }
        }
        if !(self.receiver.handshake_timeout_secs.is_finite()
            && self.receiver.handshake_timeout_secs >= 0.0)
        {
            return Err(invalid(
                "receiver.handshake_timeout_secs",
                "must be a finite number >= 0",
            ));
        }
        for entry in &self.receiver.allow_from {
            if let Err(why) = crate::ingest::access::AllowRule::parse(entry) {
                return Err(ConfigError::Invalid {
                    path: origin.to_path_buf(),
                    key: "receiver.allow_from",
                    problem: why.to_string(),
                });
            }
        }
        if !(self.receiver.bind.starts_with("tcp://") || self.receiver.bind.starts_with("ipc://")) {
            return Err(invalid("receiver.bind", "must start with tcp:// or ipc://"));
        }
        if !(self.sender.reply_timeout_secs.is_finite() && self.sender.reply_timeout_secs >= 0.0) {
            return Err(invalid(
                "sender.reply_timeout_secs",
                "must be a finite number >= 0",
            ));
        }
        if self.sender.handshake.is_empty() || self.sender.handshake.trim_start().starts_with('{') {
            return Err(invalid(
                "sender.handshake",
                "must be a non-empty string that is not JSON",
            ));
        }
        check_ae_title(&self.dicom.ae_title).map_err(|p| invalid("dicom.ae_title", &p))?;
        for title in &self.dicom.allow_ae {
            check_ae_title(title).map_err(|p| invalid("dicom.allow_ae", &p))?;
        }
        if let Some(listen) = &self.dicom.listen {
            crate::scanner::dicom_net::listen_address(listen)
                .map_err(|p| invalid("dicom.listen", &p))?;
        }
        if !(self.dicom.idle_timeout_secs.is_finite() && self.dicom.idle_timeout_secs >= 1.0) {
            return Err(invalid("dicom.idle_timeout_secs", "must be at least 1"));
        }
        self.simulate
            .validate()
            .map_err(|(key, problem)| invalid(key, &problem))?;
        if self.live.sliding_volumes == 0 {
            return Err(invalid("live.sliding_volumes", "must be at least 1"));
        }
        if !(self.live.feedback_scale.is_finite() && self.live.feedback_scale > 0.0) {
            return Err(invalid("live.feedback_scale", "must be a positive number"));
        }
        self.live
            .web_address()
            .map_err(|p| invalid("live.web", &p))?;
        if let Some(token) = &self.live.web_token {
            crate::web::access::check_token(token)
                .map_err(|e| invalid("live.web_token", &e.to_string()))?;
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
            assert!(
                text.contains(&format!("\n{key} = ")),
                "config/default.toml lacks {key}"
            );
        }
    }

    #[test]
    fn the_optional_keys_shown_commented_out_are_real_keys() {
        // `# key = value` lines directly under their section: uncommented, the file must still parse, and each
        // such key must then be set
        let text = include_str!("../config/default.toml");
        let uncommented: String = text
            .lines()
            .map(
                |l| match l.strip_prefix("# ").and_then(|rest| rest.split_once(" = ")) {
                    Some((key, _)) if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
                        &l[2..]
                    }
                    _ => l,
                },
            )
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed = Config::parse(&uncommented, Path::new("uncommented.toml")).unwrap();
        assert!(parsed.live.decoder.is_some() && parsed.live.events.is_some());
        assert!(parsed.live.onsets.is_some() && parsed.live.stimuli.is_some());
        assert!(parsed.live.weights.is_some() && parsed.live.boundaries.is_some());
        assert_eq!(parsed.live.export_series, Some(7));
        assert_eq!(parsed.receiver.expected_volumes, Some(175));
    }

    #[test]
    fn a_flag_overrides_a_value_and_sets_an_optional_one() {
        let mut port = 5556u16;
        overlay(&mut port, &None::<u16>);
        assert_eq!(port, 5556);
        overlay(&mut port, &Some(6000u16));
        assert_eq!(port, 6000);
        let mut decoder: Option<PathBuf> = None;
        overlay(&mut decoder, &Some(PathBuf::from("d.safetensors")));
        assert_eq!(decoder, Some(PathBuf::from("d.safetensors")));
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key_and_file() {
        let err = Config::parse("[receiver]\nbindd = \"x\"\n", Path::new("my.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("my.toml") && err.contains("bindd"), "{err}");
        let err = Config::parse(
            "[receiver]\nexpected_volumes = \"ten\"\n",
            Path::new("my.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("my.toml") && err.contains("expected_volumes"),
            "{err}"
        );
        let err = Config::parse(
            "[receiver]\nidle_timeout_secs = -1.0\n",
            Path::new("my.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("receiver.idle_timeout_secs"), "{err}");
        for bad in [
            "tr_secs = -1.5",
            "snr = nan",
            "test_repeats = 20000\ntest_runs = 1",
        ] {
            let err = Config::parse(&format!("[simulate]\n{bad}\n"), Path::new("s.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("s.toml") && err.contains("simulate."),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let c = Config::parse("[receiver]\nexpected_volumes = 12\n", Path::new("p.toml")).unwrap();
        assert_eq!(c.receiver.expected_volumes, Some(12));
        assert_eq!(c.receiver.bind, ReceiverConfig::default().bind);
        assert_eq!(c.session, SessionConfig::default());
    }
}
