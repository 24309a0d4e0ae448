//! Human-readable durations for configuration files.
//!
//! A duration is written as one or more `<integer><unit>` components, largest
//! unit first, with no spaces: `"5s"`, `"250ms"`, `"1m30s"`, `"2h"`,
//! `"1s500ms"`. Units: `d` (days), `h`, `m`, `s`, `ms`, `us` (or `µs`), `ns`.
//! `"0"` alone means zero. When deserializing, a plain non-negative integer
//! is also accepted and means **milliseconds** (`5000` = `"5s"`).
//!
//! [`format()`] writes the shortest exact string: it considers every
//! single-unit form that is exact (`"90s"`) and the mixed form (`"1m30s"`),
//! and picks the shortest (ties go to the larger leading unit). Zero is
//! `"0s"`. `parse(&format(d)) == Ok(d)` for every [`Duration`] that fits in
//! the accepted range (up to `u64::MAX` seconds).
//!
//! Use the module as a serde helper:
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Probe {
//!     #[serde(with = "cluster_types::duration")]
//!     interval: Duration,
//!     #[serde(with = "cluster_types::duration::option", default)]
//!     deadline: Option<Duration>,
//! }
//!
//! let p: Probe = serde_json::from_str(r#"{"interval": "1m30s"}"#).unwrap();
//! assert_eq!(p.interval, Duration::from_secs(90));
//! assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"interval":"90s","deadline":null}"#);
//! ```

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// The input was empty (or only whitespace).
    #[error("empty duration (expected e.g. \"5s\", \"250ms\", \"1m30s\")")]
    Empty,
    /// A component had digits but no unit, e.g. `"5"` or `"1m30"`.
    #[error("missing unit after {number} in {input:?} (units: d, h, m, s, ms, us, ns)")]
    MissingUnit {
        /// The whole input.
        input: String,
        /// The number that has no unit.
        number: String,
    },
    /// A unit that is not one of `d h m s ms us µs ns`.
    #[error("unknown unit {unit:?} in {input:?} (units: d, h, m, s, ms, us, ns)")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The offending unit text.
        unit: String,
    },
    /// A component without digits, e.g. `"s"` or `"1h m"`.
    #[error(
        "expected a number at byte {position} of {input:?} (durations look like \"5s\", \"250ms\", \"1m30s\")"
    )]
    ExpectedNumber {
        /// The whole input.
        input: String,
        /// Byte offset where a number was expected.
        position: usize,
    },
    /// The value does not fit in a [`Duration`] (or a component overflowed).
    #[error("duration {input:?} is too large")]
    Overflow {
        /// The whole input.
        input: String,
    },
}

const NANOS_PER_UNIT: [(&str, u128); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Largest total the parser accepts, in nanoseconds (`u64::MAX` seconds plus
/// the largest sub-second part), i.e. everything a [`Duration`] can hold.
const MAX_NANOS: u128 = (u64::MAX as u128) * 1_000_000_000 + 999_999_999;

/// Parses a duration such as `"5s"`, `"250ms"`, `"1m30s"`, `"2h"` or `"0"`.
///
/// Leading and trailing whitespace is ignored. Components may repeat or come
/// in any order (`"30s1m"` is 90 s); [`format()`] always writes them largest
/// first.
///
/// # Errors
/// [`DurationError`] describing the first problem found.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bytes = s.as_bytes();
    let mut pos = 0;
    let mut total: u128 = 0;
    let overflow = || DurationError::Overflow {
        input: input.to_owned(),
    };
    while pos < bytes.len() {
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos == start {
            return Err(DurationError::ExpectedNumber {
                input: input.to_owned(),
                position: start,
            });
        }
        let digits = &s[start..pos];
        let unit_start = pos;
        while pos < bytes.len() && !bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let unit = &s[unit_start..pos];
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                input: input.to_owned(),
                number: digits.to_owned(),
            });
        }
        let unit = if unit == "µs" { "us" } else { unit };
        let Some(&(_, per)) = NANOS_PER_UNIT.iter().find(|(u, _)| *u == unit) else {
            return Err(DurationError::UnknownUnit {
                input: input.to_owned(),
                unit: unit.to_owned(),
            });
        };
        let n: u128 = digits.parse().map_err(|_| overflow())?;
        let part = n.checked_mul(per).ok_or_else(overflow)?;
        total = total.checked_add(part).ok_or_else(overflow)?;
        if total > MAX_NANOS {
            return Err(overflow());
        }
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| overflow())?;
    // `total % 1e9` is always below 1e9, so it fits in u32.
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| overflow())?;
    Ok(Duration::new(secs, nanos))
}

/// Formats a duration as the shortest exact string that [`parse`] reads back
/// to the same value (`90 s` → `"90s"`, `1 h 30 min` → `"90m"`, `1.5 s` →
/// `"1500ms"`, `1 h 0 min 1 s` → `"1h1s"`, zero → `"0s"`).
///
/// Units used are `h`, `m`, `s`, `ms`, `us`, `ns` (never `d`, so an hour count
/// stays readable).
#[must_use]
pub fn format(d: Duration) -> String {
    let total = d.as_nanos();
    if total == 0 {
        return "0s".to_owned();
    }
    // Skip "d": hours are easier to read in configs.
    let units = &NANOS_PER_UNIT[1..];
    let mut best: Option<String> = None;
    let mut consider = |candidate: String| {
        if best.as_ref().is_none_or(|b| candidate.len() < b.len()) {
            best = Some(candidate);
        }
    };
    // Mixed form, largest unit first.
    let mut mixed = String::new();
    let mut rest = total;
    for (unit, per) in units {
        let n = rest / per;
        if n > 0 {
            mixed.push_str(&n.to_string());
            mixed.push_str(unit);
            rest -= n * per;
        }
    }
    consider(mixed);
    // Single-unit forms, largest first (ties keep the earlier, larger unit).
    for (unit, per) in units {
        if total.is_multiple_of(*per) {
            consider(format!("{}{unit}", total / per));
        }
    }
    best.unwrap_or_else(|| "0s".to_owned())
}

/// Serde `serialize_with` helper: writes [`format(d)`](format()).
///
/// # Errors
/// Whatever the serializer returns.
pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*d))
}

/// Serde `deserialize_with` helper: accepts a duration string (see [`parse`])
/// or a non-negative integer number of milliseconds.
///
/// # Errors
/// A serde error naming the bad value.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a duration such as \"5s\", \"250ms\", \"1m30s\" or an integer number of milliseconds",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_millis(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_millis)
            .map_err(|_| E::custom(format_args!("duration must not be negative, got {v}")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format_args!(
            "expected a duration string like \"1500ms\" or an integer number of milliseconds, got {v}"
        )))
    }
}

/// Serde helpers for `Option<Duration>` (`#[serde(with =
/// "cluster_types::duration::option", default)]`): `None` is written as
/// `null` (or skipped with `skip_serializing_if`), `Some(d)` as
/// [`format(d)`](format()); `null` reads as `None`.
pub mod option {
    use super::{Deserializer, Duration, Serializer};
    use serde::Deserialize;

    /// Writes `None` as a unit/null and `Some(d)` as a duration string.
    ///
    /// # Errors
    /// Whatever the serializer returns.
    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => serializer.serialize_some(&super::format(*d)),
            None => serializer.serialize_none(),
        }
    }

    /// Reads `null` as `None`, otherwise like [`super::deserialize`].
    ///
    /// # Errors
    /// A serde error naming the bad value.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapper(#[serde(with = "super")] Duration);
        Ok(Option::<Wrapper>::deserialize(deserializer)?.map(|Wrapper(d)| d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_examples() {
        let cases = [
            ("5s", Duration::from_secs(5)),
            ("250ms", Duration::from_millis(250)),
            ("1m30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1s500ms", Duration::from_millis(1500)),
            ("30s1m", Duration::from_secs(90)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("  5s ", Duration::from_secs(5)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(parse("5"), Err(DurationError::MissingUnit { .. })));
        assert!(matches!(
            parse("1m30"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(
            parse("5sec"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse("1.5s"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse("s"),
            Err(DurationError::ExpectedNumber { .. })
        ));
        assert!(matches!(
            parse("-5s"),
            Err(DurationError::ExpectedNumber { .. })
        ));
        assert!(matches!(
            parse("1 s"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse("99999999999999999999999999999999999999999h"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse("18446744073709551616s"),
            Err(DurationError::Overflow { .. })
        ));
    }

    #[test]
    fn formats_shortest() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(5400), "90m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(3601), "1h1s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(1800), "30m"),
            (Duration::from_nanos(1_000_000_001), "1s1ns"),
        ];
        for (d, want) in cases {
            assert_eq!(format(d), want, "{d:?}");
        }
    }

    #[test]
    fn serde_accepts_strings_and_millis() {
        #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
        struct T {
            #[serde(with = "crate::duration")]
            d: Duration,
            #[serde(with = "crate::duration::option", default)]
            o: Option<Duration>,
        }
        let t: T = serde_json::from_str(r#"{"d": 1500, "o": "2s"}"#).unwrap();
        assert_eq!(
            t,
            T {
                d: Duration::from_millis(1500),
                o: Some(Duration::from_secs(2))
            }
        );
        let t: T = serde_json::from_str(r#"{"d": "1m"}"#).unwrap();
        assert_eq!(t.o, None);
        assert!(serde_json::from_str::<T>(r#"{"d": -1}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"d": 1.5}"#).is_err());
        assert!(serde_json::from_str::<T>(r#"{"d": "fast"}"#).is_err());
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"d":"1m","o":null}"#);
    }

    proptest! {
        #[test]
        fn round_trip(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse(&format(d)), Ok(d));
        }

        #[test]
        fn round_trip_small(millis in 0u64..10_000_000) {
            let d = Duration::from_millis(millis);
            let text = format(d);
            prop_assert_eq!(parse(&text), Ok(d));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = parse(&s);
        }
    }
}
