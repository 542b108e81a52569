//! The kernels' CUDA C++ sources, embedded in the binary (`kernels/*.cu`), as the one program NVRTC compiles.

/// Kernel sources, concatenated into one NVRTC program (the headers first; the `#include` lines and include
/// guards, which serve standalone compilers and the CPU emulation of the tests, are dropped).
pub fn kernel_source() -> String {
    let parts = [
        include_str!("../../../kernels/common.cuh"),
        include_str!("../../../kernels/dense.cu"),
        include_str!("../../../kernels/conv_common.cuh"),
        include_str!("../../../kernels/conv_gather.cu"),
        include_str!("../../../kernels/conv_pipelined.cu"),
        include_str!("../../../kernels/conv_spatial.cu"),
        include_str!("../../../kernels/conv_finish.cu"),
        include_str!("../../../kernels/torgb.cu"),
    ];
    parts
        .iter()
        .flat_map(|p| p.lines())
        .filter(|l| !l.trim_start().starts_with("#include \"") && l.trim() != "#pragma once")
        .collect::<Vec<_>>()
        .join("\n")
}
