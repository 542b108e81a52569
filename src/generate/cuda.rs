//! The generator on an NVIDIA GPU: our own kernels (`kernels/*.cu`), embedded in the binary, compiled with NVRTC
//! at start-up for the device's architecture (kept in the kernel cache, [`super::ptx_cache`]), and launched
//! through `cudarc` (driver loaded at run time, so the binary runs on machines without CUDA and falls back to the
//! CPU).
//!
//! Activations live on the device in channels-last `[N, H, W, C]` order, the same as the CPU path, and the
//! weights are the CPU model's effective weights (wscale applied; `[9 * Cin, Cout]`), uploaded once. Buffers are
//! allocated once per batch size and reused. Two precisions: float32 FMAs (exact path, compared with the CPU in
//! the parity tests) and TF32 tensor cores for the convolutions. Each convolution layer gets a `ConvPlan`: the
//! kernel family, its tile, split-K and grid. Which family runs the TF32 layers is [`ConvKernels`]: the gather
//! kernels (measured, the default), the staged ones (pipelined and spatial-tile) wherever a shape allows, or, per
//! layer, whichever is faster on this GPU ([`ConvKernels::Tuned`]: each candidate is timed once per batch size and
//! checked against the gather kernel's output before it is used).

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::model::PgganModel;
use super::{ConvKernels, GenerateError};
use crate::rng::Rng;

/// Kernel sources, concatenated into one NVRTC program (`common.cuh` first; the `#include` lines, which serve
/// standalone compilers, are dropped).
pub fn kernel_source() -> String {
    let parts = [
        include_str!("../../kernels/common.cuh"),
        include_str!("../../kernels/dense.cu"),
        include_str!("../../kernels/conv.cu"),
        include_str!("../../kernels/torgb.cu"),
    ];
    parts
        .iter()
        .flat_map(|p| p.lines())
        .filter(|l| !l.trim_start().starts_with("#include \"common.cuh\"") && l.trim() != "#pragma once")
        .collect::<Vec<_>>()
        .join("\n")
}

/// Entry points the module must export.
pub const KERNELS: [&str; 21] = [
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
    "conv_finish_f32",
    "torgb_f32",
];

/// NVRTC's name for a compute capability, e.g. `(9, 0)` -> `"compute_90"`.
pub fn arch_name(major: i32, minor: i32) -> Result<&'static str, GenerateError> {
    Ok(match (major, minor) {
        (7, 0) => "compute_70",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (10, 3) => "compute_103",
        (12, 0) => "compute_120",
        (12, 1) => "compute_121",
        _ => return Err(GenerateError::Cuda(format!("compute capability {major}.{minor} is not supported"))),
    })
}

/// NVRTC options besides the architecture (part of the kernel cache's key).
pub const NVRTC_OPTIONS: [&str; 1] = ["--std=c++17"];

/// Compiles the kernels to PTX for `arch` (e.g. `"compute_90"`); [`super::ptx_cache::kernels_ptx`] caches the result.
pub fn compile_ptx(arch: &'static str) -> Result<cudarc::nvrtc::Ptx, GenerateError> {
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        options: NVRTC_OPTIONS.iter().map(|o| o.to_string()).collect(),
        name: Some("pggan_kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(kernel_source(), opts).map_err(|e| GenerateError::Cuda(format!("NVRTC: {e}")))
}

/// Why CUDA cannot be used here, or `Ok` when the driver and NVRTC libraries load (cudarc panics on use otherwise).
pub fn probe() -> Result<(), String> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the NVIDIA driver library (libcuda) was not found".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("the NVRTC library (libnvrtc) was not found; set LD_LIBRARY_PATH to the CUDA toolkit's lib64".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("no CUDA device".into()),
        Err(e) => Err(format!("CUDA driver: {e}")),
    }
}

/// Arithmetic of the convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 FMAs: matches the CPU to about 1e-6 relative.
    F32,
    /// TF32 tensor cores (10-bit mantissa inputs, float32 accumulation).
    Tf32,
}

/// Must match `struct ConvShape` in kernels/conv.cu field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ConvShape {
    n_images: i32,
    side_in: i32,
    cin: i32,
    cout: i32,
    up: i32,
    side: i32,
    log2_side: i32,
    m_total: i32,
    k_total: i32,
    k_per_split: i32,
    fused: i32,
}

// SAFETY: plain old data with the C layout the kernel expects.
unsafe impl DeviceRepr for ConvShape {}

/// K slice depth of the conv3x3_{f32,tf32}_* kernels (kernels/conv.cu `BK`).
const BK: usize = 16;
/// K slice depth of the pipelined conv3x3_tf32p_* kernels (kernels/conv.cu `PIPE_BK`).
const PIPE_BK: usize = 32;
/// Largest batch one launch sequence takes (bounds the activation buffers); larger batches are split.
pub const MAX_BATCH: usize = 64;
const THREADS: u32 = 256;
/// Every convolution tile holds BM x BN = 4096 outputs (see kernels/conv.cu).
const TILE_OUTPUTS: usize = 4096;

/// The tile width for a layer: the smallest of 16, 32, 64 that holds all its output channels (64 when none does).
fn tile_n(cout: usize) -> usize {
    match cout {
        0..=16 => 16,
        17..=32 => 32,
        _ => 64,
    }
}

struct DeviceConv {
    name: String,
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
    cin: usize,
    cout: usize,
    upsample: bool,
}

/// Per-batch-size device buffers, reused across calls.
struct Buffers {
    batch: usize,
    /// Each convolution layer's output side and launch plan for this batch size.
    plans: Vec<(usize, ConvPlan)>,
    z: CudaSlice<f32>,
    ping: CudaSlice<f32>,
    pong: CudaSlice<f32>,
    partial: CudaSlice<f32>,
    image: CudaSlice<f32>,
    packed: CudaSlice<u32>,
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
/// 16 weight rows of BN + 8 floats).
fn spatial_tile(bn: usize) -> (usize, usize) {
    let (bn, wn) = SPATIAL_TILES[bn.trailing_zeros() as usize - 4];
    let rows = (THREADS as usize / 32) / (bn / wn);
    (rows, 4 * ((rows + 2) * (SPATIAL_TW + 2) * (SPATIAL_CC + 4) + 9 * SPATIAL_CC * (bn + 8)))
}

/// Which kernel family runs a convolution layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvKind {
    /// conv3x3_{f32,tf32}_*: the input gathered through registers, 16-deep K slices.
    Gather,
    /// conv3x3_tf32p_*: gathered with asynchronous copies, 32-deep K slices, several in flight.
    Pipelined,
    /// conv3x3_tf32s_*: a spatial tile's input patch staged once per channel chunk (narrow, high-resolution layers).
    Spatial,
}

impl ConvKind {
    fn label(self) -> &'static str {
        match self {
            ConvKind::Gather => "gather",
            ConvKind::Pipelined => "pipelined",
            ConvKind::Spatial => "spatial",
        }
    }
}

/// How one convolution layer is launched: which kernel, its tile, its split-K, its grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConvPlan {
    kind: ConvKind,
    /// Output pixels and channels per block.
    bm: usize,
    bn: usize,
    /// Dynamic shared memory per block (the pipelined and spatial kernels; the others use static shared memory).
    shared_bytes: usize,
    splits: usize,
    k_per_split: usize,
    /// One split and one N tile: the kernel's epilogue finishes the layer (no conv_finish_f32).
    fused: bool,
    grid: (u32, u32, u32),
}

impl ConvPlan {
    /// The plan for a layer of `batch` images of `side` x `side` output pixels. With `staged` (TF32 on sm_80+),
    /// the narrow layers from 32 px up (Cout 16 or 32, Cin a multiple of 16) take the spatial kernel and the others
    /// with 16-byte rows (Cin and Cout multiples of 4) and at least one tile of pixels the pipelined one. Split-K:
    /// enough blocks to fill the GPU twice, at least four K slices per split.
    fn new(sm_count: usize, batch: usize, side: usize, cin: usize, cout: usize, staged: bool) -> ConvPlan {
        let (m_total, k_total) = (batch * side * side, 9 * cin);
        if staged && (cout == 16 || cout == 32) && cin % SPATIAL_CC == 0 && side >= SPATIAL_TW {
            let (rows, stage_bytes) = spatial_tile(cout);
            return ConvPlan {
                kind: ConvKind::Spatial,
                bm: rows * SPATIAL_TW,
                bn: cout,
                shared_bytes: (cin / SPATIAL_CC).min(2) * stage_bytes,
                splits: 1,
                k_per_split: k_total,
                fused: true,
                grid: ((side / SPATIAL_TW * (side / rows)) as u32, batch as u32, 1),
            };
        }
        let bn = tile_n(cout);
        // the pipelined tiles are twice as tall: layers with fewer pixels than one tile (4 and 8 px at batch 1) keep
        // the gather kernel rather than computing mostly padding
        let fits = m_total >= pipe_tile(bn).0;
        let kind = if staged && cin % 4 == 0 && cout % 4 == 0 && fits { ConvKind::Pipelined } else { ConvKind::Gather };
        let (bm, bk, shared_bytes) = if kind == ConvKind::Pipelined {
            let (bm, shared_bytes) = pipe_tile(bn);
            (bm, PIPE_BK, shared_bytes)
        } else {
            (TILE_OUTPUTS / bn, BK, 0)
        };
        let tiles = m_total.div_ceil(bm) * cout.div_ceil(bn);
        let k_slices = k_total.div_ceil(bk);
        let wanted = (2 * sm_count).div_ceil(tiles).clamp(1, (k_slices / 4).max(1));
        let k_per_split = k_slices.div_ceil(wanted) * bk;
        let splits = k_total.div_ceil(k_per_split);
        let grid = (m_total.div_ceil(bm) as u32, cout.div_ceil(bn) as u32, splits as u32);
        ConvPlan { kind, bm, bn, shared_bytes, splits, k_per_split, fused: splits == 1 && cout <= bn, grid }
    }
}

/// How closely a staged kernel's output must agree with the gather kernel's (relative L2, both TF32, which differ by
/// about 1e-3 in summation order) for the tuning to use it: the parity tests' bound for TF32 images.
const TUNING_AGREEMENT: f64 = 1e-2;
/// A staged kernel replaces the gather kernel only when it is at least this much faster (the timing's noise is
/// about 1 %): a tie keeps the measured kernel and the same choice from run to run.
const TUNING_MIN_GAIN: f64 = 0.02;

/// One batch size's tuned plans and the measurements behind them.
struct Tuning {
    plans: Vec<(usize, ConvPlan)>,
    layers: Vec<LayerChoice>,
}

/// What the tuning measured on one convolution layer, and the kernel it chose.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerChoice {
    pub layer: String,
    /// Milliseconds per launch of the gather kernel (with its split-K finish where it has one).
    pub gather_ms: f64,
    /// The staged kernel the layer's shape allows ("pipelined" or "spatial"), if any.
    pub staged_kernel: Option<&'static str>,
    pub staged_ms: Option<f64>,
    /// Relative L2 difference of the staged kernel's output from the gather kernel's (the batch's first image).
    pub staged_difference: Option<f64>,
    /// The kernel family used: "gather", "pipelined" or "spatial".
    pub chosen: &'static str,
    pub reason: String,
}

/// Whether a layer's staged kernel replaces its gather kernel, and why. `staged` is the staged kernel's
/// milliseconds and relative difference from the gather kernel's output, or why they could not be measured.
fn prefer_staged(gather_ms: f64, staged: &Result<(f64, f64), String>) -> (bool, String) {
    match staged {
        Err(why) => (false, format!("the staged kernel failed: {why}")),
        Ok((_, diff)) if diff.is_nan() || *diff > TUNING_AGREEMENT => {
            (false, format!("the staged kernel disagrees with the gather kernel: relative L2 {diff:.2e} > {TUNING_AGREEMENT:e}"))
        }
        Ok((ms, _)) if *ms < gather_ms * (1.0 - TUNING_MIN_GAIN) => (true, format!("{:.2}x faster", gather_ms / ms)),
        Ok((ms, _)) => (false, format!("the staged kernel is not faster ({ms:.4} ms against {gather_ms:.4} ms)")),
    }
}

/// Relative L2 difference of `a` from `reference` (NaN anywhere makes it NaN).
fn relative_l2(a: &[f32], reference: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(reference) {
        num += (f64::from(*x) - f64::from(*y)).powi(2);
        den += f64::from(*y).powi(2);
    }
    (num / den).sqrt()
}

/// The first `n` values of a device buffer.
fn download_head(stream: &Arc<CudaStream>, buf: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>, GenerateError> {
    let view = buf.try_slice(..n).ok_or_else(|| GenerateError::Cuda(format!("buffer of {} values, {n} wanted", buf.len())))?;
    stream.clone_dtoh(&view).map_err(cuda_err("downloading a layer's output"))
}

/// Milliseconds per call of `launch` (which queues work on `stream`): the best of three rounds of three calls.
fn time_launches(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    mut launch: impl FnMut() -> Result<(), GenerateError>,
) -> Result<f64, GenerateError> {
    const ROUNDS: usize = 3;
    const CALLS: usize = 3;
    let event = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda_err("creating an event"));
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let (start, end) = (event()?, event()?);
        start.record(stream).map_err(cuda_err("recording an event"))?;
        for _ in 0..CALLS {
            launch()?;
        }
        end.record(stream).map_err(cuda_err("recording an event"))?;
        stream.synchronize().map_err(cuda_err("synchronising"))?;
        best = best.min(f64::from(start.elapsed_ms(&end).map_err(cuda_err("reading an event"))?) / CALLS as f64);
    }
    Ok(best)
}

/// The loaded kernels.
struct Kernels {
    dense: CudaFunction,
    /// Indexed by [vectorised gather][precision][tile width 16, 32, 64].
    conv: [[[CudaFunction; 3]; 2]; 2],
    /// The pipelined TF32 kernels by tile width 16, 32, 64 (sm_80 and later).
    pipelined: [CudaFunction; 3],
    /// The spatial-tile TF32 kernels by tile width 16, 32 (sm_80 and later).
    spatial: [CudaFunction; 2],
    /// The 16-channel spatial kernel with ToRGB fused into its epilogue (the last layer).
    spatial_rgb: CudaFunction,
    finish: CudaFunction,
    torgb: CudaFunction,
}

/// One convolution layer to launch: the layer, its plan, the batch, its input and output sides.
struct LayerLaunch<'a> {
    conv: &'a DeviceConv,
    plan: ConvPlan,
    precision: Precision,
    batch: usize,
    side_in: usize,
    side: usize,
}

impl LayerLaunch<'_> {
    /// The kernels' view of the layer (kernels/conv.cu `ConvShape`).
    fn shape(&self) -> ConvShape {
        let m_total = self.batch * self.side * self.side;
        ConvShape {
            n_images: self.batch as i32,
            side_in: self.side_in as i32,
            cin: self.conv.cin as i32,
            cout: self.conv.cout as i32,
            up: i32::from(self.conv.upsample),
            side: self.side as i32,
            log2_side: self.side.trailing_zeros() as i32,
            m_total: m_total as i32,
            k_total: (9 * self.conv.cin) as i32,
            k_per_split: self.plan.k_per_split as i32,
            fused: i32::from(self.plan.fused),
        }
    }
}

impl Kernels {
    /// Queues the 4 x 4 dense layer (latent pixel norm, dense, then bias, leaky ReLU and pixel norm in the finish
    /// kernel) from the latents `z` into `out`, through `partial`.
    #[allow(clippy::too_many_arguments)]
    fn launch_dense(
        &self,
        stream: &Arc<CudaStream>,
        m: &PgganModel,
        batch: usize,
        z: &CudaSlice<f32>,
        (weight, bias): (&CudaSlice<f32>, &CudaSlice<f32>),
        partial: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), GenerateError> {
        let launch_err = cuda_err("launching a kernel");
        let (latent, c4) = (m.latent_size as i32, m.c4 as i32);
        let cfg = LaunchConfig {
            grid_dim: ((16 * m.c4).div_ceil(THREADS as usize) as u32, batch as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: (m.latent_size * 4) as u32,
        };
        let mut b = stream.launch_builder(&self.dense);
        b.arg(z).arg(weight).arg(&mut *partial).arg(&latent).arg(&c4);
        // SAFETY: arguments match dense_f32's signature; partial holds at least batch * 16 * c4 floats.
        unsafe { b.launch(cfg) }.map_err(&launch_err)?;
        let (mt, sp) = ((batch * 16) as i32, 1i32);
        let cfg = LaunchConfig { grid_dim: ((batch * 16).div_ceil(8) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut b = stream.launch_builder(&self.finish);
        b.arg(&*partial).arg(bias).arg(out).arg(&mt).arg(&c4).arg(&sp);
        // SAFETY: arguments match conv_finish_f32's signature.
        unsafe { b.launch(cfg) }.map_err(&launch_err)?;
        Ok(())
    }

    /// Queues the last layer with ToRGB fused (a 16-channel spatial plan): writes the float image and the packed
    /// display buffer, not the activations.
    fn launch_conv_to_rgb(
        &self,
        stream: &Arc<CudaStream>,
        layer: &LayerLaunch,
        src: &CudaSlice<f32>,
        (rgb_weight, rgb_bias): (&CudaSlice<f32>, &CudaSlice<f32>),
        image: &mut CudaSlice<f32>,
        packed: &mut CudaSlice<u32>,
    ) -> Result<(), GenerateError> {
        let plan = layer.plan;
        if plan.kind != ConvKind::Spatial || plan.bn != 16 {
            return Err(GenerateError::Cuda(format!("ToRGB is fused only into a 16-channel spatial layer, not {plan:?}")));
        }
        let cfg = LaunchConfig { grid_dim: plan.grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: plan.shared_bytes as u32 };
        let shape = layer.shape();
        let mut b = stream.launch_builder(&self.spatial_rgb);
        b.arg(src).arg(&layer.conv.weight).arg(&layer.conv.bias).arg(rgb_weight).arg(rgb_bias).arg(image).arg(packed).arg(&shape);
        // SAFETY: arguments match conv3x3_tf32s_n16_rgb's signature; image and packed hold the batch's pixels.
        unsafe { b.launch(cfg) }.map_err(cuda_err("launching a kernel"))?;
        Ok(())
    }

    /// Queues one convolution layer from `src` into `dst` (through `partial` and conv_finish_f32 when the plan is
    /// not fused).
    fn launch_conv(
        &self,
        stream: &Arc<CudaStream>,
        layer: &LayerLaunch,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<f32>,
        partial: &mut CudaSlice<f32>,
    ) -> Result<(), GenerateError> {
        let launch_err = cuda_err("launching a kernel");
        let LayerLaunch { conv, plan, precision, batch, side, .. } = *layer;
        let m_total = batch * side * side;
        let shape = layer.shape();
        let cfg = LaunchConfig { grid_dim: plan.grid, block_dim: (THREADS, 1, 1), shared_mem_bytes: plan.shared_bytes as u32 };
        let width = plan.bn.trailing_zeros() as usize - 4;
        let func = match plan.kind {
            ConvKind::Spatial => &self.spatial[width],
            ConvKind::Pipelined => &self.pipelined[width],
            ConvKind::Gather => &self.conv[usize::from(conv.cin % BK == 0)][usize::from(precision == Precision::Tf32)][width],
        };
        let mut b = stream.launch_builder(func);
        b.arg(src).arg(&conv.weight).arg(&conv.bias);
        if plan.fused {
            b.arg(&mut *dst);
        } else {
            b.arg(&mut *partial);
        }
        b.arg(&shape);
        // SAFETY: arguments match conv3x3_*'s signature; the buffers were sized for this batch.
        unsafe { b.launch(cfg) }.map_err(&launch_err)?;
        if !plan.fused {
            let (mt, co, sp) = (m_total as i32, conv.cout as i32, plan.splits as i32);
            let warps_per_block = (THREADS / 32) as usize;
            let cfg = LaunchConfig { grid_dim: (m_total.div_ceil(warps_per_block) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
            let mut b = stream.launch_builder(&self.finish);
            b.arg(&*partial).arg(&conv.bias).arg(dst).arg(&mt).arg(&co).arg(&sp);
            // SAFETY: arguments match conv_finish_f32's signature.
            unsafe { b.launch(cfg) }.map_err(&launch_err)?;
        }
        Ok(())
    }
}

/// Runs a [`PgganModel`] on the GPU.
pub struct CudaGenerator {
    model: Arc<PgganModel>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// Which kernels run the TF32 convolutions.
    conv_kernels: ConvKernels,
    /// Why this GPU cannot run the staged (pipelined and spatial) kernels, if it cannot.
    staged_unavailable: Option<String>,
    /// With [`ConvKernels::Tuned`]: each batch size's tuned plans and the measurements behind them.
    tuned: HashMap<usize, Tuning>,
    dense_weight: CudaSlice<f32>,
    dense_bias: CudaSlice<f32>,
    convs: Vec<DeviceConv>,
    rgb_weight: CudaSlice<f32>,
    rgb_bias: CudaSlice<f32>,
    sm_count: usize,
    precision: Precision,
    buffers: Option<Buffers>,
    device_name: String,
}

/// With `marks` (a profile being taken), records an event named `name` on the stream now.
fn record_mark(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    marks: &mut Option<&mut Vec<(String, CudaEvent)>>,
    name: &str,
) -> Result<(), GenerateError> {
    if let Some(marks) = marks.as_deref_mut() {
        let event = ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda_err("creating an event"))?;
        event.record(stream).map_err(cuda_err("recording an event"))?;
        marks.push((name.to_string(), event));
    }
    Ok(())
}

fn cuda_err(context: &str) -> impl Fn(cudarc::driver::DriverError) -> GenerateError + '_ {
    move |e| GenerateError::Cuda(format!("{context}: {e}"))
}

impl CudaGenerator {
    /// Probes the libraries, creates a context on device 0, compiles the kernels (or takes them from the kernel
    /// cache, see [`super::ptx_cache`]) and uploads the weights.
    pub fn new(model: Arc<PgganModel>, precision: Precision) -> Result<CudaGenerator, GenerateError> {
        probe().map_err(GenerateError::Cuda)?;
        let ctx = CudaContext::new(0).map_err(cuda_err("creating a context"))?;
        let (major, minor) = ctx.compute_capability().map_err(cuda_err("reading the compute capability"))?;
        let (ptx, origin) = super::ptx_cache::kernels_ptx(arch_name(major, minor)?, super::ptx_cache::default_cache_dir().as_deref())?;
        tracing::debug!("CUDA kernels for compute capability {major}.{minor}: {origin:?}");
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_src(ptx)).map_err(cuda_err("loading the kernels"))?;
        let load = |name: &str| module.load_function(name).map_err(|e| GenerateError::Cuda(format!("kernel {name}: {e}")));
        let stream = ctx.default_stream();
        let up = |data: &[f32]| stream.clone_htod(data).map_err(cuda_err("uploading weights"));
        let convs = model
            .convs
            .iter()
            .map(|c| Ok(DeviceConv { name: c.name.clone(), weight: up(&c.weight)?, bias: up(&c.bias)?, cin: c.cin, cout: c.cout, upsample: c.upsample }))
            .collect::<Result<Vec<_>, GenerateError>>()?;
        let sm_count = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(cuda_err("reading the multiprocessor count"))? as usize;
        let device_name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let kernels = Kernels {
            dense: load("dense_f32")?,
            conv: [
                [
                    [load("conv3x3_f32_n16")?, load("conv3x3_f32_n32")?, load("conv3x3_f32_n64")?],
                    [load("conv3x3_tf32_n16")?, load("conv3x3_tf32_n32")?, load("conv3x3_tf32_n64")?],
                ],
                [
                    [load("conv3x3_f32_n16_v")?, load("conv3x3_f32_n32_v")?, load("conv3x3_f32_n64_v")?],
                    [load("conv3x3_tf32_n16_v")?, load("conv3x3_tf32_n32_v")?, load("conv3x3_tf32_n64_v")?],
                ],
            ],
            pipelined: [load("conv3x3_tf32p_n16")?, load("conv3x3_tf32p_n32")?, load("conv3x3_tf32p_n64")?],
            spatial: [load("conv3x3_tf32s_n16")?, load("conv3x3_tf32s_n32")?],
            spatial_rgb: load("conv3x3_tf32s_n16_rgb")?,
            finish: load("conv_finish_f32")?,
            torgb: load("torgb_f32")?,
        };
        let staged_unavailable = Self::enable_staged(&ctx, (major, minor), &kernels).err();
        Ok(CudaGenerator {
            kernels,
            staged_unavailable,
            conv_kernels: ConvKernels::Gather,
            tuned: HashMap::new(),
            dense_weight: up(&model.dense_weight)?,
            dense_bias: up(&model.dense_bias)?,
            rgb_weight: up(&model.to_rgb_weight)?,
            rgb_bias: up(&model.to_rgb_bias)?,
            convs,
            sm_count,
            precision,
            buffers: None,
            device_name,
            model,
            stream,
            ctx,
        })
    }

    /// Checks that the GPU can run the staged (pipelined and spatial) kernels (sm_80, enough shared memory per
    /// block) and allows them their dynamic shared memory (over 48 KiB must be allowed per function). Their absence
    /// is not an error of the generator: the gather kernels run everything.
    fn enable_staged(ctx: &CudaContext, (major, minor): (i32, i32), kernels: &Kernels) -> Result<(), String> {
        if major < 8 {
            return Err(format!("they need compute capability 8.0, this GPU has {major}.{minor}"));
        }
        let opt_in = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| format!("reading the shared memory per block: {e}"))? as usize;
        let pipelined_bytes = (0..3).map(|i| pipe_tile(16 << i).1);
        let spatial_bytes = (0..2).map(|i| 2 * spatial_tile(16 << i).1);
        let spatial_rgb = std::iter::once((&kernels.spatial_rgb, 2 * spatial_tile(16).1));
        for (func, bytes) in kernels.pipelined.iter().zip(pipelined_bytes).chain(kernels.spatial.iter().zip(spatial_bytes)).chain(spatial_rgb) {
            if bytes > opt_in {
                return Err(format!("they use up to {bytes} bytes of shared memory per block, this GPU allows {opt_in}"));
            }
            func.set_attribute(
                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(|e| format!("allowing {bytes} bytes of shared memory: {e}"))?;
        }
        Ok(())
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Chooses the kernels of the TF32 convolutions (see [`ConvKernels`]). `Staged` is an error on the float32 path
    /// and on a GPU that cannot run the staged kernels (before sm_80); `Tuned` then has one candidate per layer, the
    /// gather kernel, and says so once in the log.
    pub fn use_conv_kernels(&mut self, kernels: ConvKernels) -> Result<(), GenerateError> {
        let staged_unavailable = match (&self.staged_unavailable, self.precision) {
            (_, Precision::F32) => Some("the staged kernels are TF32 kernels (use --precision tf32)".to_string()),
            (Some(why), _) => Some(format!("the staged kernels cannot run on this GPU: {why}")),
            (None, Precision::Tf32) => None,
        };
        match (kernels, staged_unavailable) {
            (ConvKernels::Staged, Some(why)) => return Err(GenerateError::Cuda(why)),
            (ConvKernels::Tuned, Some(why)) => tracing::info!("kernel tuning: every layer keeps the gather kernel: {why}"),
            _ => {}
        }
        self.conv_kernels = kernels;
        self.buffers = None; // the split-K buffer's size depends on the tiles
        Ok(())
    }

    /// Whether the staged kernels may run here: TF32, and a GPU that has what they need.
    fn staged_available(&self) -> bool {
        self.precision == Precision::Tf32 && self.staged_unavailable.is_none()
    }

    /// Each convolution layer's output side and launch plan for `batch` images, on the staged kernels where a
    /// layer's shape allows (`staged`) or on the gather kernels.
    fn plans(&self, batch: usize, staged: bool) -> Vec<(usize, ConvPlan)> {
        self.convs
            .iter()
            .zip(self.model.layer_sides())
            .map(|(c, side)| (side, ConvPlan::new(self.sm_count, batch, side, c.cin, c.cout, staged)))
            .collect()
    }

    /// With [`ConvKernels::Tuned`], the measurements behind the kernel chosen for each layer at `batch` (after the
    /// first use of that batch size).
    pub fn tuning(&self, batch: usize) -> Option<&[LayerChoice]> {
        self.tuned.get(&batch).map(|t| t.layers.as_slice())
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    pub fn model(&self) -> &PgganModel {
        &self.model
    }

    fn ensure_buffers(&mut self, batch: usize) -> Result<(), GenerateError> {
        if self.buffers.as_ref().is_some_and(|b| b.batch == batch) {
            return Ok(());
        }
        self.buffers = None; // free the old ones first
        // the plans the buffers must serve: one set, or both families while this batch size is being tuned
        let staged = self.staged_available();
        let candidates = match (self.conv_kernels, self.tuned.get(&batch)) {
            (ConvKernels::Tuned, Some(tuning)) => vec![tuning.plans.clone()],
            (ConvKernels::Tuned, None) if staged => vec![self.plans(batch, false), self.plans(batch, true)],
            (kernels, _) => vec![self.plans(batch, kernels == ConvKernels::Staged && staged)],
        };
        let m = &*self.model;
        let mut largest_act = batch * 16 * m.c4;
        let mut largest_partial = batch * 16 * m.c4; // the dense layer's output goes through the finish kernel
        for plans in &candidates {
            for (c, &(side, plan)) in m.convs.iter().zip(plans) {
                let pixels = batch * side * side;
                largest_act = largest_act.max(pixels * c.cout);
                if !plan.fused {
                    largest_partial = largest_partial.max(plan.splits * pixels * c.cout);
                }
            }
        }
        let plane = m.resolution * m.resolution;
        let alloc = |n: usize| self.stream.alloc_zeros::<f32>(n.max(1)).map_err(cuda_err("allocating activations"));
        self.buffers = Some(Buffers {
            batch,
            plans: candidates[0].clone(),
            z: alloc(batch * m.latent_size)?,
            ping: alloc(largest_act)?,
            pong: alloc(largest_act)?,
            partial: alloc(largest_partial)?,
            image: alloc(batch * 3 * plane)?,
            packed: self.stream.alloc_zeros::<u32>(batch * plane).map_err(cuda_err("allocating the display buffer"))?,
        });
        if let [gather, staged] = &candidates[..] {
            match self.tune(batch, gather, staged) {
                Ok(tuning) => {
                    if let Some(bufs) = self.buffers.as_mut() {
                        bufs.plans = tuning.plans.clone();
                    }
                    self.tuned.insert(batch, tuning);
                }
                Err(e) => {
                    self.buffers = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Tunes the TF32 convolutions for `batch` images: a forward pass of random latents in which every layer with
    /// a staged kernel (`staged` differs from `gather` there) runs both, each layer's input being the previous
    /// layer's real output. Each kernel is launched once, its output for the first image kept, then timed; the
    /// staged kernel is used where its output agrees with the gather kernel's and it is faster ([`prefer_staged`]).
    /// The buffers must have been sized for both sets of plans.
    fn tune(&mut self, batch: usize, gather: &[(usize, ConvPlan)], staged: &[(usize, ConvPlan)]) -> Result<Tuning, GenerateError> {
        let m = self.model.clone();
        let mut rng = Rng::new(0x7475_6e65);
        let z: Vec<f32> = (0..batch * m.latent_size).map(|_| rng.normal() as f32).collect();
        let bufs = self.buffers.as_mut().ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
        let (ctx, stream, kernels) = (&self.ctx, &self.stream, &self.kernels);
        stream.memcpy_htod(&z, &mut bufs.z).map_err(cuda_err("uploading latents"))?;
        kernels.launch_dense(stream, &m, batch, &bufs.z, (&self.dense_weight, &self.dense_bias), &mut bufs.partial, &mut bufs.ping)?;
        let mut tuning = Tuning { plans: Vec::new(), layers: Vec::new() };
        let (mut side_in, mut in_ping) = (4usize, true);
        for (conv, (&(side, gather_plan), &(_, staged_plan))) in self.convs.iter().zip(gather.iter().zip(staged)) {
            let (src, dst) = if in_ping { (&bufs.ping, &mut bufs.pong) } else { (&bufs.pong, &mut bufs.ping) };
            let partial = &mut bufs.partial;
            let first_image = side * side * conv.cout;
            let gather_layer = LayerLaunch { conv, plan: gather_plan, precision: self.precision, batch, side_in, side };
            let staged_layer = LayerLaunch { plan: staged_plan, ..gather_layer };
            // one launch (also the warm-up) for the output, then the timed ones
            let mut measure = |layer: &LayerLaunch| -> Result<(Vec<f32>, f64), GenerateError> {
                kernels.launch_conv(stream, layer, src, dst, partial)?;
                let output = download_head(stream, dst, first_image)?;
                Ok((output, time_launches(ctx, stream, || kernels.launch_conv(stream, layer, src, dst, partial))?))
            };
            let (reference, gather_ms) = measure(&gather_layer)?;
            let mut choice = LayerChoice {
                layer: conv.name.clone(),
                gather_ms,
                staged_kernel: None,
                staged_ms: None,
                staged_difference: None,
                chosen: ConvKind::Gather.label(),
                reason: "the only kernel for this shape".into(),
            };
            let mut plan = gather_plan;
            if staged_plan != gather_plan {
                let staged = measure(&staged_layer).map(|(out, ms)| (ms, relative_l2(&out, &reference))).map_err(|e| e.to_string());
                let (use_staged, reason) = prefer_staged(gather_ms, &staged);
                choice.staged_kernel = Some(staged_plan.kind.label());
                choice.staged_ms = staged.as_ref().ok().map(|s| s.0);
                choice.staged_difference = staged.as_ref().ok().map(|s| s.1);
                choice.reason = reason;
                if use_staged {
                    plan = staged_plan;
                    choice.chosen = staged_plan.kind.label();
                } else {
                    // the next layer's input is the chosen kernel's output
                    kernels.launch_conv(stream, &gather_layer, src, dst, partial)?;
                }
            }
            tracing::debug!("kernel tuning, {} at batch {batch}: {} ({})", choice.layer, choice.chosen, choice.reason);
            tuning.plans.push((side, plan));
            tuning.layers.push(choice);
            (side_in, in_ping) = (side, !in_ping);
        }
        stream.synchronize().map_err(cuda_err("synchronising"))?;
        let staged_layers = tuning.layers.iter().filter(|l| l.chosen != ConvKind::Gather.label()).count();
        let before: f64 = tuning.layers.iter().map(|l| l.gather_ms).sum();
        let after: f64 = tuning.layers.iter().map(|l| if l.chosen == ConvKind::Gather.label() { l.gather_ms } else { l.staged_ms.unwrap_or(l.gather_ms) }).sum();
        tracing::info!(
            "kernel tuning for batch {batch} on {}: {staged_layers} of {} layers on the staged kernels, convolutions {before:.3} -> {after:.3} ms",
            self.device_name,
            tuning.layers.len()
        );
        Ok(tuning)
    }

    /// Queues the whole forward pass for the latents already in the `z` buffer.
    /// With `marks`, an event is recorded after each layer (for [`CudaGenerator::layer_times`]).
    fn enqueue(&mut self, batch: usize, mut marks: Option<&mut Vec<(String, CudaEvent)>>) -> Result<(), GenerateError> {
        let launch_err = cuda_err("launching a kernel");
        let m = self.model.clone();
        let bufs = self.buffers.as_mut().ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
        let plans = &bufs.plans;
        let dense = (&self.dense_weight, &self.dense_bias);
        self.kernels.launch_dense(&self.stream, &m, batch, &bufs.z, dense, &mut bufs.partial, &mut bufs.ping)?;
        record_mark(&self.ctx, &self.stream, &mut marks, "4x4/Dense")?;

        // a 16-channel last layer on the spatial kernel (staged or tuned) also does ToRGB (its
        // activations are never stored)
        let fuse_rgb = plans.last().is_some_and(|(_, p)| p.kind == ConvKind::Spatial && p.bn == 16) && m.final_channels() == 16;
        let mut side = 4usize;
        let mut in_ping = true;
        for (index, (conv, &(layer_side, plan))) in self.convs.iter().zip(plans).enumerate() {
            let layer = LayerLaunch { conv, plan, precision: self.precision, batch, side_in: side, side: layer_side };
            side = layer_side;
            let (src, dst) = if in_ping { (&bufs.ping, &mut bufs.pong) } else { (&bufs.pong, &mut bufs.ping) };
            if fuse_rgb && index + 1 == plans.len() {
                let rgb = (&self.rgb_weight, &self.rgb_bias);
                self.kernels.launch_conv_to_rgb(&self.stream, &layer, src, rgb, &mut bufs.image, &mut bufs.packed)?;
            } else {
                self.kernels.launch_conv(&self.stream, &layer, src, dst, &mut bufs.partial)?;
            }
            in_ping = !in_ping;
            record_mark(&self.ctx, &self.stream, &mut marks, &conv.name)?;
        }
        if fuse_rgb {
            // ToRGB ran inside the last layer: its own row in the profile is (about) zero
            record_mark(&self.ctx, &self.stream, &mut marks, "ToRGB_lod0")?;
            return Ok(());
        }
        let act = if in_ping { &bufs.ping } else { &bufs.pong };
        let (n, s, c) = (batch as i32, side as i32, m.final_channels() as i32);
        let pixels = batch * side * side;
        let cfg = LaunchConfig { grid_dim: (pixels.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.stream.launch_builder(&self.kernels.torgb);
        b.arg(act).arg(&self.rgb_weight).arg(&self.rgb_bias).arg(&mut bufs.image).arg(&mut bufs.packed).arg(&n).arg(&s).arg(&c);
        // SAFETY: arguments match torgb_f32's signature.
        unsafe { b.launch(cfg) }.map_err(&launch_err)?;
        record_mark(&self.ctx, &self.stream, &mut marks, "ToRGB_lod0")?;
        Ok(())
    }

    /// Runs convolution layer `index` alone on `input` (`[batch, side_in, side_in, Cin]` channels last) with the
    /// kernel this generator's settings choose for it; returns `[batch, side, side, Cout]` and the kernel family's
    /// name. For the per-layer parity test, which localises a mismatch to one kernel and one shape.
    pub fn run_layer(&mut self, index: usize, input: &[f32], batch: usize) -> Result<(Vec<f32>, String), GenerateError> {
        if index >= self.convs.len() {
            return Err(GenerateError::Cuda(format!("no convolution layer {index}")));
        }
        if batch == 0 || batch > MAX_BATCH {
            return Err(GenerateError::Cuda(format!("batch must be 1 to {MAX_BATCH}, got {batch}")));
        }
        self.ensure_buffers(batch)?;
        let bufs = self.buffers.as_mut().ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
        let conv = &self.convs[index];
        let (side, plan) = bufs.plans[index];
        let side_in = if conv.upsample { side / 2 } else { side };
        let expected = batch * side_in * side_in * conv.cin;
        if input.len() != expected {
            return Err(GenerateError::Cuda(format!("layer {}: input of {} values, expected {expected}", conv.name, input.len())));
        }
        {
            let mut head = bufs.ping.try_slice_mut(..expected).ok_or_else(|| GenerateError::Cuda("activation buffer too small".into()))?;
            self.stream.memcpy_htod(input, &mut head).map_err(cuda_err("uploading the layer input"))?;
        }
        let layer = LayerLaunch { conv, plan, precision: self.precision, batch, side_in, side };
        self.kernels.launch_conv(&self.stream, &layer, &bufs.ping, &mut bufs.pong, &mut bufs.partial)?;
        let out = download_head(&self.stream, &bufs.pong, batch * side * side * conv.cout)?;
        Ok((out, plan.kind.label().to_string()))
    }

    fn upload_latents(&mut self, latents: &[f32]) -> Result<usize, GenerateError> {
        let latent = self.model.latent_size;
        if latents.is_empty() || latents.len() % latent != 0 {
            return Err(GenerateError::Latent { expected: latent, actual: latents.len() });
        }
        let batch = latents.len() / latent;
        if batch > MAX_BATCH {
            return Err(GenerateError::Cuda(format!("a launch takes at most {MAX_BATCH} latents, got {batch}")));
        }
        self.ensure_buffers(batch)?;
        let bufs = self.buffers.as_mut().ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
        self.stream.memcpy_htod(latents, &mut bufs.z).map_err(cuda_err("uploading latents"))?;
        Ok(batch)
    }

    /// Generates images; returns float32 NCHW `[N, 3, H, W]` and the packed 0RGB display pixels `[N, H, W]`.
    /// Batches over [`MAX_BATCH`] run in several launch sequences.
    pub fn generate_with_display(&mut self, latents: &[f32]) -> Result<(Vec<f32>, Vec<u32>), GenerateError> {
        let latent = self.model.latent_size;
        if latents.is_empty() || latents.len() % latent != 0 {
            return Err(GenerateError::Latent { expected: latent, actual: latents.len() });
        }
        let (mut image, mut packed) = (Vec::new(), Vec::new());
        for chunk in latents.chunks(MAX_BATCH * latent) {
            let batch = self.upload_latents(chunk)?;
            self.enqueue(batch, None)?;
            let bufs = self.buffers.as_ref().ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
            image.extend(self.stream.clone_dtoh(&bufs.image).map_err(cuda_err("downloading the image"))?);
            packed.extend(self.stream.clone_dtoh(&bufs.packed).map_err(cuda_err("downloading the display buffer"))?);
        }
        Ok((image, packed))
    }

    /// Generates images; returns float32 NCHW `[N, 3, H, W]`.
    pub fn generate(&mut self, latents: &[f32]) -> Result<Vec<f32>, GenerateError> {
        Ok(self.generate_with_display(latents)?.0)
    }

    /// Seconds per image of the forward pass alone (latents already on the device), best of `repeats` runs of
    /// `iterations` back-to-back passes each.
    pub fn time_forward(&mut self, latents: &[f32], iterations: usize, repeats: usize) -> Result<f64, GenerateError> {
        let batch = self.upload_latents(latents)?;
        self.enqueue(batch, None)?;
        self.stream.synchronize().map_err(cuda_err("synchronising"))?;
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let t = std::time::Instant::now();
            for _ in 0..iterations.max(1) {
                self.enqueue(batch, None)?;
            }
            self.stream.synchronize().map_err(cuda_err("synchronising"))?;
            best = best.min(t.elapsed().as_secs_f64() / (iterations.max(1) * batch) as f64);
        }
        Ok(best)
    }

    /// Milliseconds of each layer for one forward pass of `latents` (after a warm-up), from CUDA events.
    pub fn layer_times(&mut self, latents: &[f32]) -> Result<Vec<(String, f64)>, GenerateError> {
        let batch = self.upload_latents(latents)?;
        self.enqueue(batch, None)?;
        let start = self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(cuda_err("creating an event"))?;
        start.record(&self.stream).map_err(cuda_err("recording an event"))?;
        let mut marks = Vec::new();
        self.enqueue(batch, Some(&mut marks))?;
        self.stream.synchronize().map_err(cuda_err("synchronising"))?;
        let mut previous = &start;
        let mut times = Vec::new();
        for (name, event) in &marks {
            times.push((name.clone(), previous.elapsed_ms(event).map_err(cuda_err("reading an event"))? as f64));
            previous = event;
        }
        Ok(times)
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiles the host plans with are those kernels/conv.cu instantiates.
    #[test]
    fn pipelined_tiles_match_the_kernel_source() {
        let mut seen = 0;
        for line in kernel_source().lines().filter(|l| l.starts_with("PIPE_ENTRY(conv3x3_tf32p_n")) {
            let inner = line.trim_start_matches("PIPE_ENTRY(").trim_end_matches(')');
            let fields: Vec<usize> = inner.split(',').skip(1).map(|f| f.trim().parse().expect("a number")).collect();
            let [bm, bn, _wm, _wn, stages] = fields[..] else { panic!("unexpected PIPE_ENTRY line: {line}") };
            assert!(inner.starts_with(&format!("conv3x3_tf32p_n{bn},")), "{line}");
            assert_eq!(PIPE_TILES[bn.trailing_zeros() as usize - 4], (bm, stages), "{line}");
            seen += 1;
        }
        assert_eq!(seen, 3);
    }

    /// The spatial kernels the host plans with are those kernels/conv.cu instantiates.
    #[test]
    fn spatial_tiles_match_the_kernel_source() {
        let entries: Vec<(usize, usize)> = kernel_source()
            .lines()
            .filter_map(|l| l.strip_prefix("SPATIAL_ENTRY(conv3x3_tf32s_n"))
            .map(|rest| {
                let fields: Vec<usize> = rest.trim_end_matches(')').split(',').map(|f| f.trim().parse().expect("a number")).collect();
                assert_eq!(fields[0], fields[1], "the entry's name is its BN");
                (fields[1], fields[2])
            })
            .collect();
        assert_eq!(entries, SPATIAL_TILES);
        for needle in [format!("#define SPATIAL_TW {SPATIAL_TW} "), format!("#define SPATIAL_CC {SPATIAL_CC} ")] {
            assert!(kernel_source().contains(&needle), "kernels/conv.cu lacks `{needle}`");
        }
    }

    #[test]
    fn tuning_uses_a_staged_kernel_only_when_it_agrees_and_is_faster() {
        let decide = |ms: Result<(f64, f64), &str>| prefer_staged(0.50, &ms.map_err(str::to_string));
        assert_eq!(decide(Ok((0.25, 1.4e-3))), (true, "2.00x faster".to_string()));
        // within the timing noise: the measured kernel stays
        let (staged, why) = decide(Ok((0.495, 1e-3)));
        assert!(!staged && why.contains("not faster"), "{why}");
        // faster but wrong, or NaN: never used
        for diff in [0.3, f64::NAN, f64::INFINITY] {
            let (staged, why) = decide(Ok((0.1, diff)));
            assert!(!staged && why.contains("disagrees"), "{diff}: {why}");
        }
        let (staged, why) = decide(Err("launching a kernel: CUDA_ERROR_INVALID_VALUE"));
        assert!(!staged && why.contains("failed") && why.contains("INVALID_VALUE"), "{why}");
    }

    #[test]
    fn relative_l2_is_nan_when_an_output_is() {
        assert_eq!(relative_l2(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((relative_l2(&[3.0, 4.5], &[3.0, 4.0]) - 0.1).abs() < 1e-12);
        assert!(relative_l2(&[f32::NAN, 4.0], &[3.0, 4.0]).is_nan());
    }

    #[test]
    fn plans_cover_k_once_and_fit_two_blocks_per_multiprocessor() {
        // every PGGAN 1024 layer (Cin, Cout, side) at batch 1 and 8, and channel counts the new kernels refuse
        let layers = [(512, 512, 4), (512, 512, 8), (512, 512, 32), (512, 256, 64), (256, 128, 128), (128, 64, 256),
            (64, 32, 512), (32, 32, 512), (32, 16, 1024), (16, 16, 1024), (3, 64, 8), (20, 24, 8), (12, 20, 16), (16, 16, 16)];
        for (cin, cout, side) in layers {
            for batch in [1, 8] {
                for staged in [false, true] {
                    let p = ConvPlan::new(132, batch, side, cin, cout, staged);
                    let (m_total, k_total) = (batch * side * side, 9 * cin);
                    let spatial = staged && (cout == 16 || cout == 32) && cin % 16 == 0 && side >= 32;
                    let fits = m_total >= pipe_tile(tile_n(cout)).0;
                    let expected = match (spatial, staged && cin % 4 == 0 && cout % 4 == 0 && fits) {
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
                    assert!(p.splits * p.k_per_split >= k_total && (p.splits - 1) * p.k_per_split < k_total);
                    assert_eq!(p.fused, p.splits == 1 && cout <= p.bn);
                    assert!(p.bn >= cout.min(64));
                    // the grid's blocks cover every output pixel and channel exactly once per split
                    let (gx, gy, gz) = p.grid;
                    assert_eq!(gz as usize, p.splits);
                    let blocks_per_split = gx as usize * gy as usize;
                    match p.kind {
                        ConvKind::Spatial => assert_eq!(blocks_per_split * p.bm, m_total),
                        _ => assert_eq!(blocks_per_split, m_total.div_ceil(p.bm) * cout.div_ceil(p.bn)),
                    }
                    // sm_80 and sm_90 give a block up to 227 KiB; two blocks per multiprocessor need under half
                    assert!(p.shared_bytes <= 113 * 1024, "{} bytes", p.shared_bytes);
                    assert_eq!(p.shared_bytes > 0, p.kind != ConvKind::Gather);
                }
            }
        }
    }
}
