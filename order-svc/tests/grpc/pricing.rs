//! Pricing: quotes by the seed rules (tax, shipping, coupons, points), the
//! over-redemption refusal, quotes and orders by configured rules, and
//! invalid rules refusing to serve.

use microshop_proto::order::v1::{
    CouponKind, CreateOrderRequest, Pricing, PricingRules as WireRules, QuoteOrderRequest,
};
use microshop_runtime::{Reason, errors::metadata_of};
use order_svc::{OrderConfig, PricingRules, run};
use tonic::Code;

use crate::{
    Server, assert_invalid, assert_rejected, coupon, create, line, list, order_request, put_coupon,
    quote, usd_rules,
};

#[tokio::test(flavor = "multi_thread")]
async fn quote_applies_the_seed_pricing_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;
    put_coupon(client, "PCT10", CouponKind::Percentage, 10, 5).await;
    put_coupon(client, "FIX100K", CouponKind::Fixed, 100_000, 5).await;
    put_coupon(client, "BIGFIX", CouponKind::Fixed, 10_000_000, 5).await;
    let cart = || vec![line("SKU-A", 2, 150_000)];

    assert_eq!(
        quote(client, cart(), "", 0).await.expect("quote"),
        Pricing {
            items_price: 300_000,
            tax_price: 30_000,
            shipping_price: 50_000,
            discount_price: 0,
            redeemed_points: 0,
            points_discount_price: 0,
            total_price: 380_000,
        }
    );

    // Free shipping from 2,000,000 of items; 1,999,999 still pays it.
    let big = quote(client, vec![line("SKU-B", 4, 500_000)], "", 0)
        .await
        .expect("quote");
    assert_eq!(
        (
            big.items_price,
            big.tax_price,
            big.shipping_price,
            big.total_price
        ),
        (2_000_000, 200_000, 0, 2_200_000)
    );
    let below = quote(client, vec![line("SKU-B", 1, 1_999_999)], "", 0)
        .await
        .expect("quote");
    assert_eq!(below.shipping_price, 50_000);
    assert_eq!(below.tax_price, 200_000); // 199,999.9 rounded half up

    let pct = quote(client, cart(), "PCT10", 0).await.expect("quote");
    assert_eq!((pct.discount_price, pct.total_price), (30_000, 350_000));

    let fixed = quote(client, cart(), "FIX100K", 0).await.expect("quote");
    assert_eq!(
        (fixed.discount_price, fixed.total_price),
        (100_000, 280_000)
    );

    // A fixed coupon is capped at the items price.
    let capped = quote(client, cart(), "BIGFIX", 0).await.expect("quote");
    assert_eq!(
        (capped.discount_price, capped.total_price),
        (300_000, 80_000)
    );

    let points = quote(client, cart(), "PCT10", 50).await.expect("quote");
    assert_eq!(
        points,
        Pricing {
            items_price: 300_000,
            tax_price: 30_000,
            shipping_price: 50_000,
            discount_price: 30_000,
            redeemed_points: 50,
            points_discount_price: 50_000,
            total_price: 300_000,
        }
    );

    // Redeeming the whole payable total leaves nothing to pay.
    let all = quote(client, cart(), "", 380).await.expect("quote");
    assert_eq!(all.total_price, 0);

    let unknown = quote(client, cart(), "NOPE", 0).await.unwrap_err();
    assert_rejected(&unknown, Code::FailedPrecondition, Reason::CouponInvalid);
    assert_eq!(metadata_of(&unknown, "couponCode").as_deref(), Some("NOPE"));

    // A quote stores nothing: no coupon use was taken.
    assert_eq!(coupon(client, "PCT10").await.times_used, 0);

    // An exhausted coupon still quotes: CreateOrder decides atomically.
    put_coupon(client, "ONCE", CouponKind::Percentage, 10, 1).await;
    create(
        client,
        CreateOrderRequest {
            coupon_code: "ONCE".into(),
            ..order_request("saga-once", "ann")
        },
    )
    .await
    .expect("create");
    assert!(quote(client, cart(), "ONCE", 0).await.is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_redemption_is_invalid_argument() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(dir.path()).await;
    let client = &mut server.client;

    let err = quote(client, vec![line("SKU-A", 2, 150_000)], "", 381)
        .await
        .unwrap_err();
    assert_invalid(&err, "points_to_redeem");
    assert!(err.message().contains("380"), "says the maximum: {err:?}");

    let request = CreateOrderRequest {
        redeemed_points: 381,
        ..order_request("saga-over", "ann")
    };
    let err = create(client, request.clone()).await.unwrap_err();
    assert_invalid(&err, "redeemed_points");
    // The rejection is recorded: a retry answers the same.
    let again = create(client, request).await.unwrap_err();
    assert_invalid(&again, "redeemed_points");
    assert!(
        list(client, "ann", 0, "")
            .await
            .expect("list")
            .orders
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quote_and_create_price_by_the_configured_rules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start_with(dir.path(), usd_rules()).await;
    let client = &mut server.client;
    // 2 × $12.99 + $4.50 = $30.48; tax 8.25% = 251.46¢ → 251¢; shipping
    // $5.99; 100 points = $1.00; total $39.98.
    let lines = vec![line("SHIRT", 2, 1_299), line("CAP", 1, 450)];
    let quoted = client
        .quote_order(QuoteOrderRequest {
            lines: lines.clone(),
            coupon_code: String::new(),
            points_to_redeem: 100,
        })
        .await
        .expect("quote")
        .into_inner();
    let want = Pricing {
        items_price: 3_048,
        tax_price: 251,
        shipping_price: 599,
        discount_price: 0,
        redeemed_points: 100,
        points_discount_price: 100,
        total_price: 3_798,
    };
    assert_eq!(quoted.pricing, Some(want));
    let rules = WireRules {
        tax_rate_bp: 825,
        shipping_price: 599,
        free_shipping_from: 5_000,
        point_value: 1,
        earn_amount_per_point: 100,
        currency: "USD".into(),
    };
    assert_eq!(quoted.pricing_rules, Some(rules.clone()));

    let order = create(
        client,
        CreateOrderRequest {
            saga_id: "saga-usd".into(),
            customer_id: "ann".into(),
            lines,
            redeemed_points: 100,
            ..CreateOrderRequest::default()
        },
    )
    .await
    .expect("create");
    assert_eq!(
        (order.items_price, order.tax_price, order.shipping_price),
        (3_048, 251, 599)
    );
    assert_eq!(order.total_price, 3_798);
    assert_eq!(order.pricing_rules, Some(rules));
    // From $50.00 of items shipping is free.
    let free = quote(client, vec![line("COAT", 1, 5_000)], "", 0)
        .await
        .expect("quote");
    assert_eq!((free.tax_price, free.shipping_price), (413, 0)); // 412.5 → 413
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_pricing_rules_refuse_to_serve() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (rules, setting) in [
        (
            PricingRules {
                tax_rate_bp: 10_001,
                ..PricingRules::default()
            },
            "--tax-rate-bp",
        ),
        (
            PricingRules {
                point_value: 0,
                ..PricingRules::default()
            },
            "--point-value",
        ),
        (
            PricingRules {
                shipping_price: -1,
                ..PricingRules::default()
            },
            "--shipping-price",
        ),
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut config = OrderConfig::new(microshop_runtime::testing::server_args(dir.path()));
        config.pricing = rules;
        let err = run(listener, config, std::future::pending())
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(setting), "{err}");
    }
}
