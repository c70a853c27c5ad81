//! Shared conventions of Cairn, used by the image builder, `cairn-init` and the update agent.
//!
//! This crate sits at the bottom of the dependency graph and must stay small: `cairn-init` links
//! it into the initramfs.

pub mod admin;
pub mod checkin;
pub mod clock;
pub mod cmdline;
pub mod config_status;
pub mod container_status;
pub mod control;
pub mod durable;
pub mod duration;
pub mod gpt;
pub mod layout;
pub mod maintenance;
pub mod manifest;
pub mod net;
pub mod service_file;
pub mod update_config;
pub mod verity;
pub mod version;
