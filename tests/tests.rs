//! Integration tests of the library, in one binary (module per stage), and the parsers' fuzz targets under a
//! bounded stable-Rust driver (`fuzz`). The Python tests in tests/python
//! check the command-line tools against independent references (a protocol client, nibabel).

#[cfg(feature = "cuda")]
mod cuda_parity;
mod fuzz;
mod intake;
#[cfg(feature = "cuda")]
mod kernels;
mod preprocess;
