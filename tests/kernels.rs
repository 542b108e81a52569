//! The CUDA kernels compile with NVRTC for sm_75 to sm_120, `ptxas -v` reports no register spills, and the kernel
//! cache keeps what NVRTC compiled.
//!
//! Needs NVRTC (`libnvrtc.so.13`, from the PyPI wheel `nvidia-cuda-nvrtc`) on the library path and `ptxas` (wheel
//! `nvidia-cuda-nvcc`) named by `PTXAS` or on `PATH`; `scripts/test.sh` installs both and sets
//! `HYPER_RT_REQUIRE_NVRTC=1`, which turns their absence into a failure instead of a skip.

use std::process::Command;

use hyper_rt::generate::cuda::nvrtc::{
    compile_ptx, known_compute_capabilities, nvrtc_supported_archs, nvrtc_version,
};
use hyper_rt::generate::cuda::plan::KERNELS;
use hyper_rt::generate::cuda::ptx_cache::{cache_file, ptx_via_disk, PtxSource};

fn required() -> bool {
    std::env::var("HYPER_RT_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

/// Whether libnvrtc loads; its absence fails the test under `HYPER_RT_REQUIRE_NVRTC=1`, else skips it.
fn nvrtc_present() -> bool {
    // SAFETY: only tries to load the library.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    assert!(
        present || !required(),
        "HYPER_RT_REQUIRE_NVRTC=1 but libnvrtc was not found (LD_LIBRARY_PATH?)"
    );
    if !present {
        eprintln!("skipped: libnvrtc not found");
    }
    present
}

#[test]
fn kernels_compile_with_nvrtc_and_do_not_spill() {
    if !nvrtc_present() {
        return;
    }
    let ptxas = std::env::var("PTXAS").unwrap_or_else(|_| "ptxas".into());
    let dir = std::env::temp_dir().join(format!("hyper-rt-ptx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // sm_75 (Turing: T4, RTX 20xx) runs the float32 kernels only, but the module holds them all, so every kernel
    // must still assemble for it (the TF32 and cp.async instructions are kept to sm_80 and newer); sm_86, sm_89 and
    // sm_120 are the workstation cards (RTX 30xx / A6000, RTX 40xx / L40, RTX 50xx), with less shared memory
    let targets = [
        ("compute_75", "sm_75"),
        ("compute_80", "sm_80"),
        ("compute_86", "sm_86"),
        ("compute_89", "sm_89"),
        ("compute_90", "sm_90"),
        ("compute_120", "sm_120"),
    ];
    for (arch, sm) in targets {
        let ptx = compile_ptx(arch).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let text = ptx.to_src();
        for name in KERNELS {
            assert!(
                text.contains(&format!(".entry {name}")),
                "{arch}: the PTX lacks {name}"
            );
        }
        let path = dir.join(format!("kernels_{sm}.ptx"));
        std::fs::write(&path, &text).unwrap();
        let out = match Command::new(&ptxas)
            .args([&format!("-arch={sm}"), "-v", "-o"])
            .arg(dir.join(format!("k_{sm}.cubin")))
            .arg(&path)
            .output()
        {
            Ok(out) => out,
            Err(e) => {
                assert!(
                    !required(),
                    "HYPER_RT_REQUIRE_NVRTC=1 but ptxas ({ptxas}) could not run: {e}"
                );
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
                assert!(
                    line.contains("0 bytes spill stores, 0 bytes spill loads"),
                    "{sm}: register spills:\n{report}"
                );
            }
        }
        assert_eq!(
            functions,
            KERNELS.len(),
            "{sm}: ptxas compiled {functions} entry points:\n{report}"
        );
        eprintln!("{sm}:\n{report}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Every GPU generation the NVRTC used in CI compiles for has a name in hyper-rt's table (a GPU missing there is
/// refused as "not supported"), and the table's list holds the architectures the kernels are built for.
#[test]
fn every_architecture_nvrtc_compiles_for_is_known() {
    if !nvrtc_present() {
        return;
    }
    let archs = nvrtc_supported_archs();
    assert!(
        [75, 80, 90].iter().all(|cc| archs.contains(cc)),
        "NVRTC {} lists {archs:?}",
        nvrtc_version()
    );
    let known: Vec<i32> = known_compute_capabilities().collect();
    for cc in archs {
        assert!(
            known.contains(&cc),
            "NVRTC {} compiles for compute capability {cc}, which hyper-rt does not know",
            nvrtc_version()
        );
    }
}

/// The kernel cache: a miss compiles and stores, a hit reads the same PTX back, a damaged file is recompiled and
/// replaced (with a warning), and a folder that cannot be written still gives the kernels.
#[test]
fn compiled_kernels_are_cached_on_disk_and_damage_is_recompiled() {
    if !nvrtc_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hyper-rt-ptx-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let arch = "compute_80";
    let (compiled, source, problems) = ptx_via_disk(arch, &dir).unwrap();
    assert_eq!(source, PtxSource::Compiled);
    assert!(problems.is_empty(), "{problems:?}");
    assert!(compiled.contains(".entry conv3x3_tf32s_n16"));
    let file = cache_file(&dir, arch);
    assert!(file.exists(), "{} was not written", file.display());

    let (read, source, problems) = ptx_via_disk(arch, &dir).unwrap();
    assert_eq!(source, PtxSource::Disk);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(read, compiled);

    // a file cut short (a crash while copying a home folder, a full disk) is noticed and replaced
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, &text[..text.len() / 2]).unwrap();
    let (again, source, problems) = ptx_via_disk(arch, &dir).unwrap();
    assert_eq!(source, PtxSource::Compiled);
    assert!(
        problems.iter().any(|p| p.to_string().contains("checksum")),
        "{problems:?}"
    );
    assert_eq!(again, compiled);
    assert_eq!(ptx_via_disk(arch, &dir).unwrap().1, PtxSource::Disk);

    // a cache "folder" that is a file: the kernels still come, with a warning naming the problem
    let blocked = dir.join("not-a-folder");
    std::fs::write(&blocked, b"x").unwrap();
    let (ptx, source, problems) = ptx_via_disk(arch, &blocked).unwrap();
    assert_eq!((ptx.len(), source), (compiled.len(), PtxSource::Compiled));
    assert!(!problems.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}
