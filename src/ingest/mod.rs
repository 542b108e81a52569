//! Scanner intake: the Pyneal Scanner wire protocol, the receiver that speaks it, and a sender that plays
//! files (NIfTI runs, Siemens DICOM series, also while the scanner writes them) or simulated runs over it.

pub mod dicom_series;
pub mod protocol;
pub mod receiver;
pub mod sender;
