//! Events for the rollout server that it has not acknowledged yet, oldest first. They are kept
//! in the persisted state, so a network blip or a reboot does not lose a success or a failure.

use cairn_release::checkin::EventKind;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEvent {
    pub kind: EventKind,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<cairn_release::checkin::Transfer>,
}

/// The most events kept for the server; older ones are dropped first.
pub const CAPACITY: usize = 20;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Outbox(Vec<PendingEvent>);

impl Outbox {
    pub fn push(&mut self, event: PendingEvent) {
        self.0.push(event);
        if self.0.len() > CAPACITY {
            self.0.drain(..self.0.len() - CAPACITY);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn events(&self) -> &[PendingEvent] {
        &self.0
    }

    /// The first `n` events were delivered (or refused for good): they leave the outbox.
    pub fn acknowledge(&mut self, n: usize) {
        self.0.drain(..n.min(self.0.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> PendingEvent {
        PendingEvent { kind: EventKind::Staged, version: n.to_string(), error: None, transfer: None }
    }

    #[test]
    fn keeps_the_newest_events_and_drops_acknowledged_ones_in_order() {
        let mut o = Outbox::default();
        for n in 0..CAPACITY + 5 {
            o.push(event(n));
        }
        assert_eq!(o.len(), CAPACITY);
        assert_eq!(o.events()[0].version, "5", "the oldest went first");
        o.acknowledge(3);
        assert_eq!(o.events()[0].version, "8");
        o.acknowledge(100);
        assert!(o.is_empty());
    }
}
