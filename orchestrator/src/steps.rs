//! The three saga definitions: their steps, what each step's action and
//! compensation send to which participant, and what a step's answer adds to
//! the saga's outputs.
//!
//! Participant RPCs are keyed by the *checkout* saga's id (the saga that
//! created the order): the confirm and cancel sagas act on the order's
//! reservation, deduction and order by that id, so the participant barrier
//! makes a cancel saga's release the same operation as the checkout saga's
//! compensation, and an order earns points at most once.

use microshop_proto::{inventory::v1 as inv, loyalty::v1 as loy, order::v1 as ord};
use prost::Message;

use crate::{
    model::{CartLine, PricedLine, SagaInput, SagaOutputs, SagaRecord, SagaType},
    participants::{CallError, Participants, Peer},
};

/// A step of a saga definition.
#[derive(Clone, Copy, Debug)]
pub struct StepDef {
    /// Name, shown in GetSaga.
    pub name: &'static str,
    /// What it does, in plain words.
    pub description: &'static str,
    /// The compensating operation, if the step has one.
    pub compensation: Option<&'static str>,
    /// Whether the action changes anything (reads need no compensation).
    pub effectful: bool,
    /// The participants the action calls.
    pub peers: &'static [Peer],
    /// The participant the compensation calls.
    pub compensation_peer: Option<Peer>,
    /// A read-only check whose answer, lost before it was recorded, is not
    /// asked again when the saga resumes: a later step repeats the check
    /// (create-order repeats the quote's).
    pub skip_when_resumed: bool,
}

const PLACE: &[StepDef] = &[
    StepDef {
        name: "quote",
        description: "price the cart from the catalog and check the coupon and points redemption",
        compensation: None,
        effectful: false,
        peers: &[Peer::Inventory, Peer::Order],
        compensation_peer: None,
        skip_when_resumed: true,
    },
    StepDef {
        name: "reserve-stock",
        description: "reserve every cart line on inventory-svc",
        compensation: Some("release-stock"),
        effectful: true,
        peers: &[Peer::Inventory],
        compensation_peer: Some(Peer::Inventory),
        skip_when_resumed: false,
    },
    StepDef {
        name: "deduct-points",
        description: "deduct the redeemed points on loyalty-svc (skipped when none are redeemed)",
        compensation: Some("refund-points"),
        effectful: true,
        peers: &[Peer::Loyalty],
        compensation_peer: Some(Peer::Loyalty),
        skip_when_resumed: false,
    },
    StepDef {
        name: "create-order",
        description: "create the order and consume the coupon use on order-svc",
        compensation: Some("cancel-order"),
        effectful: true,
        peers: &[Peer::Order],
        compensation_peer: Some(Peer::Order),
        skip_when_resumed: false,
    },
];

const CONFIRM: &[StepDef] = &[
    StepDef {
        name: "load-order",
        description: "read the order from order-svc",
        compensation: None,
        effectful: false,
        peers: &[Peer::Order],
        compensation_peer: None,
        skip_when_resumed: false,
    },
    StepDef {
        name: "mark-paid",
        description: "mark the order paid on order-svc",
        compensation: None,
        effectful: true,
        peers: &[Peer::Order],
        compensation_peer: None,
        skip_when_resumed: false,
    },
    StepDef {
        name: "commit-stock",
        description: "move the order's reserved stock to sold on inventory-svc",
        compensation: None,
        effectful: true,
        peers: &[Peer::Inventory],
        compensation_peer: None,
        skip_when_resumed: false,
    },
    StepDef {
        name: "earn-points",
        description: "credit loyalty points for the amount paid on loyalty-svc",
        compensation: None,
        effectful: true,
        peers: &[Peer::Loyalty],
        compensation_peer: None,
        skip_when_resumed: false,
    },
];

const CANCEL: &[StepDef] = &[
    StepDef {
        name: "load-order",
        description: "read the order from order-svc",
        compensation: None,
        effectful: false,
        peers: &[Peer::Order],
        compensation_peer: None,
        skip_when_resumed: false,
    },
    StepDef {
        name: "cancel-order",
        description: "cancel the order and give its coupon use back on order-svc",
        compensation: None,
        effectful: true,
        peers: &[Peer::Order],
        compensation_peer: None,
        skip_when_resumed: false,
    },
    StepDef {
        name: "release-stock",
        description: "release the order's reserved stock, or restock it if sold, on inventory-svc",
        compensation: None,
        effectful: true,
        peers: &[Peer::Inventory],
        compensation_peer: None,
        skip_when_resumed: false,
    },
    StepDef {
        name: "refund-points",
        description: "refund the points the order redeemed on loyalty-svc",
        compensation: None,
        effectful: true,
        peers: &[Peer::Loyalty],
        compensation_peer: None,
        skip_when_resumed: false,
    },
];

/// The steps of a saga type.
pub fn definition(saga_type: SagaType) -> &'static [StepDef] {
    match saga_type {
        SagaType::PlaceOrder => PLACE,
        SagaType::ConfirmPayment => CONFIRM,
        SagaType::CancelOrder => CANCEL,
    }
}

/// What a step's answer contributes to the saga's outputs.
#[derive(Debug)]
pub enum StepOutput {
    /// Nothing to keep.
    Nothing,
    /// Lines priced by the reservation.
    Reserved(Vec<PricedLine>),
    /// An order as returned by order-svc.
    Order(Box<ord::Order>),
}

/// Whether the step at `index` is not needed for this saga.
pub fn skipped(record: &SagaRecord, index: usize) -> bool {
    match (&record.input, definition(record.saga_type)[index].name) {
        (
            SagaInput::Place {
                points_to_redeem, ..
            },
            "deduct-points",
        ) => *points_to_redeem == 0,
        _ => false,
    }
}

/// Folds a step's output into the saga's outputs.
pub fn apply(outputs: &mut SagaOutputs, output: StepOutput) {
    match output {
        StepOutput::Nothing => {}
        StepOutput::Reserved(lines) => outputs.lines = lines,
        StepOutput::Order(order) => {
            outputs.order_id = Some(order.order_id.clone());
            outputs.order_saga_id = Some(order.saga_id.clone());
            outputs.order_customer_id = Some(order.customer_id.clone());
            outputs.order_total = order.total_price;
            outputs.order_snapshot = Some(hex_encode(&order.encode_to_vec()));
        }
    }
}

/// The last order snapshot a step returned.
pub fn order_snapshot(outputs: &SagaOutputs) -> Option<ord::Order> {
    let hex = outputs.order_snapshot.as_deref()?;
    ord::Order::decode(hex_decode(hex)?.as_slice()).ok()
}

/// The earn rate the saga's order recorded (its `pricing_rules`), so its
/// payment earns by the rules it was priced with; 0 (loyalty-svc's own
/// rate) when the snapshot predates recorded rules.
fn earn_rate_of(outputs: &SagaOutputs) -> i64 {
    order_snapshot(outputs)
        .and_then(|order| order.pricing_rules)
        .map_or(0, |rules| rules.earn_amount_per_point)
}

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The checkout saga id the participants know this saga's order by.
fn order_saga_id(record: &SagaRecord) -> String {
    match record.saga_type {
        SagaType::PlaceOrder => record.saga_id.clone(),
        SagaType::ConfirmPayment | SagaType::CancelOrder => {
            record.outputs.order_saga_id.clone().unwrap_or_default()
        }
    }
}

fn order_id_of(record: &SagaRecord) -> String {
    match &record.input {
        SagaInput::Confirm { order_id, .. } | SagaInput::Cancel { order_id, .. } => {
            order_id.clone()
        }
        SagaInput::Place { .. } => record.outputs.order_id.clone().unwrap_or_default(),
    }
}

/// Runs the action of step `name` once.
pub async fn act(
    p: &Participants,
    record: &SagaRecord,
    name: &str,
) -> Result<StepOutput, CallError> {
    let saga_id = order_saga_id(record);
    match (&record.input, name) {
        (
            SagaInput::Place {
                items,
                coupon_code,
                points_to_redeem,
                ..
            },
            "quote",
        ) => quote(p, items, coupon_code, *points_to_redeem).await,
        (SagaInput::Place { items, .. }, "reserve-stock") => {
            let items = items
                .iter()
                .map(|l| inv::StockItem {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                })
                .collect();
            let resp = p
                .inventory
                .clone()
                .reserve_stock(p.request(inv::ReserveStockRequest { saga_id, items }))
                .await?
                .into_inner();
            Ok(StepOutput::Reserved(
                resp.lines
                    .into_iter()
                    .map(|l| {
                        let inv::ReservedLine {
                            sku,
                            name,
                            quantity,
                            unit_price,
                        } = l;
                        PricedLine {
                            sku,
                            name,
                            quantity,
                            unit_price,
                        }
                    })
                    .collect(),
            ))
        }
        (
            SagaInput::Place {
                customer_id,
                points_to_redeem,
                ..
            },
            "deduct-points",
        ) => {
            p.loyalty
                .clone()
                .deduct_points(p.request(loy::DeductPointsRequest {
                    saga_id,
                    customer_id: customer_id.clone(),
                    points: *points_to_redeem,
                }))
                .await?;
            Ok(StepOutput::Nothing)
        }
        (
            SagaInput::Place {
                customer_id,
                coupon_code,
                points_to_redeem,
                shipping,
                ..
            },
            "create-order",
        ) => {
            let resp = p
                .order
                .clone()
                .create_order(p.request(ord::CreateOrderRequest {
                    saga_id,
                    customer_id: customer_id.clone(),
                    lines: order_lines(&record.outputs.lines),
                    coupon_code: coupon_code.clone(),
                    redeemed_points: *points_to_redeem,
                    shipping: Some(ord::Shipping {
                        name: shipping.name.clone(),
                        address: shipping.address.clone(),
                        phone: shipping.phone.clone(),
                    }),
                }))
                .await?
                .into_inner();
            Ok(order_output(resp.order))
        }
        (_, "load-order") => {
            let resp = p
                .order
                .clone()
                .get_order(p.request(ord::GetOrderRequest {
                    order_id: order_id_of(record),
                }))
                .await?
                .into_inner();
            Ok(order_output(resp.order))
        }
        (SagaInput::Confirm { payment_ref, .. }, "mark-paid") => {
            let resp = p
                .order
                .clone()
                .mark_paid(p.request(ord::MarkPaidRequest {
                    saga_id,
                    order_id: order_id_of(record),
                    payment_ref: payment_ref.clone(),
                }))
                .await?
                .into_inner();
            Ok(order_output(resp.order))
        }
        (_, "commit-stock") => {
            p.inventory
                .clone()
                .commit_stock(p.request(inv::CommitStockRequest { saga_id }))
                .await?;
            Ok(StepOutput::Nothing)
        }
        (_, "earn-points") => {
            p.loyalty
                .clone()
                .earn_points(p.request(loy::EarnPointsRequest {
                    saga_id,
                    customer_id: record.customer_id().to_owned(),
                    amount_paid: record.outputs.order_total,
                    earn_amount_per_point: earn_rate_of(&record.outputs),
                }))
                .await?;
            Ok(StepOutput::Nothing)
        }
        (
            SagaInput::Cancel {
                reason,
                only_if_unpaid,
                ..
            },
            "cancel-order",
        ) => cancel_order(p, saga_id, order_id_of(record), reason, *only_if_unpaid).await,
        (_, "release-stock") => compensate(p, record, "release-stock")
            .await
            .map(|()| StepOutput::Nothing),
        (_, "refund-points") => compensate(p, record, "refund-points")
            .await
            .map(|()| StepOutput::Nothing),
        (_, other) => Err(CallError::Rejected(tonic::Status::internal(format!(
            "saga {} has no step {other}",
            record.saga_id
        )))),
    }
}

/// Runs compensating operation `name` once (it needs only the saga id).
pub async fn compensate(
    p: &Participants,
    record: &SagaRecord,
    name: &str,
) -> Result<(), CallError> {
    let saga_id = order_saga_id(record);
    match name {
        "release-stock" => {
            p.inventory
                .clone()
                .release_stock(p.request(inv::ReleaseStockRequest { saga_id }))
                .await?;
        }
        "refund-points" => {
            p.loyalty
                .clone()
                .refund_points(p.request(loy::RefundPointsRequest { saga_id }))
                .await?;
        }
        "cancel-order" => {
            p.order
                .clone()
                .cancel_order(p.request(ord::CancelOrderRequest {
                    saga_id,
                    order_id: String::new(),
                    reason: "checkout failed".into(),
                    only_if_unpaid: false,
                }))
                .await?;
        }
        other => {
            return Err(CallError::Rejected(tonic::Status::internal(format!(
                "no compensation {other}"
            ))));
        }
    }
    Ok(())
}

async fn cancel_order(
    p: &Participants,
    saga_id: String,
    order_id: String,
    reason: &str,
    only_if_unpaid: bool,
) -> Result<StepOutput, CallError> {
    let resp = p
        .order
        .clone()
        .cancel_order(p.request(ord::CancelOrderRequest {
            saga_id,
            order_id,
            reason: reason.to_owned(),
            only_if_unpaid,
        }))
        .await?
        .into_inner();
    Ok(order_output(resp.order))
}

async fn quote(
    p: &Participants,
    items: &[CartLine],
    coupon_code: &str,
    points_to_redeem: i64,
) -> Result<StepOutput, CallError> {
    let mut skus: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        if !skus.contains(&item.sku) {
            skus.push(item.sku.clone());
        }
    }
    let products = p
        .inventory
        .clone()
        .get_products(p.request(inv::GetProductsRequest { skus }))
        .await?
        .into_inner()
        .products;
    let lines = items
        .iter()
        .filter_map(|item| {
            let product = products.iter().find(|pr| pr.sku == item.sku)?;
            Some(ord::OrderLine {
                sku: item.sku.clone(),
                name: product.name.clone(),
                quantity: item.quantity,
                unit_price: product.unit_price,
            })
        })
        .collect();
    p.order
        .clone()
        .quote_order(p.request(ord::QuoteOrderRequest {
            lines,
            coupon_code: coupon_code.to_owned(),
            points_to_redeem,
        }))
        .await?;
    Ok(StepOutput::Nothing)
}

fn order_lines(lines: &[PricedLine]) -> Vec<ord::OrderLine> {
    lines
        .iter()
        .map(|l| ord::OrderLine {
            sku: l.sku.clone(),
            name: l.name.clone(),
            quantity: l.quantity,
            unit_price: l.unit_price,
        })
        .collect()
}

fn order_output(order: Option<ord::Order>) -> StepOutput {
    order.map_or(StepOutput::Nothing, |o| StepOutput::Order(Box::new(o)))
}
