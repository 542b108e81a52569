//! The GPU forward pass as a list of kernel launches, from the layers' plans ([`super::plan`]): the buffers each
//! kernel reads and writes, its integer arguments in order, its grid, and the sizes of the device buffers the whole
//! pass needs. The generator queues exactly these launches, `hyper-rt launch-plan` writes them out, and the emulated
//! kernel tests replay them on the CPU.

use super::plan::{
    gemm_view, ConvKind, ConvPlan, BK, GATHER_KERNELS, GATHER_RGB_KERNELS, PIPELINED_KERNELS,
    SPATIAL_KERNELS, SPATIAL_PHASED_KERNELS, SPATIAL_RGB_KERNEL, THREADS,
};
use crate::generate::model::PgganModel;
use crate::generate::settings::Precision;

/// A device buffer as the launches name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buf {
    /// The latents `[N, latent]`.
    Z,
    DenseWeight,
    DenseBias,
    /// Convolution layer `i`'s weights `[9 * Cin, Cout]` and bias.
    ConvWeight(usize),
    ConvBias(usize),
    /// Upsampling convolution layer `i`'s phase weights `[4][4 * Cin][Cout]` (phased plans).
    PhaseWeight(usize),
    RgbWeight,
    RgbBias,
    /// Activation buffers: 0 and 1 take turns as a layer's input and output, 2 holds split-K partial sums.
    Act(usize),
    /// The float image `[N, 3, H, W]` and the packed 0RGB display pixels `[N, H, W]` (u32).
    Image,
    Packed,
}

/// The split-K partial sums (also the dense layer's output before its finish).
pub const PARTIAL: Buf = Buf::Act(2);

impl Buf {
    /// The name `hyper-rt launch-plan` gives the buffer.
    pub fn name(self) -> String {
        match self {
            Buf::Z => "z".into(),
            Buf::DenseWeight => "dense_weight".into(),
            Buf::DenseBias => "dense_bias".into(),
            Buf::ConvWeight(i) => format!("conv{i}_weight"),
            Buf::ConvBias(i) => format!("conv{i}_bias"),
            Buf::PhaseWeight(i) => format!("conv{i}_phase_weight"),
            Buf::RgbWeight => "rgb_weight".into(),
            Buf::RgbBias => "rgb_bias".into(),
            Buf::Act(i) => format!("act{i}"),
            Buf::Image => "image".into(),
            Buf::Packed => "packed".into(),
        }
    }
}

/// One kernel launch: the kernel, its grid, its dynamic shared memory and its arguments in order (pointers first,
/// then integers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: (u32, u32, u32),
    pub threads: u32,
    pub shared_bytes: u32,
    /// Pointer arguments in the kernel's order, and whether the kernel writes the buffer.
    pub buffers: Vec<(Buf, bool)>,
    /// Integer arguments after the pointers: the ConvShape fields of a convolution kernel, which take them as one
    /// struct (`shape`), or the other kernels' int parameters.
    pub ints: Vec<i32>,
    pub ints_are_conv_shape: bool,
}

/// The launches of one layer, named as in the per-layer profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerLaunches {
    pub name: String,
    pub launches: Vec<Launch>,
}

/// The kernels' view of a convolution layer (kernels/conv_common.cuh `struct ConvShape`, field for field; passed by value).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub n_images: i32,
    pub side_in: i32,
    pub cin: i32,
    pub cout: i32,
    pub up: i32,
    pub side: i32,
    pub log2_side: i32,
    pub m_total: i32,
    pub k_total: i32,
    pub k_per_split: i32,
    pub fused: i32,
    pub phased: i32,
}

impl ConvShape {
    pub fn to_ints(self) -> Vec<i32> {
        vec![
            self.n_images,
            self.side_in,
            self.cin,
            self.cout,
            self.up,
            self.side,
            self.log2_side,
            self.m_total,
            self.k_total,
            self.k_per_split,
            self.fused,
            self.phased,
        ]
    }

    pub fn from_ints(ints: &[i32]) -> Option<ConvShape> {
        let [n_images, side_in, cin, cout, up, side, log2_side, m_total, k_total, k_per_split, fused, phased] =
            *ints
        else {
            return None;
        };
        Some(ConvShape {
            n_images,
            side_in,
            cin,
            cout,
            up,
            side,
            log2_side,
            m_total,
            k_total,
            k_per_split,
            fused,
            phased,
        })
    }
}

/// One convolution layer to launch: layer `index` of the model with its plan, for `batch` images.
#[derive(Debug, Clone, Copy)]
pub struct LayerLaunch {
    pub index: usize,
    pub cin: usize,
    pub cout: usize,
    pub upsample: bool,
    pub plan: ConvPlan,
    pub precision: Precision,
    pub batch: usize,
    /// Output side; the input's is half of it after an upsample.
    pub side: usize,
}

impl LayerLaunch {
    pub fn new(
        m: &PgganModel,
        index: usize,
        (side, plan): (usize, ConvPlan),
        precision: Precision,
        batch: usize,
    ) -> LayerLaunch {
        let c = &m.convs[index];
        LayerLaunch {
            index,
            cin: c.cin,
            cout: c.cout,
            upsample: c.upsample,
            plan,
            precision,
            batch,
            side,
        }
    }

    /// The input's side: half the output's after an upsample.
    pub fn side_in(&self) -> usize {
        self.side >> usize::from(self.upsample)
    }

    /// The kernels' view of the layer: a phased layer's GEMM rows are its input pixels, with 4 taps and no
    /// upsample in the indexing.
    pub fn shape(&self) -> ConvShape {
        let phased = self.plan.phased;
        let (_, grid_side, taps) = gemm_view(self.side, phased);
        ConvShape {
            n_images: self.batch as i32,
            side_in: self.side_in() as i32,
            cin: self.cin as i32,
            cout: self.cout as i32,
            up: i32::from(self.upsample && !phased),
            side: grid_side as i32,
            log2_side: grid_side.trailing_zeros() as i32,
            m_total: (self.batch * grid_side * grid_side) as i32,
            k_total: (taps * self.cin) as i32,
            k_per_split: self.plan.k_per_split as i32,
            fused: i32::from(self.plan.fused),
            phased: i32::from(phased),
        }
    }

    /// The convolution from `src` into `dst`: its kernel, and conv_finish_f32 from the partial sums when the plan
    /// is not fused.
    pub fn launches(&self, src: Buf, dst: Buf) -> Vec<Launch> {
        let plan = self.plan;
        let width = plan.bn.trailing_zeros() as usize - 4;
        let kernel = match plan.kind {
            ConvKind::Spatial if plan.phased => SPATIAL_PHASED_KERNELS[width],
            ConvKind::Spatial => SPATIAL_KERNELS[width],
            ConvKind::Pipelined => PIPELINED_KERNELS[width],
            ConvKind::Gather => {
                GATHER_KERNELS[usize::from(self.cin.is_multiple_of(BK))]
                    [usize::from(self.precision == Precision::Tf32)][width]
            }
        };
        let out = if plan.fused { dst } else { PARTIAL };
        let i = self.index;
        let weights = if plan.phased {
            Buf::PhaseWeight(i)
        } else {
            Buf::ConvWeight(i)
        };
        let mut launches = vec![Launch {
            kernel,
            grid: plan.grid,
            threads: THREADS,
            shared_bytes: plan.shared_bytes as u32,
            buffers: vec![
                (src, false),
                (weights, false),
                (Buf::ConvBias(i), false),
                (out, true),
            ],
            ints: self.shape().to_ints(),
            ints_are_conv_shape: true,
        }];
        if !plan.fused {
            launches.push(finish(
                Buf::ConvBias(i),
                dst,
                self.batch * self.side * self.side,
                self.cout,
                plan.splits,
            ));
        }
        launches
    }

    /// The kernel that runs this layer with ToRGB fused, if one can: a 16-channel layer whose plan finishes it
    /// (one split, one 16-wide tile) without upsampling, on the spatial kernel or the vector gather (Cin a
    /// multiple of 16).
    fn rgb_kernel(&self) -> Option<&'static str> {
        let plan = self.plan;
        if self.cout != 16 || plan.bn != 16 || !plan.fused || plan.phased {
            return None;
        }
        match plan.kind {
            ConvKind::Spatial => Some(SPATIAL_RGB_KERNEL),
            ConvKind::Gather if self.cin.is_multiple_of(BK) => {
                Some(GATHER_RGB_KERNELS[usize::from(self.precision == Precision::Tf32)])
            }
            _ => None,
        }
    }

    /// The last layer with ToRGB fused: writes the image and the display buffer, so its activations are never
    /// stored. `None` unless a kernel can ([`Self::rgb_kernel`]).
    pub fn launch_to_rgb(&self, src: Buf) -> Option<Launch> {
        let kernel = self.rgb_kernel()?;
        let i = self.index;
        Some(Launch {
            kernel,
            grid: self.plan.grid,
            threads: THREADS,
            shared_bytes: self.plan.shared_bytes as u32,
            buffers: vec![
                (src, false),
                (Buf::ConvWeight(i), false),
                (Buf::ConvBias(i), false),
                (Buf::RgbWeight, false),
                (Buf::RgbBias, false),
                (Buf::Image, true),
                (Buf::Packed, true),
            ],
            ints: self.shape().to_ints(),
            ints_are_conv_shape: true,
        })
    }
}

/// conv_finish_f32: sums `splits` partial results of `m_total` pixels x `channels`, adds `bias`, leaky ReLU and
/// pixel norm, into `dst`. One warp per pixel.
fn finish(bias: Buf, dst: Buf, m_total: usize, channels: usize, splits: usize) -> Launch {
    Launch {
        kernel: "conv_finish_f32",
        grid: (m_total.div_ceil((THREADS / 32) as usize) as u32, 1, 1),
        threads: THREADS,
        shared_bytes: 0,
        buffers: vec![(PARTIAL, false), (bias, false), (dst, true)],
        ints: vec![m_total as i32, channels as i32, splits as i32],
        ints_are_conv_shape: false,
    }
}

/// The 4 x 4 dense layer for `batch` latents in [`Buf::Z`]: latent pixel norm and the dense product into the partial
/// buffer, then bias, leaky ReLU and pixel norm by conv_finish_f32 into activation buffer 0.
pub fn dense_launches(m: &PgganModel, batch: usize) -> Vec<Launch> {
    let dense = Launch {
        kernel: "dense_f32",
        grid: (
            (16 * m.c4).div_ceil(THREADS as usize) as u32,
            batch as u32,
            1,
        ),
        threads: THREADS,
        shared_bytes: (m.latent_size * 4) as u32,
        buffers: vec![(Buf::Z, false), (Buf::DenseWeight, false), (PARTIAL, true)],
        ints: vec![m.latent_size as i32, m.c4 as i32],
        ints_are_conv_shape: false,
    };
    vec![
        dense,
        finish(Buf::DenseBias, Buf::Act(0), batch * 16, m.c4, 1),
    ]
}

/// The whole forward pass for `batch` latents in [`Buf::Z`] with the layers' `plans`: the 4 x 4 dense layer into
/// activation buffer 0, each convolution from one activation buffer into the other, then ToRGB (or the last layer
/// with ToRGB fused), grouped by layer.
pub fn forward_launches(
    m: &PgganModel,
    plans: &[(usize, ConvPlan)],
    precision: Precision,
    batch: usize,
) -> Vec<LayerLaunches> {
    let mut layers = vec![LayerLaunches {
        name: "4x4/Dense".into(),
        launches: dense_launches(m, batch),
    }];
    let mut fuse_rgb = false;
    let mut input = 0;
    for (index, (conv, &plan)) in m.convs.iter().zip(plans).enumerate() {
        let layer = LayerLaunch::new(m, index, plan, precision, batch);
        let fused_last = if index + 1 == plans.len() {
            layer.launch_to_rgb(Buf::Act(input))
        } else {
            None
        };
        fuse_rgb = fused_last.is_some();
        let launches = match fused_last {
            Some(launch) => vec![launch],
            None => layer.launches(Buf::Act(input), Buf::Act(1 - input)),
        };
        layers.push(LayerLaunches {
            name: conv.name.clone(),
            launches,
        });
        input = 1 - input;
    }
    // ToRGB: its own kernel, or (about) nothing when it ran inside the last layer
    let side = m.resolution;
    let to_rgb = Launch {
        kernel: "torgb_f32",
        grid: ((batch * side * side).div_ceil(256) as u32, 1, 1),
        threads: 256,
        shared_bytes: 0,
        buffers: vec![
            (Buf::Act(input), false),
            (Buf::RgbWeight, false),
            (Buf::RgbBias, false),
            (Buf::Image, true),
            (Buf::Packed, true),
        ],
        ints: vec![batch as i32, side as i32, m.final_channels() as i32],
        ints_are_conv_shape: false,
    };
    layers.push(LayerLaunches {
        name: "ToRGB_lod0".into(),
        launches: if fuse_rgb { Vec::new() } else { vec![to_rgb] },
    });
    layers
}

/// Element counts of the device buffers for `batch` images, large enough for every set of plans given (the tuning
/// runs two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BufferSizes {
    pub z: usize,
    /// Each of the two activation buffers.
    pub activations: usize,
    pub partial: usize,
    pub image: usize,
    pub packed: usize,
}

pub fn buffer_sizes(
    m: &PgganModel,
    plan_sets: &[Vec<(usize, ConvPlan)>],
    batch: usize,
) -> BufferSizes {
    let mut activations = batch * 16 * m.c4;
    let mut partial = batch * 16 * m.c4; // the dense layer's output goes through the finish kernel
    for plans in plan_sets {
        for (c, &(side, plan)) in m.convs.iter().zip(plans) {
            let pixels = batch * side * side;
            activations = activations.max(pixels * c.cout);
            if !plan.fused {
                partial = partial.max(plan.splits * pixels * c.cout);
            }
        }
    }
    let plane = m.resolution * m.resolution;
    BufferSizes {
        z: batch * m.latent_size,
        activations,
        partial,
        image: batch * 3 * plane,
        packed: batch * plane,
    }
}

impl BufferSizes {
    /// The element count of buffer `buf` (weights: the model's).
    pub fn of(&self, m: &PgganModel, buf: Buf) -> usize {
        match buf {
            Buf::Z => self.z,
            Buf::DenseWeight => m.dense_weight.len(),
            Buf::DenseBias => m.dense_bias.len(),
            Buf::ConvWeight(i) => m.convs.get(i).map_or(0, |c| c.weight.len()),
            Buf::ConvBias(i) => m.convs.get(i).map_or(0, |c| c.bias.len()),
            Buf::PhaseWeight(i) => m.convs.get(i).map_or(0, |c| 16 * c.cin * c.cout),
            Buf::RgbWeight => m.to_rgb_weight.len(),
            Buf::RgbBias => m.to_rgb_bias.len(),
            Buf::Act(2) => self.partial,
            Buf::Act(_) => self.activations,
            Buf::Image => self.image,
            Buf::Packed => self.packed,
        }
    }
}

/// The forward pass as JSON, for `hyper-rt launch-plan` and the emulated replay: every launch with its kernel,
/// grid, threads, shared bytes, buffer names and integer arguments, and every buffer's element count.
pub fn describe(
    m: &PgganModel,
    plans: &[(usize, ConvPlan)],
    precision: Precision,
    batch: usize,
) -> serde_json::Value {
    let sizes = buffer_sizes(m, &[plans.to_vec()], batch);
    let mut names = std::collections::BTreeMap::new();
    let layers: Vec<serde_json::Value> = forward_launches(m, plans, precision, batch)
        .into_iter()
        .map(|layer| {
            let launches: Vec<serde_json::Value> = layer
                .launches
                .iter()
                .map(|l| {
                    for &(buf, _) in &l.buffers {
                        names.insert(buf.name(), sizes.of(m, buf));
                    }
                    serde_json::json!({
                        "kernel": l.kernel,
                        "grid": [l.grid.0, l.grid.1, l.grid.2],
                        "threads": l.threads,
                        "shared_bytes": l.shared_bytes,
                        "buffers": l.buffers.iter().map(|(b, _)| b.name()).collect::<Vec<_>>(),
                        "writes": l.buffers.iter().filter(|(_, w)| *w).map(|(b, _)| b.name()).collect::<Vec<_>>(),
                        "ints": l.ints,
                    })
                })
                .collect();
            let kernels: Vec<&str> = layer.launches.iter().map(|l| l.kernel).collect();
            serde_json::json!({"layer": layer.name, "kernels": kernels, "launches": launches})
        })
        .collect();
    serde_json::json!({"batch": batch, "resolution": m.resolution, "latent_size": m.latent_size, "layers": layers, "buffer_sizes": names})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::cuda::plan::{layer_plans, KERNELS};
    use crate::generate::cuda::source::kernel_source;
    use crate::generate::model;

    /// `ConvShape`'s fields are kernels/conv_common.cuh's, in the same order.
    #[test]
    fn conv_shape_fields_match_the_kernel_source() {
        let src = kernel_source();
        let start = src
            .find("struct ConvShape {")
            .expect("struct ConvShape in kernels/conv_common.cuh");
        let body = &src[start..start + src[start..].find('}').expect("end of struct ConvShape")];
        let fields: Vec<&str> = body
            .lines()
            .skip(1)
            .flat_map(|l| l.split("//").next().unwrap_or("").split(';'))
            .filter_map(|decl| decl.trim().strip_prefix("int ").map(str::trim))
            .flat_map(|names| names.split(',').map(str::trim))
            .collect();
        let expected = [
            "n_images",
            "side_in",
            "cin",
            "cout",
            "up",
            "side",
            "log2_side",
            "m_total",
            "k_total",
            "k_per_split",
            "fused",
            "phased",
        ];
        assert_eq!(fields, expected);
        let shape = ConvShape::from_ints(&(1..=12).collect::<Vec<_>>()).expect("12 ints");
        assert_eq!(shape.to_ints(), (1..=12).collect::<Vec<_>>());
        assert_eq!(ConvShape::from_ints(&[1, 2]), None);
    }

    /// Every kernel a launch names is one the module exports.
    #[test]
    fn launches_name_exported_kernels() {
        let ck = model::random_checkpoint(64, 512, 128, 512, 3);
        let m = model::PgganModel::from_checkpoint(&ck).expect("a valid checkpoint");
        for (precision, staged) in [
            (Precision::F32, false),
            (Precision::Tf32, false),
            (Precision::Tf32, true),
        ] {
            for (batch, phased) in [(1, false), (3, false), (1, true), (3, true)] {
                for layer in forward_launches(
                    &m,
                    &layer_plans(&m, 132, batch, staged, phased),
                    precision,
                    batch,
                ) {
                    for l in &layer.launches {
                        assert!(KERNELS.contains(&l.kernel), "{}", l.kernel);
                    }
                }
            }
        }
    }

    #[test]
    fn the_staged_network_fuses_to_rgb_and_chains_its_buffers() {
        // 4..64 px with 128, 128, 64, 32, 16 channels: gather, pipelined and both spatial kernels
        let ck = model::random_checkpoint(64, 512, 128, 512, 3);
        let m = model::PgganModel::from_checkpoint(&ck).expect("a valid checkpoint");
        let plans = layer_plans(&m, 132, 1, true, false);
        let layers = forward_launches(&m, &plans, Precision::Tf32, 1);
        let kernels: Vec<&str> = layers
            .iter()
            .flat_map(|l| l.launches.iter().map(|x| x.kernel))
            .collect();
        for k in [
            "dense_f32",
            "conv_finish_f32",
            "conv3x3_tf32_n64_v",
            "conv3x3_tf32p_n64",
            "conv3x3_tf32s_n32",
            "conv3x3_tf32s_n16_rgb",
        ] {
            assert!(kernels.contains(&k), "{k} not in {kernels:?}");
        }
        assert!(
            !kernels.contains(&"torgb_f32"),
            "ToRGB runs inside the last layer"
        );
        // each layer reads what the previous one wrote
        let mut written = Buf::Act(0);
        for layer in &layers[1..layers.len() - 1] {
            let first = &layer.launches[0];
            assert_eq!(first.buffers[0], (written, false), "{}", layer.name);
            if let Some(&(out, _)) = layer
                .launches
                .last()
                .and_then(|l| l.buffers.iter().find(|(b, w)| *w && *b != PARTIAL))
            {
                written = out;
            }
        }
        // the gather network keeps ToRGB as its own kernel where the last layer is split (64 px at batch 1 on 132
        // multiprocessors), and fuses it where one split finishes the layer (on 4)
        let kernels = |sm_count: usize, precision: Precision| -> Vec<&'static str> {
            let layers = forward_launches(
                &m,
                &layer_plans(&m, sm_count, 1, false, false),
                precision,
                1,
            );
            layers
                .iter()
                .flat_map(|l| l.launches.iter().map(|x| x.kernel))
                .collect()
        };
        let split = kernels(132, Precision::Tf32);
        assert_eq!(
            split[split.len() - 2..],
            ["conv_finish_f32", "torgb_f32"],
            "{split:?}"
        );
        for (precision, fused) in [
            (Precision::Tf32, "conv3x3_tf32_n16_v_rgb"),
            (Precision::F32, "conv3x3_f32_n16_v_rgb"),
        ] {
            let one_split = kernels(4, precision);
            assert_eq!(one_split.last(), Some(&fused), "{one_split:?}");
            assert!(!one_split.contains(&"torgb_f32"), "{one_split:?}");
        }
    }

    /// Phased plans run exactly the upsampling layers on their phase weights, as four 2 x 2 convolutions over the
    /// input grid, with the finish kernel (when split) over the output's pixels.
    #[test]
    fn phased_plans_run_the_upsampling_layers_on_their_phase_weights() {
        let ck = model::random_checkpoint(64, 512, 128, 512, 3);
        let m = model::PgganModel::from_checkpoint(&ck).expect("a valid checkpoint");
        for staged in [false, true] {
            let plans = layer_plans(&m, 132, 2, staged, true);
            let layers = forward_launches(&m, &plans, Precision::Tf32, 2);
            for (i, ((conv, &(side, plan)), layer)) in
                m.convs.iter().zip(&plans).zip(&layers[1..]).enumerate()
            {
                assert_eq!(plan.phased, conv.upsample, "{}", conv.name);
                let first = &layer.launches[0];
                let weights = if conv.upsample {
                    Buf::PhaseWeight(i)
                } else {
                    Buf::ConvWeight(i)
                };
                assert_eq!(first.buffers[1], (weights, false), "{}", conv.name);
                let shape = ConvShape::from_ints(&first.ints).expect("a ConvShape");
                if conv.upsample {
                    let grid_side = (side / 2) as i32;
                    assert_eq!(
                        (shape.side, shape.up, shape.phased),
                        (grid_side, 0, 1),
                        "{}",
                        conv.name
                    );
                    assert_eq!(
                        (shape.m_total, shape.k_total),
                        (2 * grid_side * grid_side, 4 * conv.cin as i32)
                    );
                    let phases = if plan.kind == ConvKind::Spatial { 1 } else { 4 };
                    assert_eq!(plan.grid.2 as usize, phases * plan.splits);
                    let spatial = SPATIAL_PHASED_KERNELS.contains(&first.kernel);
                    assert_eq!(spatial, plan.kind == ConvKind::Spatial, "{}", first.kernel);
                }
                if let Some(finish) = layer.launches.get(1) {
                    assert_eq!(
                        finish.ints,
                        vec![
                            (2 * side * side) as i32,
                            conv.cout as i32,
                            plan.splits as i32
                        ]
                    );
                }
            }
            let sizes = buffer_sizes(&m, &[plans], 2);
            assert_eq!(
                sizes.of(&m, Buf::PhaseWeight(1)),
                m.convs[1].phase_weights().len()
            );
        }
    }
}
