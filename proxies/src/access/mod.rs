//! Who may do what: credentials, accounts and their quotas, and the peers
//! allowed to hand items to the mote with their limits.

pub mod accounts;
pub mod auth;
pub mod peers;
pub mod quota;
