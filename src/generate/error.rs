//! What can go wrong in the generator: reading a checkpoint, its shapes and values, the latents asked for, and
//! the GPU ([`CudaError`]: the libraries, the driver, NVRTC, a launch, or a GPU whose image disagrees with the CPU's).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors checkpoint: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{source_name}: tensor {name} is missing")]
    MissingTensor { source_name: String, name: String },
    #[error("{source_name}: tensor {name} has shape {actual:?}, expected {expected:?}")]
    Shape {
        source_name: String,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{source_name}: tensor {name} holds a value that is not finite (NaN or infinity) at flat index {index}")]
    NonFinite {
        source_name: String,
        name: String,
        index: usize,
    },
    #[error("{source_name}: {message}")]
    Architecture {
        source_name: String,
        message: String,
    },
    #[error("latents must be rows of {expected} values; got {actual} values")]
    Latent { expected: usize, actual: usize },
    #[error("CUDA backend: {0}")]
    Cuda(#[from] CudaError),
    #[error(
        "{gpu}: its image differs from the CPU's by {difference:.2e} (relative L2; at most {bound:e} expected), so a kernel computes wrongly on this GPU; `hyper-rt gpu-info --check` compares the two, `--device cpu` draws without the GPU"
    )]
    GpuDisagrees {
        gpu: String,
        difference: f64,
        bound: f64,
    },
}

/// What went wrong on the GPU's side. Only [`GenerateError::Cuda`] makes a live generator move to the CPU, so every
/// failure of the GPU, and only such a failure, is one of these.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// CUDA cannot be used here: a library is missing, no GPU (or not the one asked for), a build without CUDA.
    #[error("{0}")]
    Unavailable(String),
    /// A driver call failed while doing `during` (the device lost, its memory taken, an illegal access).
    #[error("{during}: {message}")]
    Driver { during: String, message: String },
    /// NVRTC could not compile the kernels.
    #[error("NVRTC: {0}")]
    Compile(String),
    /// A setting this GPU or this precision cannot run (the staged kernels before sm_80, or in float32).
    #[error("{0}")]
    Unsupported(String),
    /// A request outside what the GPU generator takes: a batch too large, a layer that does not exist, an input of
    /// the wrong size.
    #[error("{0}")]
    Request(String),
    /// A launch that does not fit the kernels or buffers it was given: a bug in a launch plan, said with the kernel.
    #[error("{0}")]
    Plan(String),
}
