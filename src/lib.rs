//! hyper-rt: a real-time fMRI face decoder after HYPER (Dado et al., Scientific Reports 2022). The method is in
//! `docs/hyper.md`, the generator in `docs/pggan.md`, the wire protocols in `docs/protocols.md`.
//!
//! The modules in data-flow order; each imports only from those before it (`scripts/check_layout.py` checks):
//! - ground floor: [`volume`] (the `Volume` type and voxel types), [`spatial`] (rigid-body geometry and affines),
//!   [`nifti`] (NIfTI-1 files), [`npy`] (NumPy arrays), [`stats`] (percentiles), [`rng`], and [`error_chain`];
//! - [`scanner`]: what scanners write (Siemens mosaic and GE single-slice DICOM, Philips PAR/REC), a finished series
//!   in a folder and a folder being written, as volumes;
//! - [`ingest`]: the Pyneal-Scanner-compatible wire protocol, the receiver, its crash-safe recorder and spool, the
//!   scanner-side sender and the export-folder follower;
//! - [`preprocess`]: realignment, masking, detrending, z-scoring and trial patterns, one volume at a time;
//! - [`decode`]: the BIDS dataset, decoder training (ridge), the decoder bundle, HYPER's metrics and the attribute
//!   directions;
//! - [`generate`]: the PGGAN generator on the CPU or our CUDA kernels;
//! - [`display`] (the window and its overlays) and [`feedback`] (the results server and the PUB stream);
//! - [`evaluate`]: the offline evaluation report (it draws images, so it sits above the generator);
//! - [`config`]: the typed TOML configuration;
//! - [`simulate`]: a synthetic subject and its scanner runs with known ground truth;
//! - [`live`]: the live pipeline, one thread per stage.

pub mod config;
pub mod decode;
pub mod display;
pub mod evaluate;
pub mod feedback;
pub mod generate;
pub mod ingest;
pub mod live;
pub mod nifti;
pub mod npy;
pub mod preprocess;
pub mod rng;
pub mod scanner;
pub mod simulate;
pub mod spatial;
pub mod stats;
pub mod volume;
pub mod web;

/// An error and its causes joined by ": ", each said once: the project's errors already end with their cause's
/// text ("decoder.safetensors: No such file or directory"), which the chain would otherwise repeat.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn each_cause_of_an_error_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let err = anyhow::Error::new(crate::generate::GenerateError::Io {
            path: "w.safetensors".into(),
            source: io(),
        });
        assert_eq!(
            error_chain(&err),
            "w.safetensors: No such file or directory"
        );
        // a context that does not repeat its cause keeps it
        let err = anyhow::Error::new(io()).context("reading the run");
        assert_eq!(
            error_chain(&err),
            "reading the run: No such file or directory"
        );
        let err = anyhow::Error::new(crate::generate::GenerateError::Io {
            path: "w".into(),
            source: io(),
        })
        .context("loading the generator");
        assert_eq!(
            error_chain(&err),
            "loading the generator: w: No such file or directory"
        );
    }
}
