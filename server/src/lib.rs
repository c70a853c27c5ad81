//! `cairn-server`, the rollout server (issue: cairn-server and updatectl). This first slice holds
//! the rollout policy; the store (SQLite, PostgreSQL), the HTTP APIs and the binary build on it.

pub mod policy;
