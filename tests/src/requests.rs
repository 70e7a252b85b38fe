//! Request builders and assertions on the errors the services answer.

use std::fmt::Debug;

use microshop_proto::orchestrator::v1 as orch;
use microshop_runtime::{Reason, errors::reason_of};
use tonic::{Code, Status};

/// A PlaceOrder request for `items` (sku, quantity) with a shipping address.
pub fn order_request(
    key: &str,
    customer: &str,
    items: &[(&str, i64)],
    coupon: &str,
    points: i64,
) -> orch::PlaceOrderRequest {
    orch::PlaceOrderRequest {
        idempotency_key: key.into(),
        customer_id: customer.into(),
        items: items
            .iter()
            .map(|(sku, quantity)| orch::LineItem {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
        coupon_code: coupon.into(),
        points_to_redeem: points,
        shipping: Some(orch::ShippingAddress {
            name: customer.into(),
            address: "1 Test Street, Hanoi".into(),
            phone: "+84 900 000 000".into(),
        }),
    }
}

/// Asserts `result` is an error with `code` and ErrorInfo `reason`, and
/// returns the status.
#[track_caller]
pub fn expect_error<T: Debug>(result: Result<T, Status>, code: Code, reason: Reason) -> Status {
    let status = match result {
        Ok(v) => panic!("expected {code:?} {reason}, got success: {v:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "expected {code:?} {reason}, got {:?} {:?}: {}",
        status.code(),
        reason_of(&status),
        status.message()
    );
    assert_eq!(
        reason_of(&status),
        Some(reason),
        "expected reason {reason} in ErrorInfo, got {:?} ({:?}: {})",
        reason_of(&status),
        status.code(),
        status.message()
    );
    status
}

/// The raw `ErrorInfo.reason` of `status` (also reasons outside
/// [`Reason`], such as `SAGA_ABORTED`), if it carries one in domain
/// `microshop`.
pub fn error_reason(status: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .filter(|i| i.domain == microshop_runtime::DOMAIN)
        .map(|i| i.reason.clone())
}

/// The saga id a checkout error carries in its ErrorInfo metadata.
#[track_caller]
pub fn saga_id_of(status: &Status) -> String {
    microshop_runtime::errors::metadata_of(status, "sagaId").unwrap_or_else(|| {
        panic!(
            "no sagaId in the ErrorInfo metadata of {:?}: {}",
            status.code(),
            status.message()
        )
    })
}
