//! hyper-rt: a real-time fMRI face decoder after HYPER (Dado et al., Scientific Reports 2022).
//!
//! Data flows through the modules in this order:
//! - [`simulate`]: a synthetic subject and its scanner runs with known ground truth (stands in for the scanner);
//! - [`ingest`]: the Pyneal-Scanner-compatible ZeroMQ receiver ([`ingest::receiver`]), the wire protocol
//!   ([`ingest::protocol`]) and the scanner-side sender ([`ingest::sender`]), which plays NIfTI files and
//!   scanner exports (Siemens and GE DICOM, Philips PAR/REC), finished or still being written ([`ingest::scanner_export`]);
//! - [`preprocess`]: realignment, masking, detrending, z-scoring and trial patterns, one volume at a time;
//! - [`decode`]: decoder training and evaluation (ridge from trial patterns to latents, HYPER's metrics);
//! - [`session`]: crash-safe recording of everything received, finalised into NIfTI + summary;
//! - [`generate`]: the PGGAN generator (converted checkpoints, CPU forward pass) that draws a latent as an image;
//! - later stages (preprocess, decode, display, feedback) join them through [`volume::Volume`]s and latents.
//!
//! Shared pieces: [`volume`] (the `Volume` type and element types), [`nifti`] (NIfTI-1 files), [`dicom`]
//! (Siemens mosaic and single-slice DICOM files), [`parrec`] (Philips PAR/REC files),
//! [`config`] (typed TOML configuration), [`stats`] (percentiles), [`spatial`] (rigid-body geometry), [`npy`] (NumPy arrays), [`rng`],
//! and [`error_chain`] (how an error is said).

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
