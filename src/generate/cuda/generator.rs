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
use cudarc::driver::{CudaContext, CudaEvent, CudaGraph, CudaStream};

use super::device::{driver_err, probe};
use super::execute::{
    download_head, enable_staged, execute, load_kernels, record_mark, DeviceBuffers, DeviceWeights,
    Kernels, OnDevice,
};
use super::launches::{buffer_sizes, forward_launches, Buf, LayerLaunch, LayerLaunches};
use super::nvrtc::{kernel_arch, nvrtc_supported_archs, nvrtc_version};
use super::plan::{layer_plans, ConvPlan};
use super::tune::{tune, tuning_candidates, LayerChoice, Tuning};
use crate::generate::error::{CudaError, GenerateError};
use crate::generate::gpu::GpuGenerator;
use crate::generate::model::PgganModel;
use crate::generate::settings::{ConvKernels, GpuLaunch, GpuSettings, Precision, UpsampleConv};

/// Largest batch one launch sequence takes (bounds the activation buffers); larger batches are split.
pub const MAX_BATCH: usize = 64;

/// Per-batch-size plans and device buffers, reused across calls.
pub(super) struct Buffers {
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

impl CudaGenerator {
    /// Probes the libraries, creates a context on GPU `gpu_index` (CUDA's numbering, as `hyper-rt gpu-info` lists
    /// the GPUs), compiles the kernels (or takes them from the kernel cache, see [`super::ptx_cache`]) and uploads
    /// the weights.
    pub fn new(
        model: Arc<PgganModel>,
        precision: Precision,
        gpu_index: usize,
    ) -> Result<CudaGenerator, GenerateError> {
        probe(gpu_index)?;
        let ctx = CudaContext::new(gpu_index).map_err(driver_err("creating a context"))?;
        // SAFETY: called before anything is allocated in this context object; all of this generator's device work
        // then runs in order on its one stream, so no buffer needs events to order its uses across streams (and
        // events recorded outside a graph capture cannot be waited on inside one).
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver_err("reading the compute capability"))?;
        let arch = kernel_arch(
            major,
            minor,
            precision,
            &nvrtc_version(),
            &nvrtc_supported_archs(),
        )?;
        let (kernels, origin) = load_kernels(&ctx, arch)?;
        tracing::debug!("CUDA kernels for compute capability {major}.{minor}: {origin:?}");
        let stream = ctx.new_stream().map_err(driver_err("creating a stream"))?;
        let up = |data: &[f32]| {
            stream
                .clone_htod(data)
                .map_err(driver_err("uploading weights"))
        };
        let weights = DeviceWeights {
            dense_weight: up(&model.dense_weight)?,
            dense_bias: up(&model.dense_bias)?,
            convs: model
                .convs
                .iter()
                .map(|c| Ok((up(&c.weight)?, up(&c.bias)?)))
                .collect::<Result<_, CudaError>>()?,
            phase_weights: model
                .convs
                .iter()
                .map(|c| c.upsample.then(|| up(&c.phase_weights())).transpose())
                .collect::<Result<_, CudaError>>()?,
            rgb_weight: up(&model.to_rgb_weight)?,
            rgb_bias: up(&model.to_rgb_bias)?,
        };
        let sm_count =
            ctx.attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(driver_err("reading the multiprocessor count"))? as usize;
        let device_name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        let staged_unavailable = enable_staged(&ctx, (major, minor), &kernels)
            .err()
            .map(|e| e.to_string());
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
            (ConvKernels::Staged, Some(why)) => return Err(CudaError::Unsupported(why).into()),
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
            (ConvKernels::Tuned, None) => tuning_candidates(
                &self.model,
                self.sm_count,
                batch,
                self.upsample == UpsampleConv::Phased,
                staged,
            ),
            (kernels, _) => vec![self.plans(batch, kernels == ConvKernels::Staged && staged)],
        };
        let sizes = buffer_sizes(&self.model, &candidates, batch);
        let alloc = |n: usize| {
            self.stream
                .alloc_zeros::<f32>(n.max(1))
                .map_err(driver_err("allocating activations"))
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
                .map_err(driver_err("allocating the display buffer"))?,
        };
        let mut plans = candidates[0].clone();
        if candidates.len() > 1 {
            let gpu = OnDevice {
                ctx: &self.ctx,
                stream: &self.stream,
                kernels: &self.kernels,
                weights: &self.weights,
                device_name: &self.device_name,
            };
            let tuning = tune(
                &gpu,
                &self.model,
                self.precision,
                &mut mem,
                batch,
                &candidates,
            )?;
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
            .ok_or_else(|| CudaError::Plan("buffers not allocated".into()))?;
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
            .ok_or_else(|| CudaError::Plan("buffers not allocated".into()))?;
        if graph.is_none() {
            let stream = &self.stream;
            stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(driver_err("starting a graph capture"))?;
            let queued = launches
                .iter()
                .flat_map(|layer| &layer.launches)
                .try_for_each(|launch| execute(&self.kernels, stream, &self.weights, mem, launch));
            // the capture is ended whatever happened, so that the stream leaves capture mode
            let captured = stream
                .end_capture(CUgraphInstantiate_flags(0))
                .map_err(driver_err("ending the graph capture"));
            queued?;
            let captured = captured?.ok_or_else(|| CudaError::Driver {
                during: "capturing the forward pass as a CUDA graph".into(),
                message: "the capture recorded nothing".into(),
            })?;
            captured
                .upload()
                .map_err(driver_err("uploading the graph"))?;
            *graph = Some(ForwardGraph(captured));
        }
        graph
            .as_ref()
            .map_or(Ok(()), |g| g.0.launch())
            .map_err(driver_err("launching the graph"))?;
        Ok(())
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
            return Err(CudaError::Request(format!("no convolution layer {index}")).into());
        }
        if batch == 0 || batch > MAX_BATCH {
            return Err(
                CudaError::Request(format!("batch must be 1 to {MAX_BATCH}, got {batch}")).into(),
            );
        }
        self.ensure_buffers(batch)?;
        let bufs = self
            .buffers
            .as_mut()
            .ok_or_else(|| CudaError::Plan("buffers not allocated".into()))?;
        let layer = LayerLaunch::new(&self.model, index, bufs.plans[index], self.precision, batch);
        let expected = batch * layer.side_in() * layer.side_in() * layer.cin;
        if input.len() != expected {
            let name = &self.model.convs[index].name;
            return Err(CudaError::Request(format!(
                "layer {name}: input of {} values, expected {expected}",
                input.len()
            ))
            .into());
        }
        {
            let mut head = bufs.mem.act[0]
                .try_slice_mut(..expected)
                .ok_or_else(|| CudaError::Plan("activation buffer too small".into()))?;
            self.stream
                .memcpy_htod(input, &mut head)
                .map_err(driver_err("uploading the layer input"))?;
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
            return Err(CudaError::Request(format!(
                "a launch takes at most {MAX_BATCH} latents, got {batch}"
            ))
            .into());
        }
        self.ensure_buffers(batch)?;
        let bufs = self
            .buffers
            .as_mut()
            .ok_or_else(|| CudaError::Plan("buffers not allocated".into()))?;
        self.stream
            .memcpy_htod(latents, &mut bufs.mem.z)
            .map_err(driver_err("uploading latents"))?;
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
                .ok_or_else(|| CudaError::Plan("buffers not allocated".into()))?;
            if float_image {
                image.extend(
                    self.stream
                        .clone_dtoh(&bufs.mem.image)
                        .map_err(driver_err("downloading the image"))?,
                );
            }
            packed.extend(
                self.stream
                    .clone_dtoh(&bufs.mem.packed)
                    .map_err(driver_err("downloading the display buffer"))?,
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
            .map_err(driver_err("synchronising"))?;
        let mut best = f64::INFINITY;
        for _ in 0..repeats.max(1) {
            let t = std::time::Instant::now();
            for _ in 0..iterations.max(1) {
                self.enqueue()?;
            }
            self.stream
                .synchronize()
                .map_err(driver_err("synchronising"))?;
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
            .map_err(driver_err("creating an event"))?;
        start
            .record(&self.stream)
            .map_err(driver_err("recording an event"))?;
        let mut marks = Vec::new();
        self.enqueue_kernels(Some(&mut marks))?;
        self.stream
            .synchronize()
            .map_err(driver_err("synchronising"))?;
        let mut previous = &start;
        let mut times = Vec::new();
        for (name, event) in &marks {
            times.push((
                name.clone(),
                previous
                    .elapsed_ms(event)
                    .map_err(driver_err("reading an event"))? as f64,
            ));
            previous = event;
        }
        Ok(times)
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

impl GpuGenerator for CudaGenerator {
    fn generate(&mut self, latents: &[f32]) -> Result<Vec<f32>, GenerateError> {
        CudaGenerator::generate(self, latents)
    }

    fn generate_display(&mut self, latents: &[f32]) -> Result<Vec<u32>, GenerateError> {
        CudaGenerator::generate_display(self, latents)
    }

    fn use_settings(&mut self, settings: GpuSettings) -> Result<(), GenerateError> {
        CudaGenerator::use_settings(self, settings)
    }

    fn shared_model(&self) -> Arc<PgganModel> {
        CudaGenerator::shared_model(self)
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn describe(&self) -> String {
        format!(
            "GPU {}, {} ({:?})",
            self.gpu_index, self.device_name, self.precision
        )
    }
}
