//! hyper-rt: a real-time fMRI face decoder after HYPER (Dado et al., Scientific Reports 2022).
//!
//! Data flows through the modules in this order:
//! - [`ingest`]: the Pyneal-Scanner-compatible ZeroMQ receiver ([`ingest::receiver`]), the wire protocol
//!   ([`ingest::protocol`]) and the scanner-side sender ([`ingest::sender`]);
//! - [`session`]: crash-safe recording of everything received, finalised into NIfTI + summary;
//! - later stages (preprocess, decode, generate, display, feedback) consume [`volume::Volume`]s.
//!
//! Shared pieces: [`volume`] (the `Volume` type and element types), [`nifti`] (NIfTI-1 files),
//! [`config`] (typed TOML configuration), [`stats`] (percentiles).

pub mod config;
pub mod ingest;
pub mod nifti;
pub mod rng;
pub mod session;
pub mod stats;
pub mod volume;
