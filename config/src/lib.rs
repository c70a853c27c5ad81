//! Cairn's `#cloud-config`: the CoreOS fields (`hostname`, `users`, `ssh_authorized_keys`,
//! `write_files`, `manage_etc_hosts`, `coreos.update`, `coreos.locksmith`; `coreos.units` with
//! a warning) and a `cairn:` section (`update`, `services`, `containers`, `registries`). Dashes and
//! underscores in keys are the same. A document is read whole: every error and warning comes
//! with its line, column and key path, and a document with an error yields nothing.

pub mod accounts;
pub mod apply;
pub mod boot;
pub mod cairn;
pub mod container;
pub mod containerd;
pub mod cri;
pub mod datasource;
pub mod diag;
pub mod document;
pub mod files;
pub mod instance;
pub mod local;
pub mod network;
pub mod ntp;
pub mod platform;
pub mod registry;
pub mod rooted;
pub mod update;
pub mod users;
pub mod walk;

pub use diag::{Diagnostic, Severity};
pub use document::{CloudConfig, Parsed, parse};
