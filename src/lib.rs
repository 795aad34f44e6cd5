//! hallmark: a private certificate authority that runs as one web service.
//!
//! Data flows one way: `http` → `workflow` → (`pki`, `policy`, `store`).
//! Tests and the binary start the service the same way:
//! [`service::Service::start`] then [`service::Service::run`] on listeners
//! they bound (port 0 in tests).

pub mod acme_error;
pub mod backup;
pub mod client;
pub mod config;
pub mod datadir;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod import;
pub mod issuers;
pub mod metrics;
pub mod pkcs11;
pub mod pki;
pub mod policy;
pub mod service;
pub mod smtp;
pub mod status;
pub mod store;
pub mod validation;
pub mod words;
pub mod workflow;
