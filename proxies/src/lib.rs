#![doc = include_str!("../README.md")]

pub mod access;
pub mod egress;
pub mod intake;
pub mod item;
pub mod onion;
pub mod status;
pub mod tor;
