//! The PGGAN generator: converted checkpoints ([`weights`]), the architecture derived from them ([`model`]), the
//! CPU forward pass ([`cpu`]), the GPU one ([`cuda`]: NVRTC and the kernel cache, launch plans, tuning, the
//! generator and the machine report), the [`backend`] that picks between them and checks a GPU against the CPU,
//! and the conversion of the float output to pixels ([`image`]). The network itself is specified in
//! `docs/pggan.md`.
//!
//! Output convention: float32 NCHW `[N, 3, H, W]`, RGB, nominally in [-1, 1] and not clipped; 8-bit pixels are
//! `clip(rint((x + 1) / 2 * 255), 0, 255)` computed in float32 with ties to even, exactly as the official code.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod gpu;
pub mod image;
pub mod model;
pub mod parity;
pub mod settings;
pub mod weights;

pub use backend::Backend;
pub use error::{CudaError, GenerateError};
pub use gpu::GpuGenerator;
pub use image::{image_0rgb, image_rgb8, rgb8_from_0rgb, to_u8, write_png};
pub use model::load_model;
pub use parity::{gpu_parity_bound, relative_l2};
pub use settings::{ConvKernels, DeviceChoice, GpuLaunch, GpuSettings, Precision, UpsampleConv};
