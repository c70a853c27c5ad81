//! GPT partition types and labels of the Cairn disk layout (see docs/formats.md).

/// A GUID in its canonical text form, stored on disk in GPT's mixed-endian encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (case-insensitive).
    pub const fn from_str_const(s: &str) -> Guid {
        let b = s.as_bytes();
        assert!(b.len() == 36, "GUID text must be 36 characters");
        let mut out = [0u8; 16];
        let mut i = 0;
        let mut o = 0;
        while i < 36 {
            if b[i] == b'-' {
                i += 1;
                continue;
            }
            out[o] = (hex_val(b[i]) << 4) | hex_val(b[i + 1]);
            o += 1;
            i += 2;
        }
        assert!(o == 16, "GUID text must hold 32 hex digits");
        Guid(out)
    }

    /// The 16 bytes as GPT stores them: the first three fields little-endian.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let mut b = self.0;
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }

    /// The inverse of [`Guid::to_gpt_bytes`].
    pub fn from_gpt_bytes(mut b: [u8; 16]) -> Guid {
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Guid(b)
    }
}

const fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("GUID text holds a non-hex character"),
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex::encode(self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// EFI System Partition.
pub const TYPE_ESP: Guid = Guid::from_str_const("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
/// Discoverable Partitions Specification: `/usr` on x86-64.
pub const TYPE_USR_X86_64: Guid = Guid::from_str_const("8484680c-9521-48c6-9c11-b0720656f69e");
/// Linux filesystem data.
pub const TYPE_LINUX_DATA: Guid = Guid::from_str_const("0fc63daf-8483-4772-8e79-3d69d8477de4");

pub const LABEL_ESP: &str = "EFI-SYSTEM";
pub const LABEL_USR_A: &str = "USR-A";
pub const LABEL_USR_B: &str = "USR-B";
pub const LABEL_OEM: &str = "OEM";
pub const LABEL_ROOT: &str = "ROOT";

/// The A/B slot a `/usr` partition belongs to, told by its GPT label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn from_label(label: &str) -> Option<Slot> {
        match label {
            LABEL_USR_A => Some(Slot::A),
            LABEL_USR_B => Some(Slot::B),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Slot::A => LABEL_USR_A,
            Slot::B => LABEL_USR_B,
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Lower-case letter, as printed in the ready line.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// The partition UUID of a `/usr` partition holding the image with this verity root hash:
/// its first 128 bits (the systemd Discoverable Partitions convention).
pub fn usr_partition_uuid(root_hash: &[u8; 32]) -> Guid {
    let mut b = [0u8; 16];
    b.copy_from_slice(&root_hash[..16]);
    Guid(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_type_round_trips_through_gpt_encoding() {
        let on_disk = TYPE_ESP.to_gpt_bytes();
        // The ESP type GUID as it appears in every GPT: 28 73 2a c1 1f f8 d2 11 ...
        assert_eq!(&on_disk[..8], &[0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11]);
        assert_eq!(Guid::from_gpt_bytes(on_disk), TYPE_ESP);
        assert_eq!(TYPE_ESP.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn usr_uuid_is_the_first_half_of_the_root_hash() {
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(usr_partition_uuid(&h).to_string(), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn slots_from_labels() {
        assert_eq!(Slot::from_label("USR-A"), Some(Slot::A));
        assert_eq!(Slot::from_label("USR-B").map(Slot::other), Some(Slot::A));
        assert_eq!(Slot::from_label("ROOT"), None);
    }
}
