//! The CUDA kernels compile with NVRTC for sm_80 and sm_90, and `ptxas -v` reports no register spills.
//!
//! Needs NVRTC (`libnvrtc.so.13`, from the PyPI wheel `nvidia-cuda-nvrtc`) on the library path and `ptxas` (wheel
//! `nvidia-cuda-nvcc`) named by `PTXAS` or on `PATH`; `scripts/test.sh` installs both and sets
//! `HYPER_RT_REQUIRE_NVRTC=1`, which turns their absence into a failure instead of a skip.

use std::process::Command;

use hyper_rt::generate::cuda::{compile_ptx, KERNELS};

fn required() -> bool {
    std::env::var("HYPER_RT_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

#[test]
fn kernels_compile_with_nvrtc_and_do_not_spill() {
    // SAFETY: only tries to load the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        assert!(!required(), "HYPER_RT_REQUIRE_NVRTC=1 but libnvrtc was not found (LD_LIBRARY_PATH?)");
        eprintln!("skipped: libnvrtc not found");
        return;
    }
    let ptxas = std::env::var("PTXAS").unwrap_or_else(|_| "ptxas".into());
    let dir = std::env::temp_dir().join(format!("hyper-rt-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (arch, sm) in [("compute_80", "sm_80"), ("compute_90", "sm_90")] {
        let ptx = compile_ptx(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let text = ptx.to_src();
        for name in KERNELS {
            assert!(text.contains(&format!(".entry {name}")), "{arch}: the PTX lacks {name}");
        }
        let path = dir.join(format!("kernels_{sm}.ptx"));
        std::fs::write(&path, &text).unwrap();
        let out = match Command::new(&ptxas).args([&format!("-arch={sm}"), "-v", "-o"]).arg(dir.join(format!("k_{sm}.cubin"))).arg(&path).output() {
            Ok(out) => out,
            Err(e) => {
                assert!(!required(), "HYPER_RT_REQUIRE_NVRTC=1 but ptxas ({ptxas}) could not run: {e}");
                eprintln!("ptxas not run: {e}");
                continue;
            }
        };
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ptxas {sm} failed:\n{report}");
        let mut functions = 0;
        for line in report.lines() {
            if line.contains("Compiling entry function") {
                functions += 1;
            }
            if line.contains("spill") {
                assert!(line.contains("0 bytes spill stores, 0 bytes spill loads"), "{sm}: register spills:\n{report}");
            }
        }
        assert_eq!(functions, KERNELS.len(), "{sm}: ptxas compiled {functions} entry points:\n{report}");
        eprintln!("{sm}:\n{report}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
