//! Property values: parsing client JSON into the normalised form stored for each property type.
//!
//! Each parser takes the raw JSON a client (or a template default, or a project
//! file) supplied and returns the typed value, or `None` when the input is not
//! a value of that type. `PropertyDef::parse_value` in `template.rs` picks the
//! parser for a property's type and turns `None` into a message naming the
//! property. Every stored form parses back to itself, so parsing is idempotent.

use std::str::FromStr;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde_json::{Number, Value};
use uuid::Uuid;

/// The largest integer an `f64` holds exactly (2^53); integral floats up to it are stored as integers.
const MAX_EXACT_F64_INT: f64 = 9_007_199_254_740_992.0;

/// A number property: a JSON number, or a string holding one.
///
/// Integral values become JSON integers (`"12"`, `12.0` and `1.2e1` all store
/// as `12`) so equal numbers have one stored form. Non-finite values
/// (`"NaN"`, `"inf"`) are rejected.
pub fn number(raw: &Value) -> Option<Number> {
    match raw {
        Value::Number(n) => Some(normalise_number(n)),
        Value::String(s) => number_from_str(s.trim()),
        _ => None,
    }
}

fn number_from_str(s: &str) -> Option<Number> {
    if let Ok(i) = s.parse::<i64>() {
        return Some(i.into());
    }
    if let Ok(u) = s.parse::<u64>() {
        return Some(u.into());
    }
    // `f64::from_str` also accepts "inf" and "NaN"; `from_f64` refuses non-finite values.
    let f = s.parse::<f64>().ok()?;
    Number::from_f64(f).map(|n| normalise_number(&n))
}

fn normalise_number(n: &Number) -> Number {
    match n.as_f64() {
        Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() <= MAX_EXACT_F64_INT => {
            // The guard makes the cast exact (and a negative zero becomes plain 0).
            Number::from(f as i64)
        }
        _ => n.clone(),
    }
}

/// A currency property: a JSON number or a decimal string, kept exact.
///
/// A JSON number is read from its textual form (`0.1` stays `0.1`, never
/// `0.1000000000000000055...`); a string must be plain decimal notation
/// (`"12.50"`, `"-3"`), and its scale is kept. Values that do not fit a
/// `Decimal` exactly (more than 28 fractional digits, beyond about 7.9e28)
/// are rejected rather than rounded. Also reads stored values back.
pub fn currency(raw: &Value) -> Option<Decimal> {
    let parsed = match raw {
        Value::Number(n) => {
            let text = n.to_string();
            if text.contains(['e', 'E']) {
                Decimal::from_scientific(&text).ok()
            } else {
                Decimal::from_str_exact(&text).ok()
            }
        }
        Value::String(s) => {
            let s = s.trim();
            if is_plain_decimal(s) {
                Decimal::from_str_exact(s).ok()
            } else {
                None
            }
        }
        _ => None,
    };
    parsed.map(|mut d| {
        // "-0.00" and "0.00" are the same amount; store one of them.
        if d.is_zero() {
            d.set_sign_positive(true);
        }
        d
    })
}

/// The stored form of a currency amount: a decimal string with its scale, e.g. `"12.50"`.
pub fn currency_to_json(amount: Decimal) -> Value {
    Value::String(amount.to_string())
}

/// `[+-]digits[.digits]`: what a person writes for an amount, without separators or exponents.
fn is_plain_decimal(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && fraction.is_none_or(all_digits)
}

/// Why a string is not a date, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateProblem {
    /// Not a string of the shape `YYYY-MM-DD`.
    NotIsoDate,
    /// The right shape, but no such day (2025-02-30, 2025-13-01).
    NoSuchDay,
}

/// A date property: exactly `YYYY-MM-DD`, and a real calendar day.
pub fn date(raw: &Value) -> Result<NaiveDate, DateProblem> {
    let s = raw.as_str().ok_or(DateProblem::NotIsoDate)?;
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return Err(DateProblem::NotIsoDate);
    }
    // The shape check makes these parses infallible.
    let field = |range: std::ops::Range<usize>| s[range].parse::<u32>().unwrap_or(0);
    let year = i32::try_from(field(0..4)).unwrap_or(0);
    NaiveDate::from_ymd_opt(year, field(5..7), field(8..10)).ok_or(DateProblem::NoSuchDay)
}

/// The stored form of a date: `"YYYY-MM-DD"`.
pub fn date_to_json(day: NaiveDate) -> Value {
    Value::String(day.format("%Y-%m-%d").to_string())
}

/// A person property: the id of a node, as a UUID string (syntax only; the node is not looked up).
pub fn uuid(raw: &Value) -> Option<Uuid> {
    raw.as_str().and_then(|s| Uuid::from_str(s).ok())
}

/// The stored form of a node reference: the hyphenated lower-case UUID.
pub fn uuid_to_json(id: Uuid) -> Value {
    Value::String(id.hyphenated().to_string())
}

/// Why a value is not a list of node references, for the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceProblem {
    /// Not a UUID string nor a list of them.
    NotIds,
    /// The same node listed twice.
    Twice(Uuid),
}

/// A node reference property: a list of node ids (UUID strings), each once, in the given order.
///
/// A single id string is read as a list of one, since that is what a
/// person-like field sends. Whether the nodes exist is the command's check
/// (it needs the graph); this is syntax only. A list without duplicates of
/// nodes that exist is never longer than the graph, which bounds it.
pub fn node_references(raw: &Value) -> Result<Vec<Uuid>, ReferenceProblem> {
    let items = match raw {
        Value::String(_) => std::slice::from_ref(raw),
        Value::Array(items) => items.as_slice(),
        _ => return Err(ReferenceProblem::NotIds),
    };
    let mut ids: Vec<Uuid> = Vec::with_capacity(items.len());
    for item in items {
        let id = uuid(item).ok_or(ReferenceProblem::NotIds)?;
        if ids.contains(&id) {
            return Err(ReferenceProblem::Twice(id));
        }
        ids.push(id);
    }
    Ok(ids)
}

/// The stored form of node references: a JSON list of hyphenated lower-case UUIDs.
pub fn node_references_to_json(ids: &[Uuid]) -> Value {
    Value::Array(ids.iter().map(|id| uuid_to_json(*id)).collect())
}

/// A short rendering of a rejected value for an error message: its JSON, cut at 60 characters.
pub fn describe(raw: &Value) -> String {
    const LIMIT: usize = 60;
    let text = raw.to_string();
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Whether `value` written as JSON is longer than `max` bytes. Writing stops
/// once it passes `max`, so measuring a huge value costs at most the limit.
pub fn json_longer_than(value: &Value, max: usize) -> bool {
    /// Counts the bytes written and fails the write past the limit.
    struct Meter {
        written: usize,
        max: usize,
    }

    impl std::io::Write for Meter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written += buf.len();
            if self.written > self.max {
                return Err(std::io::Error::other("over the limit"));
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    serde_json::to_writer(&mut Meter { written: 0, max }, value).is_err()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn integral_numbers_in_any_spelling_store_as_integers() {
        for raw in [
            json!(12),
            json!(12.0),
            json!("12"),
            json!(" 12 "),
            json!("1.2e1"),
        ] {
            assert_eq!(number(&raw), Some(12.into()), "{raw}");
        }
        assert_eq!(number(&json!(-0.0)), Some(0.into()));
        assert_eq!(number(&json!(u64::MAX)), Some(u64::MAX.into()));
    }

    #[test]
    fn fractional_numbers_keep_their_value() {
        assert_eq!(number(&json!(2.5)), Number::from_f64(2.5));
        assert_eq!(number(&json!("-0.25")), Number::from_f64(-0.25));
    }

    #[test]
    fn non_numbers_and_non_finite_strings_are_not_numbers() {
        for raw in [
            json!("abc"),
            json!(""),
            json!("NaN"),
            json!("inf"),
            json!(true),
            json!([1]),
        ] {
            assert_eq!(number(&raw), None, "{raw}");
        }
    }

    #[test]
    fn currency_keeps_the_scale_of_a_string_and_the_text_of_a_number() {
        let stored = |raw: Value| currency(&raw).map(currency_to_json);
        assert_eq!(stored(json!("0.10")), Some(json!("0.10")));
        assert_eq!(stored(json!(0.1)), Some(json!("0.1")));
        assert_eq!(stored(json!("12.50")), Some(json!("12.50")));
        assert_eq!(stored(json!(50000)), Some(json!("50000")));
        assert_eq!(stored(json!(1e20)), Some(json!("100000000000000000000")));
        assert_eq!(stored(json!("-0.00")), Some(json!("0.00")));
        assert_eq!(stored(json!("+7")), Some(json!("7")));
    }

    #[test]
    fn currency_rejects_separators_exponent_strings_and_inexact_amounts() {
        for raw in [
            json!("12,50"),
            json!("1_000"),
            json!("1e3"),
            json!("$5"),
            json!("."),
            json!("5."),
            json!(""),
            json!(true),
            json!("0.00000000000000000000000000001"),
            json!(1e30),
        ] {
            assert_eq!(currency(&raw), None, "{raw}");
        }
    }

    #[test]
    fn dates_follow_the_calendar_including_leap_years() {
        assert!(date(&json!("2024-02-29")).is_ok());
        assert!(date(&json!("2000-02-29")).is_ok());
        assert_eq!(date(&json!("2025-02-29")), Err(DateProblem::NoSuchDay));
        assert_eq!(date(&json!("1900-02-29")), Err(DateProblem::NoSuchDay));
        assert_eq!(date(&json!("2025-04-31")), Err(DateProblem::NoSuchDay));
        assert_eq!(date(&json!("2025-13-01")), Err(DateProblem::NoSuchDay));
        for raw in [
            json!("2025-1-05"),
            json!("05/01/2025"),
            json!("+2025-01-05"),
            json!(20250105),
        ] {
            assert_eq!(date(&raw), Err(DateProblem::NotIsoDate), "{raw}");
        }
    }

    #[test]
    fn uuids_are_stored_hyphenated_and_lower_case() {
        let raw = json!("4B7B7187-A20B-4468-A7FA-EF77F0B04770");
        assert_eq!(
            uuid(&raw).map(uuid_to_json),
            Some(json!("4b7b7187-a20b-4468-a7fa-ef77f0b04770"))
        );
        assert_eq!(uuid(&json!("bob")), None);
    }

    #[test]
    fn node_references_are_lists_of_distinct_uuids_and_a_single_id_is_a_list_of_one() {
        let a = "4B7B7187-A20B-4468-A7FA-EF77F0B04770";
        let b = "89ab5140-9a48-4176-a375-646745c20511";
        let stored = |raw: Value| node_references(&raw).map(|ids| node_references_to_json(&ids));
        assert_eq!(stored(json!([a, b])), Ok(json!([a.to_lowercase(), b])));
        assert_eq!(stored(json!(b)), Ok(json!([b])));
        assert_eq!(stored(json!([])), Ok(json!([])));
        assert_eq!(
            node_references(&json!([b, a, b])),
            Err(ReferenceProblem::Twice(Uuid::parse_str(b).unwrap()))
        );
        for raw in [
            json!(["bob"]),
            json!([1]),
            json!(7),
            json!({"id": b}),
            json!([[b]]),
        ] {
            assert_eq!(
                node_references(&raw),
                Err(ReferenceProblem::NotIds),
                "{raw}"
            );
        }
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = json!("x".repeat(100));
        assert_eq!(describe(&long).chars().count(), 61);
        assert_eq!(describe(&json!("Done")), "\"Done\"");
    }

    proptest! {
        #[test]
        fn a_stored_currency_amount_parses_back_to_itself(mantissa in any::<i64>(), scale in 0u32..8) {
            let amount = Decimal::new(mantissa, scale);
            let stored = currency_to_json(amount);
            let again = currency(&stored).map(currency_to_json);
            prop_assert_eq!(again, Some(stored));
        }

        #[test]
        fn a_stored_number_parses_back_to_itself(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let stored = number(&json!(f)).expect("finite numbers parse");
            prop_assert_eq!(number(&Value::Number(stored.clone())), Some(stored.clone()));
            prop_assert_eq!(number(&Value::String(stored.to_string())), Some(stored));
        }
    }
}
