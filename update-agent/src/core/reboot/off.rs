//! Strategy `off`: the agent stages releases and an operator reboots into them.

use super::{Plan, Waiting};
use std::time::Duration;

pub fn plan(interval: Duration) -> Plan {
    Plan::Wait { wake: interval, why: Waiting::Operator }
}
