//! Bad input: every invalid field is refused as INVALID_ARGUMENT naming it,
//! and nothing changes.

use microshop_proto::order::v1::{
    CouponKind, CreateOrderRequest, GetCouponRequest, OrderLine, PutCouponRequest, Shipping,
};
use microshop_runtime::Reason;
use tonic::Code;

use crate::{
    Server, assert_invalid, assert_rejected, cancel, coupon, create, line, list, mark_paid,
    order_request, put_coupon, quote,
};

#[tokio::test(flavor = "multi_thread")]
async fn invalid_inputs_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "KEEP", CouponKind::Fixed, 5_000, 3).await;

    let base = || CreateOrderRequest {
        coupon_code: "KEEP".into(),
        ..order_request("saga-bad", "ann")
    };
    let cases: Vec<(CreateOrderRequest, &str)> = vec![
        (
            CreateOrderRequest {
                lines: vec![],
                ..base()
            },
            "lines",
        ),
        (
            CreateOrderRequest {
                lines: (0..101).map(|i| line(&format!("S{i}"), 1, 1)).collect(),
                ..base()
            },
            "lines",
        ),
        (
            CreateOrderRequest {
                lines: vec![line("SKU-A", 0, 150_000)],
                ..base()
            },
            "lines[0].quantity",
        ),
        (
            CreateOrderRequest {
                lines: vec![line("SKU-A", 10_001, 150_000)],
                ..base()
            },
            "lines[0].quantity",
        ),
        (
            CreateOrderRequest {
                lines: vec![line("SKU-A", 1, -5)],
                ..base()
            },
            "lines[0].unit_price",
        ),
        (
            CreateOrderRequest {
                lines: vec![OrderLine {
                    name: String::new(),
                    ..line("SKU-A", 1, 5)
                }],
                ..base()
            },
            "lines[0].name",
        ),
        (
            CreateOrderRequest {
                lines: vec![line("bad sku", 1, 5)],
                ..base()
            },
            "lines[0].sku",
        ),
        (
            CreateOrderRequest {
                saga_id: String::new(),
                ..base()
            },
            "saga_id",
        ),
        (
            CreateOrderRequest {
                customer_id: "x".repeat(129),
                ..base()
            },
            "customer_id",
        ),
        (
            CreateOrderRequest {
                redeemed_points: -1,
                ..base()
            },
            "redeemed_points",
        ),
        (
            CreateOrderRequest {
                shipping: Some(Shipping {
                    phone: "9".repeat(33),
                    ..Shipping::default()
                }),
                ..base()
            },
            "shipping.phone",
        ),
        (
            CreateOrderRequest {
                shipping: Some(Shipping {
                    address: "a".repeat(1025),
                    ..Shipping::default()
                }),
                ..base()
            },
            "shipping.address",
        ),
    ];
    for (request, field) in cases {
        let err = create(client, request).await.unwrap_err();
        assert_invalid(&err, field);
    }
    // Nothing was stored, and the saga is still free to create its order.
    assert!(
        list(client, "ann", 0, "")
            .await
            .expect("list")
            .orders
            .is_empty()
    );
    assert_eq!(coupon(client, "KEEP").await.times_used, 0);

    let err = quote(client, vec![], "", -1).await.unwrap_err();
    assert_invalid(&err, "lines");
    assert_invalid(&err, "points_to_redeem");

    let bad_coupons = [
        (CouponKind::Unspecified as i32, 10, 1, "kind"),
        (99, 10, 1, "kind"),
        (CouponKind::Percentage as i32, 101, 1, "value"),
        (CouponKind::Percentage as i32, 0, 1, "value"),
        (CouponKind::Fixed as i32, -1, 1, "value"),
        (CouponKind::Fixed as i32, 1_000, 0, "usage_limit"),
    ];
    for (kind, value, usage_limit, field) in bad_coupons {
        let err = client
            .put_coupon(PutCouponRequest {
                code: "KEEP".into(),
                kind,
                value,
                usage_limit,
            })
            .await
            .unwrap_err();
        assert_invalid(&err, field);
    }
    let long_code = client
        .put_coupon(PutCouponRequest {
            code: "C".repeat(65),
            kind: CouponKind::Fixed.into(),
            value: 1,
            usage_limit: 1,
        })
        .await
        .unwrap_err();
    assert_invalid(&long_code, "code");
    let kept = coupon(client, "KEEP").await;
    assert_eq!(
        (kept.kind(), kept.value, kept.usage_limit),
        (CouponKind::Fixed, 5_000, 3)
    );

    let unknown = client
        .get_coupon(GetCouponRequest {
            code: "NEVER".into(),
        })
        .await
        .unwrap_err();
    assert_rejected(&unknown, Code::NotFound, Reason::UnknownCoupon);

    let err = cancel(client, "", "").await.unwrap_err();
    assert_invalid(&err, "saga_id");
    let err = mark_paid(client, "saga-bad", "some-order", "")
        .await
        .unwrap_err();
    assert_invalid(&err, "payment_ref");

    // After all the refusals the saga can still create its order.
    create(client, base()).await.expect("valid create");
    assert_eq!(coupon(client, "KEEP").await.times_used, 1);
    server.stop().await;
}
