//! Strategy `immediate`: a staged release is booted as soon as it is staged.

use super::Plan;

pub fn plan() -> Plan {
    Plan::Reboot
}
