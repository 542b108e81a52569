//! The generator on the CPU: the exact forward pass of `docs/pggan.md` in float32, channels-last.
//!
//! Activations are stored `[H, W, C]` (channels last). Each 3 x 3 convolution processes bands of output rows:
//! the band's patches are gathered into a `[pixels, 9 * Cin]` matrix (the nearest-neighbour upsample is folded
//! into this gather, so the upsampled tensor is never stored), multiplied by the `[9 * Cin, Cout]` weights with a
//! packed SIMD GEMM (`gemm` crate), and bias, leaky ReLU and pixel norm are applied to the band while it is still in
//! cache. Bands run in parallel on the rayon pool; layers too small to split run the GEMM itself in parallel.
//! That is the `direct` algorithm, and the default `winograd` one's path for layers below 32 x 32; larger layers run
//! Winograd F(4x4, 3x3) (`winograd.rs`, with AVX2 kernels in `winograd_avx2.rs`), the last one with the 1 x 1 ToRGB
//! layer fused in. A forward pass alternates between two activation buffers kept across calls.

pub mod ops;
pub mod tiles;
pub mod winograd;
#[cfg(target_arch = "x86_64")]
mod winograd_avx2;

use self::ops::{conv3x3, dense_block, to_rgb};
use self::winograd::WinogradLayer;
use crate::generate::error::GenerateError;
use crate::generate::model::PgganModel;

/// How the CPU computes 3 x 3 convolutions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CpuAlgorithm {
    /// Gathered patches times the weights: the plain float32 sum, closest to the float64 reference.
    Direct,
    /// Winograd F(4x4, 3x3) (4 times fewer multiplications) for layers from 32 x 32 up, direct for the smaller
    /// ones.
    Winograd,
}

/// Layers this wide use Winograd. Smaller ones have too few tiles to repay the 4-times-larger transformed
/// weights (measured: docs/benchmarks.md).
const WINOGRAD_SIDES: std::ops::RangeInclusive<usize> = 32..=1024;

enum Plan {
    Direct,
    Winograd(WinogradLayer),
}

/// Runs a [`PgganModel`] on the CPU.
pub struct CpuGenerator {
    model: std::sync::Arc<PgganModel>,
    plans: Vec<Plan>,
    algorithm: CpuAlgorithm,
    /// The two activation buffers a forward pass alternates between, kept across calls: the 1024 x 1024
    /// layers' 64 MiB buffers would otherwise be mapped and page-faulted afresh for every image.
    activations: std::sync::Mutex<(Vec<f32>, Vec<f32>)>,
}

impl CpuGenerator {
    /// Prepares the layers (Winograd weight transforms happen here, once).
    pub fn new(model: std::sync::Arc<PgganModel>, algorithm: CpuAlgorithm) -> CpuGenerator {
        let plans = model
            .convs
            .iter()
            .zip(model.layer_sides())
            .map(|(layer, side)| {
                if algorithm == CpuAlgorithm::Winograd && WINOGRAD_SIDES.contains(&side) {
                    Plan::Winograd(WinogradLayer::new(layer, &tiles::F4))
                } else {
                    Plan::Direct
                }
            })
            .collect();
        CpuGenerator {
            model,
            plans,
            algorithm,
            activations: std::sync::Mutex::new((Vec::new(), Vec::new())),
        }
    }

    pub fn algorithm(&self) -> CpuAlgorithm {
        self.algorithm
    }

    pub fn model(&self) -> &PgganModel {
        &self.model
    }

    /// The model, shared (for another generator on the same network).
    pub fn shared_model(&self) -> std::sync::Arc<PgganModel> {
        self.model.clone()
    }

    /// Generates `latents.len() / latent_size` images; returns float32 NCHW `[N, 3, H, W]`.
    pub fn generate(&self, latents: &[f32]) -> Result<Vec<f32>, GenerateError> {
        let latent = self.model.latent_size;
        if latents.is_empty() || !latents.len().is_multiple_of(latent) {
            return Err(GenerateError::Latent {
                expected: latent,
                actual: latents.len(),
            });
        }
        let res = self.model.resolution;
        let mut out = Vec::with_capacity(latents.len() / latent * 3 * res * res);
        for z in latents.chunks_exact(latent) {
            out.extend_from_slice(&self.forward_one(z));
        }
        Ok(out)
    }

    /// Seconds spent in each layer for one latent (dense, each convolution by name, ToRGB), for profiling.
    pub fn layer_times(&self, z: &[f32]) -> Result<Vec<(String, f64)>, GenerateError> {
        if z.len() != self.model.latent_size {
            return Err(GenerateError::Latent {
                expected: self.model.latent_size,
                actual: z.len(),
            });
        }
        let mut times = Vec::new();
        self.forward(z, &mut |name, secs| times.push((name.to_string(), secs)));
        Ok(times)
    }

    /// Convolution layer `index` alone on `input` (`[batch, side_in, side_in, Cin]` channels last), on the direct
    /// path: the reference of the GPU's per-layer parity test. Returns `[batch, side, side, Cout]`.
    pub fn run_layer(
        &self,
        index: usize,
        input: &[f32],
        batch: usize,
    ) -> Result<Vec<f32>, GenerateError> {
        let layer = self
            .model
            .convs
            .get(index)
            .ok_or_else(|| GenerateError::Architecture {
                source_name: self.model.label.clone(),
                message: format!("no convolution layer {index}"),
            })?;
        let side_in = self.model.layer_sides()[index] >> usize::from(layer.upsample);
        let per_image = side_in * side_in * layer.cin;
        if batch == 0 || per_image * batch != input.len() {
            return Err(GenerateError::Architecture {
                source_name: self.model.label.clone(),
                message: format!(
                    "layer {}: {} values are not {batch} images of {side_in} x {side_in} x {}",
                    layer.name,
                    input.len(),
                    layer.cin
                ),
            });
        }
        let mut out = Vec::new();
        let mut one = Vec::new();
        for image in input.chunks_exact(per_image) {
            conv3x3(image, side_in, layer, &mut one);
            out.extend_from_slice(&one);
        }
        Ok(out)
    }

    fn forward_one(&self, z: &[f32]) -> Vec<f32> {
        self.forward(z, &mut |_, _| {})
    }

    fn forward(&self, z: &[f32], on_layer: &mut dyn FnMut(&str, f64)) -> Vec<f32> {
        let m = &*self.model;
        // a second caller at the same time gets buffers of its own rather than waiting
        let mut own = (Vec::new(), Vec::new());
        let mut shared = self.activations.try_lock().ok();
        let (act, next) = match shared.as_deref_mut() {
            Some((a, b)) => (a, b),
            None => (&mut own.0, &mut own.1),
        };
        let t = std::time::Instant::now();
        dense_block(m, z, act);
        on_layer("4x4/Dense", t.elapsed().as_secs_f64());
        let mut side = 4usize;
        let last = m.convs.len().saturating_sub(1);
        for (index, (layer, plan)) in m.convs.iter().zip(&self.plans).enumerate() {
            let t = std::time::Instant::now();
            if let (true, Plan::Winograd(w)) = (index == last, plan) {
                let mut rgb = Vec::new();
                if winograd::conv3x3_to_rgb(
                    act,
                    side,
                    w,
                    &m.to_rgb_weight,
                    &m.to_rgb_bias,
                    &mut rgb,
                )
                .is_some()
                {
                    on_layer(&layer.name, t.elapsed().as_secs_f64());
                    on_layer("ToRGB_lod0 (fused into the last convolution)", 0.0);
                    return rgb;
                }
            }
            side = match plan {
                Plan::Direct => conv3x3(act, side, layer, next),
                Plan::Winograd(w) => winograd::conv3x3(act, side, w, next),
            };
            on_layer(&layer.name, t.elapsed().as_secs_f64());
            std::mem::swap(act, next);
        }
        let t = std::time::Instant::now();
        let rgb = to_rgb(act, side, m);
        on_layer("ToRGB_lod0", t.elapsed().as_secs_f64());
        rgb
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::model::random_checkpoint;

    /// One layer run alone: a batch equals its images run one by one, the layer's output has the next layer's
    /// input shape, and inputs of the wrong size are refused with the layer's name.
    #[test]
    fn a_layer_runs_alone_on_a_batch() {
        let model = std::sync::Arc::new(
            PgganModel::from_checkpoint(&random_checkpoint(16, 256, 32, 32, 3))
                .expect("a valid checkpoint"),
        );
        let g = CpuGenerator::new(model.clone(), CpuAlgorithm::Direct);
        let layer = model
            .convs
            .iter()
            .position(|c| c.upsample)
            .expect("an upsampling layer");
        let (cin, cout) = (model.convs[layer].cin, model.convs[layer].cout);
        let side_in = 4 << model.convs[..layer].iter().filter(|c| c.upsample).count();
        let per_image = side_in * side_in * cin;
        let input: Vec<f32> = (0..2 * per_image)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let both = g.run_layer(layer, &input, 2).expect("runs");
        assert_eq!(both.len(), 2 * 4 * side_in * side_in * cout);
        let first = g.run_layer(layer, &input[..per_image], 1).expect("runs");
        let second = g.run_layer(layer, &input[per_image..], 1).expect("runs");
        assert_eq!(both, [first, second].concat());
        let err = g
            .run_layer(layer, &input[..per_image - 1], 1)
            .expect_err("a short input")
            .to_string();
        assert!(err.contains(&model.convs[layer].name), "{err}");
        assert!(g.run_layer(model.convs.len(), &input, 2).is_err());
    }
}
