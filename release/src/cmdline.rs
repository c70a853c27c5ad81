//! Kernel command line keys that Cairn's UKIs carry and `cairn-init` reads.

/// Verity root hash of the `/usr` image (hex), the systemd name for it.
pub const USR_HASH: &str = "usrhash";
/// Byte offset of the verity superblock inside the `/usr` partition.
pub const USR_HASH_OFFSET: &str = "cairn.usr_hash_offset";
/// Seconds after kernel start by which the host must be ready, or it reboots.
pub const BOOT_DEADLINE: &str = "cairn.boot_deadline";
/// A root shell on the serial console (development and test images).
pub const AUTOLOGIN: &str = "cairn.autologin";

/// Value of `key=value` in a kernel command line; the last occurrence wins, as in the kernel.
pub fn value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .next_back()
}

/// Whether a bare flag (or `flag=1`) is present.
pub fn flag(cmdline: &str, key: &str) -> bool {
    cmdline.split_ascii_whitespace().any(|w| w == key) || value(cmdline, key) == Some("1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_value() {
        let c = "console=ttyS0 usrhash=aa quiet usrhash=bb";
        assert_eq!(value(c, "usrhash"), Some("bb"));
        assert_eq!(value(c, "console"), Some("ttyS0"));
        assert_eq!(value(c, "root"), None);
        assert!(flag(c, "quiet"));
        assert!(!flag(c, "cairn.autologin"));
    }
}
