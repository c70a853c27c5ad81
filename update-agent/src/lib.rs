//! The Cairn update agent: the streaming apply pipeline, boot entries on the ESP, the update
//! state machine, the agent's decisions and the host and D-Bus around them. `cairn-agent`
//! (src/main.rs) is the service.

pub mod agent;
pub mod apply;
pub mod dbus;
pub mod entries;
pub mod failpoint;
pub mod fleetlock;
pub mod host;
pub mod http;
pub mod initctl;
pub mod server;
pub mod slots;
pub mod source;
pub mod state;
pub mod update;

#[cfg(test)]
mod testkit;
