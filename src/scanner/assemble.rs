//! Volumes of one series out of the pieces a scanner delivers, in whatever order they come: whole volumes (a
//! Siemens mosaic file, an XA enhanced file) pass through once each; slices stored one per file (GE, Siemens with
//! mosaic off) are held until their volume is complete, then stacked. Both a watched export folder
//! ([`super::watch`]) and the DICOM network receiver ([`super::dicom_net`]) feed one of these, so a volume leaves
//! the same way whichever road its files took.
//!
//! The series followed is the one given, else the first one a piece belongs to; pieces of other series are
//! passed over. A volume index is delivered once: a repeat is refused with a message naming it.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use crate::scanner::dicom::{stack_slices, DicomSlice};
use crate::volume::ExportedVolume;

/// Where a piece went.
#[derive(Debug)]
pub enum Placed<T> {
    /// A complete volume of the followed series, with the latest stamp of its pieces (when its last piece was
    /// written or received).
    Complete(Box<ExportedVolume>, T),
    /// A slice kept until the rest of its volume comes.
    Held,
    /// A piece of another series than the one followed (its number): passed over.
    OtherSeries(i64),
    /// Refused: a volume or slice already delivered, or slices that do not stack; the message names it.
    Refused(String),
}

/// Gathers the pieces of one series into volumes; `T` stamps each piece (a file's modification time, an arrival
/// instant).
pub struct VolumeAssembler<T> {
    series: Option<i64>,
    delivered: HashSet<usize>,
    /// Slices held, by volume index, with their stamps.
    partial_volumes: BTreeMap<usize, Vec<(DicomSlice, T)>>,
}

impl<T: Ord + Copy> VolumeAssembler<T> {
    /// Follows `series`, or the first series a piece belongs to when `None`.
    pub fn new(series: Option<i64>) -> VolumeAssembler<T> {
        VolumeAssembler {
            series,
            delivered: HashSet::new(),
            partial_volumes: BTreeMap::new(),
        }
    }

    /// The series followed, once known.
    pub fn series(&self) -> Option<i64> {
        self.series
    }

    /// The files of slices held for volumes not yet complete.
    pub fn held_paths(&self) -> Vec<PathBuf> {
        self.partial_volumes
            .values()
            .flatten()
            .map(|(s, _)| s.path.clone())
            .collect()
    }

    /// A whole volume (a mosaic, or one temporal position of an enhanced file).
    pub fn add_volume(&mut self, volume: ExportedVolume, stamp: T) -> Placed<T> {
        let series = *self.series.get_or_insert(volume.series_number);
        if volume.series_number != series {
            return Placed::OtherSeries(volume.series_number);
        }
        if !self.delivered.insert(volume.index) {
            return Placed::Refused(format!(
                "{}: volume {} of series {series} was already delivered from another file",
                volume.path.display(),
                volume.index
            ));
        }
        Placed::Complete(Box::new(volume), stamp)
    }

    /// A slice of a series stored one slice per file: held until all `slices_per_volume` slices of its volume
    /// are in, then the volume is stacked.
    pub fn add_slice(&mut self, slice: DicomSlice, stamp: T) -> Placed<T> {
        let series = *self.series.get_or_insert(slice.series_number);
        if slice.series_number != series {
            return Placed::OtherSeries(slice.series_number);
        }
        let index = slice.volume_index();
        if self.delivered.contains(&index) {
            return Placed::Refused(format!(
                "{}: a slice of volume {index} of series {series}, which was already delivered",
                slice.path.display()
            ));
        }
        let wanted = slice.slices_per_volume;
        let slices = self.partial_volumes.entry(index).or_default();
        if slices
            .iter()
            .any(|(s, _)| s.instance_number == slice.instance_number)
        {
            return Placed::Refused(format!(
                "{}: image {} of series {series} came already in another file",
                slice.path.display(),
                slice.instance_number
            ));
        }
        slices.push((slice, stamp));
        if slices.len() < wanted {
            return Placed::Held;
        }
        let slices = self.partial_volumes.remove(&index).unwrap_or_default();
        let Some(latest) = slices.iter().map(|(_, t)| *t).max() else {
            return Placed::Held; // not reached: the slice just pushed is there
        };
        self.delivered.insert(index);
        match stack_slices(slices.into_iter().map(|(s, _)| s).collect()) {
            Ok(volume) => Placed::Complete(Box::new(volume), latest),
            Err(e) => Placed::Refused(format!("volume {index} of series {series}: {e}")),
        }
    }
}
