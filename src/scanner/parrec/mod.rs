//! Philips PAR/REC reading: a `.PAR` text header and its `.REC` pixel file become 3-D volumes with their
//! voxel -> millimetre affine.
//!
//! Philips scanners export images as a pair of files: the PAR header (general information, then one line
//! per 2-D image: slice, echo, dynamic, cardiac phase, image type, its place in the REC file, scaling,
//! geometry) and the REC file (the images one after another, 8- or 16-bit unsigned little endian, x
//! fastest). A whole fMRI run exported offline is one pair holding every dynamic; the real-time export
//! (XTC), which Pyneal Scanner reads, writes one pair per volume into the series folder.
//!
//! What this module reads, and how:
//! - PAR versions 4, 4.1 and 4.2: the columns of the image lines are taken from the file's own "IMAGE
//!   INFORMATION DEFINITION" block, so every version's layout is read the same way;
//! - one image type, echo, cardiac phase, label type and diffusion setting is kept (the first image's type,
//!   the lowest of the others) and what was left out is said; each dynamic is one volume, its slices in
//!   slice-number order; a dynamic missing slices (a recording stopped early) is left out and said;
//! - values are the console's "displayed values", `DV = PV * RS + RI` with each image's own rescale slope
//!   and intercept, as float64 (nibabel's default scaling);
//! - the affine follows the Philips geometry as nibabel reads it: voxel indices centred on the field of
//!   view, scaled by the pixel spacing and slice thickness plus gap, permuted from the slice orientation
//!   (transverse, sagittal, coronal) into Philips' PSL axes, rotated by the mid-slice angulation
//!   (rl, then ap, then fh, applied right to left as `Rz(rl) Rx(ap) Ry(fh)`), shifted by the mid-slice
//!   off-centre and turned from PSL into RAS+.
//!
//! Everything a file lacks or gets wrong is an error that names the file and, for a header line, its line
//! number.
//!
//! The files: [`header`] (the PAR text: general information and image lines), [`geometry`] (the Philips
//! affine), [`run`] (a PAR/REC pair read into volumes).

pub mod error;
pub mod geometry;
pub mod header;
pub mod run;
#[cfg(test)]
mod tests;

pub use error::ParRecError;
pub use run::{is_par_path, is_rec_path, rec_path_for, ParRecRun, ParRecVolume};
