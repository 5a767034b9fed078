//! What users and peers hand the mote: mail over SMTP, download jobs over
//! the HTTP API, and items from other motes over the peer link.

pub mod http;
pub mod smtp;
mod strangers;
