//! Request validation shared by every service: collects every bad field of a
//! request, so one INVALID_ARGUMENT names them all in its `BadRequest`.

use tonic::Status;

use crate::errors::invalid_request;

/// Longest id (sku, customer, saga, order, key) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Longest name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Largest quantity of one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Most lines in one cart or reservation.
pub const MAX_LINES: usize = 100;
/// Largest money amount or point count accepted (keeps sums far from
/// overflow: 100 lines x 10,000 units x this still fits in i64).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// Accumulates field violations.
#[derive(Debug, Default)]
pub struct Violations(Vec<(String, String)>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation of `field`.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push((field.into(), description.into()));
    }

    /// Checks an identifier: 1..=128 bytes, no control or whitespace-only text.
    pub fn id(&mut self, field: &str, value: &str) {
        if let Some(why) = id_problem(value) {
            self.add(field, why);
        }
    }

    /// Checks an optional identifier (empty allowed).
    pub fn optional_id(&mut self, field: &str, value: &str) {
        if !value.is_empty() {
            self.id(field, value);
        }
    }

    /// Checks a free-text field of at most `max` bytes, `required` or not.
    pub fn text(&mut self, field: &str, value: &str, max: usize, required: bool) {
        if required && value.trim().is_empty() {
            self.add(field, "must not be empty");
        } else if value.len() > max {
            self.add(field, format!("must be at most {max} bytes"));
        } else if value.chars().any(|c| c.is_control() && c != '\n') {
            self.add(field, "must not contain control characters");
        }
    }

    /// Checks `1 <= value <= max`.
    pub fn positive(&mut self, field: &str, value: i64, max: i64) {
        if value <= 0 {
            self.add(field, "must be greater than zero");
        } else if value > max {
            self.add(field, format!("must be at most {max}"));
        }
    }

    /// Checks `0 <= value <= max`.
    pub fn non_negative(&mut self, field: &str, value: i64, max: i64) {
        if value < 0 {
            self.add(field, "must not be negative");
        } else if value > max {
            self.add(field, format!("must be at most {max}"));
        }
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The recorded violations.
    pub fn into_inner(self) -> Vec<(String, String)> {
        self.0
    }

    /// `Ok` when empty, else the INVALID_ARGUMENT status naming every field.
    pub fn into_result(self) -> Result<(), Status> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(invalid_request(&self.0))
        }
    }
}

/// Why `value` is not a valid identifier, if it is not.
pub fn id_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        Some("must not be empty".to_owned())
    } else if value.len() > MAX_ID_BYTES {
        Some(format!("must be at most {MAX_ID_BYTES} bytes"))
    } else if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not contain whitespace or control characters".to_owned())
    } else {
        None
    }
}
