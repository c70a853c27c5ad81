//! The system clock's trustworthiness: whether an NTP client (chronyd) keeps it synchronised,
//! as the kernel records it, and the time expiry is judged at when it does not.

/// The kernel's view of the clock's synchronisation (`adjtimex`, changing nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sync {
    /// Disciplined by an NTP client: chronyd clears the kernel's STA_UNSYNC once it has a source
    /// it trusts, and the kernel sets it again when the estimate grows past 16 s.
    pub synchronised: bool,
    /// The client's estimate of the clock's error, in microseconds.
    pub estimated_error_us: i64,
}

/// Reads the kernel's synchronisation state.
#[allow(unsafe_code)] // adjtimex with a struct timex, read only.
pub fn kernel_sync() -> std::io::Result<Sync> {
    // SAFETY: a zeroed timex with `modes` 0 asks adjtimex to read and change nothing.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Sync {
        synchronised: state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0,
        estimated_error_us: tx.esterror,
    })
}

/// The time (Unix seconds) to judge metadata expiry at. A synchronised clock is believed. One
/// that never was and reads earlier than `built` (the running release's build time, which
/// has certainly passed) is wrong: judging there would accept metadata that expired in
/// between, so the build time is used instead.
pub fn judging_time(now: u64, synchronised: bool, built: u64) -> u64 {
    if synchronised { now } else { now.max(built) }
}

/// `cairnctl status`'s line about the clock.
pub fn describe(sync: &std::io::Result<Sync>) -> String {
    match sync {
        Ok(Sync { synchronised: true, estimated_error_us }) => {
            format!("time: synchronised (estimated error {:.1} ms)", *estimated_error_us as f64 / 1000.0)
        }
        Ok(_) => "time: not synchronised".to_string(),
        Err(e) => format!("time: unknown ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsynchronised_clock_before_the_build_is_not_believed() {
        assert_eq!(judging_time(100, false, 500), 500);
        assert_eq!(judging_time(900, false, 500), 900);
        // A synchronised clock is believed even before a (mis-stamped) build time.
        assert_eq!(judging_time(100, true, 500), 100);
    }

    #[test]
    fn the_status_line_says_whether_time_is_synchronised() {
        let synced = Ok(Sync { synchronised: true, estimated_error_us: 1500 });
        assert_eq!(describe(&synced), "time: synchronised (estimated error 1.5 ms)");
        assert_eq!(describe(&Ok(Sync { synchronised: false, estimated_error_us: 0 })), "time: not synchronised");
        // Reading the real kernel works here too.
        assert!(kernel_sync().is_ok());
    }
}
