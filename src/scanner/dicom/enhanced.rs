//! Enhanced MR Image Storage (SOP class 1.2.840.10008.5.1.4.1.1.4.1), what Siemens XA scanners (Prisma and Skyra
//! on XA30 and later, Vida, Cima.X) export: one multi-frame file per volume, each frame one slice, its geometry and
//! scaling in functional groups rather than at the top of the file.
//!
//! Each frame is read through a flat view of the file (`DataSet::frame_view`): the top-level values, then the
//! shared functional groups (5200,9229), then the frame's own (5200,9230), later over earlier. From that view come
//! the frame's plane (Plane Position, Plane Orientation, Pixel Measures), its rescaling (Pixel Value
//! Transformation, which may differ per frame), the TR (MR Timing and Related Parameters) and its place: Frame
//! Content's Temporal Position Index (which volume) and In-Stack Position Number (which slice). The frames of one
//! temporal position are stacked as single-slice files are ([`super::stack_slices`]), so the affine follows the
//! same convention as every other DICOM reader here.
//!
//! Volume numbering: a file of one temporal position (Siemens XA, one file per volume) is volume
//! `InstanceNumber - 1`, as a mosaic is; a file holding several is split, volume `TemporalPositionIndex - 1`
//! each.

use std::collections::BTreeMap;

use super::error::DicomError;
use super::parse::*;
use super::pixels::{instance_number, stored_frame};
use super::slices::{frame_slice, stack_slices};
use crate::volume::ExportedVolume;

/// Frames one file may hold: far beyond any fMRI volume (a 2 mm whole-brain volume has about 80 slices).
const MAX_FRAMES: usize = 8192;

/// Whether the file is an Enhanced MR Image (by its SOP class, in the data set or the file meta group).
pub fn is_enhanced_mr(ds: &DataSet) -> bool {
    [SOP_CLASS_UID, MEDIA_STORAGE_SOP_CLASS_UID]
        .iter()
        .any(|&t| ds.text(t).as_deref() == Some(ENHANCED_MR_IMAGE_STORAGE))
}

/// The volumes of an Enhanced MR Image file, one per temporal position, in index order.
pub fn enhanced_volumes(ds: &DataSet) -> Result<Vec<ExportedVolume>, DicomError> {
    let n_frames = match ds.number(NUMBER_OF_FRAMES, "NumberOfFrames")? {
        Some(n) if n >= 1.0 && n.fract() == 0.0 && n <= MAX_FRAMES as f64 => n as usize,
        Some(n) => {
            return Err(ds.invalid(format!(
                "NumberOfFrames {n} is not a frame count from 1 to {MAX_FRAMES}"
            )))
        }
        None => return Err(ds.invalid("an Enhanced MR Image without NumberOfFrames (0028,0008)")),
    };
    let per_frame = ds.items(PER_FRAME_FUNCTIONAL_GROUPS);
    if per_frame.len() != n_frames {
        return Err(ds.invalid(format!(
            "PerFrameFunctionalGroupsSequence (5200,9230) holds {} items for {n_frames} frames",
            per_frame.len()
        )));
    }
    let shared = ds.item(SHARED_FUNCTIONAL_GROUPS);
    // which temporal position each frame belongs to, and its place in the stack
    let mut places = Vec::with_capacity(n_frames);
    for (f, own) in per_frame.iter().enumerate() {
        let groups: Vec<&DataSet> = shared.into_iter().chain(std::iter::once(own)).collect();
        let flat = ds.frame_view(&groups);
        let temporal = flat
            .ul(
                TEMPORAL_POSITION_INDEX,
                &format!("frame {}: TemporalPositionIndex", f + 1),
            )?
            .map_or(1, |t| t as usize);
        let in_stack = flat
            .ul(
                IN_STACK_POSITION_NUMBER,
                &format!("frame {}: InStackPositionNumber", f + 1),
            )?
            .map(|p| p as usize);
        places.push((flat, temporal, in_stack));
    }
    let temporal_positions: BTreeMap<usize, Vec<usize>> =
        places
            .iter()
            .enumerate()
            .fold(BTreeMap::new(), |mut by_time, (f, (_, t, _))| {
                by_time.entry(*t).or_insert_with(Vec::new).push(f);
                by_time
            });
    let one_volume = temporal_positions.len() == 1;
    let file_index = if one_volume {
        instance_number(ds)? - 1
    } else {
        0
    };
    let mut volumes = Vec::with_capacity(temporal_positions.len());
    for (temporal, frames) in temporal_positions {
        let index = if one_volume {
            file_index
        } else {
            temporal.checked_sub(1).ok_or_else(|| {
                ds.invalid("TemporalPositionIndex (0020,9128) 0: it counts from 1")
            })?
        };
        let mut slices = Vec::with_capacity(frames.len());
        for f in frames {
            let (flat, _, in_stack) = &places[f];
            let pixels = stored_frame(ds, f, n_frames)?;
            slices.push(frame_slice(flat, pixels, index, *in_stack)?);
        }
        let mut volume = stack_slices(slices)?;
        volume.geometry = format!(
            "Enhanced MR Image, {} frames stacked along the slice normal by their Plane Position",
            volume.dims[2]
        );
        volumes.push(volume);
    }
    Ok(volumes)
}
