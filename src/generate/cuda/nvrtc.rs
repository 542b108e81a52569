//! Compiling our kernels with NVRTC: the sources (`kernels/*.cu`, embedded in the binary), the GPU architectures
//! they are compiled for, the choice of architecture for a GPU, NVRTC's version and the architectures it knows.
//! The compiled PTX is kept by [`super::ptx_cache`].

use super::source::kernel_source;
use crate::generate::error::CudaError;
use crate::generate::settings::Precision;

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
) -> Result<&'static str, CudaError> {
    let cc = major * 10 + minor;
    let Some(&(_, arch)) = ARCHITECTURES.iter().find(|(c, _)| *c == cc) else {
        return Err(CudaError::Unsupported(format!(
            "compute capability {major}.{minor} is not supported"
        )));
    };
    if precision == Precision::Tf32 && major < 8 {
        return Err(CudaError::Unsupported(format!(
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
        return Err(CudaError::Unsupported(format!(
            "NVRTC {nvrtc} does not compile for compute capability {major}.{minor} (it does for {}): {way_out}",
            listed.join(", ")
        )));
    }
    Ok(arch)
}

/// NVRTC options besides the architecture (part of the kernel cache's key).
pub const NVRTC_OPTIONS: [&str; 1] = ["--std=c++17"];

/// Compiles the kernels to PTX for `arch` (e.g. `"compute_90"`); [`super::ptx_cache::kernels_ptx`] caches the result.
pub fn compile_ptx(arch: &'static str) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        options: NVRTC_OPTIONS.iter().map(|o| o.to_string()).collect(),
        name: Some("pggan_kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(kernel_source(), opts)
        .map_err(|e| CudaError::Compile(e.to_string()))
}
/// NVRTC's output as text (PTX is ASCII, ended by a NUL in the compiled image).
pub(super) fn compile_to_text(arch: &'static str) -> Result<String, CudaError> {
    let ptx = compile_ptx(arch)?;
    let bytes = ptx
        .as_bytes()
        .ok_or_else(|| CudaError::Compile("NVRTC returned no PTX image".into()))?;
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8(bytes[..end].to_vec())
        .map_err(|_| CudaError::Compile("NVRTC returned PTX that is not text".into()))
}

/// NVRTC's version, e.g. "13.0" (the library must be present: callers probe first).
pub fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers; the library was found by the caller's probe.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if status == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        format!("{major}.{minor}")
    } else {
        "unknown".into()
    }
}

/// The compute capabilities NVRTC compiles for (major * 10 + minor, e.g. 75); empty if it does not say.
pub fn nvrtc_supported_archs() -> Vec<i32> {
    let mut count = 0;
    // SAFETY: an out-pointer to a live integer, then a buffer of the size NVRTC gave; the library was probed.
    unsafe {
        if cudarc::nvrtc::sys::nvrtcGetNumSupportedArchs(&mut count)
            != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS
        {
            return Vec::new();
        }
        let mut archs = vec![0; usize::try_from(count).unwrap_or(0)];
        if archs.is_empty()
            || cudarc::nvrtc::sys::nvrtcGetSupportedArchs(archs.as_mut_ptr())
                != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS
        {
            return Vec::new();
        }
        archs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
