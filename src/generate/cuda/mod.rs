//! The generator on an NVIDIA GPU. Our own kernels (`kernels/*.cu`, [`source`]) are compiled with NVRTC at
//! start-up for the device's architecture ([`nvrtc`]) and kept in a kernel cache ([`ptx_cache`]); each layer gets a
//! plan ([`plan`]: kernel family, tile, split-K, grid) and the forward pass becomes a list of launches
//! ([`launches`]), both computed without a GPU so that CI checks them; [`execute`] queues a launch on the device,
//! [`tune`] picks the fastest kernel per layer, [`generator`] runs the network, and [`report`] is `hyper-rt
//! gpu-info`. The driver is loaded at run time ([`device`] probes it first), so the binary runs on machines without
//! CUDA and falls back to the CPU.

pub mod launches;
pub mod plan;
pub mod source;

#[cfg(feature = "cuda")]
pub mod device;
#[cfg(feature = "cuda")]
pub mod execute;
#[cfg(feature = "cuda")]
pub mod generator;
#[cfg(feature = "cuda")]
pub mod nvrtc;
#[cfg(feature = "cuda")]
pub mod ptx_cache;
#[cfg(feature = "cuda")]
pub mod report;
#[cfg(feature = "cuda")]
pub mod tune;
