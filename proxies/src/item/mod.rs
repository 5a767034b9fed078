//! The stored forms of what the mote holds (mail items, download jobs) and
//! the one definition of the peer link's wire format.

pub mod job;
pub mod mail;
pub mod wire;
