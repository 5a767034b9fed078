//! Who may do what: credentials, accounts and their quotas.

pub mod accounts;
pub mod auth;
