//! The kernels' CUDA C++ sources, embedded in the binary (`kernels/*.cu`), as the one program NVRTC compiles.

/// Kernel sources, concatenated into one NVRTC program (`common.cuh` first; the `#include` lines, which serve
/// standalone compilers, are dropped).
pub fn kernel_source() -> String {
    let parts = [
        include_str!("../../../kernels/common.cuh"),
        include_str!("../../../kernels/dense.cu"),
        include_str!("../../../kernels/conv.cu"),
        include_str!("../../../kernels/torgb.cu"),
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
