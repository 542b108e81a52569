//! Everything that reads what a scanner writes, up to one [`ExportedVolume`](crate::volume::ExportedVolume) per
//! volume: the file formats ([`dicom`]: Siemens mosaic and single-slice DICOM; [`parrec`]: Philips PAR/REC), one
//! file as volumes ([`export`]), a finished series in a folder ([`series`]), and a folder the scanner is still
//! writing into ([`watch`], with the folder listings of [`listing`]). Nothing here sends anything: `ingest` puts
//! these volumes on the wire.
//!
//! Three layouts are read: Siemens mosaic DICOM (one file per volume), DICOM stored one slice per file (GE;
//! Siemens with mosaic off), whose slices are gathered into volumes, and Philips PAR/REC (one pair per volume from
//! the real-time export, or one pair holding a whole run). A file that is neither, or is damaged, never stops the
//! run: it is named in a warning, counted, and skipped. A folder may hold several series; one is chosen by its
//! number.
//!
//! Volume and series numbers, so that the receiver sees the scanner's own numbering even when files arrive out of
//! order or one is missing:
//! - Siemens mosaic: the volume index is `InstanceNumber - 1`, the series its `SeriesNumber`;
//! - one slice per file: the volume index is `(InstanceNumber - 1) / ImagesInAcquisition` (Pyneal Scanner's
//!   reading of GE series), the series its `SeriesNumber`; a volume is complete when all its slices are there;
//! - Philips, a pair holding several dynamics (an offline export): the index is the dynamic number minus one, the
//!   series the "Acquisition nr";
//! - Philips, a pair holding one dynamic (the real-time export, XTC, one pair per volume): the index is
//!   "Acquisition nr" minus one, as Pyneal Scanner reads it, and the folder holding the pairs is the series,
//!   numbered by its name (XTC names them `0000`, `0001`, ... in the session folder), 0 if the name is not a
//!   number.
//!
//! A folder is read with its subfolders one level down, so that a session folder with one subfolder per series
//! (GE's `s1923`, ...; the Philips real-time export's `0000`, ...) can be followed as well as a flat export folder
//! (Siemens).

pub mod assemble;
pub mod dicom;
pub mod dicom_net;
pub mod export;
pub mod listing;
pub mod parrec;
pub mod series;
pub mod watch;
