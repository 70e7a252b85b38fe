//! Building `tonic::Status` values that follow the error contract
//! (`docs/api.md`, "Errors"): a code, a plain-English message, a
//! `google.rpc.ErrorInfo` with domain `microshop` and a contract reason, a
//! `google.rpc.BadRequest` for invalid arguments, and a `RetryInfo` where a
//! retry can help.
//!
//! Each service keeps its own error enum and one exhaustive
//! `From<ServiceError> for Status`; this module only holds the shared
//! vocabulary so the reasons cannot drift between services.

use std::{collections::HashMap, fmt, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every microshop error.
pub const DOMAIN: &str = "microshop";

/// Contract reasons (`docs/api.md`, "Errors"), plus the few the contract
/// leaves to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// INVALID_ARGUMENT: malformed or out-of-range input.
    InvalidRequest,
    /// NOT_FOUND: no such product.
    UnknownSku,
    /// NOT_FOUND: no such order.
    UnknownOrder,
    /// NOT_FOUND: no such saga.
    UnknownSaga,
    /// NOT_FOUND: no such coupon (admin lookups).
    UnknownCoupon,
    /// FAILED_PRECONDITION: not enough stock.
    OutOfStock,
    /// FAILED_PRECONDITION: not enough points.
    InsufficientPoints,
    /// FAILED_PRECONDITION: only members may redeem points.
    NotAMember,
    /// FAILED_PRECONDITION: no such coupon at checkout.
    CouponInvalid,
    /// FAILED_PRECONDITION: coupon has no uses left.
    CouponExhausted,
    /// FAILED_PRECONDITION: the order has shipped.
    OrderNotCancellable,
    /// FAILED_PRECONDITION: the checkout hold ended before the saga could
    /// finish; it was compensated.
    CheckoutExpired,
    /// FAILED_PRECONDITION: the order was cancelled and can't be paid.
    OrderNotPayable,
    /// FAILED_PRECONDITION: the order is not in a state for that operation.
    OrderNotShippable,
    /// FAILED_PRECONDITION: an action arrived after its compensation (the
    /// barrier's anti-hanging rule).
    SagaAlreadyCompensated,
    /// FAILED_PRECONDITION: the saga is not in a state for that admin operation.
    SagaNotRetryable,
    /// FAILED_PRECONDITION: stock to set is below what is reserved.
    StockBelowReserved,
    /// ALREADY_EXISTS: the idempotency key was used with another payload.
    IdempotencyKeyReused,
    /// UNAVAILABLE: a dependency (participant or store) is down.
    DependencyUnavailable,
    /// UNAVAILABLE: a participant URL reaches a server that does not serve
    /// that participant (e.g. swapped ports); an operator must fix it.
    DependencyMisconfigured,
    /// UNAVAILABLE: the disk under a store is full; nothing was written, and
    /// the store serves again by itself once space is freed.
    StorageFull,
    /// DEADLINE_EXCEEDED: the saga did not end within the caller's deadline.
    DeadlineExceeded,
    /// RESOURCE_EXHAUSTED: too many requests.
    Overloaded,
    /// INTERNAL: a bug or corruption; details are in the server log.
    Internal,
    /// UNAUTHENTICATED: no bearer token, or an invalid or expired one.
    Unauthenticated,
    /// PERMISSION_DENIED: the caller's role or subject may not do that.
    PermissionDenied,
    /// RESOURCE_EXHAUSTED: this caller sent too many requests; see RetryInfo.
    RateLimited,
}

impl Reason {
    /// The reason string carried in `ErrorInfo.reason`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::UnknownSku => "UNKNOWN_SKU",
            Self::UnknownOrder => "UNKNOWN_ORDER",
            Self::UnknownSaga => "UNKNOWN_SAGA",
            Self::UnknownCoupon => "UNKNOWN_COUPON",
            Self::OutOfStock => "OUT_OF_STOCK",
            Self::InsufficientPoints => "INSUFFICIENT_POINTS",
            Self::NotAMember => "NOT_A_MEMBER",
            Self::CouponInvalid => "COUPON_INVALID",
            Self::CouponExhausted => "COUPON_EXHAUSTED",
            Self::OrderNotCancellable => "ORDER_NOT_CANCELLABLE",
            Self::CheckoutExpired => "CHECKOUT_EXPIRED",
            Self::OrderNotPayable => "ORDER_NOT_PAYABLE",
            Self::OrderNotShippable => "ORDER_NOT_SHIPPABLE",
            Self::SagaAlreadyCompensated => "SAGA_ALREADY_COMPENSATED",
            Self::SagaNotRetryable => "SAGA_NOT_RETRYABLE",
            Self::StockBelowReserved => "STOCK_BELOW_RESERVED",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::DependencyUnavailable => "DEPENDENCY_UNAVAILABLE",
            Self::DependencyMisconfigured => "DEPENDENCY_MISCONFIGURED",
            Self::StorageFull => "STORAGE_FULL",
            Self::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Self::Overloaded => "OVERLOADED",
            Self::Internal => "INTERNAL",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::RateLimited => "RATE_LIMITED",
        }
    }

    /// Parses a reason string back (used by clients of participants).
    pub fn parse(s: &str) -> Option<Self> {
        ALL_REASONS.iter().copied().find(|r| r.as_str() == s)
    }
}

const ALL_REASONS: &[Reason] = &[
    Reason::InvalidRequest,
    Reason::UnknownSku,
    Reason::UnknownOrder,
    Reason::UnknownSaga,
    Reason::UnknownCoupon,
    Reason::OutOfStock,
    Reason::InsufficientPoints,
    Reason::NotAMember,
    Reason::CouponInvalid,
    Reason::CouponExhausted,
    Reason::OrderNotCancellable,
    Reason::CheckoutExpired,
    Reason::OrderNotPayable,
    Reason::OrderNotShippable,
    Reason::SagaAlreadyCompensated,
    Reason::SagaNotRetryable,
    Reason::StockBelowReserved,
    Reason::IdempotencyKeyReused,
    Reason::DependencyUnavailable,
    Reason::DependencyMisconfigured,
    Reason::StorageFull,
    Reason::DeadlineExceeded,
    Reason::Overloaded,
    Reason::Internal,
    Reason::Unauthenticated,
    Reason::PermissionDenied,
    Reason::RateLimited,
];

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status with an `ErrorInfo` detail (and `RetryInfo` when `retry_after`
/// is set). `metadata` lands in `ErrorInfo.metadata` for machines to read.
pub fn rich_status(
    code: Code,
    reason: Reason,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (&'static str, String)>,
    retry_after: Option<Duration>,
) -> Status {
    status_with_details(
        code,
        reason.as_str(),
        message,
        metadata.into_iter().map(|(k, v)| (k.to_owned(), v)),
        &[],
        retry_after,
    )
}

/// A status from parts, for errors relayed from another service (the
/// orchestrator answers a participant's rejection, plus its saga id).
pub fn status_with_details(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: impl IntoIterator<Item = (String, String)>,
    violations: &[(String, String)],
    retry_after: Option<Duration>,
) -> Status {
    let metadata: HashMap<String, String> = metadata.into_iter().collect();
    let mut details = ErrorDetails::with_error_info(reason, DOMAIN, metadata);
    if !violations.is_empty() {
        details.set_bad_request(
            violations
                .iter()
                .map(|(f, d)| FieldViolation::new(f.clone(), d.clone()))
                .collect::<Vec<_>>(),
        );
    }
    if retry_after.is_some() {
        details.set_retry_info(retry_after);
    }
    Status::with_error_details(code, message, details)
}

/// INVALID_ARGUMENT / INVALID_REQUEST with a `BadRequest` naming each field.
pub fn invalid_request(violations: &[(String, String)]) -> Status {
    let message = match violations {
        [] => "the request is invalid".to_owned(),
        [(field, why)] => format!("invalid {field}: {why}"),
        many => {
            let fields: Vec<&str> = many.iter().map(|(f, _)| f.as_str()).collect();
            format!(
                "invalid request: {} (see BadRequest details)",
                fields.join(", ")
            )
        }
    };
    let mut details = ErrorDetails::with_error_info(
        Reason::InvalidRequest.as_str(),
        DOMAIN,
        HashMap::<String, String>::new(),
    );
    details.set_bad_request(
        violations
            .iter()
            .map(|(f, d)| FieldViolation::new(f.clone(), d.clone()))
            .collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// INTERNAL: logs the full error server-side and returns a message that
/// leaks nothing of the internals.
pub fn internal_status(context: &str, err: &dyn std::error::Error) -> Status {
    tracing::error!(error = %ErrorChain(err), "{context}");
    rich_status(
        Code::Internal,
        Reason::Internal,
        "internal error; it was logged, and retrying with the same key is safe",
        [],
        None,
    )
}

/// UNAVAILABLE with a retry hint: a dependency (participant, store) is down.
pub fn unavailable_status(what: &str, err: &dyn std::error::Error) -> Status {
    tracing::warn!(error = %ErrorChain(err), "{what} unavailable");
    rich_status(
        Code::Unavailable,
        Reason::DependencyUnavailable,
        format!(
            "{what} is unavailable; retry (PlaceOrder with the same idempotency key is applied \
             at most once; another write may have taken effect already)"
        ),
        [],
        Some(Duration::from_millis(500)),
    )
}

/// Displays an error with its whole `source()` chain.
pub struct ErrorChain<'a>(pub &'a dyn std::error::Error);

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

/// The contract reason of a status, read from its `ErrorInfo`.
pub fn reason_of(status: &Status) -> Option<Reason> {
    status
        .get_error_details()
        .error_info()
        .and_then(|info| Reason::parse(&info.reason))
}

/// One `ErrorInfo.metadata` value of a status.
pub fn metadata_of(status: &Status, key: &str) -> Option<String> {
    status
        .get_error_details()
        .error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// The status of a storage failure: UNAVAILABLE (retry) when the store is
/// unreachable or its disk full (reason STORAGE_FULL), INTERNAL (logged in
/// full, nothing leaked) otherwise.
pub fn storage_status(err: &microshop_storage::StorageError) -> Status {
    if let microshop_storage::StorageError::Full(why) = err {
        tracing::warn!(error = %why, "store full");
        return rich_status(
            Code::Unavailable,
            Reason::StorageFull,
            "the disk under this service's store is full: nothing was written; the \
             service serves again once space is freed (then retry)",
            [],
            Some(Duration::from_secs(1)),
        );
    }
    if err.is_transient() {
        unavailable_status("storage", err)
    } else {
        internal_status("storage failure", err)
    }
}
