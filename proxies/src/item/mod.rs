//! The stored forms of what the mote holds: mail items and download jobs.

pub mod job;
pub mod mail;
