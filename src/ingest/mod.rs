//! Scanner intake: the Pyneal Scanner wire protocol, the receiver that speaks it, and a sender that plays
//! files or simulated runs over it.

pub mod protocol;
pub mod receiver;
pub mod sender;
