//! The generator on an NVIDIA GPU: our own kernels (`kernels/*.cu`), embedded in the binary, compiled with NVRTC
//! at start-up for the device's architecture (kept in the kernel cache, [`super::ptx_cache`]), and launched
//! through `cudarc` (driver loaded at run time, so the binary runs on machines without CUDA and falls back to the
//! CPU).
//!
//! Activations live on the device in channels-last `[N, H, W, C]` order, the same as the CPU path, and the
//! weights are the CPU model's effective weights (wscale applied; `[9 * Cin, Cout]`), uploaded once. Buffers are
//! allocated once per batch size and reused. Two precisions: float32 FMAs (exact path, compared with the CPU in
//! the parity tests) and TF32 tensor cores for the convolutions. Each convolution layer gets a `ConvPlan`: the
//! kernel family (the measured gather kernels by default; the pipelined and spatial-tile TF32 kernels with
//! [`CudaGenerator::use_pipelined_kernels`]), its tile, split-K and grid.

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};

use super::model::PgganModel;
use super::GenerateError;

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
    /// The plan for a layer of `batch` images of `side` x `side` output pixels. With `pipelined` (TF32 on sm_80+),
    /// the narrow layers from 32 px up (Cout 16 or 32, Cin a multiple of 16) take the spatial kernel and the others
    /// with 16-byte rows (Cin and Cout multiples of 4) and at least one tile of pixels the pipelined one. Split-K:
    /// enough blocks to fill the GPU twice, at least four K slices per split.
    fn new(sm_count: usize, batch: usize, side: usize, cin: usize, cout: usize, pipelined: bool) -> ConvPlan {
        let (m_total, k_total) = (batch * side * side, 9 * cin);
        if pipelined && (cout == 16 || cout == 32) && cin % SPATIAL_CC == 0 && side >= SPATIAL_TW {
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
        let kind = if pipelined && cin % 4 == 0 && cout % 4 == 0 && fits { ConvKind::Pipelined } else { ConvKind::Gather };
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
    /// Use the pipelined and spatial kernels where a layer allows it (TF32 only).
    pipelined: bool,
    /// Why this GPU cannot run them, if it cannot.
    pipelined_unavailable: Option<String>,
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
        let pipelined_unavailable = Self::enable_pipelined(&ctx, (major, minor), &kernels).err();
        Ok(CudaGenerator {
            kernels,
            pipelined_unavailable,
            pipelined: false,
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

    /// Checks that the GPU can run the pipelined and spatial kernels (sm_80, enough shared memory per block) and
    /// allows them their dynamic shared memory (over 48 KiB must be allowed per function). Their absence is not an
    /// error of the generator: the other kernels run everything.
    fn enable_pipelined(ctx: &CudaContext, (major, minor): (i32, i32), kernels: &Kernels) -> Result<(), String> {
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

    /// Runs the TF32 convolutions on the pipelined kernels (conv3x3_tf32p_* and, for the narrow layers from 32 px
    /// up, conv3x3_tf32s_*; both stage their inputs with asynchronous copies) where a layer's channel counts allow;
    /// layers that do not, and the float32 path, keep the other kernels. Needs sm_80.
    pub fn use_pipelined_kernels(&mut self, on: bool) -> Result<(), GenerateError> {
        if on && self.precision != Precision::Tf32 {
            return Err(GenerateError::Cuda("the pipelined kernels are TF32 kernels: use --precision tf32".into()));
        }
        if let (true, Some(why)) = (on, &self.pipelined_unavailable) {
            return Err(GenerateError::Cuda(format!("the pipelined kernels cannot run on this GPU: {why}")));
        }
        self.pipelined = on;
        self.buffers = None; // the split-K buffer's size depends on the tiles
        Ok(())
    }

    /// Each convolution layer's output side and launch plan for `batch` images (kept in [`Buffers`]).
    fn plans(&self, batch: usize) -> Vec<(usize, ConvPlan)> {
        let pipelined = self.pipelined && self.precision == Precision::Tf32;
        self.convs
            .iter()
            .zip(self.model.layer_sides())
            .map(|(c, side)| (side, ConvPlan::new(self.sm_count, batch, side, c.cin, c.cout, pipelined)))
            .collect()
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
        let m = &*self.model;
        let mut largest_act = batch * 16 * m.c4;
        let mut largest_partial = batch * 16 * m.c4; // the dense layer's output goes through the finish kernel
        let plans = self.plans(batch);
        for (c, &(side, plan)) in m.convs.iter().zip(&plans) {
            let pixels = batch * side * side;
            largest_act = largest_act.max(pixels * c.cout);
            if !plan.fused {
                largest_partial = largest_partial.max(plan.splits * pixels * c.cout);
            }
        }
        let plane = m.resolution * m.resolution;
        let alloc = |n: usize| self.stream.alloc_zeros::<f32>(n.max(1)).map_err(cuda_err("allocating activations"));
        self.buffers = Some(Buffers {
            batch,
            plans,
            z: alloc(batch * m.latent_size)?,
            ping: alloc(largest_act)?,
            pong: alloc(largest_act)?,
            partial: alloc(largest_partial)?,
            image: alloc(batch * 3 * plane)?,
            packed: self.stream.alloc_zeros::<u32>(batch * plane).map_err(cuda_err("allocating the display buffer"))?,
        });
        Ok(())
    }

    /// Queues the whole forward pass for the latents already in the `z` buffer.
    /// With `marks`, an event is recorded after each layer (for [`CudaGenerator::layer_times`]).
    fn enqueue(&mut self, batch: usize, mut marks: Option<&mut Vec<(String, CudaEvent)>>) -> Result<(), GenerateError> {
        let launch_err = cuda_err("launching a kernel");
        let m = self.model.clone();
        let bufs = self.buffers.as_mut().ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
        let plans = &bufs.plans;
        let (latent, c4) = (m.latent_size as i32, m.c4 as i32);
        let cfg = LaunchConfig {
            grid_dim: ((16 * m.c4).div_ceil(THREADS as usize) as u32, batch as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: (m.latent_size * 4) as u32,
        };
        let mut b = self.stream.launch_builder(&self.kernels.dense);
        b.arg(&bufs.z).arg(&self.dense_weight).arg(&mut bufs.partial).arg(&latent).arg(&c4);
        // SAFETY: arguments match dense_f32's signature; partial holds at least batch * 16 * c4 floats.
        unsafe { b.launch(cfg) }.map_err(&launch_err)?;
        let (mt, sp) = ((batch * 16) as i32, 1i32);
        let cfg = LaunchConfig { grid_dim: ((batch * 16).div_ceil(8) as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.stream.launch_builder(&self.kernels.finish);
        b.arg(&bufs.partial).arg(&self.dense_bias).arg(&mut bufs.ping).arg(&mt).arg(&c4).arg(&sp);
        // SAFETY: arguments match conv_finish_f32's signature.
        unsafe { b.launch(cfg) }.map_err(&launch_err)?;
        record_mark(&self.ctx, &self.stream, &mut marks, "4x4/Dense")?;

        // with the pipelined kernels, a 16-channel last layer on the spatial kernel also does ToRGB (its
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
        let outputs = batch * side * side * conv.cout;
        let view = bufs.pong.try_slice(..outputs).ok_or_else(|| GenerateError::Cuda("activation buffer too small".into()))?;
        let out = self.stream.clone_dtoh(&view).map_err(cuda_err("downloading the layer output"))?;
        Ok((out, format!("{:?}", plan.kind)))
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
    fn plans_cover_k_once_and_fit_two_blocks_per_multiprocessor() {
        // every PGGAN 1024 layer (Cin, Cout, side) at batch 1 and 8, and channel counts the new kernels refuse
        let layers = [(512, 512, 4), (512, 512, 8), (512, 512, 32), (512, 256, 64), (256, 128, 128), (128, 64, 256),
            (64, 32, 512), (32, 32, 512), (32, 16, 1024), (16, 16, 1024), (3, 64, 8), (20, 24, 8), (12, 20, 16), (16, 16, 16)];
        for (cin, cout, side) in layers {
            for batch in [1, 8] {
                for pipelined in [false, true] {
                    let p = ConvPlan::new(132, batch, side, cin, cout, pipelined);
                    let (m_total, k_total) = (batch * side * side, 9 * cin);
                    let spatial = pipelined && (cout == 16 || cout == 32) && cin % 16 == 0 && side >= 32;
                    let fits = m_total >= pipe_tile(tile_n(cout)).0;
                    let expected = match (spatial, pipelined && cin % 4 == 0 && cout % 4 == 0 && fits) {
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
