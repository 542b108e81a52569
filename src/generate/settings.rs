//! The choices that say where and how the generator runs: the device, the GPU's arithmetic, its convolution
//! kernels, the upsampling layers' form and how a forward pass is queued. They are plain values (config keys and
//! command-line flags), known to every build whether or not it has CUDA support.

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

/// Arithmetic of the GPU's convolutions (the CPU always computes in float32).
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
    /// The gather kernels (`conv3x3_f32_*`, `conv3x3_tf32_*`): every layer shape, every GPU from sm_70.
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
    /// pixel summed into one weight: 4 multiply-adds per output and input channel instead of 9, the same result.
    #[default]
    Phased,
    /// The upsample folded into the 3 x 3 convolution's input indexing: 9 multiply-adds per output and input
    /// channel.
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
    /// one instead, with one warning saying why.
    #[default]
    Graph,
    /// Each kernel queued on the stream in turn.
    Stream,
}

/// Everything that chooses how the GPU runs the generator (the image is the same up to the TF32 rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GpuSettings {
    pub kernels: ConvKernels,
    pub upsample: UpsampleConv,
    pub launch: GpuLaunch,
}
