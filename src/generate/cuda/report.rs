//! What the GPU path can use on this machine (`hyper-rt gpu-info`): the driver, NVRTC, each GPU with what it can
//! run (the float32 kernels, TF32, the staged kernels), and what `--device auto` will choose. It goes through the
//! same steps as the generator's start (probe, architecture check, compile or cache, module load, shared-memory
//! opt-in), so a failure here is the failure the generator would meet, with the same message.

use std::time::Instant;

use cudarc::driver::CudaContext;
use serde::Serialize;

use super::device::{driver_cuda_version, probe};
use super::execute::{enable_staged, load_kernels};
use super::nvrtc::{kernel_arch, nvrtc_supported_archs, nvrtc_version};
use super::plan::KERNELS;
use super::ptx_cache::PtxSource;
use crate::generate::settings::Precision;

/// One thing checked: whether it is usable, and what was found (or why not).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn ok(detail: impl Into<String>) -> Check {
        Check {
            ok: true,
            detail: detail.into(),
        }
    }
    fn failed(detail: impl Into<String>) -> Check {
        Check {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// One GPU and what the generator can run on it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub index: usize,
    pub name: String,
    /// e.g. "9.0"
    pub compute_capability: String,
    pub multiprocessors: i32,
    pub memory_gib: f64,
    /// Compiling (or reading from the kernel cache) and loading every kernel.
    pub kernels: Check,
    pub float32: Check,
    pub tf32: Check,
    /// The pipelined and spatial-tile TF32 kernels (`--kernels staged|tuned`).
    pub staged: Check,
}

/// Everything `hyper-rt gpu-info` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CudaReport {
    pub driver: Check,
    pub nvrtc: Check,
    pub devices: Vec<DeviceReport>,
    /// What `--device auto` does here (with the `--gpu` asked for).
    pub auto_choice: String,
}

/// Checks the driver, NVRTC and every GPU (compiling the kernels for each architecture present, or reading them
/// from the kernel cache); `auto_choice` is what `--device auto --gpu gpu_index` does.
pub fn cuda_report(gpu_index: usize) -> CudaReport {
    // SAFETY: these only try to load the libraries.
    let driver_present = unsafe { cudarc::driver::sys::is_culib_present() };
    let nvrtc_present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    let driver = if driver_present {
        Check::ok(driver_cuda_version().map_or_else(
            || "found (version unknown)".to_string(),
            |v| format!("supports CUDA {v}"),
        ))
    } else {
        Check::failed("the NVIDIA driver library (libcuda) was not found")
    };
    let nvrtc = if nvrtc_present {
        let archs: Vec<String> = nvrtc_supported_archs()
            .iter()
            .map(|c| format!("{}.{}", c / 10, c % 10))
            .collect();
        Check::ok(format!(
            "{}, compiles for compute capability {}",
            nvrtc_version(),
            archs.join(", ")
        ))
    } else {
        Check::failed("the NVRTC library (libnvrtc) was not found; set LD_LIBRARY_PATH to the CUDA toolkit's lib64")
    };
    let mut devices = Vec::new();
    if driver_present {
        let count = CudaContext::device_count().unwrap_or(0).max(0) as usize;
        for index in 0..count {
            devices.push(device_report(index, nvrtc_present));
        }
    }
    let auto_choice = match (probe(gpu_index), devices.get(gpu_index)) {
        (Err(why), _) => format!("the CPU: {why}"),
        (Ok(()), Some(d)) if d.float32.ok => format!("GPU {gpu_index} ({})", d.name),
        (Ok(()), Some(d)) => format!(
            "the CPU: GPU {gpu_index} ({}): {}",
            d.name, d.float32.detail
        ),
        (Ok(()), None) => format!("the CPU: no GPU {gpu_index}"),
    };
    CudaReport {
        driver,
        nvrtc,
        devices,
        auto_choice,
    }
}

fn device_report(index: usize, nvrtc_present: bool) -> DeviceReport {
    let failed_device = |why: String| DeviceReport {
        index,
        name: "?".into(),
        compute_capability: "?".into(),
        multiprocessors: 0,
        memory_gib: 0.0,
        kernels: Check::failed(why.clone()),
        float32: Check::failed(why.clone()),
        tf32: Check::failed(why.clone()),
        staged: Check::failed(why),
    };
    let ctx = match CudaContext::new(index) {
        Ok(ctx) => ctx,
        Err(e) => return failed_device(format!("creating a context: {e}")),
    };
    let (major, minor) = match ctx.compute_capability() {
        Ok(cc) => cc,
        Err(e) => return failed_device(format!("reading the compute capability: {e}")),
    };
    let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
    let multiprocessors = ctx
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .unwrap_or(0);
    let memory_gib = ctx
        .total_mem()
        .map_or(0.0, |b| b as f64 / (1u64 << 30) as f64);
    let (nvrtc, archs) = (nvrtc_version(), nvrtc_supported_archs());
    let arch_for = |precision| kernel_arch(major, minor, precision, &nvrtc, &archs);
    let loaded = if !nvrtc_present {
        Err("NVRTC was not found".to_string())
    } else {
        arch_for(Precision::F32)
            .map_err(|e| e.to_string())
            .and_then(|arch| {
                let started = Instant::now();
                let (kernels, origin) = load_kernels(&ctx, arch).map_err(|e| e.to_string())?;
                let how = match origin {
                    PtxSource::Compiled => format!(
                        "compiled with NVRTC in {:.1} s",
                        started.elapsed().as_secs_f64()
                    ),
                    PtxSource::Disk => "read from the kernel cache".to_string(),
                    PtxSource::Memory => "compiled earlier in this run".to_string(),
                };
                Ok((
                    kernels,
                    format!("{arch}: {} kernels {how}, loaded", KERNELS.len()),
                ))
            })
    };
    let (kernels, float32, tf32, staged) = match &loaded {
        Err(why) => (
            Check::failed(why.clone()),
            Check::failed(why.clone()),
            Check::failed(why.clone()),
            Check::failed(why.clone()),
        ),
        Ok((kernels, how)) => {
            let tf32 = match arch_for(Precision::Tf32) {
                Ok(_) => Check::ok("tensor cores (mma.sync TF32)"),
                Err(e) => Check::failed(e.to_string()),
            };
            let staged = match (tf32.ok, enable_staged(&ctx, (major, minor), kernels)) {
                (false, _) => Check::failed("needs the TF32 path"),
                (true, Ok(())) => Check::ok("cp.async pipelined and spatial-tile kernels"),
                (true, Err(why)) => Check::failed(why.to_string()),
            };
            (
                Check::ok(how.clone()),
                Check::ok("float32 kernels"),
                tf32,
                staged,
            )
        }
    };
    DeviceReport {
        index,
        name,
        compute_capability: format!("{major}.{minor}"),
        multiprocessors,
        memory_gib,
        kernels,
        float32,
        tf32,
        staged,
    }
}
