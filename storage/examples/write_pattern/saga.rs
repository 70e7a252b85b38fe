//! One checkout's writes in the saga's order, and the `Mesh` of four stores
//! they go to: the load every engine is measured under, kept apart from the
//! engines so each implements the same trait.

use std::{
    fmt::Write as _,
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use crate::{
    Res,
    options::Enc,
    records::{
        Address, CartLine, CompactLine, CompactSaga, NewOrder, OrderSnapshot, PRODUCTS_N,
        PricedLine, RunRecord, STEPS, SagaDelta, SagaInput, SagaOutputs, SagaRecord, SagaState,
        StepRecord, StepStatus, Transition, build_order, now_ms, sku_name,
    },
};

/// A begin of the saga log.
#[derive(Clone, Debug)]
pub(crate) struct BeginRec {
    pub(crate) saga_id: String,
    pub(crate) key: String,
    pub(crate) state: u8,
    /// The stored record: a state byte, then the encoded record.
    pub(crate) bytes: Vec<u8>,
}

/// A save of the saga log.
#[derive(Clone, Debug)]
pub(crate) struct SaveRec {
    pub(crate) saga_id: String,
    pub(crate) seq: u64,
    /// The state the indexes move from. redb-now reads it from the old
    /// record, as the orchestrator does; the other engines take the
    /// caller's word (the driver knows it).
    pub(crate) old_state: u8,
    pub(crate) new_state: u8,
    pub(crate) body: SaveBody,
}

#[derive(Clone, Debug)]
pub(crate) enum SaveBody {
    /// The whole record, replacing the stored one.
    Full(Vec<u8>),
    /// Delta `n` of the saga, added beside the others.
    Delta(u8, Vec<u8>),
}

/// The four stores' operations, each durable when its future completes.
pub(crate) trait Mesh: Send + Sync + 'static {
    fn seed(&self) -> impl Future<Output = Res<()>> + Send;
    fn begin(&self, b: BeginRec) -> impl Future<Output = Res<u64>> + Send;
    fn save(&self, s: SaveRec) -> impl Future<Output = Res<()>> + Send;
    fn reserve(
        &self,
        saga_id: String,
        sku: String,
        qty: i64,
    ) -> impl Future<Output = Res<()>> + Send;
    fn create_order(&self, order: NewOrder) -> impl Future<Output = Res<()>> + Send;
    /// fsyncs issued so far, where the harness can count them.
    fn syncs(&self) -> Option<u64>;
    /// Flushes what sits in memory only (fjall memtables) to its files.
    fn settle(&self) -> Res<()> {
        Ok(())
    }
    /// Reads one saga log record (point-read bonus).
    fn get_saga(&self, _saga_id: &str) -> Res<Option<usize>> {
        Ok(None)
    }
    /// Writes whole sagas to the log in one transaction (point-read bonus).
    fn fill(&self, _sagas: Vec<(BeginRec, SaveRec)>) -> impl Future<Output = Res<()>> + Send {
        async { Err("no bulk fill".into()) }
    }
    /// Deletes sagas of the log (retention bonus).
    fn purge(&self, _sagas: Vec<(String, String, u64)>) -> impl Future<Output = Res<()>> + Send {
        async { Ok(()) }
    }
}

/// Makes the ids and inputs of sagas as `microshop bench` does.
pub(crate) struct Gen {
    prefix: String,
    pub(crate) n: AtomicU64,
}

impl Gen {
    pub(crate) fn new() -> Self {
        Self {
            prefix: format!("bench-{}-spread", now_ms()),
            n: AtomicU64::new(0),
        }
    }
}

/// What one saga wrote to its log, for the record-size column.
#[derive(Default, Clone, Copy)]
pub(crate) struct SagaBytes {
    pub(crate) log: usize,
}

fn stored(state: SagaState, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(body.len() + 1);
    v.push(state.index());
    v.extend_from_slice(body);
    v
}

fn compact_of(r: &SagaRecord, order_id: &[u8]) -> CompactSaga {
    let SagaInput::Place {
        customer_id,
        items,
        coupon_code,
        points_to_redeem,
        shipping,
    } = &r.input;
    CompactSaga {
        saga_id: uuid_bytes(&r.saga_id),
        saga_type: 1,
        state: u32::from(r.state.index()),
        idempotency_key: r.idempotency_key.clone(),
        customer_id: customer_id.clone(),
        lines: items
            .iter()
            .map(|l| CompactLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: r
                    .outputs
                    .lines
                    .iter()
                    .find(|p| p.sku == l.sku)
                    .map_or(0, |p| p.unit_price),
            })
            .collect(),
        coupon_code: coupon_code.clone(),
        points_to_redeem: *points_to_redeem,
        ship_name: shipping.name.clone(),
        ship_address: shipping.address.clone(),
        ship_phone: shipping.phone.clone(),
        step_status: r.steps.iter().map(|s| s.action.status.code()).collect(),
        step_attempts: r.steps.iter().map(|s| s.action.attempts).collect(),
        step_times: r
            .steps
            .iter()
            .flat_map(|s| {
                [
                    s.action.started_at_ms.map_or(0, |t| t - r.created_at_ms),
                    s.action.finished_at_ms.map_or(0, |t| t - r.created_at_ms),
                ]
            })
            .collect(),
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
        seq: r.seq,
        order_id: order_id.to_vec(),
        order_total: r.outputs.order_total,
    }
}

fn uuid_bytes(s: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(s).map_or_else(|_| s.as_bytes().to_vec(), |u| u.as_bytes().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Encodes save `n` (1..=3) of `r` in `enc`.
fn save_body(enc: Enc, r: &SagaRecord, n: u8, order_id: &[u8]) -> SaveBody {
    match enc {
        Enc::Json => SaveBody::Full(stored(r.state, &serde_json::to_vec(r).unwrap_or_default())),
        Enc::Compact => SaveBody::Full(stored(
            r.state,
            &prost::Message::encode_to_vec(&compact_of(r, order_id)),
        )),
        Enc::Delta => {
            let step = usize::from(n - 1);
            let d = SagaDelta {
                step: u32::from(n - 1),
                status: r.steps[step].action.status.code(),
                next_step: u32::from(n),
                at_ms: r.updated_at_ms,
                state: u32::from(r.state.index()),
                lines: if n == 1 {
                    r.outputs
                        .lines
                        .iter()
                        .map(|l| CompactLine {
                            sku: l.sku.clone(),
                            quantity: l.quantity,
                            unit_price: l.unit_price,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                order_id: order_id.to_vec(),
                order_total: r.outputs.order_total,
            };
            SaveBody::Delta(n, prost::Message::encode_to_vec(&d))
        }
    }
}

fn body_len(b: &SaveBody) -> usize {
    match b {
        SaveBody::Full(v) | SaveBody::Delta(_, v) => v.len(),
    }
}

/// Times `fut` into `lat` (µs) when given.
async fn timed<T>(lat: &mut Option<&mut Vec<u32>>, fut: impl Future<Output = Res<T>>) -> Res<T> {
    let t = Instant::now();
    let out = fut.await?;
    if let Some(l) = lat.as_deref_mut() {
        l.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    Ok(out)
}

/// Runs one checkout's writes, in the saga's order.
pub(crate) async fn run_saga<M: Mesh>(
    m: &M,
    enc: Enc,
    g: &Gen,
    caller: usize,
    mut lat: Option<&mut Vec<u32>>,
) -> Res<(SagaBytes, String, String, u64)> {
    let n = g.n.fetch_add(1, Ordering::Relaxed);
    let pick = usize::try_from(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32).unwrap_or(0);
    let sku = sku_name(pick % PRODUCTS_N);
    let customer_id = format!("bench-customer-{}", caller % 1000);
    let shipping = Address {
        name: "Bench Customer".into(),
        address: "1 Loopback Road".into(),
        phone: "0900000000".into(),
    };
    let now = now_ms();
    let mut r = SagaRecord {
        saga_id: uuid::Uuid::now_v7().to_string(),
        saga_type: "PlaceOrder",
        state: SagaState::Running,
        idempotency_key: format!("{}-{n}", g.prefix),
        input: SagaInput::Place {
            customer_id: customer_id.clone(),
            items: vec![CartLine {
                sku: sku.clone(),
                quantity: 1,
            }],
            coupon_code: String::new(),
            points_to_redeem: 0,
            shipping: shipping.clone(),
        },
        steps: STEPS
            .iter()
            .map(|(name, description)| StepRecord {
                name: (*name).into(),
                description: (*description).into(),
                action: RunRecord {
                    name: (*name).into(),
                    ..RunRecord::default()
                },
                compensation: None,
            })
            .collect(),
        outputs: SagaOutputs::default(),
        history: vec![Transition {
            state: SagaState::Running,
            at_ms: now,
            note: "saga started".into(),
        }],
        error: None,
        failure_reason: String::new(),
        failed_from: None,
        created_at_ms: now,
        updated_at_ms: now,
        seq: 0,
    };
    // The first step's intent goes in with the creation.
    r.steps[0].action.status = StepStatus::Running;
    r.steps[0].action.attempts = 1;
    r.steps[0].action.started_at_ms = Some(now);
    let mut bytes = SagaBytes::default();
    let body = match enc {
        Enc::Json => serde_json::to_vec(&r)?,
        Enc::Compact | Enc::Delta => prost::Message::encode_to_vec(&compact_of(&r, &[])),
    };
    let begin = BeginRec {
        saga_id: r.saga_id.clone(),
        key: r.idempotency_key.clone(),
        state: r.state.index(),
        bytes: stored(r.state, &body),
    };
    bytes.log += begin.bytes.len();
    let seq = timed(&mut lat, m.begin(begin)).await?;
    r.seq = seq;

    // 1: the quote's result and the reserve's intent.
    let t = now_ms();
    r.outputs.lines = vec![PricedLine {
        sku: sku.clone(),
        name: format!("Bench product {}", pick % PRODUCTS_N),
        quantity: 1,
        unit_price: 150_000,
    }];
    r.steps[0].action.status = StepStatus::Succeeded;
    r.steps[0].action.finished_at_ms = Some(t);
    r.steps[1].action.status = StepStatus::Running;
    r.steps[1].action.attempts = 1;
    r.steps[1].action.started_at_ms = Some(t);
    r.updated_at_ms = t;
    let running = SagaState::Running.index();
    let save = |r: &SagaRecord, n: u8, new_state: u8, order_id: &[u8]| SaveRec {
        saga_id: r.saga_id.clone(),
        seq,
        old_state: running,
        new_state,
        body: save_body(enc, r, n, order_id),
    };
    let s = save(&r, 1, running, &[]);
    bytes.log += body_len(&s.body);
    timed(&mut lat, m.save(s)).await?;

    timed(&mut lat, m.reserve(r.saga_id.clone(), sku.clone(), 1)).await?;

    // 2: the reserve's result, deduct-points skipped, the create's intent.
    let t = now_ms();
    r.steps[1].action.status = StepStatus::Succeeded;
    r.steps[1].action.finished_at_ms = Some(t);
    r.steps[2].action.status = StepStatus::Skipped;
    r.steps[3].action.status = StepStatus::Running;
    r.steps[3].action.attempts = 1;
    r.steps[3].action.started_at_ms = Some(t);
    r.updated_at_ms = t;
    let s = save(&r, 2, running, &[]);
    bytes.log += body_len(&s.body);
    timed(&mut lat, m.save(s)).await?;

    let new = NewOrder {
        saga_id: r.saga_id.clone(),
        customer_id: customer_id.clone(),
        lines: r.outputs.lines.clone(),
        coupon_code: String::new(),
        shipping,
    };
    timed(&mut lat, m.create_order(new.clone())).await?;

    // 3: the create's result and the saga's end.
    let t = now_ms();
    let order = build_order(new, None, t);
    r.outputs.order_id = Some(order.order_id.clone());
    r.outputs.order_saga_id = Some(r.saga_id.clone());
    r.outputs.order_customer_id = Some(customer_id);
    r.outputs.order_total = order.total_price;
    let snap = OrderSnapshot {
        order_id: order.order_id.clone(),
        customer_id: order.customer_id.clone(),
        lines: vec![CompactLine {
            sku,
            quantity: 1,
            unit_price: 150_000,
        }],
        line_names: vec![r.outputs.lines[0].name.clone()],
        items_price: order.items_price,
        tax_price: order.tax_price,
        shipping_price: order.shipping_price,
        total_price: order.total_price,
        status: "ORDER_STATUS_PENDING_PAYMENT".into(),
        created_at: t,
        saga_id: r.saga_id.clone(),
        ship_name: order.shipping.name.clone(),
        ship_address: order.shipping.address.clone(),
        ship_phone: order.shipping.phone.clone(),
    };
    r.outputs.order_snapshot = Some(hex(&prost::Message::encode_to_vec(&snap)));
    r.steps[3].action.status = StepStatus::Succeeded;
    r.steps[3].action.finished_at_ms = Some(t);
    r.state = SagaState::Completed;
    r.history.push(Transition {
        state: SagaState::Completed,
        at_ms: t,
        note: "every step succeeded".into(),
    });
    r.updated_at_ms = t;
    let s = save(
        &r,
        3,
        SagaState::Completed.index(),
        &uuid_bytes(&order.order_id),
    );
    bytes.log += body_len(&s.body);
    timed(&mut lat, m.save(s)).await?;
    Ok((bytes, r.saga_id, r.idempotency_key, seq))
}
