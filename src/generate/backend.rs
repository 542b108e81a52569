//! The generator the commands use: on the CPU, or on a GPU behind [`GpuGenerator`] (our CUDA kernels; in tests a
//! stand-in that fails or draws wrongly on purpose). It opens the device asked for, falling back to the CPU under
//! `--device auto`; checks a GPU's first image against the CPU's before trusting it; and hands a GPU that fails
//! mid-run over to the CPU on the same network.

use std::sync::Arc;

use crate::generate::cpu::{CpuAlgorithm, CpuGenerator};
use crate::generate::error::GenerateError;
use crate::generate::gpu::GpuGenerator;
use crate::generate::image::image_0rgb;
use crate::generate::model::PgganModel;
use crate::generate::parity::{gpu_parity_bound, relative_l2};
use crate::generate::settings::{DeviceChoice, GpuSettings, Precision};

/// A generator on the CPU or a GPU.
pub enum Backend {
    Cpu(CpuGenerator),
    Gpu(Box<dyn GpuGenerator>),
}

impl Backend {
    /// Opens the backend `device` asks for, on GPU `gpu_index` (CUDA's numbering) where it is a GPU; `auto` falls
    /// back to the CPU with one warning naming the reason.
    pub fn open(
        model: Arc<PgganModel>,
        device: DeviceChoice,
        gpu_index: usize,
        algorithm: CpuAlgorithm,
        precision: Precision,
    ) -> Result<Backend, GenerateError> {
        if device != DeviceChoice::Cpu {
            match open_gpu(model.clone(), precision, gpu_index) {
                Ok(g) => return Ok(Backend::Gpu(g)),
                Err(e) if device == DeviceChoice::Cuda => return Err(e),
                Err(e) => tracing::warn!("GPU not used, generating on the CPU: {e} (`hyper-rt gpu-info` checks the set-up)"),
            }
        }
        Ok(Backend::Cpu(CpuGenerator::new(model, algorithm)))
    }

    /// Sets how the GPU runs (see [`GpuSettings`]); the CPU has its own algorithms and ignores them.
    pub fn use_gpu_settings(&mut self, settings: GpuSettings) -> Result<(), GenerateError> {
        match self {
            Backend::Gpu(g) => g.use_settings(settings),
            Backend::Cpu(_) => Ok(()),
        }
    }

    /// Generates float32 NCHW images.
    pub fn generate(&mut self, latents: &[f32]) -> Result<Vec<f32>, GenerateError> {
        match self {
            Backend::Cpu(g) => g.generate(latents),
            Backend::Gpu(g) => g.generate(latents),
        }
    }

    /// Generates images as packed `0x00RRGGBB` display pixels `[N, H, W]` (the 8-bit conversion of the float
    /// images; the GPU writes them itself and only they are downloaded).
    pub fn generate_display(&mut self, latents: &[f32]) -> Result<Vec<u32>, GenerateError> {
        match self {
            Backend::Gpu(g) => g.generate_display(latents),
            Backend::Cpu(g) => {
                let side = g.model().resolution;
                let images = g.generate(latents)?;
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
        algorithm: CpuAlgorithm,
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
        let reference = CpuGenerator::new(model.clone(), CpuAlgorithm::Direct).generate(&latent)?;
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
        *self = Backend::Cpu(CpuGenerator::new(model, algorithm));
        Ok(())
    }

    /// On a GPU, [`Backend::warm_up`] for its check against the CPU (for commands that need no warm frame); on the
    /// CPU nothing.
    pub fn check_gpu_against_cpu(
        &mut self,
        device: DeviceChoice,
        algorithm: CpuAlgorithm,
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
        algorithm: CpuAlgorithm,
        mut draw: impl FnMut(&mut Backend) -> Result<T, GenerateError>,
    ) -> (Result<T, GenerateError>, Option<(String, GenerateError)>) {
        match draw(self) {
            Err(gpu_error @ GenerateError::Cuda(_)) => match self.gpu_model_and_precision() {
                Some((model, _)) => {
                    let gpu = self.describe();
                    *self = Backend::Cpu(CpuGenerator::new(model, algorithm));
                    (draw(self), Some((gpu, gpu_error)))
                }
                None => (Err(gpu_error), None),
            },
            drawn => (drawn, None),
        }
    }

    /// The model a GPU backend runs and its precision; `None` on the CPU.
    fn gpu_model_and_precision(&self) -> Option<(Arc<PgganModel>, Precision)> {
        match self {
            Backend::Cpu(_) => None,
            Backend::Gpu(g) => Some((g.shared_model(), g.precision())),
        }
    }

    /// The model being run.
    pub fn model(&self) -> Arc<PgganModel> {
        match self {
            Backend::Cpu(g) => g.shared_model(),
            Backend::Gpu(g) => g.shared_model(),
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
            Backend::Gpu(g) => g.describe(),
        }
    }
}

/// The CUDA generator on GPU `gpu_index`.
#[cfg(feature = "cuda")]
fn open_gpu(
    model: Arc<PgganModel>,
    precision: Precision,
    gpu_index: usize,
) -> Result<Box<dyn GpuGenerator>, GenerateError> {
    let generator =
        crate::generate::cuda::generator::CudaGenerator::new(model, precision, gpu_index)?;
    Ok(Box::new(generator))
}

/// A build without CUDA support has no GPU generator.
#[cfg(not(feature = "cuda"))]
fn open_gpu(
    _model: Arc<PgganModel>,
    _precision: Precision,
    _gpu_index: usize,
) -> Result<Box<dyn GpuGenerator>, GenerateError> {
    Err(crate::generate::error::CudaError::Unavailable(
        "this build has no CUDA support (cargo feature `cuda`)".into(),
    )
    .into())
}

/// A GPU stand-in for the tests of what happens when a GPU fails or computes wrongly: for `passes_before_failure`
/// passes it draws the CPU's images times `1 + scale_error` (its precision is float32), then fails as a lost GPU
/// (device lost, memory taken) does.
#[cfg(test)]
pub(crate) struct TestGpu {
    cpu: CpuGenerator,
    passes_before_failure: usize,
    scale_error: f32,
}

#[cfg(test)]
impl TestGpu {
    /// A backend on this stand-in, its CPU images drawn with `algorithm`.
    pub(crate) fn boxed(
        model: Arc<PgganModel>,
        algorithm: CpuAlgorithm,
        passes_before_failure: usize,
        scale_error: f32,
    ) -> Backend {
        Backend::Gpu(Box::new(TestGpu {
            cpu: CpuGenerator::new(model, algorithm),
            passes_before_failure,
            scale_error,
        }))
    }
}

#[cfg(test)]
impl GpuGenerator for TestGpu {
    fn generate(&mut self, latents: &[f32]) -> Result<Vec<f32>, GenerateError> {
        match self.passes_before_failure.checked_sub(1) {
            Some(left) => {
                self.passes_before_failure = left;
                let scale = 1.0 + self.scale_error;
                Ok(self
                    .cpu
                    .generate(latents)?
                    .into_iter()
                    .map(|v| v * scale)
                    .collect())
            }
            None => Err(crate::generate::error::CudaError::Driver {
                during: "launching conv3x3_f32_n64".into(),
                message: "an illegal memory access was encountered (test)".into(),
            }
            .into()),
        }
    }

    fn generate_display(&mut self, latents: &[f32]) -> Result<Vec<u32>, GenerateError> {
        let side = self.cpu.model().resolution;
        let images = self.generate(latents)?;
        Ok((0..images.len() / (3 * side * side))
            .flat_map(|i| image_0rgb(&images, i, side))
            .collect())
    }

    fn use_settings(&mut self, _settings: GpuSettings) -> Result<(), GenerateError> {
        Ok(())
    }

    fn shared_model(&self) -> Arc<PgganModel> {
        self.cpu.shared_model()
    }

    fn precision(&self) -> Precision {
        Precision::F32
    }

    fn describe(&self) -> String {
        "GPU 0, a test stand-in".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::image::{image_rgb8, rgb8_from_0rgb};

    #[test]
    fn a_gpu_that_fails_its_first_image_is_replaced_by_the_cpu_only_under_auto() {
        let model = std::sync::Arc::new(PgganModel::builtin_random());
        let gpu = |passes_before_failure, scale_error| {
            TestGpu::boxed(
                model.clone(),
                CpuAlgorithm::Winograd,
                passes_before_failure,
                scale_error,
            )
        };
        let mut auto = gpu(0, 0.0);
        auto.warm_up(DeviceChoice::Auto, CpuAlgorithm::Direct)
            .unwrap();
        assert!(
            matches!(&auto, Backend::Cpu(g) if g.algorithm() == CpuAlgorithm::Direct),
            "{}",
            auto.describe()
        );
        let mut cuda = gpu(0, 0.0);
        let e = cuda
            .warm_up(DeviceChoice::Cuda, CpuAlgorithm::Direct)
            .unwrap_err();
        assert!(
            matches!(e, GenerateError::Cuda(_)) && matches!(cuda, Backend::Gpu(_)),
            "{e}"
        );
        // a GPU that draws and agrees with the CPU is kept: Winograd against the direct path, and a scale error
        // within the float32 bound
        for scale_error in [0.0, 3e-6] {
            let mut working = gpu(1, scale_error);
            working
                .warm_up(DeviceChoice::Auto, CpuAlgorithm::Direct)
                .unwrap();
            assert!(
                matches!(working, Backend::Gpu(_)),
                "a GPU that draws right is kept ({scale_error})"
            );
        }
    }

    #[test]
    fn a_gpu_whose_first_image_differs_from_the_cpus_is_not_used() {
        let model = std::sync::Arc::new(PgganModel::builtin_random());
        let wrong = || TestGpu::boxed(model.clone(), CpuAlgorithm::Direct, usize::MAX, 2e-5);
        let mut auto = wrong();
        auto.warm_up(DeviceChoice::Auto, CpuAlgorithm::Winograd)
            .unwrap();
        assert!(
            matches!(&auto, Backend::Cpu(g) if g.algorithm() == CpuAlgorithm::Winograd),
            "{}",
            auto.describe()
        );
        let mut cuda = wrong();
        let e = cuda
            .warm_up(DeviceChoice::Cuda, CpuAlgorithm::Winograd)
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
        assert!(matches!(cuda, Backend::Gpu(_)));
    }

    #[test]
    fn the_display_pixels_are_the_float_images_8_bit_conversion() {
        let model = std::sync::Arc::new(PgganModel::builtin_random());
        let mut backend = Backend::Cpu(CpuGenerator::new(model.clone(), CpuAlgorithm::Winograd));
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
