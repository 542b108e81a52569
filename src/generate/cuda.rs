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
//! checked against the gather kernel's output before it is used). The whole forward pass is captured once per batch
//! size as a CUDA graph and replayed with one call ([`GpuLaunch::Graph`]), or queued kernel by kernel.
//!
//! All of a generator's device work runs on one stream of its own (a CUDA graph cannot be captured on the legacy
//! default stream), so cudarc's cross-stream event tracking is switched off for its buffers.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaSlice, CudaStream, DeviceRepr,
    LaunchConfig, PushKernelArg,
};

use super::launch::{
    buffer_sizes, dense_launches, forward_launches, layer_plans, staged_kernels_shared_bytes, Buf,
    ConvPlan, ConvShape, Launch, LayerLaunch, LayerLaunches,
};
use super::model::PgganModel;
use super::ptx_cache::{nvrtc_supported_archs, nvrtc_version};
use super::{relative_l2, ConvKernels, GenerateError, GpuLaunch, GpuSettings, UpsampleConv};
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
        .filter(|l| {
            !l.trim_start().starts_with("#include \"common.cuh\"") && l.trim() != "#pragma once"
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub use super::launch::KERNELS;

/// The compute capabilities the kernels are compiled for (major * 10 + minor), with NVRTC's names for them.
const ARCHITECTURES: [(i32, &str); 15] = [
    (70, "compute_70"),
    (72, "compute_72"),
    (75, "compute_75"),
    (80, "compute_80"),
    (86, "compute_86"),
    (87, "compute_87"),
    (88, "compute_88"),
    (89, "compute_89"),
    (90, "compute_90"),
    (100, "compute_100"),
    (103, "compute_103"),
    (107, "compute_107"),
    (110, "compute_110"),
    (120, "compute_120"),
    (121, "compute_121"),
];

/// The compute capabilities hyper-rt compiles the kernels for (major * 10 + minor).
pub fn known_compute_capabilities() -> impl Iterator<Item = i32> {
    ARCHITECTURES.iter().map(|(cc, _)| *cc)
}

/// The NVRTC architecture to compile the kernels for on a GPU of compute capability `major.minor`, after checking
/// that the GPU can run `precision` and that NVRTC (version `nvrtc`, e.g. "13.0", which compiles for the
/// capabilities `nvrtc_archs`, e.g. 75 for 7.5; empty when unknown) compiles for it.
pub fn kernel_arch(
    major: i32,
    minor: i32,
    precision: Precision,
    nvrtc: &str,
    nvrtc_archs: &[i32],
) -> Result<&'static str, GenerateError> {
    let cc = major * 10 + minor;
    let Some(&(_, arch)) = ARCHITECTURES.iter().find(|(c, _)| *c == cc) else {
        return Err(GenerateError::Cuda(format!(
            "compute capability {major}.{minor} is not supported"
        )));
    };
    if precision == Precision::Tf32 && major < 8 {
        return Err(GenerateError::Cuda(format!(
            "TF32 tensor cores need compute capability 8.0 or newer, this GPU has {major}.{minor}: use --precision f32"
        )));
    }
    if !nvrtc_archs.is_empty() && !nvrtc_archs.contains(&cc) {
        let listed: Vec<String> = nvrtc_archs
            .iter()
            .map(|c| format!("{}.{}", c / 10, c % 10))
            .collect();
        let way_out = if nvrtc_archs.iter().all(|c| *c > cc) {
            "put the libnvrtc of an older CUDA (12 for Volta) first in LD_LIBRARY_PATH"
        } else {
            "put the libnvrtc of a newer CUDA first in LD_LIBRARY_PATH"
        };
        return Err(GenerateError::Cuda(format!(
            "NVRTC {nvrtc} does not compile for compute capability {major}.{minor} (it does for {}): {way_out}",
            listed.join(", ")
        )));
    }
    Ok(arch)
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
    cudarc::nvrtc::compile_ptx_with_opts(kernel_source(), opts)
        .map_err(|e| GenerateError::Cuda(format!("NVRTC: {e}")))
}

/// Why CUDA cannot be used here for GPU `gpu_index` (CUDA's numbering), or `Ok` when the driver and NVRTC
/// libraries load (cudarc panics on use otherwise) and that GPU exists.
pub fn probe(gpu_index: usize) -> Result<(), String> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the NVIDIA driver library (libcuda) was not found".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("the NVRTC library (libnvrtc) was not found; set LD_LIBRARY_PATH to the CUDA toolkit's lib64".into());
    }
    match CudaContext::device_count() {
        Ok(n) => check_gpu_index(gpu_index, n.max(0) as usize),
        Err(e) => Err(format!("CUDA driver: {e}")),
    }
}

/// Whether GPU `gpu_index` is among the `count` GPUs CUDA sees, with a message that says how they are numbered.
pub fn check_gpu_index(gpu_index: usize, count: usize) -> Result<(), String> {
    match count {
        0 => Err("no CUDA device".into()),
        _ if gpu_index < count => Ok(()),
        1 => Err(format!("GPU {gpu_index} was asked for, but CUDA sees one GPU, GPU 0 (`hyper-rt gpu-info` lists it)")),
        _ => Err(format!(
            "GPU {gpu_index} was asked for, but CUDA sees {count} GPUs, numbered 0 to {} (`hyper-rt gpu-info` lists \
             them; CUDA_VISIBLE_DEVICES hides some and renumbers the rest, and CUDA numbers the fastest first unless \
             CUDA_DEVICE_ORDER=PCI_BUS_ID, which gives nvidia-smi's order)",
            count - 1
        )),
    }
}

/// Arithmetic of the convolutions.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// float32 FMAs: matches the CPU to about 1e-6 relative.
    F32,
    /// TF32 tensor cores (10-bit mantissa inputs, float32 accumulation).
    Tf32,
}

// SAFETY: plain old data with the C layout (`#[repr(C)]`, twelve i32) of kernels/conv.cu's `struct ConvShape`.
unsafe impl DeviceRepr for ConvShape {}

/// Largest batch one launch sequence takes (bounds the activation buffers); larger batches are split.
pub const MAX_BATCH: usize = 64;

/// The model's weights on the device (the CPU model's effective weights).
struct DeviceWeights {
    dense_weight: CudaSlice<f32>,
    dense_bias: CudaSlice<f32>,
    /// Each convolution layer's weights `[9 * Cin, Cout]` and bias.
    convs: Vec<(CudaSlice<f32>, CudaSlice<f32>)>,
    /// Each upsampling layer's phase weights (for phased plans), `None` for the others.
    phase_weights: Vec<Option<CudaSlice<f32>>>,
    rgb_weight: CudaSlice<f32>,
    rgb_bias: CudaSlice<f32>,
}

/// Per-batch-size plans and device buffers, reused across calls.
struct Buffers {
    /// The forward pass captured as a CUDA graph ([`GpuLaunch::Graph`], after its first use); declared first so
    /// that it goes before the buffers its kernels point to.
    graph: Option<ForwardGraph>,
    batch: usize,
    /// Each convolution layer's output side and launch plan for this batch size.
    plans: Vec<(usize, ConvPlan)>,
    /// The forward pass for these plans ([`forward_launches`]), computed once.
    launches: Vec<LayerLaunches>,
    mem: DeviceBuffers,
}

/// A captured forward pass. The graph's kernels point into one [`Buffers`]' memory, so it lives and dies with it.
struct ForwardGraph(CudaGraph);

// SAFETY: a CUDA graph may be used from any thread as long as no two use it at once; it is owned by one
// `CudaGenerator` and used only through `&mut self`.
unsafe impl Send for ForwardGraph {}

/// The device memory a forward pass works in.
struct DeviceBuffers {
    z: CudaSlice<f32>,
    /// [`Buf::Act`] 0, 1 (a layer's input and output in turn) and 2 (split-K partial sums).
    act: [CudaSlice<f32>; 3],
    image: CudaSlice<f32>,
    packed: CudaSlice<u32>,
}

/// The loaded kernels by name ([`KERNELS`]).
pub(super) struct Kernels(HashMap<&'static str, CudaFunction>);

impl Kernels {
    fn get(&self, name: &str) -> Result<&CudaFunction, GenerateError> {
        self.0
            .get(name)
            .ok_or_else(|| GenerateError::Cuda(format!("kernel {name} is not loaded")))
    }
}

/// Queues one [`Launch`]: its buffers and integers pushed in the launch's order (the order the emulated kernel
/// tests replay and check), a convolution's integers as one `ConvShape`.
fn execute(
    kernels: &Kernels,
    stream: &Arc<CudaStream>,
    weights: &DeviceWeights,
    mem: &mut DeviceBuffers,
    launch: &Launch,
) -> Result<(), GenerateError> {
    let func = kernels.get(launch.kernel)?;
    let shape =
        match launch.ints_are_conv_shape {
            true => Some(ConvShape::from_ints(&launch.ints).ok_or_else(|| {
                GenerateError::Cuda(format!("{}: not a ConvShape", launch.kernel))
            })?),
            false => None,
        };
    let conv = |i: usize| {
        weights
            .convs
            .get(i)
            .ok_or_else(|| GenerateError::Cuda(format!("no convolution layer {i}")))
    };
    let DeviceBuffers {
        z,
        act,
        image,
        packed,
    } = mem;
    // each mutable buffer can be handed out once per launch
    let mut acts: Vec<Option<&mut CudaSlice<f32>>> = act.iter_mut().map(Some).collect();
    let (mut image, mut packed) = (Some(image), Some(packed));
    let twice = |buf: Buf| {
        GenerateError::Cuda(format!(
            "{}: buffer {} passed twice",
            launch.kernel,
            buf.name()
        ))
    };
    let mut b = stream.launch_builder(func);
    for &(buf, writes) in &launch.buffers {
        match buf {
            Buf::Z => b.arg(&*z),
            Buf::DenseWeight => b.arg(&weights.dense_weight),
            Buf::DenseBias => b.arg(&weights.dense_bias),
            Buf::ConvWeight(i) => b.arg(&conv(i)?.0),
            Buf::ConvBias(i) => b.arg(&conv(i)?.1),
            Buf::PhaseWeight(i) => b.arg(
                weights
                    .phase_weights
                    .get(i)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| {
                        GenerateError::Cuda(format!("layer {i} has no phase weights"))
                    })?,
            ),
            Buf::RgbWeight => b.arg(&weights.rgb_weight),
            Buf::RgbBias => b.arg(&weights.rgb_bias),
            Buf::Act(i) => {
                let slice = acts
                    .get_mut(i)
                    .and_then(Option::take)
                    .ok_or_else(|| twice(buf))?;
                if writes {
                    b.arg(slice)
                } else {
                    let read: &CudaSlice<f32> = slice;
                    b.arg(read)
                }
            }
            Buf::Image => b.arg(image.take().ok_or_else(|| twice(buf))?),
            Buf::Packed => b.arg(packed.take().ok_or_else(|| twice(buf))?),
        };
    }
    match &shape {
        Some(shape) => {
            b.arg(shape);
        }
        None => {
            for v in &launch.ints {
                b.arg(v);
            }
        }
    }
    let cfg = LaunchConfig {
        grid_dim: launch.grid,
        block_dim: (launch.threads, 1, 1),
        shared_mem_bytes: launch.shared_bytes,
    };
    // SAFETY: the arguments are the kernel's parameters in order (checked by replaying the same launches in the
    // CPU emulation of the kernels); the buffers were sized by `buffer_sizes` for these plans.
    unsafe { b.launch(cfg) }.map_err(cuda_err(launch.kernel))?;
    Ok(())
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

/// One candidate of a layer's tuning: a kernel family with the layer's upsampling phased or folded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CandidateTiming {
    /// E.g. "gather phased", "spatial folded", "pipelined" (a layer that does not upsample).
    pub kernel: String,
    /// Milliseconds per launch (with the split-K finish where the plan has one), if it ran.
    pub ms: Option<f64>,
    /// Relative L2 difference of its output from the reference candidate's (the batch's first image).
    pub difference: Option<f64>,
    /// Why it could not be measured, if it could not.
    pub failure: Option<String>,
}

/// What the tuning measured on one convolution layer, and the candidate it chose. The first candidate is the
/// reference: the gather kernel with the upsampling form [`CudaGenerator::use_upsample`] chose.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerChoice {
    pub layer: String,
    pub candidates: Vec<CandidateTiming>,
    /// Index of the candidate used.
    pub chosen: usize,
    pub reason: String,
}

/// Milliseconds per launch summed over the tuned layers: of the reference candidates, and of the ones chosen.
pub fn tuning_totals(layers: &[LayerChoice]) -> (f64, f64) {
    let ms = |l: &LayerChoice, i: usize| l.candidates.get(i).and_then(|c| c.ms).unwrap_or(f64::NAN);
    layers.iter().fold((0.0, 0.0), |(reference, chosen), l| {
        (reference + ms(l, 0), chosen + ms(l, l.chosen))
    })
}

/// Which of a layer's candidates to use, and why. `reference_ms` is the reference candidate's time (it is used
/// unless another is better); `others` are the other candidates' milliseconds and relative differences from the
/// reference's output, or why they could not be measured. A candidate must agree with the reference within
/// [`TUNING_AGREEMENT`] and be at least [`TUNING_MIN_GAIN`] faster than the best so far; returns its index in
/// `others` plus one (0: the reference).
fn choose_candidate(reference_ms: f64, others: &[Result<(f64, f64), String>]) -> (usize, String) {
    let (mut best, mut best_ms) = (0, reference_ms);
    let mut rejected = Vec::new();
    for (i, other) in others.iter().enumerate() {
        match other {
            Err(why) => rejected.push(format!("#{} failed: {why}", i + 1)),
            Ok((_, diff)) if diff.is_nan() || *diff > TUNING_AGREEMENT => rejected.push(format!(
                "#{} disagrees with the reference: relative L2 {diff:.2e} > {TUNING_AGREEMENT:e}",
                i + 1
            )),
            Ok((ms, _)) if *ms < best_ms * (1.0 - TUNING_MIN_GAIN) => {
                (best, best_ms) = (i + 1, *ms)
            }
            Ok(_) => {}
        }
    }
    let mut reason = match best {
        0 if others.is_empty() => "the only candidate for this shape".to_string(),
        0 => format!(
            "no other candidate is at least {:.0} % faster",
            TUNING_MIN_GAIN * 100.0
        ),
        _ => format!("{:.2}x faster than the reference", reference_ms / best_ms),
    };
    if !rejected.is_empty() {
        reason = format!("{reason}; {}", rejected.join("; "));
    }
    (best, reason)
}

/// The first `n` values of a device buffer.
fn download_head(
    stream: &Arc<CudaStream>,
    buf: &CudaSlice<f32>,
    n: usize,
) -> Result<Vec<f32>, GenerateError> {
    let view = buf.try_slice(..n).ok_or_else(|| {
        GenerateError::Cuda(format!("buffer of {} values, {n} wanted", buf.len()))
    })?;
    stream
        .clone_dtoh(&view)
        .map_err(cuda_err("downloading a layer's output"))
}

/// Milliseconds per call of `launch` (which queues work on `stream`): the best of three rounds of three calls.
fn time_launches(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    mut launch: impl FnMut() -> Result<(), GenerateError>,
) -> Result<f64, GenerateError> {
    const ROUNDS: usize = 3;
    const CALLS: usize = 3;
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("creating an event"))
    };
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let (start, end) = (event()?, event()?);
        start
            .record(stream)
            .map_err(cuda_err("recording an event"))?;
        for _ in 0..CALLS {
            launch()?;
        }
        end.record(stream).map_err(cuda_err("recording an event"))?;
        stream.synchronize().map_err(cuda_err("synchronising"))?;
        best = best.min(
            f64::from(
                start
                    .elapsed_ms(&end)
                    .map_err(cuda_err("reading an event"))?,
            ) / CALLS as f64,
        );
    }
    Ok(best)
}

/// Runs a [`PgganModel`] on the GPU.
pub struct CudaGenerator {
    model: Arc<PgganModel>,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// Which kernels run the TF32 convolutions.
    conv_kernels: ConvKernels,
    /// How the upsampling layers run.
    upsample: UpsampleConv,
    /// How a forward pass is queued.
    launch: GpuLaunch,
    /// Why a forward pass could not be captured as a CUDA graph, once that failed (the kernels are then queued one
    /// by one).
    graph_unavailable: Option<String>,
    /// Why this GPU cannot run the staged (pipelined and spatial) kernels, if it cannot.
    staged_unavailable: Option<String>,
    /// With [`ConvKernels::Tuned`]: each batch size's tuned plans and the measurements behind them.
    tuned: HashMap<usize, Tuning>,
    weights: DeviceWeights,
    sm_count: usize,
    precision: Precision,
    buffers: Option<Buffers>,
    device_name: String,
    /// The GPU in CUDA's numbering.
    gpu_index: usize,
}

/// With `marks` (a profile being taken), records an event named `name` on the stream now.
fn record_mark(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    marks: &mut Option<&mut Vec<(String, CudaEvent)>>,
    name: &str,
) -> Result<(), GenerateError> {
    if let Some(marks) = marks.as_deref_mut() {
        let event = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("creating an event"))?;
        event
            .record(stream)
            .map_err(cuda_err("recording an event"))?;
        marks.push((name.to_string(), event));
    }
    Ok(())
}

fn cuda_err(context: &str) -> impl Fn(cudarc::driver::DriverError) -> GenerateError + '_ {
    move |e| GenerateError::Cuda(format!("{context}: {e}"))
}

/// The CUDA version the driver supports, e.g. "12.2" (cuDriverGetVersion's 12020), if it says.
pub(super) fn driver_cuda_version() -> Option<String> {
    let mut version = 0;
    // SAFETY: one out-pointer to a live integer; the driver library was found by the probe.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    (status == cudarc::driver::sys::CUresult::CUDA_SUCCESS)
        .then(|| format!("{}.{}", version / 1000, version % 1000 / 10))
}

/// The failure to load the kernels' PTX, with its usual cause spelled out: a driver older than the NVRTC that
/// compiled the kernels (the PyPI wheel or a newer toolkit beside an older driver) cannot load its PTX.
fn kernel_load_error(
    e: cudarc::driver::DriverError,
    driver: Option<&str>,
    nvrtc: &str,
) -> GenerateError {
    if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
        let driver = driver.map_or_else(
            || "this NVIDIA driver".to_string(),
            |v| format!("the NVIDIA driver (CUDA {v})"),
        );
        return GenerateError::Cuda(format!(
            "loading the kernels: {driver} is older than NVRTC {nvrtc}, which compiled them ({:?}): update the driver, \
             or put an NVRTC no newer than the driver first in LD_LIBRARY_PATH",
            e.0
        ));
    }
    cuda_err("loading the kernels")(e)
}

/// Compiles the kernels for `arch` (or takes them from the kernel cache, see [`super::ptx_cache`]) and loads every
/// entry point into `ctx`; also says where the PTX came from.
pub(super) fn load_kernels(
    ctx: &Arc<CudaContext>,
    arch: &'static str,
) -> Result<(Kernels, super::ptx_cache::PtxSource), GenerateError> {
    let (ptx, origin) =
        super::ptx_cache::kernels_ptx(arch, super::ptx_cache::default_cache_dir().as_deref())?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| kernel_load_error(e, driver_cuda_version().as_deref(), &nvrtc_version()))?;
    let load = |name: &'static str| {
        let func = module
            .load_function(name)
            .map_err(|e| GenerateError::Cuda(format!("kernel {name}: {e}")))?;
        Ok((name, func))
    };
    Ok((
        Kernels(
            KERNELS
                .iter()
                .map(|&name| load(name))
                .collect::<Result<_, GenerateError>>()?,
        ),
        origin,
    ))
}

/// Checks that the GPU can run the staged (pipelined and spatial) kernels (sm_80, enough shared memory per
/// block) and allows them their dynamic shared memory (over 48 KiB must be allowed per function). Their absence
/// is not an error of the generator: the gather kernels run everything.
pub(super) fn enable_staged(
    ctx: &CudaContext,
    (major, minor): (i32, i32),
    kernels: &Kernels,
) -> Result<(), String> {
    if major < 8 {
        return Err(format!(
            "they need compute capability 8.0, this GPU has {major}.{minor}"
        ));
    }
    let opt_in = ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(|e| format!("reading the shared memory per block: {e}"))? as usize;
    for (name, bytes) in staged_kernels_shared_bytes() {
        let func = kernels.get(name).map_err(|e| e.to_string())?;
        if bytes > opt_in {
            return Err(format!(
                "they use up to {bytes} bytes of shared memory per block, this GPU allows {opt_in}"
            ));
        }
        func.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| format!("allowing {bytes} bytes of shared memory: {e}"))?;
    }
    Ok(())
}

impl CudaGenerator {
    /// Probes the libraries, creates a context on GPU `gpu_index` (CUDA's numbering, as `hyper-rt gpu-info` lists
    /// the GPUs), compiles the kernels (or takes them from the kernel cache, see [`super::ptx_cache`]) and uploads
    /// the weights.
    pub fn new(
        model: Arc<PgganModel>,
        precision: Precision,
        gpu_index: usize,
    ) -> Result<CudaGenerator, GenerateError> {
        probe(gpu_index).map_err(GenerateError::Cuda)?;
        let ctx = CudaContext::new(gpu_index).map_err(cuda_err("creating a context"))?;
        // SAFETY: called before anything is allocated in this context object; all of this generator's device work
        // then runs in order on its one stream, so no buffer needs events to order its uses across streams (and
        // events recorded outside a graph capture cannot be waited on inside one).
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("reading the compute capability"))?;
        let arch = kernel_arch(
            major,
            minor,
            precision,
            &nvrtc_version(),
            &nvrtc_supported_archs(),
        )?;
        let (kernels, origin) = load_kernels(&ctx, arch)?;
        tracing::debug!("CUDA kernels for compute capability {major}.{minor}: {origin:?}");
        let stream = ctx.new_stream().map_err(cuda_err("creating a stream"))?;
        let up = |data: &[f32]| {
            stream
                .clone_htod(data)
                .map_err(cuda_err("uploading weights"))
        };
        let weights = DeviceWeights {
            dense_weight: up(&model.dense_weight)?,
            dense_bias: up(&model.dense_bias)?,
            convs: model
                .convs
                .iter()
                .map(|c| Ok((up(&c.weight)?, up(&c.bias)?)))
                .collect::<Result<_, GenerateError>>()?,
            phase_weights: model
                .convs
                .iter()
                .map(|c| c.upsample.then(|| up(&c.phase_weights())).transpose())
                .collect::<Result<_, GenerateError>>()?,
            rgb_weight: up(&model.to_rgb_weight)?,
            rgb_bias: up(&model.to_rgb_bias)?,
        };
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda_err("reading the multiprocessor count"))? as usize;
        let device_name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let staged_unavailable = enable_staged(&ctx, (major, minor), &kernels).err();
        Ok(CudaGenerator {
            kernels,
            staged_unavailable,
            conv_kernels: ConvKernels::Gather,
            upsample: UpsampleConv::default(),
            launch: GpuLaunch::default(),
            graph_unavailable: None,
            tuned: HashMap::new(),
            weights,
            sm_count,
            precision,
            buffers: None,
            device_name,
            gpu_index,
            model,
            stream,
            ctx,
        })
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Chooses the kernels of the TF32 convolutions (see [`ConvKernels`]). `Staged` is an error on the float32 path
    /// and on a GPU that cannot run the staged kernels (before sm_80); `Tuned` then has one candidate per layer, the
    /// gather kernel, and says so once in the log.
    pub fn use_conv_kernels(&mut self, kernels: ConvKernels) -> Result<(), GenerateError> {
        match (kernels, self.why_no_staged()) {
            (ConvKernels::Staged, Some(why)) => return Err(GenerateError::Cuda(why)),
            (ConvKernels::Tuned, Some(why)) => tracing::info!("kernel tuning compares the gather kernels alone (upsampling phased and folded): {why}"),
            _ => {}
        }
        self.conv_kernels = kernels;
        self.buffers = None; // the split-K buffer's size depends on the tiles
        Ok(())
    }

    /// Sets the kernels, the upsampling layers' form and how a forward pass is queued (see [`GpuSettings`]).
    pub fn use_settings(&mut self, settings: GpuSettings) -> Result<(), GenerateError> {
        self.use_conv_kernels(settings.kernels)?;
        self.use_upsample(settings.upsample);
        self.use_launch(settings.launch);
        Ok(())
    }

    /// Chooses how a forward pass is queued (see [`GpuLaunch`]).
    pub fn use_launch(&mut self, launch: GpuLaunch) {
        self.launch = launch;
        if let Some(buffers) = self.buffers.as_mut() {
            buffers.graph = None;
        }
    }

    /// How forward passes are queued now: as [`Self::use_launch`] chose, unless a capture failed (then why).
    pub fn launch_in_use(&self) -> (GpuLaunch, Option<&str>) {
        match (self.launch, &self.graph_unavailable) {
            (GpuLaunch::Graph, Some(why)) => (GpuLaunch::Stream, Some(why)),
            (launch, _) => (launch, None),
        }
    }

    /// Chooses how the upsampling layers run (see [`UpsampleConv`]).
    pub fn use_upsample(&mut self, upsample: UpsampleConv) {
        if upsample != self.upsample {
            self.upsample = upsample;
            self.buffers = None; // other plans, other split-K buffer
            self.tuned.clear();
        }
    }

    /// Why the staged kernels may not run here (they need TF32 and a GPU that has what they need), if they may not.
    fn why_no_staged(&self) -> Option<String> {
        match (&self.staged_unavailable, self.precision) {
            (_, Precision::F32) => {
                Some("the staged kernels are TF32 kernels (use --precision tf32)".to_string())
            }
            (Some(why), _) => Some(format!("the staged kernels cannot run on this GPU: {why}")),
            (None, Precision::Tf32) => None,
        }
    }

    /// Each convolution layer's output side and launch plan for `batch` images, on the staged kernels where a
    /// layer's shape allows (`staged`) or on the gather kernels, the upsampling layers as [`Self::use_upsample`] chose.
    fn plans(&self, batch: usize, staged: bool) -> Vec<(usize, ConvPlan)> {
        layer_plans(
            &self.model,
            self.sm_count,
            batch,
            staged,
            self.upsample == UpsampleConv::Phased,
        )
    }

    /// With [`ConvKernels::Tuned`], the measurements behind the kernel chosen for each layer at `batch` (after the
    /// first use of that batch size).
    pub fn tuning(&self, batch: usize) -> Option<&[LayerChoice]> {
        self.tuned.get(&batch).map(|t| t.layers.as_slice())
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The GPU this generator runs on, in CUDA's numbering.
    pub fn gpu_index(&self) -> usize {
        self.gpu_index
    }

    pub fn model(&self) -> &PgganModel {
        &self.model
    }

    /// The model, shared (for a CPU generator on the same network).
    pub fn shared_model(&self) -> Arc<PgganModel> {
        self.model.clone()
    }

    fn ensure_buffers(&mut self, batch: usize) -> Result<(), GenerateError> {
        if self.buffers.as_ref().is_some_and(|b| b.batch == batch) {
            return Ok(());
        }
        self.buffers = None; // free the old ones first
                             // the plans the buffers must serve: one set, or both families while this batch size is being tuned
        let staged = self.why_no_staged().is_none();
        let candidates = match (self.conv_kernels, self.tuned.get(&batch)) {
            (ConvKernels::Tuned, Some(tuning)) => vec![tuning.plans.clone()],
            (ConvKernels::Tuned, None) => self.tuning_candidates(batch),
            (kernels, _) => vec![self.plans(batch, kernels == ConvKernels::Staged && staged)],
        };
        let sizes = buffer_sizes(&self.model, &candidates, batch);
        let alloc = |n: usize| {
            self.stream
                .alloc_zeros::<f32>(n.max(1))
                .map_err(cuda_err("allocating activations"))
        };
        let mut mem = DeviceBuffers {
            z: alloc(sizes.z)?,
            act: [
                alloc(sizes.activations)?,
                alloc(sizes.activations)?,
                alloc(sizes.partial)?,
            ],
            image: alloc(sizes.image)?,
            packed: self
                .stream
                .alloc_zeros::<u32>(sizes.packed.max(1))
                .map_err(cuda_err("allocating the display buffer"))?,
        };
        let mut plans = candidates[0].clone();
        if candidates.len() > 1 {
            let tuning = self.tune(&mut mem, batch, &candidates)?;
            plans = tuning.plans.clone();
            self.tuned.insert(batch, tuning);
        }
        let launches = forward_launches(&self.model, &plans, self.precision, batch);
        self.buffers = Some(Buffers {
            graph: None,
            batch,
            plans,
            launches,
            mem,
        });
        Ok(())
    }

    /// The sets of plans [`ConvKernels::Tuned`] compares for `batch` images: first the reference (the gather
    /// kernels, the upsampling layers as [`Self::use_upsample`] chose), then the staged kernels where this GPU runs
    /// them, then the same with the upsampling layers in the other form.
    fn tuning_candidates(&self, batch: usize) -> Vec<Vec<(usize, ConvPlan)>> {
        let phased = self.upsample == UpsampleConv::Phased;
        let families: &[bool] = if self.why_no_staged().is_none() {
            &[false, true]
        } else {
            &[false]
        };
        [phased, !phased]
            .into_iter()
            .flat_map(|phased| {
                families.iter().map(move |&staged| {
                    layer_plans(&self.model, self.sm_count, batch, staged, phased)
                })
            })
            .collect()
    }

    /// Tunes the convolutions for `batch` images: a forward pass of random latents in which every layer runs each of
    /// its distinct plans among `candidates` (the first set is the reference), each layer's input being the previous
    /// layer's real output. Each plan is launched once, its output for the first image kept, then timed; another plan
    /// replaces the reference's where its output agrees and it is faster ([`choose_candidate`]). `mem` must have
    /// been sized for every set.
    fn tune(
        &self,
        mem: &mut DeviceBuffers,
        batch: usize,
        candidates: &[Vec<(usize, ConvPlan)>],
    ) -> Result<Tuning, GenerateError> {
        let m = &*self.model;
        let mut rng = Rng::new(0x7475_6e65);
        let z: Vec<f32> = (0..batch * m.latent_size)
            .map(|_| rng.normal() as f32)
            .collect();
        let (ctx, stream, kernels, weights) =
            (&self.ctx, &self.stream, &self.kernels, &self.weights);
        stream
            .memcpy_htod(&z, &mut mem.z)
            .map_err(cuda_err("uploading latents"))?;
        for launch in &dense_launches(m, batch) {
            execute(kernels, stream, weights, mem, launch)?; // into activation buffer 0
        }
        let mut tuning = Tuning {
            plans: Vec::new(),
            layers: Vec::new(),
        };
        for (index, conv) in m.convs.iter().enumerate() {
            let input = index % 2;
            let (src, dst) = (Buf::Act(input), Buf::Act(1 - input));
            let side = candidates[0][index].0;
            let first_image = side * side * conv.cout;
            // this layer's distinct plans, the reference first
            let mut plans: Vec<ConvPlan> = Vec::new();
            for set in candidates {
                if !plans.contains(&set[index].1) {
                    plans.push(set[index].1);
                }
            }
            let launches: Vec<Vec<Launch>> = plans
                .iter()
                .map(|&plan| {
                    LayerLaunch::new(m, index, (side, plan), self.precision, batch)
                        .launches(src, dst)
                })
                .collect();
            let run = |mem: &mut DeviceBuffers, launches: &[Launch]| {
                launches
                    .iter()
                    .try_for_each(|l| execute(kernels, stream, weights, mem, l))
            };
            // one run (also the warm-up) for the output, then the timed ones
            let mut measure = |launches: &[Launch]| -> Result<(Vec<f32>, f64), GenerateError> {
                run(mem, launches)?;
                let output = download_head(stream, &mem.act[1 - input], first_image)?;
                let ms = time_launches(ctx, stream, || run(mem, launches))?;
                Ok((output, ms))
            };
            let (reference, reference_ms) = measure(&launches[0])?;
            let others: Vec<Result<(f64, f64), String>> = launches[1..]
                .iter()
                .map(|l| {
                    measure(l)
                        .map(|(out, ms)| (ms, relative_l2(&out, &reference)))
                        .map_err(|e| e.to_string())
                })
                .collect();
            let (chosen, reason) = choose_candidate(reference_ms, &others);
            if chosen + 1 != launches.len() {
                run(mem, &launches[chosen])?; // the next layer's input is the chosen plan's output
            }
            let plan_label = |plan: &ConvPlan| match (conv.upsample, plan.phased) {
                (false, _) => plan.kind.label().to_string(),
                (true, true) => format!("{} phased", plan.kind.label()),
                (true, false) => format!("{} folded", plan.kind.label()),
            };
            let candidates = plans
                .iter()
                .zip(std::iter::once(Ok((reference_ms, 0.0))).chain(others))
                .map(|(plan, measured)| CandidateTiming {
                    kernel: plan_label(plan),
                    ms: measured.as_ref().ok().map(|m| m.0),
                    difference: measured.as_ref().ok().map(|m| m.1),
                    failure: measured.err(),
                })
                .collect();
            let choice = LayerChoice {
                layer: conv.name.clone(),
                candidates,
                chosen,
                reason,
            };
            tracing::debug!(
                "kernel tuning, {} at batch {batch}: {} ({})",
                choice.layer,
                plan_label(&plans[chosen]),
                choice.reason
            );
            tuning.plans.push((side, plans[chosen]));
            tuning.layers.push(choice);
        }
        stream.synchronize().map_err(cuda_err("synchronising"))?;
        let changed = tuning.layers.iter().filter(|l| l.chosen != 0).count();
        let (before, after) = tuning_totals(&tuning.layers);
        tracing::info!(
            "kernel tuning for batch {batch} on {}: {changed} of {} layers off the reference, convolutions {before:.3} -> {after:.3} ms",
            self.device_name,
            tuning.layers.len()
        );
        Ok(tuning)
    }

    /// Queues the whole forward pass for the latents already in the `z` buffer ([`forward_launches`]): as one
    /// CUDA graph ([`GpuLaunch::Graph`], captured at the first pass of a batch size) or kernel by kernel. Should
    /// the capture fail, this and every later pass queue the kernels one by one, and one warning says why.
    fn enqueue(&mut self) -> Result<(), GenerateError> {
        if self.launch == GpuLaunch::Graph && self.graph_unavailable.is_none() {
            match self.launch_graph() {
                Ok(()) => return Ok(()),
                Err(why) => {
                    tracing::warn!("the forward pass is queued kernel by kernel: it could not run as a CUDA graph: {why}");
                    self.graph_unavailable = Some(why.to_string());
                }
            }
        }
        self.enqueue_kernels(None)
    }

    /// Queues the forward pass's kernels one by one; with `marks`, an event is recorded after each layer (for
    /// [`CudaGenerator::layer_times`]).
    fn enqueue_kernels(
        &mut self,
        mut marks: Option<&mut Vec<(String, CudaEvent)>>,
    ) -> Result<(), GenerateError> {
        let Buffers { launches, mem, .. } = self
            .buffers
            .as_mut()
            .ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
        for layer in launches.iter() {
            for launch in &layer.launches {
                execute(&self.kernels, &self.stream, &self.weights, mem, launch)?;
            }
            record_mark(&self.ctx, &self.stream, &mut marks, &layer.name)?;
        }
        Ok(())
    }

    /// Launches the forward pass's CUDA graph, capturing it first if this batch size has none yet. The capture
    /// queues exactly what [`Self::enqueue_kernels`] queues, but records it instead of running it.
    fn launch_graph(&mut self) -> Result<(), GenerateError> {
        let Buffers {
            graph,
            launches,
            mem,
            ..
        } = self
            .buffers
            .as_mut()
            .ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
        if graph.is_none() {
            let stream = &self.stream;
            stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(cuda_err("starting a graph capture"))?;
            let queued = launches
                .iter()
                .flat_map(|layer| &layer.launches)
                .try_for_each(|launch| execute(&self.kernels, stream, &self.weights, mem, launch));
            // the capture is ended whatever happened, so that the stream leaves capture mode
            let captured = stream
                .end_capture(CUgraphInstantiate_flags(0))
                .map_err(cuda_err("ending the graph capture"));
            queued?;
            let captured = captured?
                .ok_or_else(|| GenerateError::Cuda("the graph capture recorded nothing".into()))?;
            captured.upload().map_err(cuda_err("uploading the graph"))?;
            *graph = Some(ForwardGraph(captured));
        }
        graph
            .as_ref()
            .map_or(Ok(()), |g| g.0.launch())
            .map_err(cuda_err("launching the graph"))
    }

    /// Runs convolution layer `index` alone on `input` (`[batch, side_in, side_in, Cin]` channels last) with the
    /// kernel this generator's settings choose for it; returns `[batch, side, side, Cout]` and the kernel family's
    /// name. For the per-layer parity test, which localises a mismatch to one kernel and one shape.
    pub fn run_layer(
        &mut self,
        index: usize,
        input: &[f32],
        batch: usize,
    ) -> Result<(Vec<f32>, String), GenerateError> {
        if index >= self.model.convs.len() {
            return Err(GenerateError::Cuda(format!("no convolution layer {index}")));
        }
        if batch == 0 || batch > MAX_BATCH {
            return Err(GenerateError::Cuda(format!(
                "batch must be 1 to {MAX_BATCH}, got {batch}"
            )));
        }
        self.ensure_buffers(batch)?;
        let bufs = self
            .buffers
            .as_mut()
            .ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
        let layer = LayerLaunch::new(&self.model, index, bufs.plans[index], self.precision, batch);
        let expected = batch * layer.side_in() * layer.side_in() * layer.cin;
        if input.len() != expected {
            let name = &self.model.convs[index].name;
            return Err(GenerateError::Cuda(format!(
                "layer {name}: input of {} values, expected {expected}",
                input.len()
            )));
        }
        {
            let mut head = bufs.mem.act[0]
                .try_slice_mut(..expected)
                .ok_or_else(|| GenerateError::Cuda("activation buffer too small".into()))?;
            self.stream
                .memcpy_htod(input, &mut head)
                .map_err(cuda_err("uploading the layer input"))?;
        }
        for launch in layer.launches(Buf::Act(0), Buf::Act(1)) {
            execute(
                &self.kernels,
                &self.stream,
                &self.weights,
                &mut bufs.mem,
                &launch,
            )?;
        }
        let out = download_head(
            &self.stream,
            &bufs.mem.act[1],
            batch * layer.side * layer.side * layer.cout,
        )?;
        Ok((out, layer.plan.kind.label().to_string()))
    }

    fn upload_latents(&mut self, latents: &[f32]) -> Result<usize, GenerateError> {
        let latent = self.model.latent_size;
        if latents.is_empty() || !latents.len().is_multiple_of(latent) {
            return Err(GenerateError::Latent {
                expected: latent,
                actual: latents.len(),
            });
        }
        let batch = latents.len() / latent;
        if batch > MAX_BATCH {
            return Err(GenerateError::Cuda(format!(
                "a launch takes at most {MAX_BATCH} latents, got {batch}"
            )));
        }
        self.ensure_buffers(batch)?;
        let bufs = self
            .buffers
            .as_mut()
            .ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
        self.stream
            .memcpy_htod(latents, &mut bufs.mem.z)
            .map_err(cuda_err("uploading latents"))?;
        Ok(batch)
    }

    /// Generates images; returns float32 NCHW `[N, 3, H, W]` and the packed 0RGB display pixels `[N, H, W]`.
    /// Batches over [`MAX_BATCH`] run in several launch sequences.
    pub fn generate_with_display(
        &mut self,
        latents: &[f32],
    ) -> Result<(Vec<f32>, Vec<u32>), GenerateError> {
        self.run(latents, true)
    }

    /// Generates images and downloads only their packed 0RGB display pixels `[N, H, W]` (a quarter of the float
    /// image's bytes): what the live display and its PNGs need.
    pub fn generate_display(&mut self, latents: &[f32]) -> Result<Vec<u32>, GenerateError> {
        Ok(self.run(latents, false)?.1)
    }

    /// Runs the forward pass over `latents` in chunks of at most [`MAX_BATCH`]; downloads the display pixels and,
    /// with `float_image`, the float image.
    fn run(
        &mut self,
        latents: &[f32],
        float_image: bool,
    ) -> Result<(Vec<f32>, Vec<u32>), GenerateError> {
        let latent = self.model.latent_size;
        if latents.is_empty() || !latents.len().is_multiple_of(latent) {
            return Err(GenerateError::Latent {
                expected: latent,
                actual: latents.len(),
            });
        }
        let (mut image, mut packed) = (Vec::new(), Vec::new());
        for chunk in latents.chunks(MAX_BATCH * latent) {
            self.upload_latents(chunk)?;
            self.enqueue()?;
            let bufs = self
                .buffers
                .as_ref()
                .ok_or_else(|| GenerateError::Cuda("buffers not allocated".into()))?;
            if float_image {
                image.extend(
                    self.stream
                        .clone_dtoh(&bufs.mem.image)
                        .map_err(cuda_err("downloading the image"))?,
                );
            }
            packed.extend(
                self.stream
                    .clone_dtoh(&bufs.mem.packed)
                    .map_err(cuda_err("downloading the display buffer"))?,
            );
        }
        Ok((image, packed))
    }

    /// Generates images; returns float32 NCHW `[N, 3, H, W]`.
    pub fn generate(&mut self, latents: &[f32]) -> Result<Vec<f32>, GenerateError> {
        Ok(self.generate_with_display(latents)?.0)
    }

    /// Seconds per image of the forward pass alone (latents already on the device), best of `repeats` runs of
    /// `iterations` back-to-back passes each.
    pub fn time_forward(
        &mut self,
        latents: &[f32],
        iterations: usize,
        repeats: usize,
    ) -> Result<f64, GenerateError> {
        let batch = self.upload_latents(latents)?;
        self.enqueue()?;
        self.stream
            .synchronize()
            .map_err(cuda_err("synchronising"))?;
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let t = std::time::Instant::now();
            for _ in 0..iterations.max(1) {
                self.enqueue()?;
            }
            self.stream
                .synchronize()
                .map_err(cuda_err("synchronising"))?;
            best = best.min(t.elapsed().as_secs_f64() / (iterations.max(1) * batch) as f64);
        }
        Ok(best)
    }

    /// Milliseconds of each layer for one forward pass of `latents` (after a warm-up), from CUDA events.
    pub fn layer_times(&mut self, latents: &[f32]) -> Result<Vec<(String, f64)>, GenerateError> {
        self.upload_latents(latents)?;
        self.enqueue()?;
        let start = self
            .ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(cuda_err("creating an event"))?;
        start
            .record(&self.stream)
            .map_err(cuda_err("recording an event"))?;
        let mut marks = Vec::new();
        self.enqueue_kernels(Some(&mut marks))?;
        self.stream
            .synchronize()
            .map_err(cuda_err("synchronising"))?;
        let mut previous = &start;
        let mut times = Vec::new();
        for (name, event) in &marks {
            times.push((
                name.clone(),
                previous
                    .elapsed_ms(event)
                    .map_err(cuda_err("reading an event"))? as f64,
            ));
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

    #[test]
    fn a_gpu_index_outside_the_gpus_cuda_sees_is_refused_with_the_numbering() {
        assert_eq!(check_gpu_index(0, 1), Ok(()));
        assert_eq!(check_gpu_index(3, 4), Ok(()));
        assert_eq!(check_gpu_index(0, 0), Err("no CUDA device".to_string()));
        let one = check_gpu_index(1, 1).unwrap_err();
        assert!(
            one.starts_with("GPU 1 was asked for, but CUDA sees one GPU, GPU 0"),
            "{one}"
        );
        let four = check_gpu_index(4, 4).unwrap_err();
        assert!(
            four.starts_with("GPU 4 was asked for, but CUDA sees 4 GPUs, numbered 0 to 3"),
            "{four}"
        );
        assert!(
            four.contains("CUDA_VISIBLE_DEVICES") && four.contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"),
            "{four}"
        );
    }

    #[test]
    fn the_architecture_is_checked_against_the_precision_and_nvrtc() {
        let nvrtc13 = [75, 80, 86, 87, 88, 89, 90, 100, 103, 107, 110, 120, 121]; // as NVRTC 13.0 lists them
        assert_eq!(
            kernel_arch(9, 0, Precision::Tf32, "13.0", &nvrtc13).unwrap(),
            "compute_90"
        );
        // Turing runs the float32 path; its TF32 is refused with the way out
        assert_eq!(
            kernel_arch(7, 5, Precision::F32, "13.0", &nvrtc13).unwrap(),
            "compute_75"
        );
        let tf32 = kernel_arch(7, 5, Precision::Tf32, "13.0", &nvrtc13)
            .unwrap_err()
            .to_string();
        assert!(
            tf32.contains("8.0") && tf32.contains("--precision f32"),
            "{tf32}"
        );
        // Volta: NVRTC 12 compiles for it, NVRTC 13 does not
        assert_eq!(
            kernel_arch(7, 0, Precision::F32, "12.8", &[50, 60, 70, 75, 80, 90]).unwrap(),
            "compute_70"
        );
        let volta = kernel_arch(7, 0, Precision::F32, "13.0", &nvrtc13)
            .unwrap_err()
            .to_string();
        assert!(
            volta.contains("NVRTC 13.0 does not compile for compute capability 7.0")
                && volta.contains("older CUDA"),
            "{volta}"
        );
        // a GPU newer than the NVRTC at hand
        let newer = kernel_arch(12, 1, Precision::F32, "12.8", &[70, 75, 80, 90, 100, 120])
            .unwrap_err()
            .to_string();
        assert!(newer.contains("newer CUDA"), "{newer}");
        // NVRTC's list unknown: the compile itself will say
        assert_eq!(
            kernel_arch(8, 6, Precision::Tf32, "unknown", &[]).unwrap(),
            "compute_86"
        );
        assert!(kernel_arch(6, 1, Precision::F32, "12.8", &[61]).is_err());
    }

    #[test]
    fn a_driver_older_than_nvrtc_is_named_as_the_cause() {
        use cudarc::driver::{sys::CUresult, DriverError};
        let old = kernel_load_error(
            DriverError(CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION),
            Some("12.2"),
            "13.0",
        );
        let text = old.to_string();
        assert!(
            text.contains("CUDA 12.2")
                && text.contains("NVRTC 13.0")
                && text.contains("update the driver"),
            "{text}"
        );
        assert!(
            text.contains("CUDA_ERROR_UNSUPPORTED_PTX_VERSION"),
            "{text}"
        );
        let unknown = kernel_load_error(
            DriverError(CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION),
            None,
            "13.0",
        );
        assert!(
            unknown
                .to_string()
                .contains("this NVIDIA driver is older than NVRTC 13.0"),
            "{unknown}"
        );
    }

    #[test]
    fn tuning_uses_a_candidate_only_when_it_agrees_and_is_faster() {
        let decide = |others: &[Result<(f64, f64), &str>]| {
            let others: Vec<_> = others.iter().map(|o| o.map_err(str::to_string)).collect();
            choose_candidate(0.50, &others)
        };
        assert_eq!(
            decide(&[]),
            (0, "the only candidate for this shape".to_string())
        );
        assert_eq!(
            decide(&[Ok((0.25, 1.4e-3))]),
            (1, "2.00x faster than the reference".to_string())
        );
        // within the timing noise: the reference stays
        let (chosen, why) = decide(&[Ok((0.495, 1e-3))]);
        assert!(chosen == 0 && why.contains("no other candidate"), "{why}");
        // faster but wrong, or NaN: never used, and the reason says so
        for diff in [0.3, f64::NAN, f64::INFINITY] {
            let (chosen, why) = decide(&[Ok((0.1, diff))]);
            assert!(chosen == 0 && why.contains("#1 disagrees"), "{diff}: {why}");
        }
        let (chosen, why) = decide(&[Err("launching a kernel: CUDA_ERROR_INVALID_VALUE")]);
        assert!(
            chosen == 0 && why.contains("#1 failed") && why.contains("INVALID_VALUE"),
            "{why}"
        );
        // the fastest that agrees wins; one must beat the best so far, not only the reference
        let (chosen, why) = decide(&[
            Ok((0.40, 1e-3)),
            Ok((0.20, 0.5)),
            Ok((0.30, 2e-3)),
            Ok((0.297, 1e-3)),
        ]);
        assert_eq!(chosen, 3, "{why}");
        assert!(
            why.starts_with("1.67x faster") && why.contains("#2 disagrees"),
            "{why}"
        );
    }
}
