//! What the [`Backend`](crate::generate::backend::Backend) asks of a generator on a GPU: our CUDA generator
//! implements it, and the tests' stand-in that fails or draws wrongly on purpose.

use std::sync::Arc;

use crate::generate::error::GenerateError;
use crate::generate::model::PgganModel;
use crate::generate::settings::{GpuSettings, Precision};

/// A generator on a GPU, as the backend drives it. Every failure of the GPU itself must be a
/// [`GenerateError::Cuda`]: that, and only that, makes the backend move to the CPU.
pub trait GpuGenerator: Send {
    /// Float32 NCHW images `[N, 3, H, W]`.
    fn generate(&mut self, latents: &[f32]) -> Result<Vec<f32>, GenerateError>;
    /// Packed `0x00RRGGBB` display pixels `[N, H, W]`.
    fn generate_display(&mut self, latents: &[f32]) -> Result<Vec<u32>, GenerateError>;
    /// Sets how the GPU runs (see [`GpuSettings`]).
    fn use_settings(&mut self, settings: GpuSettings) -> Result<(), GenerateError>;
    /// The network, shared (for a CPU generator on the same network).
    fn shared_model(&self) -> Arc<PgganModel>;
    fn precision(&self) -> Precision;
    /// "GPU 0, NVIDIA H100 80GB HBM3 (tf32)".
    fn describe(&self) -> String;
}
