//! hallmark: a private certificate authority that runs as one web service.
//!
//! Data flows one way: `http` → `workflow` → (`pki`, `policy`, `store`).

pub mod pki;
pub mod policy;
pub mod store;
