//! The Cairn update agent. `core` decides (no I/O); `driver` carries its requests out through
//! the traits in `ports`; the rest implements those ports: `source` (feeds and rollout
//! servers), `http`, `server` and `fleetlock` (the network), `update` with `apply`, `slots` and
//! `entries` (writing a release), `store` (the state file), `linux` (the real host), `dbus`
//! (`org.cairn.Update1`). `cairn-agent` (src/main.rs) is the service.

pub mod apply;
pub mod core;
pub mod credential;
pub mod dbus;
pub mod delta;
pub mod driver;
pub mod entries;
pub mod failpoint;
pub mod fleetlock;
pub mod http;
pub mod linux;
pub mod partition;
pub mod ports;
pub mod server;
pub mod slots;
pub mod source;
pub mod store;
pub mod tuf_feed;
pub mod update;

#[cfg(test)]
mod testkit;
