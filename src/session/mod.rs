//! Session folders: what a run received, recorded as it arrives and finalised at the end (or after a crash).

pub mod recorder;
pub mod spool;
