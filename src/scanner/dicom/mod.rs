//! DICOM reading for fMRI exports: a Siemens mosaic file becomes one 3-D [`ExportedVolume`]; a series stored
//! one slice per file (GE, Siemens with mosaic off) becomes [`DicomSlice`]s that [`stack_slices`] makes into
//! volumes.
//!
//! Siemens scanners export each fMRI volume as one DICOM file whose image is a *mosaic*: the slices laid out
//! as tiles of one large 2-D image. This module reads such a file (DICOM Part 10, implicit or explicit VR little
//! endian, deflated, or with JPEG or RLE compressed pixels), cuts the mosaic into slices and computes the voxel ->
//! millimetre affine the way the Siemens geometry defines it (and nibabel's `MosaicWrapper` reads it):
//!
//! - voxel axis 0 walks down the rows of a tile (DICOM column direction cosine, `PixelSpacing[0]` mm),
//!   axis 1 along the columns (row direction cosine, `PixelSpacing[1]` mm), axis 2 across the slices along
//!   the slice normal (the CSA header's `SliceNormalVector`, else the cross product of the two cosines) by
//!   `SpacingBetweenSlices` (else `SliceThickness`);
//! - `ImagePositionPatient` of a mosaic is the corner of the whole mosaic drawn in the first slice's plane
//!   and centred on it, so the first voxel lies half the difference of mosaic and tile sizes further in;
//! - DICOM's patient coordinates are LPS+; the affine returned is RAS+ like every other one in the project.
//!
//! A slice file belongs to volume `(InstanceNumber - 1) / ImagesInAcquisition`; a volume's slices are stacked
//! in `InStackPositionNumber` order (else along the slice normal) with the same in-plane axes as a mosaic, the
//! slice axis running from the first slice's `ImagePositionPatient` to the last one's.
//!
//! The voxels keep their stored type (`uint16` from Siemens) unless the file asks for rescaling, in which
//! case they become float64 computed as `stored * slope + intercept`. Everything a file lacks or gets wrong
//! is an error that names the file, the element and, for structural damage, the byte offset.
//!
//! Siemens XA scanners export Enhanced MR Images instead: one multi-frame file per volume, each frame a slice
//! with its geometry in functional groups; [`enhanced`] reads them into the same volumes.
//!
//! The files: [`parse`] (the Part-10 byte parser), [`compressed`] (transfer syntaxes, compressed pixels),
//! [`siemens`] (the CSA header and mosaics), [`slices`] (one slice per file, and stacking slices into a volume),
//! [`enhanced`] (multi-frame Enhanced MR Images), [`pixels`] (the pixel data and the header values every reader
//! needs).

pub mod compressed;
pub mod enhanced;
pub mod error;
pub mod parse;
pub mod pixels;
pub mod siemens;
pub mod slices;
#[cfg(test)]
mod tests;

pub use enhanced::{enhanced_volumes, is_enhanced_mr};
pub use error::DicomError;
pub use parse::{
    file_looks_like_dicom, looks_like_dicom, tag_name, DataSet, Tag, ENHANCED_MR_IMAGE_STORAGE,
};
pub use siemens::{is_mosaic, mosaic_from_data_set, CsaHeader};
pub use slices::{slice_from_data_set, stack_slices, DicomSlice};
