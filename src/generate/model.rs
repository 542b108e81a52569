//! The PGGAN generator's architecture, derived from tensor names and shapes (never hard-coded to 1024), with the
//! equalized-learning-rate scale multiplied into every weight once at load time.
//!
//! Layouts after loading: 3 x 3 convolutions keep TensorFlow's HWIO order, which read as a matrix is
//! `[9 * Cin, Cout]` with row `k = (dy * 3 + dx) * Cin + ci`; `Conv0_up` (fused-scale checkpoints) is turned into
//! the equivalent nearest-upsample + 3 x 3 convolution (kernel flipped spatially, in/out swapped). The dense layer
//! is `[latent, 16 * C4]` with column `c * 16 + y * 4 + x`; ToRGB is `[C, 3]`.

use crate::generate::error::GenerateError;
use crate::generate::weights::Checkpoint;
use crate::rng::Rng;

/// One 3 x 3 convolution with bias, leaky ReLU and pixel norm after it.
#[derive(Debug, Clone)]
pub struct ConvLayer {
    pub name: String,
    pub cin: usize,
    pub cout: usize,
    /// Nearest-neighbour x2 upsample of the input first.
    pub upsample: bool,
    /// Effective weights `[9 * cin, cout]`, row `(dy * 3 + dx) * cin + ci`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

impl ConvLayer {
    /// For an upsampling layer, its weights as four 2 x 2 convolutions over the input grid, one per output phase
    /// `(a, b) = (y % 2, x % 2)` (the GPU's phased kernels, kernels/conv_common.cuh): `[4][4 * cin][cout]`, phase
    /// `a * 2 + b`, row `(t * 2 + u) * cin + ci`. Output pixel `(2i + a, 2j + b)` of the upsampled layer reads input
    /// row `i + a - 1 + t` and column `j + b - 1 + u`; the 3 x 3 taps `(dy, dx)` that land there are summed, those
    /// with `(a + dy - 1).div_euclid(2) = a - 1 + t` and the same for columns.
    pub fn phase_weights(&self) -> Vec<f32> {
        let (cin, cout) = (self.cin, self.cout);
        let two_by_two = 4 * cin * cout;
        let mut phased = vec![0.0f32; 4 * two_by_two];
        for phase in 0..4 {
            let (a, b) = ((phase >> 1) as isize, (phase & 1) as isize);
            for dy in 0..3isize {
                let t = (a + dy - 1).div_euclid(2) - (a - 1);
                for dx in 0..3isize {
                    let u = (b + dx - 1).div_euclid(2) - (b - 1);
                    let src = &self.weight[(dy * 3 + dx) as usize * cin * cout..][..cin * cout];
                    let dst = &mut phased[phase * two_by_two + (t * 2 + u) as usize * cin * cout..]
                        [..cin * cout];
                    for (d, &w) in dst.iter_mut().zip(src) {
                        *d += w;
                    }
                }
            }
        }
        phased
    }
}

/// The whole generator at lod 0.
#[derive(Debug, Clone)]
pub struct PgganModel {
    pub latent_size: usize,
    /// Output resolution (H = W).
    pub resolution: usize,
    /// Channels of the 4 x 4 block.
    pub c4: usize,
    /// Effective dense weights `[latent, 16 * c4]`.
    pub dense_weight: Vec<f32>,
    pub dense_bias: Vec<f32>,
    /// `4x4/Conv`, then `Conv0`, `Conv1` of each block from 8 x 8 up.
    pub convs: Vec<ConvLayer>,
    /// Effective ToRGB weights `[C, 3]`.
    pub to_rgb_weight: Vec<f32>,
    pub to_rgb_bias: Vec<f32>,
    /// What the network is, for logs and the window ("random weights: abstract textures, not faces").
    pub label: String,
}

/// `float32(gain / sqrt(fan_in))`, as the official code computes it.
pub fn wscale(gain: f64, fan_in: usize) -> f32 {
    (gain / (fan_in as f64).sqrt()) as f32
}

fn scaled(data: &[f32], scale: f32) -> Vec<f32> {
    data.iter().map(|v| v * scale).collect()
}

impl PgganModel {
    /// Derives the architecture from the checkpoint's names and shapes and checks every tensor.
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<PgganModel, GenerateError> {
        let arch = |message: String| GenerateError::Architecture {
            source_name: ck.source.clone(),
            message,
        };
        if let Some(lod) = ck.tensors.get("lod") {
            if lod.data.first().copied().unwrap_or(0.0) != 0.0 {
                return Err(arch(format!(
                    "lod = {}: only a finished model (lod 0) can be used",
                    lod.data[0]
                )));
            }
        }
        let dense_shape = ck.shape_of("4x4/Dense/weight")?.to_vec();
        if dense_shape.len() != 2 || dense_shape[1] % 16 != 0 || dense_shape[1] == 0 {
            return Err(GenerateError::Shape {
                source_name: ck.source.clone(),
                name: "4x4/Dense/weight".into(),
                expected: vec![dense_shape.first().copied().unwrap_or(512), 16 * 512],
                actual: dense_shape,
            });
        }
        let latent_size = dense_shape[0];
        let c4 = dense_shape[1] / 16;
        let dense = ck.get("4x4/Dense/weight", &[latent_size, 16 * c4])?;
        let dense_bias = ck.get("4x4/Dense/bias", &[c4])?.data.clone();
        let sqrt2 = std::f64::consts::SQRT_2;
        let dense_weight = scaled(&dense.data, wscale(sqrt2 / 4.0, latent_size));

        let mut convs = vec![conv_layer(ck, "4x4/Conv", c4, c4, false)?];
        // blocks from 8 x 8 while they exist; a gap (a higher block without the one below) is an error
        let mut resolution = 4;
        let mut cin = c4;
        loop {
            let r = resolution * 2;
            let prefix = format!("{r}x{r}");
            let conv1 = format!("{prefix}/Conv1/weight");
            if !ck.contains(&conv1) {
                break;
            }
            let cout = *ck.shape_of(&conv1)?.last().unwrap_or(&0);
            if ck.contains(&format!("{prefix}/Conv0_up/weight")) {
                convs.push(conv0_up_layer(
                    ck,
                    &format!("{prefix}/Conv0_up"),
                    cin,
                    cout,
                )?);
            } else {
                convs.push(conv_layer(ck, &format!("{prefix}/Conv0"), cin, cout, true)?);
            }
            convs.push(conv_layer(
                ck,
                &format!("{prefix}/Conv1"),
                cout,
                cout,
                false,
            )?);
            cin = cout;
            resolution = r;
        }
        for name in ck.tensors.keys() {
            if let Some((res, _)) = name.split_once('x') {
                if let Ok(r) = res.parse::<usize>() {
                    if r > resolution {
                        return Err(arch(format!(
                            "tensor {name} belongs to {r} x {r}, but the blocks stop at {resolution} x {resolution} (a block in between is missing)"
                        )));
                    }
                }
            }
        }
        let rgb = ck.get("ToRGB_lod0/weight", &[1, 1, cin, 3])?;
        let to_rgb_weight = scaled(&rgb.data, wscale(1.0, cin));
        let to_rgb_bias = ck.get("ToRGB_lod0/bias", &[3])?.data.clone();
        let label = match ck.metadata.get("source_file").map(String::as_str) {
            Some("random") | None => format!("random-weight PGGAN {resolution} x {resolution} from {}: abstract textures, not faces", ck.source),
            Some(file) => format!("PGGAN {resolution} x {resolution} converted from {file}"),
        };
        Ok(PgganModel {
            latent_size,
            resolution,
            c4,
            dense_weight,
            dense_bias,
            convs,
            to_rgb_weight,
            to_rgb_bias,
            label,
        })
    }

    /// The built-in default: a deterministic random-weight network (256 x 256, channels 128 down to 16), so the
    /// demo runs on a machine without the real checkpoint. It draws abstract textures, not faces.
    pub fn builtin_random() -> PgganModel {
        let ck = random_checkpoint(256, 2048, 128, 512, 2022);
        let mut model = PgganModel::from_checkpoint(&ck)
            .unwrap_or_else(|e| unreachable!("built-in network is valid: {e}"));
        model.label =
            "built-in random-weight network (256 x 256): abstract textures, not faces".into();
        model
    }

    /// Each convolution layer's output side, in layer order: 4 x 4 doubled at every upsampling layer (a layer's
    /// input side is its output side halved when it upsamples).
    pub fn layer_sides(&self) -> Vec<usize> {
        let mut side = 4usize;
        self.convs
            .iter()
            .map(|conv| {
                if conv.upsample {
                    side *= 2;
                }
                side
            })
            .collect()
    }

    /// Multiply-adds of one image (convolutions, dense and ToRGB): the network's cost, against which every
    /// implementation's speed is stated.
    pub fn macs_per_image(&self) -> f64 {
        self.macs_per_image_computed(false)
    }

    /// Multiply-adds one image actually takes, with the upsampling layers phased (`phased`: four 2 x 2
    /// convolutions over their input grid, [`ConvLayer::phase_weights`]) or as 3 x 3 convolutions.
    pub fn macs_per_image_computed(&self, phased: bool) -> f64 {
        let sides = self.layer_sides();
        let dense = (self.latent_size * 16 * self.c4) as f64;
        let taps = |conv: &ConvLayer| if phased && conv.upsample { 4 } else { 9 };
        let convs: f64 = self
            .convs
            .iter()
            .zip(&sides)
            .map(|(conv, &s)| (taps(conv) * conv.cin * conv.cout * s * s) as f64)
            .sum();
        let last = sides.last().copied().unwrap_or(4);
        dense + convs + (self.to_rgb_weight.len() * last * last) as f64
    }

    /// Channels of the last convolution.
    pub fn final_channels(&self) -> usize {
        self.convs.last().map(|c| c.cout).unwrap_or(self.c4)
    }
}

fn conv_layer(
    ck: &Checkpoint,
    prefix: &str,
    cin: usize,
    cout: usize,
    upsample: bool,
) -> Result<ConvLayer, GenerateError> {
    let w = ck.get(&format!("{prefix}/weight"), &[3, 3, cin, cout])?;
    let bias = ck.get(&format!("{prefix}/bias"), &[cout])?.data.clone();
    Ok(ConvLayer {
        name: prefix.to_string(),
        cin,
        cout,
        upsample,
        weight: scaled(&w.data, wscale(std::f64::consts::SQRT_2, 9 * cin)),
        bias,
    })
}

/// `Conv0_up` stores `[3, 3, Cout, Cin]` for a stride-2 transposed convolution; the same map is a nearest
/// upsample followed by a 3 x 3 cross-correlation with `k[dy, dx, ci, co] = w[2 - dy, 2 - dx, co, ci]`.
/// Its fan-in is `9 * Cin` (the official code passes it explicitly).
fn conv0_up_layer(
    ck: &Checkpoint,
    prefix: &str,
    cin: usize,
    cout: usize,
) -> Result<ConvLayer, GenerateError> {
    let w = ck.get(&format!("{prefix}/weight"), &[3, 3, cout, cin])?;
    let bias = ck.get(&format!("{prefix}/bias"), &[cout])?.data.clone();
    let scale = wscale(std::f64::consts::SQRT_2, 9 * cin);
    let mut weight = vec![0.0f32; 9 * cin * cout];
    for dy in 0..3 {
        for dx in 0..3 {
            for ci in 0..cin {
                for co in 0..cout {
                    let src = (((2 - dy) * 3 + (2 - dx)) * cout + co) * cin + ci;
                    weight[((dy * 3 + dx) * cin + ci) * cout + co] = w.data[src] * scale;
                }
            }
        }
    }
    Ok(ConvLayer {
        name: prefix.to_string(),
        cin,
        cout,
        upsample: true,
        weight,
        bias,
    })
}

/// `min(fmap_base / 2^stage, fmap_max)`, the official channel rule.
pub fn channels_at(stage: u32, fmap_base: usize, fmap_max: usize) -> usize {
    (fmap_base >> stage).min(fmap_max)
}

/// A random checkpoint with the official naming (weights N(0, 1) as with use_wscale, biases 0.1 N(0, 1)).
pub fn random_checkpoint(
    resolution: usize,
    fmap_base: usize,
    fmap_max: usize,
    latent_size: usize,
    seed: u64,
) -> Checkpoint {
    use super::weights::Tensor;
    let mut rng = Rng::new(seed);
    let mut ck = Checkpoint {
        source: format!("random(seed {seed})"),
        ..Default::default()
    };
    let mut put = |name: String, shape: Vec<usize>, std: f64| {
        let n = shape.iter().product();
        let data = (0..n).map(|_| (std * rng.normal()) as f32).collect();
        ck.tensors.insert(name, Tensor { shape, data });
    };
    let c4 = channels_at(1, fmap_base, fmap_max);
    put("4x4/Dense/weight".into(), vec![latent_size, 16 * c4], 1.0);
    put("4x4/Dense/bias".into(), vec![c4], 0.1);
    put("4x4/Conv/weight".into(), vec![3, 3, c4, c4], 1.0);
    put("4x4/Conv/bias".into(), vec![c4], 0.1);
    let mut cin = c4;
    let mut r = 8;
    let mut stage = 2;
    while r <= resolution {
        let c = channels_at(stage, fmap_base, fmap_max);
        put(format!("{r}x{r}/Conv0/weight"), vec![3, 3, cin, c], 1.0);
        put(format!("{r}x{r}/Conv0/bias"), vec![c], 0.1);
        put(format!("{r}x{r}/Conv1/weight"), vec![3, 3, c, c], 1.0);
        put(format!("{r}x{r}/Conv1/bias"), vec![c], 0.1);
        cin = c;
        r *= 2;
        stage += 1;
    }
    put("ToRGB_lod0/weight".into(), vec![1, 1, cin, 3], 1.0);
    put("ToRGB_lod0/bias".into(), vec![3], 0.1);
    ck.metadata.insert("source_file".into(), "random".into());
    ck
}

/// Loads the model from a checkpoint file, or the built-in random network when `weights` is `None`.
pub fn load_model(weights: Option<&std::path::Path>) -> Result<PgganModel, GenerateError> {
    match weights {
        Some(path) => PgganModel::from_checkpoint(&Checkpoint::load(path)?),
        None => Ok(PgganModel::builtin_random()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upsample + 3 x 3 convolution (zero padding) computed directly and as the four phases' 2 x 2 convolutions
    /// with [`ConvLayer::phase_weights`] give the same pre-activations.
    #[test]
    fn phase_weights_turn_the_upsampling_convolution_into_four_small_ones() {
        let (side_in, cin, cout) = (3usize, 2usize, 3usize);
        let mut rng = Rng::new(11);
        let layer = ConvLayer {
            name: "test".into(),
            cin,
            cout,
            upsample: true,
            weight: (0..9 * cin * cout).map(|_| rng.normal() as f32).collect(),
            bias: vec![0.0; cout],
        };
        let input: Vec<f32> = (0..side_in * side_in * cin)
            .map(|_| rng.normal() as f32)
            .collect();
        let at = |y: isize, x: isize, ci: usize| -> f64 {
            let inside = (0..side_in as isize).contains(&y) && (0..side_in as isize).contains(&x);
            if inside {
                f64::from(input[(y as usize * side_in + x as usize) * cin + ci])
            } else {
                0.0
            }
        };
        let side = 2 * side_in as isize;
        let phased = layer.phase_weights();
        assert_eq!(phased.len(), 16 * cin * cout);
        for y in 0..side {
            for x in 0..side {
                for co in 0..cout {
                    let mut direct = 0.0;
                    for dy in 0..3isize {
                        for dx in 0..3isize {
                            let (uy, ux) = (y + dy - 1, x + dx - 1); // in the upsampled image
                            if (0..side).contains(&uy) && (0..side).contains(&ux) {
                                for ci in 0..cin {
                                    let w = layer.weight
                                        [(((dy * 3 + dx) as usize) * cin + ci) * cout + co];
                                    direct += at(uy / 2, ux / 2, ci) * f64::from(w);
                                }
                            }
                        }
                    }
                    let (i, j, a, b) = (y / 2, x / 2, y % 2, x % 2);
                    let mut small = 0.0;
                    for t in 0..2isize {
                        for u in 0..2isize {
                            for ci in 0..cin {
                                let row = (a * 2 + b) as usize * 4 * cin
                                    + ((t * 2 + u) as usize) * cin
                                    + ci;
                                small += at(i + a - 1 + t, j + b - 1 + u, ci)
                                    * f64::from(phased[row * cout + co]);
                            }
                        }
                    }
                    assert!(
                        (direct - small).abs() < 1e-5,
                        "({y}, {x}, {co}): {direct} against {small}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_official_1024_shapes_give_the_published_cost() {
        let ck = random_checkpoint(1024, 8192, 512, 512, 1);
        let model = PgganModel::from_checkpoint(&ck).unwrap();
        assert_eq!(model.resolution, 1024);
        assert_eq!(model.final_channels(), 16);
        let params: usize = ck.tensors.values().map(|t| t.data.len()).sum();
        assert_eq!(params, 23_071_507); // the tensors used at lod 0
        assert_eq!(model.macs_per_image(), 42_672_848_896.0); // docs/pggan.md: dense + convolutions + ToRGB
                                                              // phased: the eight upsampling layers (27.33 G multiply-adds as 3 x 3) take 4/9 of theirs
        let upsampling: f64 = model
            .convs
            .iter()
            .zip(model.layer_sides())
            .filter(|(c, _)| c.upsample)
            .map(|(c, s)| (9 * c.cin * c.cout * s * s) as f64)
            .sum();
        assert_eq!(upsampling, 27_330_084_864.0);
        assert_eq!(
            model.macs_per_image_computed(true),
            42_672_848_896.0 - upsampling * 5.0 / 9.0
        );
    }

    #[test]
    fn missing_misshapen_and_non_finite_tensors_are_named() {
        let mut ck = random_checkpoint(16, 256, 32, 64, 1);
        ck.tensors.remove("8x8/Conv1/bias");
        let err = PgganModel::from_checkpoint(&ck).unwrap_err().to_string();
        assert!(err.contains("8x8/Conv1/bias"), "{err}");

        let mut ck = random_checkpoint(16, 256, 32, 64, 1);
        ck.tensors.get_mut("16x16/Conv0/weight").unwrap().shape = vec![3, 3, 32, 31];
        let err = PgganModel::from_checkpoint(&ck).unwrap_err().to_string();
        assert!(err.contains("16x16/Conv0/weight"), "{err}");

        let mut ck = random_checkpoint(16, 256, 32, 64, 1);
        ck.tensors.get_mut("4x4/Conv/weight").unwrap().data[5] = f32::NAN;
        let err = PgganModel::from_checkpoint(&ck).unwrap_err().to_string();
        assert!(
            err.contains("4x4/Conv/weight") && err.contains("not finite"),
            "{err}"
        );

        let mut ck = random_checkpoint(32, 256, 32, 64, 1);
        for name in [
            "16x16/Conv0/weight",
            "16x16/Conv0/bias",
            "16x16/Conv1/weight",
            "16x16/Conv1/bias",
        ] {
            ck.tensors.remove(name);
        }
        let err = PgganModel::from_checkpoint(&ck).unwrap_err().to_string();
        assert!(err.contains("32 x 32") && err.contains("missing"), "{err}");
    }
}
