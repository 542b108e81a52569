//! The GPU forward pass as a list of kernel launches, computed without a GPU: which kernel runs each layer (its
//! `ConvPlan`: family, tile, split-K, grid, shared memory), the kernel's arguments in order, and the sizes of the
//! device buffers. `super::cuda` queues exactly these launches; `hyper-rt launch-plan` writes them out, and the
//! emulated kernel tests replay them on the CPU against the NumPy reference, so the host's side of every launch
//! (grids, shapes, split-K, buffer chaining, the fused last layer, buffer sizes) is checked in CI, not only on a
//! lent GPU.
//!
//! Activations are channels-last `[N, H, W, C]`; weights are the model's effective weights (`[9 * Cin, Cout]`), and
//! for phased layers (an upsampling layer run as four 2 x 2 convolutions, see kernels/conv.cu) their phase weights
//! ([`super::model::ConvLayer::phase_weights`]).

use super::model::PgganModel;
use super::Precision;

/// Threads per block of every kernel.
pub const THREADS: u32 = 256;
/// K slice depth of the gather kernels conv3x3_{f32,tf32}_* (kernels/conv.cu `BK`).
const BK: usize = 16;
/// K slice depth of the pipelined kernels conv3x3_tf32p_* (kernels/conv.cu `PIPE_BK`).
const PIPE_BK: usize = 32;
/// Every gather tile holds BM x BN = 4096 outputs (see kernels/conv.cu).
const TILE_OUTPUTS: usize = 4096;

/// The gather kernels by [vectorised gather (Cin a multiple of 16)][precision f32, tf32][tile width 16, 32, 64].
const GATHER_KERNELS: [[[&str; 3]; 2]; 2] = [
    [
        ["conv3x3_f32_n16", "conv3x3_f32_n32", "conv3x3_f32_n64"],
        ["conv3x3_tf32_n16", "conv3x3_tf32_n32", "conv3x3_tf32_n64"],
    ],
    [
        [
            "conv3x3_f32_n16_v",
            "conv3x3_f32_n32_v",
            "conv3x3_f32_n64_v",
        ],
        [
            "conv3x3_tf32_n16_v",
            "conv3x3_tf32_n32_v",
            "conv3x3_tf32_n64_v",
        ],
    ],
];
/// The pipelined TF32 kernels by tile width 16, 32, 64 (sm_80 and later).
const PIPELINED_KERNELS: [&str; 3] = [
    "conv3x3_tf32p_n16",
    "conv3x3_tf32p_n32",
    "conv3x3_tf32p_n64",
];
/// The spatial-tile TF32 kernels by tile width 16, 32 (sm_80 and later).
const SPATIAL_KERNELS: [&str; 2] = ["conv3x3_tf32s_n16", "conv3x3_tf32s_n32"];
/// Their variants for phased upsampling layers.
const SPATIAL_PHASED_KERNELS: [&str; 2] = ["conv3x3_tf32sp_n16", "conv3x3_tf32sp_n32"];
/// The 16-channel spatial kernel with ToRGB fused into its epilogue (the last layer).
const SPATIAL_RGB_KERNEL: &str = "conv3x3_tf32s_n16_rgb";
/// The 16-channel vector-gather kernels (Cin a multiple of 16) with ToRGB fused into their epilogue (the last
/// layer, one split), by precision f32, tf32.
const GATHER_RGB_KERNELS: [&str; 2] = ["conv3x3_f32_n16_v_rgb", "conv3x3_tf32_n16_v_rgb"];

/// Entry points the kernel module must export (kernels/*.cu).
pub const KERNELS: [&str; 25] = [
    "dense_f32",
    "conv3x3_f32_n64",
    "conv3x3_f32_n32",
    "conv3x3_f32_n16",
    "conv3x3_tf32_n64",
    "conv3x3_tf32_n32",
    "conv3x3_tf32_n16",
    "conv3x3_f32_n64_v",
    "conv3x3_f32_n32_v",
    "conv3x3_f32_n16_v",
    "conv3x3_tf32_n64_v",
    "conv3x3_tf32_n32_v",
    "conv3x3_tf32_n16_v",
    "conv3x3_tf32p_n16",
    "conv3x3_tf32p_n32",
    "conv3x3_tf32p_n64",
    "conv3x3_tf32s_n16",
    "conv3x3_tf32s_n32",
    "conv3x3_tf32s_n16_rgb",
    "conv3x3_f32_n16_v_rgb",
    "conv3x3_tf32_n16_v_rgb",
    "conv3x3_tf32sp_n16",
    "conv3x3_tf32sp_n32",
    "conv_finish_f32",
    "torgb_f32",
];

/// The tile width for a layer: the smallest of 16, 32, 64 that holds all its output channels (64 when none does).
fn tile_n(cout: usize) -> usize {
    match cout {
        0..=16 => 16,
        17..=32 => 32,
        _ => 64,
    }
}

/// The pipelined kernels' tiles by tile width 16, 32, 64: (BM, pipeline stages), as in kernels/conv.cu's
/// `PIPE_ENTRY` lines.
const PIPE_TILES: [(usize, usize); 3] = [(256, 2), (256, 2), (128, 3)];

/// The pipelined kernel of tile width `bn`: its BM and its dynamic shared memory in bytes (kernels/conv.cu
/// `PipeTile::SHARED_FLOATS`: per stage a [BM][PIPE_BK + 4] input slice and a [PIPE_BK][BN + 8] weight slice).
fn pipe_tile(bn: usize) -> (usize, usize) {
    let (bm, stages) = PIPE_TILES[bn.trailing_zeros() as usize - 4];
    (bm, 4 * stages * (bm * (PIPE_BK + 4) + PIPE_BK * (bn + 8)))
}

/// The spatial-tile kernels (kernels/conv.cu `SPATIAL_ENTRY`) by tile width 16, 32: (BN, WN).
const SPATIAL_TILES: [(usize, usize); 2] = [(16, 16), (32, 32)];
/// Output columns per spatial tile and input channels per chunk (kernels/conv.cu `SPATIAL_TW`, `SPATIAL_CC`).
const SPATIAL_TW: usize = 32;
const SPATIAL_CC: usize = 16;

/// The spatial-tile kernel of width `bn`: output rows per block and the bytes of one pipeline stage (kernels/conv.cu
/// `SpatialTile`: the (TH + 2) x (TW + 2) input patch with 16 + 4 floats per pixel, and the chunk's nine taps of
/// 16 weight rows of BN + 8 floats; `phased`: the (TH / 2 + 2) x (TW / 2 + 2) patch and 16 phase taps).
fn spatial_tile(bn: usize, phased: bool) -> (usize, usize) {
    let (bn, wn) = SPATIAL_TILES[bn.trailing_zeros() as usize - 4];
    let rows = (THREADS as usize / 32) / (bn / wn);
    let (patch_pixels, taps) = if phased {
        ((rows / 2 + 2) * (SPATIAL_TW / 2 + 2), 16)
    } else {
        ((rows + 2) * (SPATIAL_TW + 2), 9)
    };
    (
        rows,
        4 * (patch_pixels * (SPATIAL_CC + 4) + taps * SPATIAL_CC * (bn + 8)),
    )
}

/// The staged kernels and the most dynamic shared memory each may be launched with (over 48 KiB must be allowed
/// per function before the first launch).
pub fn staged_kernels_shared_bytes() -> Vec<(&'static str, usize)> {
    let pipelined = PIPELINED_KERNELS
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, pipe_tile(16 << i).1));
    let spatial = SPATIAL_KERNELS
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, 2 * spatial_tile(16 << i, false).1));
    let phased = SPATIAL_PHASED_KERNELS
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, 2 * spatial_tile(16 << i, true).1));
    pipelined
        .chain(spatial)
        .chain(phased)
        .chain(std::iter::once((
            SPATIAL_RGB_KERNEL,
            2 * spatial_tile(16, false).1,
        )))
        .collect()
}

/// Which kernel family runs a convolution layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// conv3x3_{f32,tf32}_*: the input gathered through registers, 16-deep K slices.
    Gather,
    /// conv3x3_tf32p_*: gathered with asynchronous copies, 32-deep K slices, several in flight.
    Pipelined,
    /// conv3x3_tf32s_*: a spatial tile's input patch staged once per channel chunk (narrow, high-resolution layers).
    Spatial,
}

impl ConvKind {
    pub fn label(self) -> &'static str {
        match self {
            ConvKind::Gather => "gather",
            ConvKind::Pipelined => "pipelined",
            ConvKind::Spatial => "spatial",
        }
    }
}

/// How one convolution layer is launched: which kernel family, its tile, its split-K, its grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvPlan {
    pub kind: ConvKind,
    /// Output pixels and channels per block.
    pub bm: usize,
    pub bn: usize,
    /// Dynamic shared memory per block (the pipelined and spatial kernels; the others use static shared memory).
    pub shared_bytes: usize,
    pub splits: usize,
    pub k_per_split: usize,
    /// One split and one N tile: the kernel's epilogue finishes the layer (no conv_finish_f32).
    pub fused: bool,
    /// An upsampling layer run as four 2 x 2 convolutions over its input grid, one per output phase: for the gather
    /// and pipelined kernels the GEMM's rows are input pixels, K is 4 * Cin, and the grid's z is splits x 4; the
    /// spatial kernel's grid stays over the output.
    pub phased: bool,
    pub grid: (u32, u32, u32),
}

/// A layer's GEMM view: (phases, side, taps): its rows cover the output grid of `side` pixels with the nine taps
/// of the 3 x 3 kernel, or, `phased`, the input grid (half the side) four times over, one phase each, with 4 taps.
fn gemm_view(side: usize, phased: bool) -> (usize, usize, usize) {
    if phased {
        (4, side / 2, 4)
    } else {
        (1, side, 9)
    }
}

impl ConvPlan {
    /// The plan for a layer of `batch` images of `side` x `side` output pixels; `phased`: the layer upsamples and
    /// runs as four 2 x 2 convolutions ([`ConvPlan::phased`]). With `staged` (TF32 on sm_80+), the narrow layers
    /// from 32 px up (Cout 16 or 32, Cin a multiple of 16) take the spatial kernel (its phased variant when phased)
    /// and the others with 16-byte rows (Cin and Cout multiples of 4) and at least one tile of pixels the pipelined
    /// one. Split-K: enough blocks to fill the GPU twice, at least four K slices per split.
    pub fn new(
        sm_count: usize,
        batch: usize,
        side: usize,
        cin: usize,
        cout: usize,
        staged: bool,
        phased: bool,
    ) -> ConvPlan {
        let (phases, grid_side, taps) = gemm_view(side, phased);
        let (m_total, k_total) = (batch * grid_side * grid_side, taps * cin);
        if staged
            && (cout == 16 || cout == 32)
            && cin.is_multiple_of(SPATIAL_CC)
            && side >= SPATIAL_TW
        {
            let (rows, stage_bytes) = spatial_tile(cout, phased);
            return ConvPlan {
                kind: ConvKind::Spatial,
                bm: rows * SPATIAL_TW,
                bn: cout,
                shared_bytes: (cin / SPATIAL_CC).min(2) * stage_bytes,
                splits: 1,
                k_per_split: k_total,
                fused: true,
                phased,
                grid: ((side / SPATIAL_TW * (side / rows)) as u32, batch as u32, 1),
            };
        }
        let bn = tile_n(cout);
        // the pipelined tiles are twice as tall: layers with fewer pixels than one tile (4 and 8 px at batch 1) keep
        // the gather kernel rather than computing mostly padding
        let fits = m_total >= pipe_tile(bn).0;
        let kind = if staged && cin.is_multiple_of(4) && cout.is_multiple_of(4) && fits {
            ConvKind::Pipelined
        } else {
            ConvKind::Gather
        };
        let (bm, bk, shared_bytes) = if kind == ConvKind::Pipelined {
            let (bm, shared_bytes) = pipe_tile(bn);
            (bm, PIPE_BK, shared_bytes)
        } else {
            (TILE_OUTPUTS / bn, BK, 0)
        };
        let tiles = phases * m_total.div_ceil(bm) * cout.div_ceil(bn);
        let k_slices = k_total.div_ceil(bk);
        let wanted = (2 * sm_count)
            .div_ceil(tiles)
            .clamp(1, (k_slices / 4).max(1));
        let k_per_split = k_slices.div_ceil(wanted) * bk;
        let splits = k_total.div_ceil(k_per_split);
        let grid = (
            m_total.div_ceil(bm) as u32,
            cout.div_ceil(bn) as u32,
            (phases * splits) as u32,
        );
        ConvPlan {
            kind,
            bm,
            bn,
            shared_bytes,
            splits,
            k_per_split,
            fused: splits == 1 && cout <= bn,
            phased,
            grid,
        }
    }
}

/// Each convolution layer's output side and plan for `batch` images, on the staged kernels where a layer's shape
/// allows (`staged`) or on the gather kernels, with the upsampling layers phased (`phased`) or not.
pub fn layer_plans(
    m: &PgganModel,
    sm_count: usize,
    batch: usize,
    staged: bool,
    phased: bool,
) -> Vec<(usize, ConvPlan)> {
    m.convs
        .iter()
        .zip(m.layer_sides())
        .map(|(c, side)| {
            (
                side,
                ConvPlan::new(
                    sm_count,
                    batch,
                    side,
                    c.cin,
                    c.cout,
                    staged,
                    phased && c.upsample,
                ),
            )
        })
        .collect()
}

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

/// The kernels' view of a convolution layer (kernels/conv.cu `struct ConvShape`, field for field; passed by value).
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
    use crate::generate::model;

    fn source() -> String {
        include_str!("../../kernels/conv.cu").to_string()
    }

    /// The tiles the host plans with are those kernels/conv.cu instantiates.
    #[test]
    fn pipelined_tiles_match_the_kernel_source() {
        let mut seen = 0;
        for line in source()
            .lines()
            .filter(|l| l.starts_with("PIPE_ENTRY(conv3x3_tf32p_n"))
        {
            let inner = line.trim_start_matches("PIPE_ENTRY(").trim_end_matches(')');
            let fields: Vec<usize> = inner
                .split(',')
                .skip(1)
                .map(|f| f.trim().parse().expect("a number"))
                .collect();
            let [bm, bn, _wm, _wn, stages] = fields[..] else {
                panic!("unexpected PIPE_ENTRY line: {line}")
            };
            assert!(
                inner.starts_with(&format!("conv3x3_tf32p_n{bn},")),
                "{line}"
            );
            assert_eq!(
                PIPE_TILES[bn.trailing_zeros() as usize - 4],
                (bm, stages),
                "{line}"
            );
            seen += 1;
        }
        assert_eq!(seen, 3);
    }

    /// The spatial kernels the host plans with are those kernels/conv.cu instantiates.
    #[test]
    fn spatial_tiles_match_the_kernel_source() {
        for prefix in [
            "SPATIAL_ENTRY(conv3x3_tf32s_n",
            "SPATIAL_PHASED_ENTRY(conv3x3_tf32sp_n",
        ] {
            let entries: Vec<(usize, usize)> = source()
                .lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .map(|rest| {
                    let fields: Vec<usize> = rest
                        .trim_end_matches(')')
                        .split(',')
                        .map(|f| f.trim().parse().expect("a number"))
                        .collect();
                    assert_eq!(fields[0], fields[1], "the entry's name is its BN");
                    (fields[1], fields[2])
                })
                .collect();
            assert_eq!(entries, SPATIAL_TILES, "{prefix}");
        }
        for needle in [
            format!("#define SPATIAL_TW {SPATIAL_TW} "),
            format!("#define SPATIAL_CC {SPATIAL_CC} "),
        ] {
            assert!(
                source().contains(&needle),
                "kernels/conv.cu lacks `{needle}`"
            );
        }
    }

    /// `ConvShape`'s fields are kernels/conv.cu's, in the same order.
    #[test]
    fn conv_shape_fields_match_the_kernel_source() {
        let src = source();
        let start = src
            .find("struct ConvShape {")
            .expect("struct ConvShape in kernels/conv.cu");
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

    #[test]
    fn plans_cover_k_once_and_fit_two_blocks_per_multiprocessor() {
        // every PGGAN 1024 layer (Cin, Cout, side) at batch 1 and 8, and channel counts the new kernels refuse
        let layers = [
            (512, 512, 4),
            (512, 512, 8),
            (512, 512, 32),
            (512, 256, 64),
            (256, 128, 128),
            (128, 64, 256),
            (64, 32, 512),
            (32, 32, 512),
            (32, 16, 1024),
            (16, 16, 1024),
            (3, 64, 8),
            (20, 24, 8),
            (12, 20, 16),
            (16, 16, 16),
        ];
        for (cin, cout, side) in layers {
            for batch in [1, 8] {
                for (staged, phased) in [
                    (false, false),
                    (true, false),
                    (false, side >= 8),
                    (true, side >= 8),
                ] {
                    let p = ConvPlan::new(132, batch, side, cin, cout, staged, phased);
                    let (phases, grid_side, taps) = if phased {
                        (4, side / 2, 4)
                    } else {
                        (1, side, 9)
                    };
                    let (m_total, k_total) = (batch * grid_side * grid_side, taps * cin);
                    assert_eq!(p.phased, phased);
                    let spatial =
                        staged && (cout == 16 || cout == 32) && cin % 16 == 0 && side >= 32;
                    let fits = m_total >= pipe_tile(tile_n(cout)).0;
                    let expected = match (
                        spatial,
                        staged && cin.is_multiple_of(4) && cout.is_multiple_of(4) && fits,
                    ) {
                        (true, _) => ConvKind::Spatial,
                        (false, true) => ConvKind::Pipelined,
                        (false, false) => ConvKind::Gather,
                    };
                    assert_eq!(p.kind, expected, "{cin}->{cout} at {side} px");
                    let bk = match p.kind {
                        ConvKind::Gather => BK,
                        ConvKind::Pipelined => PIPE_BK,
                        ConvKind::Spatial => k_total,
                    };
                    assert_eq!(p.k_per_split % bk, 0);
                    assert!(
                        p.splits * p.k_per_split >= k_total
                            && (p.splits - 1) * p.k_per_split < k_total
                    );
                    assert_eq!(p.fused, p.splits == 1 && cout <= p.bn);
                    assert!(p.bn >= cout.min(64));
                    // the grid's blocks cover every output pixel and channel exactly once per split
                    let (gx, gy, gz) = p.grid;
                    assert_eq!(
                        gz as usize,
                        if p.kind == ConvKind::Spatial {
                            1
                        } else {
                            phases * p.splits
                        }
                    );
                    let blocks_per_split = gx as usize * gy as usize;
                    match p.kind {
                        ConvKind::Spatial => {
                            assert_eq!(blocks_per_split * p.bm, batch * side * side)
                        }
                        _ => assert_eq!(
                            blocks_per_split,
                            m_total.div_ceil(p.bm) * cout.div_ceil(p.bn)
                        ),
                    }
                    // sm_80 and sm_90 give a block up to 227 KiB; two blocks per multiprocessor need under half
                    assert!(p.shared_bytes <= 113 * 1024, "{} bytes", p.shared_bytes);
                    assert_eq!(p.shared_bytes > 0, p.kind != ConvKind::Gather);
                }
            }
        }
    }
}
