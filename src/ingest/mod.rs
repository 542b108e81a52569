//! Scanner intake: the Pyneal Scanner wire protocol ([`protocol`]), the receiver that speaks it ([`receiver`],
//! with its access checks in [`access`] and the run's geometry in [`geometry`]) and records every volume
//! crash-safely as it arrives ([`recorder`], on the memory-mapped [`spool`]); reading a spool back
//! ([`spool_scan`]) to finalise a session ([`finalise`]) or to resume it after a restart ([`resume`]); and the
//! scanner-side sender ([`sender`]) that plays NIfTI runs, scanner exports and simulated runs over it, or follows
//! an export folder as the scanner writes into it ([`follow`]) or receives its images over the DICOM network
//! ([`dicom_forward`]). The wire protocol is specified in
//! `docs/protocols.md`, what the intake promises in `docs/reliability.md`.

pub mod access;
pub mod dicom_forward;
pub mod finalise;
pub mod follow;
pub mod geometry;
pub mod protocol;
pub mod receiver;
pub mod recorder;
pub mod resume;
pub mod sender;
pub mod spool;
pub mod spool_scan;
