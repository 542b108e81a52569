//! Scanner intake: the Pyneal Scanner wire protocol, the receiver that speaks it, and a sender that plays
//! files (NIfTI runs, Siemens and GE DICOM and Philips PAR/REC series, also while the scanner writes them) or simulated runs over it.

pub mod protocol;
pub mod receiver;
pub mod scanner_export;
pub mod sender;
