//! What leaves the mote: mail, download chunks, and items handed to
//! another mote.

pub mod addr;
pub mod fetch;
pub mod mail;
pub mod mx;
mod tls;
