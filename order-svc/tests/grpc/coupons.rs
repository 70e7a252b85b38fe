//! Coupons: a single use taken once by concurrent orders, and a re-put
//! that keeps the uses made.

use microshop_proto::order::v1::{CouponKind, CreateOrderRequest, GetCouponResponse};
use microshop_runtime::{Reason, errors::metadata_of};
use tonic::Code;

use crate::{Server, assert_rejected, coupon, create, order_request, put_coupon};

#[tokio::test(flavor = "multi_thread")]
async fn a_coupon_with_one_use_is_used_once_under_concurrency() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    put_coupon(&mut server.client, "ONLYONE", CouponKind::Fixed, 10_000, 1).await;

    let mut calls = Vec::new();
    for i in 0..10 {
        let mut client = server.client.clone();
        calls.push(tokio::spawn(async move {
            create(
                &mut client,
                CreateOrderRequest {
                    coupon_code: "ONLYONE".into(),
                    ..order_request(&format!("saga-race-{i}"), &format!("cust-{i}"))
                },
            )
            .await
        }));
    }
    let mut created = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(order) => {
                assert_eq!(order.discount_price, 10_000);
                created += 1;
            }
            Err(status) => {
                assert_rejected(&status, Code::FailedPrecondition, Reason::CouponExhausted);
                assert_eq!(
                    metadata_of(&status, "couponCode").as_deref(),
                    Some("ONLYONE")
                );
            }
        }
    }
    assert_eq!(created, 1);
    let used = coupon(&mut server.client, "ONLYONE").await;
    assert_eq!((used.times_used, used.usage_limit), (1, 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn put_coupon_keeps_the_uses_made() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "UPD", CouponKind::Fixed, 5_000, 3).await;
    create(
        client,
        CreateOrderRequest {
            coupon_code: "UPD".into(),
            ..order_request("saga-upd", "ann")
        },
    )
    .await
    .expect("create");
    put_coupon(client, "UPD", CouponKind::Percentage, 15, 10).await;
    let updated = coupon(client, "UPD").await;
    assert_eq!(
        updated,
        GetCouponResponse {
            code: "UPD".into(),
            kind: CouponKind::Percentage.into(),
            value: 15,
            usage_limit: 10,
            times_used: 1,
        }
    );
    server.stop().await;
}
