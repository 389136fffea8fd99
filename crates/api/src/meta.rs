//! Object metadata shared by every kind: name, UID, creation time, labels and annotations,
//! and the 16-hex-character UID type.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// API group of every ignite object.
pub const GROUP: &str = "ignite.weave.works";
/// The version this crate writes.
pub const API_VERSION: &str = "ignite.weave.works/v1alpha4";

/// Metadata of a stored object, as Weave Ignite (libgitops) wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    /// An empty string (as Ignite's own test manifests write) means unset.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "empty_uid_is_none")]
    pub uid: Option<Uid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn empty_uid_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uid>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// A 16-hex-character object identifier (64 random bits), as Ignite's.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid([u8; 16]);

/// A string that is not a valid UID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid uid {0:?}: must be 16 lowercase hexadecimal characters")]
pub struct UidError(pub String);

impl Uid {
    /// A fresh random UID.
    pub fn random() -> Uid {
        Uid::from_u64(rand::random::<u64>())
    }

    /// The UID whose hex form is `v` printed as 16 digits.
    pub fn from_u64(v: u64) -> Uid {
        let s = format!("{v:016x}");
        let mut b = [0u8; 16];
        b.copy_from_slice(s.as_bytes());
        Uid(b)
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl FromStr for Uid {
    type Err = UidError;
    fn from_str(s: &str) -> Result<Uid, UidError> {
        let b = s.as_bytes();
        if b.len() != 16 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(UidError(s.to_string()));
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(b);
        Ok(Uid(out))
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({})", self.as_str())
    }
}

impl Serialize for Uid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Uid, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_roundtrip() {
        let u = Uid::random();
        assert_eq!(u.as_str().len(), 16);
        assert_eq!(u.as_str().parse::<Uid>().unwrap(), u);
        assert_eq!(Uid::from_u64(0xab).as_str(), "00000000000000ab");
    }

    #[test]
    fn uid_rejects_bad() {
        for bad in ["", "abc", "E04128E6F96176A8", "e04128e6f96176a", "e04128e6f96176a80", "g04128e6f96176a8"] {
            assert!(bad.parse::<Uid>().is_err(), "{bad}");
        }
        assert!("e04128e6f96176a8".parse::<Uid>().is_ok());
    }
}
