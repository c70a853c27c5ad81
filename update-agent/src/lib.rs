//! The Cairn update agent's building blocks: the streaming apply pipeline, boot entries on the
//! ESP, and the update state machine. The daemon (`cairn-agent`) that drives them comes with the
//! rest of the update issue.

pub mod apply;
pub mod entries;

pub mod http;
pub mod slots;
pub mod source;
pub mod state;
pub mod update;
