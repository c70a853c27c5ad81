//! cairn-server: channels, packages, groups with rollout policies, and every host's status,
//! served over HTTP to agents (check-ins, events, downloads) and to `updatectl` (admin API).

pub mod admin;
pub mod api;
pub mod capped;
pub mod clock;
pub mod db;
pub mod error;
pub mod fleetlock;
pub mod identity;
pub mod locks;
pub mod metrics;
pub mod policy;
pub mod ratelimit;
pub mod rollout;
pub mod serve;
pub mod store;
pub mod tokens;
pub mod tuf;
