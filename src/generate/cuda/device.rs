//! What this machine's CUDA offers: whether the driver and NVRTC libraries load, which GPUs there are and how
//! they are numbered, the driver's CUDA version, and the error of a failed driver call.

use cudarc::driver::CudaContext;

use crate::generate::error::CudaError;

/// Why CUDA cannot be used here for GPU `gpu_index` (CUDA's numbering), or `Ok` when the driver and NVRTC
/// libraries load (cudarc panics on use otherwise) and that GPU exists.
pub fn probe(gpu_index: usize) -> Result<(), CudaError> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::Unavailable(
            "the NVIDIA driver library (libcuda) was not found".into(),
        ));
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaError::Unavailable("the NVRTC library (libnvrtc) was not found; set LD_LIBRARY_PATH to the CUDA toolkit's lib64".into()));
    }
    match CudaContext::device_count() {
        Ok(n) => check_gpu_index(gpu_index, n.max(0) as usize),
        Err(e) => Err(CudaError::Unavailable(format!("CUDA driver: {e}"))),
    }
}

/// Whether GPU `gpu_index` is among the `count` GPUs CUDA sees, with a message that says how they are numbered.
pub fn check_gpu_index(gpu_index: usize, count: usize) -> Result<(), CudaError> {
    match count {
        0 => Err(CudaError::Unavailable("no CUDA device".into())),
        _ if gpu_index < count => Ok(()),
        1 => Err(CudaError::Unavailable(format!("GPU {gpu_index} was asked for, but CUDA sees one GPU, GPU 0 (`hyper-rt gpu-info` lists it)"))),
        _ => Err(CudaError::Unavailable(format!(
            "GPU {gpu_index} was asked for, but CUDA sees {count} GPUs, numbered 0 to {} (`hyper-rt gpu-info` lists \
             them; CUDA_VISIBLE_DEVICES hides some and renumbers the rest, and CUDA numbers the fastest first unless \
             CUDA_DEVICE_ORDER=PCI_BUS_ID, which gives nvidia-smi's order)",
            count - 1
        ))),
    }
}

/// The CUDA version the driver supports, e.g. "12.2" (cuDriverGetVersion's 12020), if it says.
pub(super) fn driver_cuda_version() -> Option<String> {
    let mut version = 0;
    // SAFETY: one out-pointer to a live integer; the driver library was found by the probe.
    let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    (status == cudarc::driver::sys::CUresult::CUDA_SUCCESS)
        .then(|| format!("{}.{}", version / 1000, version % 1000 / 10))
}

pub(super) fn driver_err(during: &str) -> impl Fn(cudarc::driver::DriverError) -> CudaError + '_ {
    move |e| CudaError::Driver {
        during: during.to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_index_outside_the_gpus_cuda_sees_is_refused_with_the_numbering() {
        let check = |gpu, count| check_gpu_index(gpu, count).map_err(|e| e.to_string());
        assert_eq!(check(0, 1), Ok(()));
        assert_eq!(check(3, 4), Ok(()));
        assert_eq!(check(0, 0), Err("no CUDA device".to_string()));
        let one = check(1, 1).unwrap_err();
        assert!(
            one.starts_with("GPU 1 was asked for, but CUDA sees one GPU, GPU 0"),
            "{one}"
        );
        let four = check(4, 4).unwrap_err();
        assert!(
            four.starts_with("GPU 4 was asked for, but CUDA sees 4 GPUs, numbered 0 to 3"),
            "{four}"
        );
        assert!(
            four.contains("CUDA_VISIBLE_DEVICES") && four.contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"),
            "{four}"
        );
    }
}
