//! ACME (RFC 8555) on the HTTPS listener, sharing the order workflow and
//! validators with the REST API. Built in steps: the JWS layer first.

pub mod jws;
