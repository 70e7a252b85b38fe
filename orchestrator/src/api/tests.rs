//! Unit tests of the parent module.

use microshop_runtime::{Reason, errors::reason_of};
use proptest::prelude::*;
use tonic::Code;
use tonic_types::StatusExt;

use super::*;

/// Strings a client could send: arbitrary text, plus the edge cases of
/// the bad-input table (empty, oversized, controls, NUL, bidi override,
/// emoji, lone combining marks, injection-like text).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_-]{1,24}",
        2 => any::<String>(),
        1 => Just(String::new()),
        1 => Just("   ".to_owned()),
        1 => (0usize..2048).prop_map(|n| "x".repeat(n)),
        1 => Just("a\0b".to_owned()),
        1 => Just("a\u{7}\u{1b}[0m".to_owned()),
        1 => Just("abc\u{202E}fed".to_owned()),
        1 => Just("😀🛒".to_owned()),
        1 => Just("\u{0301}".to_owned()),
        1 => Just("'; DROP TABLE orders;--".to_owned()),
        1 => Just("{\"$gt\":\"\"}".to_owned()),
        1 => Just("../../etc/passwd".to_owned()),
    ]
}

fn number() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 0i64..20,
        2 => any::<i64>(),
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => Just(-1i64),
        1 => Just(MAX_QUANTITY + 1),
        1 => Just(MAX_AMOUNT + 1),
    ]
}

fn request() -> impl Strategy<Value = pb::PlaceOrderRequest> {
    let item = || (text(), number()).prop_map(|(sku, quantity)| pb::LineItem { sku, quantity });
    let shipping =
        proptest::option::of((text(), text(), text()).prop_map(|(name, address, phone)| {
            pb::ShippingAddress {
                name,
                address,
                phone,
            }
        }));
    (
        text(),
        text(),
        prop_oneof![
            8 => proptest::collection::vec(item(), 0..4),
            1 => proptest::collection::vec(item(), 99..103),
        ],
        prop_oneof![2 => Just(String::new()), 1 => text()],
        number(),
        shipping,
    )
        .prop_map(
            |(idempotency_key, customer_id, items, coupon_code, points_to_redeem, shipping)| {
                pb::PlaceOrderRequest {
                    idempotency_key,
                    customer_id,
                    items,
                    coupon_code,
                    points_to_redeem,
                    shipping,
                }
            },
        )
}

fn fields(err: OrchestratorError) -> Vec<String> {
    let OrchestratorError::Invalid(violations) = err else {
        panic!("validation refused with something else than INVALID_ARGUMENT: {err:?}");
    };
    assert!(!violations.is_empty(), "a refusal names at least one field");
    let status = Status::from(OrchestratorError::Invalid(violations.clone()));
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason_of(&status), Some(Reason::InvalidRequest));
    let named = status
        .get_error_details()
        .bad_request()
        .map_or(0, |b| b.field_violations.len());
    assert_eq!(named, violations.len(), "BadRequest names every bad field");
    violations.into_iter().map(|(f, _)| f).collect()
}

/// Regression: `split_at(len - 1)` panicked on a value ending in a
/// multi-byte character (tonic only hands ASCII values over, so this
/// was latent; the parser must not rely on it).
#[test]
fn grpc_timeout_parser_survives_non_ascii() {
    for s in ["ವ", "Rವ", "10é", "1ms\u{301}"] {
        assert_eq!(parse_grpc_timeout(s), None, "{s:?}");
    }
    assert_eq!(
        parse_grpc_timeout("1500m"),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// No input panics; every refusal is INVALID_ARGUMENT
    /// INVALID_REQUEST with a BadRequest, naming each broken rule.
    #[test]
    fn place_order_validation_never_panics_and_refuses_with_a_reason(req in request()) {
        let result = validate_place(&req);
        let bad_quantity = req.items.iter().position(|i| i.quantity <= 0 || i.quantity > MAX_QUANTITY);
        let must_refuse = req.items.is_empty()
            || req.items.len() > MAX_LINES
            || bad_quantity.is_some()
            || req.points_to_redeem < 0
            || req.points_to_redeem > MAX_AMOUNT
            || req.idempotency_key.is_empty()
            || req.customer_id.is_empty()
            || req.idempotency_key.len() > MAX_ID_BYTES
            || req.customer_id.len() > MAX_ID_BYTES
            || req.coupon_code.len() > MAX_COUPON_BYTES
            || req.idempotency_key.contains('\0')
            || req.customer_id.contains('\0');
        match result {
            Ok(()) => prop_assert!(!must_refuse, "accepted a bad request: {req:?}"),
            Err(err) => {
                let named = fields(err);
                if req.items.is_empty() {
                    prop_assert!(named.iter().any(|f| f == "items"));
                }
                if let Some(i) = bad_quantity {
                    let field = format!("items[{i}].quantity");
                    prop_assert!(named.contains(&field), "{field} not in {named:?}");
                }
                if req.points_to_redeem < 0 || req.points_to_redeem > MAX_AMOUNT {
                    prop_assert!(named.iter().any(|f| f == "points_to_redeem"));
                }
                if req.idempotency_key.is_empty() {
                    prop_assert!(named.iter().any(|f| f == "idempotency_key"));
                }
            }
        }
    }

    /// Well-formed requests are accepted.
    #[test]
    fn well_formed_place_orders_are_accepted(
        key in "[a-zA-Z0-9:_-]{1,128}",
        customer in "[a-z0-9-]{1,64}",
        items in proptest::collection::vec(("[A-Z0-9-]{1,32}", 1..=MAX_QUANTITY), 1..=MAX_LINES),
        coupon in prop_oneof![Just(String::new()), "[A-Z0-9]{1,64}"],
        points in 0..=MAX_AMOUNT,
        name in "[\\p{L} .'-]{0,60}",
    ) {
        let req = pb::PlaceOrderRequest {
            idempotency_key: key,
            customer_id: customer,
            items: items.into_iter().map(|(sku, quantity)| pb::LineItem { sku, quantity }).collect(),
            coupon_code: coupon,
            points_to_redeem: points,
            shipping: Some(pb::ShippingAddress { name, address: "1 Test St\nHanoi".into(), phone: "+84 900".into() }),
        };
        prop_assert!(validate_place(&req).is_ok(), "{:?}", validate_place(&req).err());
    }

    /// The grpc-timeout parser takes any header value without panicking
    /// (it split inside a multi-byte character before: found by this
    /// property, see `grpc_timeout_parser_survives_non_ascii`).
    #[test]
    fn grpc_timeout_parsing_never_panics(s in any::<String>()) {
        let _ = parse_grpc_timeout(&s);
    }
}
