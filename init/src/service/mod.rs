//! Services: their files, the supervisor, process spawning and logs.

pub mod log;
pub mod spawn;
pub mod spec;
pub mod supervisor;
