//! [`Weight`]: the share of requests a canary gets, 0 to 100 percent in steps of 0.1, held as
//! per-mille so that routing and comparisons are exact.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A canary's weight in per-mille (0..=1000); written as a percent with one decimal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u16);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a weight: a percent from 0 to 100 with at most one decimal, e.g. `10` or `2.5`")]
pub struct BadWeight(String);

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const FULL: Weight = Weight(1000);

    pub fn from_permille(permille: u16) -> Weight {
        Weight(permille.min(1000))
    }

    pub fn permille(self) -> u16 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 10.0
    }

    /// From a percent as JSON carries it (`10`, `2.5`); `None` when out of range or finer than 0.1.
    pub fn from_percent(percent: f64) -> Option<Weight> {
        let permille = (percent * 10.0).round();
        let exact = (percent * 10.0 - permille).abs() < 1e-6;
        (exact && (0.0..=1000.0).contains(&permille)).then_some(Weight(permille as u16))
    }
}

impl FromStr for Weight {
    type Err = BadWeight;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadWeight(text.to_string());
        let trimmed = text.trim().trim_end_matches('%');
        let (whole, tenths) = match trimmed.split_once('.') {
            Some((whole, tenths)) if tenths.len() == 1 => (whole, tenths),
            Some(_) => return Err(bad()),
            None => (trimmed, "0"),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !digits(tenths) || whole.len() > 3 {
            return Err(bad());
        }
        let permille =
            whole.parse::<u16>().map_err(|_| bad())? * 10 + tenths.parse::<u16>().map_err(|_| bad())?;
        if permille > 1000 {
            return Err(bad());
        }
        Ok(Weight(permille))
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}%", self.0 / 10, self.0 % 10)
    }
}

impl Serialize for Weight {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.percent())
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let percent = f64::deserialize(deserializer)?;
        Weight::from_percent(percent).ok_or_else(|| {
            serde::de::Error::custom(format!("{percent} is not a weight from 0 to 100 in steps of 0.1"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_in_tenths() {
        assert_eq!("10".parse::<Weight>(), Ok(Weight(100)));
        assert_eq!("2.5".parse::<Weight>(), Ok(Weight(25)));
        assert_eq!("100".parse::<Weight>(), Ok(Weight::FULL));
        assert_eq!("0".parse::<Weight>(), Ok(Weight::ZERO));
        assert_eq!("7%".parse::<Weight>(), Ok(Weight(70)));
        for bad in ["", "100.1", "101", "-1", "2.55", "1e2", "abc", ".5", "5.", "0x10"] {
            assert!(bad.parse::<Weight>().is_err(), "{bad:?}");
        }
        assert_eq!(Weight(25).to_string(), "2.5%");
    }

    #[test]
    fn weights_round_trip_as_percent_numbers() {
        let text = serde_json::to_string(&Weight(25)).unwrap();
        assert_eq!(text, "2.5");
        assert_eq!(serde_json::from_str::<Weight>("2.5").unwrap(), Weight(25));
        assert_eq!(serde_json::from_str::<Weight>("50").unwrap(), Weight(500));
        assert!(serde_json::from_str::<Weight>("2.55").is_err());
        assert!(serde_json::from_str::<Weight>("-1").is_err());
        assert!(serde_json::from_str::<Weight>("1000").is_err());
    }
}
