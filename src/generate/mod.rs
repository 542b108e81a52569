//! The PGGAN generator: converted checkpoints ([`weights`]), the architecture derived from them ([`model`]),
//! the CPU forward pass ([`cpu`]), the GPU one (`cuda`, with its kernel cache `ptx_cache` and the machine check
//! `cuda_report`), and the conversion of the float output to 8-bit images.
//!
//! Output convention: float32 NCHW `[N, 3, H, W]`, RGB, nominally in [-1, 1] and not clipped; 8-bit pixels are
//! `clip(rint((x + 1) / 2 * 255), 0, 255)` computed in float32 with ties to even, exactly as the official code.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod cuda_report;
pub mod launch;
pub mod model;
#[cfg(feature = "cuda")]
pub mod ptx_cache;
pub mod weights;
pub mod winograd;
#[cfg(target_arch = "x86_64")]
mod winograd_avx2;

use std::path::{Path, PathBuf};

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
    Cuda(String),
    #[error(
        "{gpu}: its image differs from the CPU's by {difference:.2e} (relative L2; at most {bound:e} expected), so a kernel computes wrongly on this GPU; `hyper-rt gpu-info --check` compares the two, `--device cpu` draws without the GPU"
    )]
    GpuDisagrees {
        gpu: String,
        difference: f64,
        bound: f64,
    },
}

/// Where the generator runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The GPU when the driver, NVRTC and a device are present, else the CPU (with one warning saying why).
    Auto,
    Cpu,
    /// The GPU; any failure is an error.
    Cuda,
}

/// Arithmetic of the GPU convolutions (without the `cuda` feature only float32 exists, on the CPU).
#[cfg(feature = "cuda")]
pub use cuda::Precision;
#[cfg(not(feature = "cuda"))]
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Tf32,
}

/// The largest relative L2 difference a GPU image may have from the CPU's (direct path) at `precision`: the parity
/// bounds of issue 5, used by tests/cuda_parity.rs, `hyper-rt gpu-info --check` and the live warm-up.
pub fn gpu_parity_bound(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => 1e-5,
        Precision::Tf32 => 1e-2,
    }
}

/// Relative L2 difference of `a` from `reference` (NaN anywhere makes it NaN): the measure of the GPU's agreement
/// with the CPU.
pub fn relative_l2(a: &[f32], reference: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(reference) {
        num += (f64::from(*x) - f64::from(*y)).powi(2);
        den += f64::from(*y).powi(2);
    }
    (num / den).sqrt()
}

/// Which kernels run the GPU's TF32 convolutions (the float32 path always uses the gather kernels).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ConvKernels {
    /// The gather kernels: every layer, the kernels measured on an H100 (parity and speed in docs/benchmarks.md).
    #[default]
    Gather,
    /// The staged kernels (`conv3x3_tf32p_*`, `conv3x3_tf32s_*`: inputs staged in shared memory by asynchronous
    /// copies) wherever a layer's shape allows them; needs sm_80.
    Staged,
    /// Per layer, whichever is fastest on this GPU of the gather and staged kernels, on the upsampling layers each
    /// both phased and folded, timed once per batch size on the first use; a candidate whose output disagrees
    /// with the reference's (the gather kernel, upsampling as asked) is not used.
    Tuned,
}

/// How the GPU runs the layers that upsample (nearest x2) before their 3 x 3 convolution (`Conv0_up` of every
/// stage from 8 x 8 up, about two thirds of the network's multiply-adds).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum UpsampleConv {
    /// As four 2 x 2 convolutions over the input grid, one per output phase, with the taps that read the same input
    /// pixel summed into one weight: 4 multiply-adds per output and input channel instead of 9, the same result
    /// (checked in the CPU emulation of the kernels; speed not yet measured on a GPU).
    #[default]
    Phased,
    /// The upsample folded into the 3 x 3 convolution's input indexing (the configuration timed on an H100 in
    /// docs/benchmarks.md).
    Folded,
}

/// How the GPU queues a forward pass.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GpuLaunch {
    /// Captured once per batch size as a CUDA graph and replayed with one call: one host call instead of one per
    /// kernel, and shorter gaps between the kernels at batch 1. Should the capture fail, the kernels are queued one by
    /// one instead, with one warning saying why (speed not yet measured on a GPU).
    #[default]
    Graph,
    /// Each kernel queued on the stream in turn (the configuration timed on an H100 in docs/benchmarks.md).
    Stream,
}

/// Everything that chooses how the GPU runs the generator (the image is the same up to the TF32 rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuSettings {
    pub kernels: ConvKernels,
    pub upsample: UpsampleConv,
    pub launch: GpuLaunch,
}

/// A generator on the CPU or the GPU.
pub enum Backend {
    Cpu(cpu::CpuGenerator),
    #[cfg(feature = "cuda")]
    Cuda(Box<cuda::CudaGenerator>),
    /// For the tests of what happens when a GPU fails or computes wrongly: for `passes_before_failure` passes the
    /// CPU's images times `1 + scale_error` (float32 precision), then the error a failed GPU (device lost, memory
    /// taken) gives.
    #[cfg(test)]
    TestGpu {
        cpu: cpu::CpuGenerator,
        passes_before_failure: usize,
        scale_error: f32,
    },
}

impl Backend {
    /// Opens the backend `device` asks for, on GPU `gpu_index` (CUDA's numbering) where it is a GPU; `auto` falls
    /// back to the CPU with one warning naming the reason.
    pub fn open(
        model: std::sync::Arc<model::PgganModel>,
        device: DeviceChoice,
        gpu_index: usize,
        algorithm: cpu::CpuAlgorithm,
        precision: Precision,
    ) -> Result<Backend, GenerateError> {
        #[cfg(feature = "cuda")]
        {
            if device != DeviceChoice::Cpu {
                match cuda::CudaGenerator::new(model.clone(), precision, gpu_index) {
                    Ok(g) => return Ok(Backend::Cuda(Box::new(g))),
                    Err(e) if device == DeviceChoice::Cuda => return Err(e),
                    Err(e) => tracing::warn!("GPU not used, generating on the CPU: {e} (`hyper-rt gpu-info` checks the set-up)"),
                }
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (precision, gpu_index);
            if device == DeviceChoice::Cuda {
                return Err(GenerateError::Cuda(
                    "this build has no CUDA support (cargo feature `cuda`)".into(),
                ));
            }
            if device == DeviceChoice::Auto {
                tracing::warn!(
                    "GPU not used, generating on the CPU: this build has no CUDA support"
                );
            }
        }
        Ok(Backend::Cpu(cpu::CpuGenerator::new(model, algorithm)))
    }

    /// Sets how the GPU runs (see [`GpuSettings`]); the CPU has its own algorithms and ignores them.
    pub fn use_gpu_settings(&mut self, settings: GpuSettings) -> Result<(), GenerateError> {
        match self {
            #[cfg(feature = "cuda")]
            Backend::Cuda(g) => g.use_settings(settings),
            _ => {
                let _ = settings;
                Ok(())
            }
        }
    }

    /// Generates float32 NCHW images.
    pub fn generate(&mut self, latents: &[f32]) -> Result<Vec<f32>, GenerateError> {
        match self {
            Backend::Cpu(g) => g.generate(latents),
            #[cfg(feature = "cuda")]
            Backend::Cuda(g) => g.generate(latents),
            #[cfg(test)]
            Backend::TestGpu {
                cpu,
                passes_before_failure,
                scale_error,
            } => match passes_before_failure.checked_sub(1) {
                Some(left) => {
                    *passes_before_failure = left;
                    Ok(cpu
                        .generate(latents)?
                        .into_iter()
                        .map(|v| v * (1.0 + *scale_error))
                        .collect())
                }
                None => Err(GenerateError::Cuda(
                    "launching conv3x3_f32_n64: an illegal memory access was encountered (test)"
                        .into(),
                )),
            },
        }
    }

    /// Generates images as packed `0x00RRGGBB` display pixels `[N, H, W]` (the 8-bit conversion of the float
    /// images; the GPU writes them itself and only they are downloaded).
    pub fn generate_display(&mut self, latents: &[f32]) -> Result<Vec<u32>, GenerateError> {
        match self {
            #[cfg(feature = "cuda")]
            Backend::Cuda(g) => g.generate_display(latents),
            _ => {
                let side = self.model().resolution;
                let images = self.generate(latents)?;
                Ok((0..images.len() / (3 * side * side).max(1))
                    .flat_map(|i| image_0rgb(&images, i, side))
                    .collect())
            }
        }
    }

    /// Draws one image, so that buffers, lazily loaded kernels and caches are ready before the first real one (the
    /// live pipeline does this before the scanner connects; `generate` and `eval`, on a GPU only, through
    /// [`Backend::check_gpu_against_cpu`]).
    /// On a GPU that image is also drawn on the CPU (direct path) and the two compared ([`gpu_parity_bound`]): the
    /// kernels have been checked on few GPU models, and a wrong image would be worse than a slower one. With
    /// `auto`, a GPU that fails the image or disagrees with the CPU is replaced by the CPU, with one warning naming
    /// the reason, as when it cannot be opened; with `cuda` either is an error.
    pub fn warm_up(
        &mut self,
        device: DeviceChoice,
        algorithm: cpu::CpuAlgorithm,
    ) -> Result<(), GenerateError> {
        let mut rng = crate::rng::Rng::new(1);
        let latent: Vec<f32> = (0..self.model().latent_size)
            .map(|_| rng.normal() as f32)
            .collect();
        let image = if device == DeviceChoice::Auto {
            let (drawn, fell_back) =
                self.draw_falling_back_to_cpu(algorithm, |b| b.generate(&latent));
            if let Some((gpu, e)) = fell_back {
                tracing::warn!("GPU not used, generating on the CPU: {gpu} failed its first image: {e} (`hyper-rt gpu-info --check` checks the set-up)");
            }
            drawn?
        } else {
            self.generate(&latent)?
        };
        let Some((model, precision)) = self.gpu_model_and_precision() else {
            return Ok(());
        };
        let reference =
            cpu::CpuGenerator::new(model.clone(), cpu::CpuAlgorithm::Direct).generate(&latent)?;
        let (difference, bound) = (relative_l2(&image, &reference), gpu_parity_bound(precision));
        if difference <= bound {
            tracing::info!("{}: its first image agrees with the CPU's (relative L2 {difference:.1e}, bound {bound:e})", self.describe());
            return Ok(());
        }
        let disagrees = GenerateError::GpuDisagrees {
            gpu: self.describe(),
            difference,
            bound,
        };
        if device != DeviceChoice::Auto {
            return Err(disagrees);
        }
        tracing::warn!("GPU not used, generating on the CPU: {disagrees}");
        *self = Backend::Cpu(cpu::CpuGenerator::new(model, algorithm));
        Ok(())
    }

    /// On a GPU, [`Backend::warm_up`] for its check against the CPU (for commands that need no warm frame); on the
    /// CPU nothing.
    pub fn check_gpu_against_cpu(
        &mut self,
        device: DeviceChoice,
        algorithm: cpu::CpuAlgorithm,
    ) -> Result<(), GenerateError> {
        match self.gpu_model_and_precision() {
            Some(_) => self.warm_up(device, algorithm),
            None => Ok(()),
        }
    }

    /// Runs `draw` on this backend. When it fails on the GPU (a CUDA error: the device lost, its memory taken),
    /// the GPU is replaced by the CPU on the same network (with `algorithm`) and `draw` runs again there. Returns
    /// the result and, when the backend moved, the GPU's description and its error. A failure on the CPU is
    /// returned as it is.
    pub fn draw_falling_back_to_cpu<T>(
        &mut self,
        algorithm: cpu::CpuAlgorithm,
        mut draw: impl FnMut(&mut Backend) -> Result<T, GenerateError>,
    ) -> (Result<T, GenerateError>, Option<(String, GenerateError)>) {
        match draw(self) {
            Err(gpu_error @ GenerateError::Cuda(_)) => match self.gpu_model_and_precision() {
                Some((model, _)) => {
                    let gpu = self.describe();
                    *self = Backend::Cpu(cpu::CpuGenerator::new(model, algorithm));
                    (draw(self), Some((gpu, gpu_error)))
                }
                None => (Err(gpu_error), None),
            },
            drawn => (drawn, None),
        }
    }

    /// The model a GPU backend runs and its precision; `None` on the CPU.
    fn gpu_model_and_precision(&self) -> Option<(std::sync::Arc<model::PgganModel>, Precision)> {
        match self {
            Backend::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Backend::Cuda(g) => Some((g.shared_model(), g.precision())),
            #[cfg(test)]
            Backend::TestGpu { cpu, .. } => Some((cpu.shared_model(), Precision::F32)),
        }
    }

    /// The model being run.
    pub fn model(&self) -> &model::PgganModel {
        match self {
            Backend::Cpu(g) => g.model(),
            #[cfg(feature = "cuda")]
            Backend::Cuda(g) => g.model(),
            #[cfg(test)]
            Backend::TestGpu { cpu, .. } => cpu.model(),
        }
    }

    /// "CPU (2 threads, winograd)" or "GPU 0, NVIDIA H100 80GB HBM3 (tf32)".
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu(g) => format!(
                "CPU ({} threads, {:?})",
                rayon::current_num_threads(),
                g.algorithm()
            ),
            #[cfg(feature = "cuda")]
            Backend::Cuda(g) => format!(
                "GPU {}, {} ({:?})",
                g.gpu_index(),
                g.device_name(),
                g.precision()
            ),
            #[cfg(test)]
            Backend::TestGpu { .. } => "GPU 0, a test stand-in".to_string(),
        }
    }
}

/// Loads the model from a checkpoint file, or the built-in random network when `weights` is `None`.
pub fn load_model(weights: Option<&Path>) -> Result<model::PgganModel, GenerateError> {
    match weights {
        Some(path) => model::PgganModel::from_checkpoint(&weights::Checkpoint::load(path)?),
        None => Ok(model::PgganModel::builtin_random()),
    }
}

/// The official 8-bit conversion of one value.
#[inline]
pub fn to_u8(x: f32) -> u8 {
    (((x + 1.0) / 2.0 * 255.0).round_ties_even()).clamp(0.0, 255.0) as u8
}

/// One image of an NCHW batch as interleaved RGB bytes (`[H, W, 3]`).
pub fn image_rgb8(nchw: &[f32], index: usize, side: usize) -> Vec<u8> {
    let plane = side * side;
    let img = &nchw[index * 3 * plane..(index + 1) * 3 * plane];
    let mut out = Vec::with_capacity(3 * plane);
    for p in 0..plane {
        for c in 0..3 {
            out.push(to_u8(img[c * plane + p]));
        }
    }
    out
}

/// One image as packed `0x00RRGGBB` pixels, as minifb takes them.
pub fn image_0rgb(nchw: &[f32], index: usize, side: usize) -> Vec<u32> {
    let plane = side * side;
    let img = &nchw[index * 3 * plane..(index + 1) * 3 * plane];
    (0..plane)
        .map(|p| {
            (u32::from(to_u8(img[p])) << 16)
                | (u32::from(to_u8(img[plane + p])) << 8)
                | u32::from(to_u8(img[2 * plane + p]))
        })
        .collect()
}

/// Packed `0x00RRGGBB` pixels as interleaved RGB bytes (`[H, W, 3]`, as [`image_rgb8`] gives them).
pub fn rgb8_from_0rgb(packed: &[u32]) -> Vec<u8> {
    packed
        .iter()
        .flat_map(|&p| [(p >> 16) as u8, (p >> 8) as u8, p as u8])
        .collect()
}

/// Writes an RGB image as PNG.
pub fn write_png(path: &Path, rgb: &[u8], side: usize) -> Result<(), GenerateError> {
    let io = |e: image::ImageError| GenerateError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    };
    let img =
        image::RgbImage::from_raw(side as u32, side as u32, rgb.to_vec()).ok_or_else(|| {
            GenerateError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("buffer size"),
            }
        })?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bit_conversion_follows_the_official_formula() {
        // rint rounds half to even: (x + 1) / 2 * 255 = 127.5 -> 128, 0.5 -> 0, 1.5 -> 2
        assert_eq!(to_u8(0.0), 128);
        assert_eq!(to_u8(1.0 / 255.0 - 1.0), 0);
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(3.0), 255);
        assert_eq!(to_u8(-7.0), 0);
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn packed_pixels_match_the_rgb_bytes() {
        let nchw = vec![
            -1.0, 1.0, 0.0, 0.5, 1.0, -1.0, 0.2, 0.3, 0.0, 0.0, 0.9, -0.9,
        ];
        let rgb = image_rgb8(&nchw, 0, 2);
        let packed = image_0rgb(&nchw, 0, 2);
        for p in 0..4 {
            assert_eq!(
                packed[p],
                (rgb[3 * p] as u32) << 16 | (rgb[3 * p + 1] as u32) << 8 | rgb[3 * p + 2] as u32
            );
        }
        assert_eq!(rgb8_from_0rgb(&packed), rgb);
    }

    #[test]
    fn a_gpu_that_fails_its_first_image_is_replaced_by_the_cpu_only_under_auto() {
        let model = std::sync::Arc::new(model::PgganModel::builtin_random());
        let gpu = |passes_before_failure, scale_error| Backend::TestGpu {
            cpu: cpu::CpuGenerator::new(model.clone(), cpu::CpuAlgorithm::Winograd),
            passes_before_failure,
            scale_error,
        };
        let mut auto = gpu(0, 0.0);
        auto.warm_up(DeviceChoice::Auto, cpu::CpuAlgorithm::Direct)
            .unwrap();
        assert!(
            matches!(&auto, Backend::Cpu(g) if g.algorithm() == cpu::CpuAlgorithm::Direct),
            "{}",
            auto.describe()
        );
        let mut cuda = gpu(0, 0.0);
        let e = cuda
            .warm_up(DeviceChoice::Cuda, cpu::CpuAlgorithm::Direct)
            .unwrap_err();
        assert!(
            matches!(e, GenerateError::Cuda(_)) && matches!(cuda, Backend::TestGpu { .. }),
            "{e}"
        );
        // a GPU that draws and agrees with the CPU is kept: Winograd against the direct path, and a scale error
        // within the float32 bound
        for scale_error in [0.0, 3e-6] {
            let mut working = gpu(1, scale_error);
            working
                .warm_up(DeviceChoice::Auto, cpu::CpuAlgorithm::Direct)
                .unwrap();
            assert!(
                matches!(working, Backend::TestGpu { .. }),
                "a GPU that draws right is kept ({scale_error})"
            );
        }
    }

    #[test]
    fn a_gpu_whose_first_image_differs_from_the_cpus_is_not_used() {
        let model = std::sync::Arc::new(model::PgganModel::builtin_random());
        let wrong = || Backend::TestGpu {
            cpu: cpu::CpuGenerator::new(model.clone(), cpu::CpuAlgorithm::Direct),
            passes_before_failure: usize::MAX,
            scale_error: 2e-5,
        };
        let mut auto = wrong();
        auto.warm_up(DeviceChoice::Auto, cpu::CpuAlgorithm::Winograd)
            .unwrap();
        assert!(
            matches!(&auto, Backend::Cpu(g) if g.algorithm() == cpu::CpuAlgorithm::Winograd),
            "{}",
            auto.describe()
        );
        let mut cuda = wrong();
        let e = cuda
            .warm_up(DeviceChoice::Cuda, cpu::CpuAlgorithm::Winograd)
            .unwrap_err();
        let GenerateError::GpuDisagrees {
            difference, bound, ..
        } = e
        else {
            panic!("{e}")
        };
        assert!(
            (difference - 2e-5).abs() < 1e-6 && bound == 1e-5,
            "{difference} {bound}"
        );
        assert!(
            e.to_string()
                .starts_with("GPU 0, a test stand-in: its image differs from the CPU's by 2.00e-5"),
            "{e}"
        );
        assert!(matches!(cuda, Backend::TestGpu { .. }));
    }

    #[test]
    fn relative_l2_is_nan_when_an_output_is() {
        assert_eq!(relative_l2(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_l2(&[3.0, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-12);
        assert!(relative_l2(&[f32::NAN, 4.0], &[3.0, 4.0]).is_nan());
    }

    #[test]
    fn the_display_pixels_are_the_float_images_8_bit_conversion() {
        let model = std::sync::Arc::new(model::PgganModel::builtin_random());
        let mut backend = Backend::Cpu(cpu::CpuGenerator::new(
            model.clone(),
            cpu::CpuAlgorithm::Winograd,
        ));
        let mut rng = crate::rng::Rng::new(3);
        let z: Vec<f32> = (0..2 * model.latent_size)
            .map(|_| rng.normal() as f32)
            .collect();
        let images = backend.generate(&z).unwrap();
        let side = model.resolution;
        let want: Vec<u32> = (0..2).flat_map(|i| image_0rgb(&images, i, side)).collect();
        let got = backend.generate_display(&z).unwrap();
        assert_eq!(got.len(), 2 * side * side);
        assert!(
            got == want,
            "the display pixels differ from the float images' conversion"
        );
        assert_eq!(
            rgb8_from_0rgb(&got[side * side..]),
            image_rgb8(&images, 1, side)
        );
    }
}
