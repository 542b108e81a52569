//! hyper-rt: a real-time fMRI face decoder after HYPER (Dado et al., Scientific Reports 2022).
//!
//! Data flows through the modules in this order:
//! - [`simulate`]: a synthetic subject and its scanner runs with known ground truth (stands in for the scanner);
//! - [`ingest`]: the Pyneal-Scanner-compatible ZeroMQ receiver ([`ingest::receiver`]), the wire protocol
//!   ([`ingest::protocol`]) and the scanner-side sender ([`ingest::sender`]);
//! - [`preprocess`]: realignment, masking, detrending, z-scoring and trial patterns, one volume at a time;
//! - [`decode`]: decoder training and evaluation (ridge from trial patterns to latents, HYPER's metrics);
//! - [`session`]: crash-safe recording of everything received, finalised into NIfTI + summary;
//! - [`generate`]: the PGGAN generator (converted checkpoints, CPU forward pass) that draws a latent as an image;
//! - later stages (preprocess, decode, display, feedback) join them through [`volume::Volume`]s and latents.
//!
//! Shared pieces: [`volume`] (the `Volume` type and element types), [`nifti`] (NIfTI-1 files),
//! [`config`] (typed TOML configuration), [`stats`] (percentiles), [`spatial`] (rigid-body geometry), [`npy`] (NumPy arrays), [`rng`].

pub mod config;
pub mod decode;
pub mod display;
pub mod feedback;
pub mod generate;
pub mod ingest;
pub mod live;
pub mod nifti;
pub mod npy;
pub mod preprocess;
pub mod rng;
pub mod session;
pub mod simulate;
pub mod spatial;
pub mod stats;
pub mod volume;
