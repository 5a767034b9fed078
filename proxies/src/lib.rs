#![doc = include_str!("../README.md")]

pub mod accounts;
pub mod addr;
pub mod auth;
pub mod delivery;
pub mod fetch;
pub mod http;
pub mod job;
pub mod mail;
pub mod mx;
pub mod onion;
pub mod peer;
pub mod smtp;
pub mod status;
mod strangers;
mod tls;
pub mod tor;
