//! Mirrors of the stored types (orchestrator::model::SagaRecord,
//! inventory/order domain types), serialized the same way, so JSON sizes and
//! encoding CPU match what the services store; apart because every engine
//! writes them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum SagaState {
    Running,
    Completed,
}

impl SagaState {
    pub(crate) fn index(self) -> u8 {
        match self {
            Self::Running => 1,
            Self::Completed => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) enum StepStatus {
    #[default]
    Pending,
    Running,
    Succeeded,
    Skipped,
}

impl StepStatus {
    pub(crate) fn code(self) -> u32 {
        match self {
            Self::Pending => 0,
            Self::Running => 1,
            Self::Succeeded => 2,
            Self::Skipped => 4,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct RunRecord {
    pub(crate) name: String,
    pub(crate) status: StepStatus,
    pub(crate) attempts: u32,
    pub(crate) last_error: String,
    pub(crate) started_at_ms: Option<i64>,
    pub(crate) finished_at_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct StepRecord {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) action: RunRecord,
    pub(crate) compensation: Option<RunRecord>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Transition {
    pub(crate) state: SagaState,
    pub(crate) at_ms: i64,
    pub(crate) note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CartLine {
    pub(crate) sku: String,
    pub(crate) quantity: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Address {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) phone: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct PricedLine {
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) quantity: i64,
    pub(crate) unit_price: i64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) enum SagaInput {
    Place {
        customer_id: String,
        items: Vec<CartLine>,
        coupon_code: String,
        points_to_redeem: i64,
        shipping: Address,
    },
}

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct SagaOutputs {
    pub(crate) lines: Vec<PricedLine>,
    pub(crate) order_id: Option<String>,
    pub(crate) order_saga_id: Option<String>,
    pub(crate) order_customer_id: Option<String>,
    pub(crate) order_total: i64,
    pub(crate) order_snapshot: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct SagaRecord {
    pub(crate) saga_id: String,
    pub(crate) saga_type: &'static str,
    pub(crate) state: SagaState,
    pub(crate) idempotency_key: String,
    pub(crate) input: SagaInput,
    pub(crate) steps: Vec<StepRecord>,
    pub(crate) outputs: SagaOutputs,
    pub(crate) history: Vec<Transition>,
    pub(crate) error: Option<String>,
    pub(crate) failure_reason: String,
    pub(crate) failed_from: Option<SagaState>,
    pub(crate) created_at_ms: i64,
    pub(crate) updated_at_ms: i64,
    pub(crate) seq: u64,
}

pub(crate) const STEPS: [(&str, &str); 4] = [
    (
        "quote",
        "price the cart from the catalog and check the coupon and points redemption",
    ),
    ("reserve-stock", "reserve every cart line on inventory-svc"),
    (
        "deduct-points",
        "deduct the redeemed points on loyalty-svc (skipped when none are redeemed)",
    ),
    (
        "create-order",
        "create the order and consume the coupon use on order-svc",
    ),
];

/// The compact saga record: what recovery and GetSaga need, with ids as
/// bytes, steps as status codes and no order snapshot (order-svc keeps it).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CompactSaga {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) saga_id: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub(crate) saga_type: u32,
    #[prost(uint32, tag = "3")]
    pub(crate) state: u32,
    #[prost(string, tag = "4")]
    pub(crate) idempotency_key: String,
    #[prost(string, tag = "5")]
    pub(crate) customer_id: String,
    #[prost(message, repeated, tag = "6")]
    pub(crate) lines: Vec<CompactLine>,
    #[prost(string, tag = "7")]
    pub(crate) coupon_code: String,
    #[prost(int64, tag = "8")]
    pub(crate) points_to_redeem: i64,
    #[prost(string, tag = "9")]
    pub(crate) ship_name: String,
    #[prost(string, tag = "10")]
    pub(crate) ship_address: String,
    #[prost(string, tag = "11")]
    pub(crate) ship_phone: String,
    /// One status code per step.
    #[prost(uint32, repeated, tag = "12")]
    pub(crate) step_status: Vec<u32>,
    #[prost(uint32, repeated, tag = "13")]
    pub(crate) step_attempts: Vec<u32>,
    /// Started and finished time of each step, as offsets from creation.
    #[prost(int64, repeated, tag = "14")]
    pub(crate) step_times: Vec<i64>,
    #[prost(int64, tag = "15")]
    pub(crate) created_at_ms: i64,
    #[prost(int64, tag = "16")]
    pub(crate) updated_at_ms: i64,
    #[prost(uint64, tag = "17")]
    pub(crate) seq: u64,
    #[prost(bytes = "vec", tag = "18")]
    pub(crate) order_id: Vec<u8>,
    #[prost(int64, tag = "19")]
    pub(crate) order_total: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CompactLine {
    #[prost(string, tag = "1")]
    pub(crate) sku: String,
    #[prost(int64, tag = "2")]
    pub(crate) quantity: i64,
    #[prost(int64, tag = "3")]
    pub(crate) unit_price: i64,
}

/// One step's result (and the next step's intent), appended under
/// `(saga_id, n)`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SagaDelta {
    #[prost(uint32, tag = "1")]
    pub(crate) step: u32,
    #[prost(uint32, tag = "2")]
    pub(crate) status: u32,
    #[prost(uint32, tag = "3")]
    pub(crate) next_step: u32,
    #[prost(int64, tag = "4")]
    pub(crate) at_ms: i64,
    #[prost(uint32, tag = "5")]
    pub(crate) state: u32,
    #[prost(message, repeated, tag = "6")]
    pub(crate) lines: Vec<CompactLine>,
    #[prost(bytes = "vec", tag = "7")]
    pub(crate) order_id: Vec<u8>,
    #[prost(int64, tag = "8")]
    pub(crate) order_total: i64,
}

/// The order as the saga's snapshot holds it (hex of its proto encoding).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct OrderSnapshot {
    #[prost(string, tag = "1")]
    pub(crate) order_id: String,
    #[prost(string, tag = "2")]
    pub(crate) customer_id: String,
    #[prost(message, repeated, tag = "3")]
    pub(crate) lines: Vec<CompactLine>,
    #[prost(string, repeated, tag = "4")]
    pub(crate) line_names: Vec<String>,
    #[prost(int64, tag = "5")]
    pub(crate) items_price: i64,
    #[prost(int64, tag = "6")]
    pub(crate) tax_price: i64,
    #[prost(int64, tag = "7")]
    pub(crate) shipping_price: i64,
    #[prost(int64, tag = "8")]
    pub(crate) total_price: i64,
    #[prost(string, tag = "9")]
    pub(crate) status: String,
    #[prost(int64, tag = "10")]
    pub(crate) created_at: i64,
    #[prost(string, tag = "11")]
    pub(crate) saga_id: String,
    #[prost(string, tag = "12")]
    pub(crate) ship_name: String,
    #[prost(string, tag = "13")]
    pub(crate) ship_address: String,
    #[prost(string, tag = "14")]
    pub(crate) ship_phone: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Product {
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) unit_price: i64,
    pub(crate) available: i64,
    pub(crate) reserved: i64,
    sold: i64,
    restocked: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ReservedLine {
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) quantity: i64,
    pub(crate) unit_price: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ReservationState {
    Reserved,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Reservation {
    pub(crate) lines: Vec<ReservedLine>,
    pub(crate) state: ReservationState,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum ReserveOutcome {
    Reserved(Vec<ReservedLine>),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum CouponKind {
    Percentage,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Coupon {
    code: String,
    kind: CouponKind,
    value: i64,
    usage_limit: i64,
    times_used: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StatusChange {
    status: &'static str,
    at_ms: i64,
    note: String,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Order {
    pub(crate) order_id: String,
    pub(crate) customer_id: String,
    lines: Vec<PricedLine>,
    pub(crate) items_price: i64,
    pub(crate) tax_price: i64,
    pub(crate) shipping_price: i64,
    discount_price: i64,
    coupon_code: Option<String>,
    redeemed_points: i64,
    points_discount_price: i64,
    pub(crate) total_price: i64,
    status: &'static str,
    status_history: Vec<StatusChange>,
    created_at_ms: i64,
    paid_at_ms: Option<i64>,
    saga_id: String,
    pub(crate) shipping: Address,
    payment_ref: String,
    cancelled_at_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum CreateRecord {
    Created { order_id: String },
}

/// What CreateOrder receives.
#[derive(Clone, Debug)]
pub(crate) struct NewOrder {
    pub(crate) saga_id: String,
    pub(crate) customer_id: String,
    pub(crate) lines: Vec<PricedLine>,
    pub(crate) coupon_code: String,
    pub(crate) shipping: Address,
}

pub(crate) const COUPON: &str = "BENCH10";
pub(crate) const PRODUCTS_N: usize = 1_000;

pub(crate) fn sku_name(i: usize) -> String {
    format!("BENCH-{i:06}")
}

pub(crate) fn seed_products() -> Vec<Product> {
    (0..PRODUCTS_N)
        .map(|i| Product {
            sku: sku_name(i),
            name: format!("Bench product {i}"),
            unit_price: 150_000,
            available: 1_000_000_000_000,
            reserved: 0,
            sold: 0,
            restocked: 0,
        })
        .collect()
}

pub(crate) fn seed_coupon() -> Coupon {
    Coupon {
        code: COUPON.into(),
        kind: CouponKind::Percentage,
        value: 10,
        usage_limit: 1_000_000_000,
        times_used: 0,
    }
}

/// Prices the order as order-svc's lifecycle does (roughly: the CPU is in
/// the encoding, not in the arithmetic).
pub(crate) fn build_order(new: NewOrder, coupon: Option<&Coupon>, at_ms: i64) -> Order {
    let items_price: i64 = new.lines.iter().map(|l| l.quantity * l.unit_price).sum();
    let discount_price = coupon.map_or(0, |c| items_price * c.value / 100);
    let tax_price = (items_price - discount_price) / 10;
    let shipping_price = 30_000;
    Order {
        order_id: uuid::Uuid::now_v7().to_string(),
        customer_id: new.customer_id,
        lines: new.lines,
        items_price,
        tax_price,
        shipping_price,
        discount_price: 0,
        coupon_code: if new.coupon_code.is_empty() {
            None
        } else {
            Some(new.coupon_code)
        },
        redeemed_points: 0,
        points_discount_price: 0,
        total_price: items_price + tax_price + shipping_price,
        status: "PendingPayment",
        status_history: vec![StatusChange {
            status: "PendingPayment",
            at_ms,
            note: "order created by checkout".into(),
        }],
        created_at_ms: at_ms,
        paid_at_ms: None,
        saga_id: new.saga_id,
        shipping: new.shipping,
        payment_ref: String::new(),
        cancelled_at_ms: None,
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
