//! Byte sizes with units, as Weave Ignite writes them ("512MB", "4GB", "1GiB").
//!
//! Units follow Ignite (which used c2h5oh/datasize): every unit is binary, so "1GB" and
//! "1GiB" are both 1024³ bytes. Sizes print in the largest unit that divides them exactly
//! ("4GB", "1536MB"), which Ignite reads back unchanged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const UNITS: [(&str, u64); 7] =
    [("EB", 1 << 60), ("PB", 1 << 50), ("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)];

/// A positive number of bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(u64);

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid size {0:?}: expected a number with an optional unit, e.g. 512MB or 4GB")]
    Syntax(String),
    #[error("invalid size {input:?}: unknown unit {unit:?} (use B, KB, MB, GB, TB, or KiB, MiB, GiB, TiB)")]
    Unit { input: String, unit: String },
    #[error("invalid size {0:?}: sizes cannot be negative")]
    Negative(String),
    #[error("invalid size {0:?}: must be greater than zero")]
    Zero(String),
    #[error("invalid size {0:?}: too large")]
    Overflow(String),
}

impl Size {
    pub const KIB: u64 = 1 << 10;
    pub const MIB: u64 = 1 << 20;
    pub const GIB: u64 = 1 << 30;

    /// A size of `bytes` bytes (0 is allowed here: it means "unset" to the defaulting code).
    pub const fn from_bytes(bytes: u64) -> Size {
        Size(bytes)
    }
    pub const fn from_mib(mib: u64) -> Size {
        Size(mib * Self::MIB)
    }
    pub const fn bytes(self) -> u64 {
        self.0
    }
    pub const fn mib(self) -> u64 {
        self.0 / Self::MIB
    }
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Human-readable form as Ignite's `ps` shows it ("512.0 MB", "4.0 GB").
    /// As Ignite printed sizes (datasize's `HumanReadable`): the largest unit the size
    /// strictly exceeds, one decimal — `512.0 MB`, `1024.0 MB` for 1 GiB, `4.0 GB`.
    pub fn human(self) -> String {
        for (unit, mult) in UNITS {
            if self.0 > mult && mult > 1 {
                return format!("{:.1} {unit}", self.0 as f64 / mult as f64);
            }
        }
        format!("{} B", self.0)
    }
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(input: &str) -> Result<Size, SizeError> {
        let s = input.trim();
        if s.starts_with('-') {
            return Err(SizeError::Negative(input.into()));
        }
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let unit = unit.trim();
        if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 {
            return Err(SizeError::Syntax(input.into()));
        }
        let mult: u64 = match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            "P" | "PB" | "PIB" => 1 << 50,
            "E" | "EB" | "EIB" => 1 << 60,
            _ => {
                if unit.chars().all(|c| c.is_ascii_alphabetic()) {
                    return Err(SizeError::Unit { input: input.into(), unit: unit.into() });
                }
                return Err(SizeError::Syntax(input.into()));
            }
        };
        let (int, frac) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        let int: u64 = int.parse().map_err(|_| SizeError::Overflow(input.into()))?;
        let mut bytes = int.checked_mul(mult).ok_or_else(|| SizeError::Overflow(input.into()))?;
        if !frac.is_empty() {
            // Fractions like "1.5GB": exact to the byte, rounded down.
            let digits = frac.len().min(18);
            let f: u128 = frac[..digits].parse().map_err(|_| SizeError::Syntax(input.into()))?;
            let add = f * u128::from(mult) / 10u128.pow(digits as u32);
            bytes = bytes
                .checked_add(u64::try_from(add).map_err(|_| SizeError::Overflow(input.into()))?)
                .ok_or_else(|| SizeError::Overflow(input.into()))?;
        }
        if bytes == 0 {
            return Err(SizeError::Zero(input.into()));
        }
        Ok(Size(bytes))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in UNITS {
            if self.0 >= mult && self.0.is_multiple_of(mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Size({self})")
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a size such as \"512MB\""))? {
            // A bare number is bytes, as datasize reads it.
            Raw::Int(0) => Err(serde::de::Error::custom("invalid size 0: must be greater than zero")),
            Raw::Int(n) => Ok(Size(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_units() {
        assert_eq!("512MB".parse::<Size>().unwrap().bytes(), 512 << 20);
        assert_eq!("4GB".parse::<Size>().unwrap().bytes(), 4 << 30);
        assert_eq!("1GiB".parse::<Size>().unwrap().bytes(), 1 << 30);
        assert_eq!("2048".parse::<Size>().unwrap().bytes(), 2048);
        assert_eq!("1.5GB".parse::<Size>().unwrap().bytes(), 3 << 29);
        assert_eq!(" 800mb ".parse::<Size>().unwrap().bytes(), 800 << 20);
        assert_eq!("10 KB".parse::<Size>().unwrap().bytes(), 10 << 10);
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!("12XB".parse::<Size>(), Err(SizeError::Unit { .. })));
        assert!(matches!("-1GB".parse::<Size>(), Err(SizeError::Negative(_))));
        assert!(matches!("0".parse::<Size>(), Err(SizeError::Zero(_))));
        assert!(matches!("0GB".parse::<Size>(), Err(SizeError::Zero(_))));
        assert!(matches!("".parse::<Size>(), Err(SizeError::Syntax(_))));
        assert!(matches!("GB".parse::<Size>(), Err(SizeError::Syntax(_))));
        assert!(matches!("1..2GB".parse::<Size>(), Err(SizeError::Syntax(_))));
        assert!(matches!("99999999999EB".parse::<Size>(), Err(SizeError::Overflow(_))));
        assert!(matches!("1GB5".parse::<Size>(), Err(SizeError::Syntax(_))));
    }

    #[test]
    fn displays_largest_exact_unit() {
        assert_eq!(Size::from_bytes(4 << 30).to_string(), "4GB");
        assert_eq!(Size::from_bytes(1536 << 20).to_string(), "1536MB");
        assert_eq!(Size::from_bytes(1000).to_string(), "1000B");
        assert_eq!(Size::from_bytes(512 << 20).human(), "512.0 MB");
        assert_eq!(Size::from_bytes(4 << 30).human(), "4.0 GB");
    }

    proptest! {
        #[test]
        fn display_roundtrips(bytes in 1u64..u64::MAX) {
            let s = Size::from_bytes(bytes);
            prop_assert_eq!(s.to_string().parse::<Size>().unwrap(), s);
        }

        #[test]
        fn never_panics(input in "\\PC{0,24}") {
            let _ = input.parse::<Size>();
        }

        #[test]
        fn unit_forms_agree(n in 1u64..100_000, unit in prop::sample::select(vec!["K", "M", "G"])) {
            let a: Size = format!("{n}{unit}").parse().unwrap();
            let b: Size = format!("{n}{unit}B").parse().unwrap();
            let c: Size = format!("{n}{}iB", unit).parse().unwrap();
            prop_assert_eq!(a, b);
            prop_assert_eq!(b, c);
        }
    }
}
