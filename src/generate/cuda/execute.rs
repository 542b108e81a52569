//! The device side of a launch: the kernels loaded from the compiled PTX, the model's weights and a forward
//! pass's buffers on the device, and the queuing of one [`Launch`] with its arguments in the kernel's order.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig,
    PushKernelArg,
};

use super::device::{driver_cuda_version, driver_err};
use super::launches::{Buf, ConvShape, Launch};
use super::nvrtc::nvrtc_version;
use super::plan::{staged_kernels_shared_bytes, KERNELS};
use super::ptx_cache::{default_cache_dir, kernels_ptx, PtxSource};
use crate::generate::error::CudaError;

// SAFETY: plain old data with the C layout (`#[repr(C)]`, twelve i32) of kernels/conv_common.cuh's `struct ConvShape`.
unsafe impl DeviceRepr for ConvShape {}

/// A GPU generator's device, for the work done outside its forward pass (the kernel tuning).
pub(super) struct OnDevice<'a> {
    pub(super) ctx: &'a Arc<CudaContext>,
    pub(super) stream: &'a Arc<CudaStream>,
    pub(super) kernels: &'a Kernels,
    pub(super) weights: &'a DeviceWeights,
    pub(super) device_name: &'a str,
}

/// The model's weights on the device (the CPU model's effective weights).
pub(super) struct DeviceWeights {
    pub(super) dense_weight: CudaSlice<f32>,
    pub(super) dense_bias: CudaSlice<f32>,
    /// Each convolution layer's weights `[9 * Cin, Cout]` and bias.
    pub(super) convs: Vec<(CudaSlice<f32>, CudaSlice<f32>)>,
    /// Each upsampling layer's phase weights (for phased plans), `None` for the others.
    pub(super) phase_weights: Vec<Option<CudaSlice<f32>>>,
    pub(super) rgb_weight: CudaSlice<f32>,
    pub(super) rgb_bias: CudaSlice<f32>,
}

/// The device memory a forward pass works in.
pub(super) struct DeviceBuffers {
    pub(super) z: CudaSlice<f32>,
    /// [`Buf::Act`] 0, 1 (a layer's input and output in turn) and 2 (split-K partial sums).
    pub(super) act: [CudaSlice<f32>; 3],
    pub(super) image: CudaSlice<f32>,
    pub(super) packed: CudaSlice<u32>,
}

/// The loaded kernels by name ([`KERNELS`]).
pub(super) struct Kernels(HashMap<&'static str, CudaFunction>);

impl Kernels {
    fn get(&self, name: &str) -> Result<&CudaFunction, CudaError> {
        self.0
            .get(name)
            .ok_or_else(|| CudaError::Plan(format!("kernel {name} is not loaded")))
    }
}

/// Queues one [`Launch`]: its buffers and integers pushed in the launch's order (the order the emulated kernel
/// tests replay and check), a convolution's integers as one `ConvShape`.
pub(super) fn execute(
    kernels: &Kernels,
    stream: &Arc<CudaStream>,
    weights: &DeviceWeights,
    mem: &mut DeviceBuffers,
    launch: &Launch,
) -> Result<(), CudaError> {
    let func = kernels.get(launch.kernel)?;
    let shape = match launch.ints_are_conv_shape {
        true => Some(
            ConvShape::from_ints(&launch.ints)
                .ok_or_else(|| CudaError::Plan(format!("{}: not a ConvShape", launch.kernel)))?,
        ),
        false => None,
    };
    let conv = |i: usize| {
        weights
            .convs
            .get(i)
            .ok_or_else(|| CudaError::Plan(format!("no convolution layer {i}")))
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
        CudaError::Plan(format!(
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
                    .ok_or_else(|| CudaError::Plan(format!("layer {i} has no phase weights")))?,
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
    unsafe { b.launch(cfg) }.map_err(driver_err(launch.kernel))?;
    Ok(())
}

/// The first `n` values of a device buffer.
pub(super) fn download_head(
    stream: &Arc<CudaStream>,
    buf: &CudaSlice<f32>,
    n: usize,
) -> Result<Vec<f32>, CudaError> {
    let view = buf
        .try_slice(..n)
        .ok_or_else(|| CudaError::Plan(format!("buffer of {} values, {n} wanted", buf.len())))?;
    stream
        .clone_dtoh(&view)
        .map_err(driver_err("downloading a layer's output"))
}

/// With `marks` (a profile being taken), records an event named `name` on the stream now.
pub(super) fn record_mark(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    marks: &mut Option<&mut Vec<(String, CudaEvent)>>,
    name: &str,
) -> Result<(), CudaError> {
    if let Some(marks) = marks.as_deref_mut() {
        let event = ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_err("creating an event"))?;
        event
            .record(stream)
            .map_err(driver_err("recording an event"))?;
        marks.push((name.to_string(), event));
    }
    Ok(())
}

/// The failure to load the kernels' PTX, with its usual cause spelled out: a driver older than the NVRTC that
/// compiled the kernels (the PyPI wheel or a newer toolkit beside an older driver) cannot load its PTX.
pub(super) fn kernel_load_error(
    e: cudarc::driver::DriverError,
    driver: Option<&str>,
    nvrtc: &str,
) -> CudaError {
    if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION {
        let driver = driver.map_or_else(
            || "this NVIDIA driver".to_string(),
            |v| format!("the NVIDIA driver (CUDA {v})"),
        );
        return CudaError::Plan(format!(
            "loading the kernels: {driver} is older than NVRTC {nvrtc}, which compiled them ({:?}): update the driver, \
             or put an NVRTC no newer than the driver first in LD_LIBRARY_PATH",
            e.0
        ));
    }
    driver_err("loading the kernels")(e)
}

/// Compiles the kernels for `arch` (or takes them from the kernel cache, see [`super::ptx_cache`]) and loads every
/// entry point into `ctx`; also says where the PTX came from.
pub(super) fn load_kernels(
    ctx: &Arc<CudaContext>,
    arch: &'static str,
) -> Result<(Kernels, PtxSource), CudaError> {
    let (ptx, origin) = kernels_ptx(arch, default_cache_dir().as_deref())?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| kernel_load_error(e, driver_cuda_version().as_deref(), &nvrtc_version()))?;
    let load = |name: &'static str| {
        let func = module.load_function(name).map_err(|e| CudaError::Driver {
            during: format!("loading kernel {name}"),
            message: e.to_string(),
        })?;
        Ok((name, func))
    };
    Ok((
        Kernels(
            KERNELS
                .iter()
                .map(|&name| load(name))
                .collect::<Result<_, CudaError>>()?,
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
) -> Result<(), CudaError> {
    if major < 8 {
        return Err(CudaError::Unsupported(format!(
            "they need compute capability 8.0, this GPU has {major}.{minor}"
        )));
    }
    let opt_in = ctx
        .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(driver_err("reading the shared memory per block"))? as usize;
    for (name, bytes) in staged_kernels_shared_bytes() {
        let func = kernels.get(name)?;
        if bytes > opt_in {
            return Err(CudaError::Unsupported(format!(
                "they use up to {bytes} bytes of shared memory per block, this GPU allows {opt_in}"
            )));
        }
        func.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(driver_err("allowing the staged kernels their shared memory"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
