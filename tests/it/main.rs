//! Integration tests: one binary (linking is slow on two cores), one module
//! per area. Every storage-touching test runs on SQLite and PostgreSQL.

mod abuse;
mod acme;
mod acme_accounts;
mod acme_lego;
mod acme_protocol;
mod api;
mod authz;
mod backup;
mod browser;
mod caa;
mod cli;
mod constraints;
mod containers;
mod crl;
mod dashboard;
mod dns_account;
mod est;
mod faults;
mod hsm;
mod issuance;
mod issuers;
mod mail;
mod observability;
mod openapi;
mod orders;
mod profiles;
mod reliability;
mod revocation;
mod secrets;
mod service;
mod store;
mod support;
mod tls;
mod validation;
mod webhooks;
