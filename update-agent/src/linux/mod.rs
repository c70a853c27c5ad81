//! The agent's ports on a real Cairn host: the running release and its disk (sysfs, the GPT),
//! the ESP mounted per operation, and cairn-init's control socket for health and reboots.

pub mod host;
pub mod initctl;
