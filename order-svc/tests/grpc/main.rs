//! order-svc end to end: the real server (`run`) on a loopback port, a fresh
//! data directory per test, and the generated gRPC client.
//!
//! The tests, by concern: `pricing` (quotes and orders priced by the seed
//! and the configured rules, invalid rules), `orders` (an order's fields,
//! payment, shipping, GetOrder and ListOrders), `barriers` (the participant
//! barrier: a repeated CreateOrder replays, CancelOrder compensates),
//! `coupons` (coupon uses under concurrency and on re-put), `bad_input`
//! (refusals that name the field and change nothing) and `restart`
//! (orders, barriers and their pricing rules across a restart).

mod bad_input;
mod barriers;
mod coupons;
mod orders;
mod pricing;
mod restart;

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use microshop_proto::order::v1::{
    CancelOrderRequest, CouponKind, CreateOrderRequest, GetCouponRequest, GetCouponResponse,
    GetOrderRequest, ListOrdersRequest, ListOrdersResponse, MarkPaidRequest, MarkShippedRequest,
    Order, OrderLine, Pricing, PutCouponRequest, QuoteOrderRequest,
    order_service_client::OrderServiceClient,
};
use microshop_runtime::{Reason, errors::reason_of, testing::TestServer};
use order_svc::{OrderConfig, PricingRules, run};
use prost_types::Timestamp;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

type Client = OrderServiceClient<Channel>;

/// A running server and a client of it.
pub(crate) struct Server {
    pub(crate) client: Client,
    inner: TestServer,
}

impl Server {
    /// Serves `dir` on a fresh loopback port with the seed pricing rules and
    /// connects to it.
    pub(crate) async fn start(dir: &Path) -> Self {
        Self::start_with(dir, PricingRules::default()).await
    }

    /// Serves `dir` pricing by `rules`.
    pub(crate) async fn start_with(dir: &Path, rules: PricingRules) -> Self {
        let mut config = OrderConfig::new(microshop_runtime::testing::server_args(dir));
        config.pricing = rules;
        let inner =
            TestServer::start(|listener, shutdown| run(listener, config.clone(), shutdown)).await;
        Self {
            client: OrderServiceClient::new(inner.channel.clone()),
            inner,
        }
    }

    /// Stops the server gracefully and waits for it to finish.
    pub(crate) async fn stop(self) {
        drop(self.client);
        self.inner.stop().await;
    }
}

pub(crate) fn now_ms() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    i64::try_from(ms).expect("millis fit in i64")
}

pub(crate) fn ms_of(ts: Option<&Timestamp>) -> i64 {
    let ts = ts.expect("timestamp set");
    ts.seconds * 1_000 + i64::from(ts.nanos / 1_000_000)
}

pub(crate) fn line(sku: &str, quantity: i64, unit_price: i64) -> OrderLine {
    OrderLine {
        sku: sku.into(),
        name: format!("product {sku}"),
        quantity,
        unit_price,
    }
}

pub(crate) fn assert_rejected(status: &Status, code: Code, reason: Reason) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status), Some(reason), "{status:?}");
}

/// The fields a `BadRequest` detail names.
fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

pub(crate) fn assert_invalid(status: &Status, field: &str) {
    assert_rejected(status, Code::InvalidArgument, Reason::InvalidRequest);
    assert!(
        bad_fields(status).iter().any(|f| f == field),
        "expected a violation of {field}: {status:?}"
    );
}

pub(crate) async fn put_coupon(
    client: &mut Client,
    code: &str,
    kind: CouponKind,
    value: i64,
    limit: i64,
) {
    client
        .put_coupon(PutCouponRequest {
            code: code.into(),
            kind: kind.into(),
            value,
            usage_limit: limit,
        })
        .await
        .expect("put coupon");
}

pub(crate) async fn coupon(client: &mut Client, code: &str) -> GetCouponResponse {
    client
        .get_coupon(GetCouponRequest { code: code.into() })
        .await
        .expect("get coupon")
        .into_inner()
}

pub(crate) async fn quote(
    client: &mut Client,
    lines: Vec<OrderLine>,
    coupon_code: &str,
    points: i64,
) -> Result<Pricing, Status> {
    client
        .quote_order(QuoteOrderRequest {
            lines,
            coupon_code: coupon_code.into(),
            points_to_redeem: points,
        })
        .await
        .map(|r| r.into_inner().pricing.expect("pricing set"))
}

/// A plain order request: 2 x 150,000 for `customer`, no coupon or points.
pub(crate) fn order_request(saga_id: &str, customer_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        saga_id: saga_id.into(),
        customer_id: customer_id.into(),
        lines: vec![line("SKU-A", 2, 150_000)],
        ..CreateOrderRequest::default()
    }
}

pub(crate) async fn create(
    client: &mut Client,
    request: CreateOrderRequest,
) -> Result<Order, Status> {
    client
        .create_order(request)
        .await
        .map(|r| r.into_inner().order.expect("order set"))
}

pub(crate) async fn cancel(
    client: &mut Client,
    saga_id: &str,
    reason: &str,
) -> Result<Option<Order>, Status> {
    client
        .cancel_order(CancelOrderRequest {
            saga_id: saga_id.into(),
            order_id: String::new(),
            reason: reason.into(),
            only_if_unpaid: false,
        })
        .await
        .map(|r| r.into_inner().order)
}

pub(crate) async fn mark_paid(
    client: &mut Client,
    saga_id: &str,
    order_id: &str,
    payment_ref: &str,
) -> Result<Order, Status> {
    client
        .mark_paid(MarkPaidRequest {
            saga_id: saga_id.into(),
            order_id: order_id.into(),
            payment_ref: payment_ref.into(),
        })
        .await
        .map(|r| r.into_inner().order.expect("order set"))
}

pub(crate) async fn mark_shipped(client: &mut Client, order_id: &str) -> Result<Order, Status> {
    client
        .mark_shipped(MarkShippedRequest {
            order_id: order_id.into(),
        })
        .await
        .map(|r| r.into_inner().order.expect("order set"))
}

pub(crate) async fn get_order(client: &mut Client, order_id: &str) -> Result<Order, Status> {
    client
        .get_order(GetOrderRequest {
            order_id: order_id.into(),
        })
        .await
        .map(|r| r.into_inner().order.expect("order set"))
}

pub(crate) async fn list(
    client: &mut Client,
    customer_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<ListOrdersResponse, Status> {
    client
        .list_orders(ListOrdersRequest {
            customer_id: customer_id.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// A US shop: 8.25% tax, $5.99 shipping below $50, 1 point = 1¢, one point
/// earned per $1 paid; amounts in cents.
pub(crate) fn usd_rules() -> PricingRules {
    PricingRules {
        tax_rate_bp: 825,
        shipping_price: 599,
        free_shipping_from: 5_000,
        point_value: 1,
        earn_amount_per_point: 100,
        currency: "USD".parse().expect("ISO 4217"),
    }
}
