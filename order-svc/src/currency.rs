//! ISO 4217 currency codes: which `--currency` values a shop may set, and
//! how many decimal digits each currency's smallest unit has.
//!
//! Every amount of the mesh is an integer in the currency's smallest unit
//! (a cent for USD, a dong for VND), so the code only labels the figures:
//! nothing is ever converted. The table is ISO 4217 list one as published
//! on 2026-01-01, restricted to the codes that have a minor unit (so not
//! the precious metals, bond-market units, SDR, XTS or XXX). It is a small
//! constant rather than a dependency, and checked only when a setting is
//! made: a stored order keeps whatever code it was priced in, even one ISO
//! later withdraws.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// ISO 4217 alphabetic code → decimal digits of the smallest unit.
const ISO_4217: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BOV", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHE", 2),
    ("CHF", 2),
    ("CHW", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("COU", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MXV", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("USN", 2),
    ("UYI", 0),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VED", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAD", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XCG", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// A three-letter currency code (upper-case ASCII), such as `USD`.
///
/// [`Currency::iso`] and [`FromStr`] accept only ISO 4217 codes (what a
/// setting must be); deserializing accepts any three upper-case letters,
/// so a record never becomes unreadable when the table changes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

/// A code that is not an ISO 4217 currency of the table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an ISO 4217 currency code (such as VND, USD or EUR)")]
pub struct UnknownCurrency(pub String);

impl Currency {
    /// The Vietnamese dong, the seed shop's currency.
    pub const VND: Self = Self(*b"VND");

    /// Any three upper-case ASCII letters, ISO or not (stored records).
    fn shaped(code: &str) -> Option<Self> {
        let bytes: [u8; 3] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(Self(bytes))
    }

    /// The ISO 4217 currency `code` (upper or lower case); `None` when it
    /// is not one.
    pub fn iso(code: &str) -> Option<Self> {
        let currency = Self::shaped(&code.trim().to_ascii_uppercase())?;
        currency.minor_units().map(|_| currency)
    }

    /// The code, e.g. `"USD"`.
    pub fn as_str(&self) -> &str {
        // Built only from upper-case ASCII, so always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Decimal digits of the smallest unit (2 for USD: cents; 0 for VND);
    /// `None` for a code outside the ISO table.
    pub fn minor_units(self) -> Option<u8> {
        ISO_4217
            .binary_search_by(|(code, _)| code.as_bytes().cmp(&self.0[..]))
            .ok()
            .map(|i| ISO_4217[i].1)
    }
}

impl Default for Currency {
    fn default() -> Self {
        Self::VND
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl FromStr for Currency {
    type Err = UnknownCurrency;

    fn from_str(s: &str) -> Result<Self, UnknownCurrency> {
        Self::iso(s).ok_or_else(|| UnknownCurrency(s.to_owned()))
    }
}

impl TryFrom<&str> for Currency {
    type Error = String;

    /// Any three upper-case letters: what a stored record or a wire
    /// message may carry.
    fn try_from(code: &str) -> Result<Self, String> {
        Self::shaped(code).ok_or_else(|| format!("{code:?} is not a three-letter currency code"))
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Self::try_from(code.as_str()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use microshop_storage::{decode, encode};

    use super::*;

    #[test]
    fn the_table_is_sorted_and_unique() {
        // `minor_units` binary-searches it.
        for pair in ISO_4217.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{:?} before {:?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn known_codes_parse_with_their_minor_units() {
        for (code, digits) in [("VND", 0), ("USD", 2), ("EUR", 2), ("JPY", 0), ("KWD", 3)] {
            let c: Currency = code.parse().expect(code);
            assert_eq!(c.as_str(), code);
            assert_eq!(c.minor_units(), Some(digits), "{code}");
        }
        assert_eq!(
            " usd ".parse::<Currency>().map(|c| c.to_string()),
            Ok("USD".to_owned())
        );
    }

    #[test]
    fn unknown_codes_are_refused() {
        for code in ["", "US", "USDD", "XYZ", "XAU", "XXX", "BGN", "₫₫₫", "U$D"] {
            assert!(code.parse::<Currency>().is_err(), "{code:?} accepted");
        }
    }

    #[test]
    fn a_stored_code_outside_the_table_still_decodes() {
        let c: Currency = decode(b"\"BGN\"").expect("three letters decode");
        assert_eq!(c.as_str(), "BGN");
        assert_eq!(c.minor_units(), None);
        assert!(decode::<Currency>(b"\"usd\"").is_err());
        assert_eq!(encode(&Currency::VND).expect("encode"), b"\"VND\"");
    }
}
