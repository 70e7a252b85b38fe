//! CheckoutService and SagaAdminService: validate, start or find the saga,
//! wait for it within the caller's deadline, answer from the saga's record.

use std::{sync::Arc, time::Duration};

use microshop_proto::{
    orchestrator::v1::{
        self as pb, checkout_service_server::CheckoutService,
        saga_admin_service_server::SagaAdminService,
    },
    order::v1 as ord,
};
use microshop_runtime::validate::{
    MAX_AMOUNT, MAX_ID_BYTES, MAX_LINES, MAX_NAME_BYTES, MAX_QUANTITY, Violations,
};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    conversions::state_filter,
    engine::Engine,
    error::OrchestratorError,
    log::{Begin, PaymentDeadline, SagaLog},
    model::{Address, CartLine, SagaInput, SagaRecord, SagaState, SagaType},
    steps::order_snapshot,
};

/// Longest coupon code, in bytes.
const MAX_COUPON_BYTES: usize = 64;
/// Longest address, in bytes.
const MAX_ADDRESS_BYTES: usize = 1024;
/// Longest phone number, in bytes.
const MAX_PHONE_BYTES: usize = 32;

/// Both public services over one engine.
#[derive(Debug)]
pub struct Api<L> {
    engine: Arc<Engine<L>>,
}

impl<L> Clone for Api<L> {
    fn clone(&self) -> Self {
        Self {
            engine: Arc::clone(&self.engine),
        }
    }
}

impl<L: SagaLog> Api<L> {
    /// The API over `engine`.
    pub fn new(engine: Arc<Engine<L>>) -> Self {
        Self { engine }
    }

    /// How long to wait for a saga: just short of the caller's deadline (so
    /// the caller gets our answer, not its own timeout), else `max_wait`.
    fn wait_budget(&self, metadata: &MetadataMap) -> Duration {
        let max = self.engine.config().max_wait;
        let Some(deadline) = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
        else {
            return max;
        };
        let margin = (deadline / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
        deadline.saturating_sub(margin).min(max)
    }

    /// Starts (or finds) the saga for `key` and waits for its outcome.
    async fn execute(
        &self,
        saga_type: SagaType,
        key: String,
        input: SagaInput,
        wait: Duration,
    ) -> Result<SagaRecord, OrchestratorError> {
        let record = match self
            .engine
            .begin(saga_type, key.clone(), input.clone())
            .await?
        {
            Begin::Created(record) => record,
            Begin::Existing(record) => {
                if !same_request(&record.input, &input) {
                    return Err(OrchestratorError::KeyReused {
                        key,
                        saga_id: record.saga_id,
                    });
                }
                if record.state == SagaState::Failed {
                    // The client retrying is the natural moment to try again:
                    // the participant may be back.
                    self.revive(record, "retried by the client").await?
                } else {
                    record
                }
            }
        };
        if matches!(record.state, SagaState::Completed | SagaState::Compensated) {
            return Ok(record);
        }
        self.wait_for(&record.saga_id, wait).await
    }

    /// Drives `saga_id` and waits up to `wait` for it to end.
    async fn wait_for(
        &self,
        saga_id: &str,
        wait: Duration,
    ) -> Result<SagaRecord, OrchestratorError> {
        let rx = self.engine.drive(saga_id);
        match Engine::<L>::wait(rx, wait).await {
            Some(Ok(record)) => Ok(record),
            Some(Err(why)) => Err(OrchestratorError::Interrupted {
                saga_id: saga_id.to_owned(),
                why,
            }),
            None => {
                let state = self
                    .engine
                    .log()
                    .get(saga_id.to_owned())
                    .await?
                    .map_or(SagaState::Running, |r| r.state);
                Err(OrchestratorError::StillRunning {
                    saga_id: saga_id.to_owned(),
                    state,
                })
            }
        }
    }

    /// Puts a FAILED saga back to where it failed from.
    async fn revive(
        &self,
        mut record: SagaRecord,
        note: &str,
    ) -> Result<SagaRecord, OrchestratorError> {
        let resume = record.failed_from.unwrap_or(SagaState::Compensating);
        record.failure_reason.clear();
        record.failed_from = None;
        record.transition(resume, note);
        self.engine
            .log()
            .save(record.clone(), PaymentDeadline::Keep)
            .await?;
        Ok(record)
    }

    async fn load(&self, saga_id: &str) -> Result<SagaRecord, OrchestratorError> {
        let mut v = Violations::new();
        v.id("saga_id", saga_id);
        check(v)?;
        self.engine
            .log()
            .get(saga_id.to_owned())
            .await?
            .ok_or_else(|| OrchestratorError::UnknownSaga(saga_id.to_owned()))
    }
}

/// Whether a retry carries the same request. Confirm and cancel are keyed
/// by order: any cancel of an order is the same cancel, but a second
/// payment reference for one order is a conflict worth refusing.
fn same_request(stored: &SagaInput, new: &SagaInput) -> bool {
    match (stored, new) {
        (SagaInput::Cancel { .. }, SagaInput::Cancel { .. }) => true,
        _ => stored == new,
    }
}

fn check(v: Violations) -> Result<(), OrchestratorError> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(OrchestratorError::Invalid(v.into_inner()))
    }
}

/// Parses the `grpc-timeout` header (e.g. `1500m`).
fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Turns an ended saga into the answer's parts, or its error.
fn settle(record: SagaRecord) -> Result<(SagaRecord, Option<ord::Order>), OrchestratorError> {
    match record.state {
        SagaState::Completed => {
            let order = order_snapshot(&record.outputs);
            Ok((record, order))
        }
        SagaState::Compensated => match record.error.clone() {
            Some(error) => Err(OrchestratorError::Rejected {
                saga_id: record.saga_id,
                error: Box::new(error),
            }),
            None => Err(OrchestratorError::SagaFailed {
                saga_id: record.saga_id,
                reason: "compensated without a recorded error".into(),
            }),
        },
        SagaState::Failed => Err(OrchestratorError::SagaFailed {
            saga_id: record.saga_id,
            reason: record.failure_reason,
        }),
        SagaState::Running | SagaState::Compensating => Err(OrchestratorError::StillRunning {
            saga_id: record.saga_id,
            state: record.state,
        }),
    }
}

fn validate_place(req: &pb::PlaceOrderRequest) -> Result<(), OrchestratorError> {
    let mut v = Violations::new();
    v.id("idempotency_key", &req.idempotency_key);
    v.id("customer_id", &req.customer_id);
    if req.items.is_empty() {
        v.add("items", "the cart is empty; add at least one item");
    } else if req.items.len() > MAX_LINES {
        v.add("items", format!("must hold at most {MAX_LINES} lines"));
    }
    for (i, item) in req.items.iter().enumerate() {
        v.id(&format!("items[{i}].sku"), &item.sku);
        v.positive(&format!("items[{i}].quantity"), item.quantity, MAX_QUANTITY);
    }
    if !req.coupon_code.is_empty() {
        if req.coupon_code.len() > MAX_COUPON_BYTES {
            v.add(
                "coupon_code",
                format!("must be at most {MAX_COUPON_BYTES} bytes"),
            );
        } else {
            v.id("coupon_code", &req.coupon_code);
        }
    }
    v.non_negative("points_to_redeem", req.points_to_redeem, MAX_AMOUNT);
    if let Some(s) = &req.shipping {
        v.text("shipping.name", &s.name, MAX_NAME_BYTES, false);
        v.text("shipping.address", &s.address, MAX_ADDRESS_BYTES, false);
        v.text("shipping.phone", &s.phone, MAX_PHONE_BYTES, false);
    }
    check(v)
}

fn place_input(req: pb::PlaceOrderRequest) -> (String, SagaInput) {
    let pb::PlaceOrderRequest {
        idempotency_key,
        customer_id,
        items,
        coupon_code,
        points_to_redeem,
        shipping,
    } = req;
    let shipping = shipping
        .map(|s| {
            let pb::ShippingAddress {
                name,
                address,
                phone,
            } = s;
            Address {
                name,
                address,
                phone,
            }
        })
        .unwrap_or_default();
    let items = items
        .into_iter()
        .map(|i| {
            let pb::LineItem { sku, quantity } = i;
            CartLine { sku, quantity }
        })
        .collect();
    (
        idempotency_key,
        SagaInput::Place {
            customer_id,
            items,
            coupon_code,
            points_to_redeem,
            shipping,
        },
    )
}

fn page_limit(size: i32) -> Result<usize, OrchestratorError> {
    match size {
        0 => Ok(20),
        1..=100 => Ok(usize::try_from(size).unwrap_or(20)),
        _ => Err(OrchestratorError::Invalid(vec![(
            "page_size".into(),
            "must be between 1 and 100 (0 for the default of 20)".into(),
        )])),
    }
}

#[tonic::async_trait]
impl<L: SagaLog> CheckoutService for Api<L> {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let wait = self.wait_budget(request.metadata());
        let req = request.into_inner();
        validate_place(&req)?;
        let (key, input) = place_input(req);
        let record = self.execute(SagaType::PlaceOrder, key, input, wait).await?;
        let (record, order) = settle(record)?;
        Ok(Response::new(pb::PlaceOrderResponse {
            saga_id: record.saga_id,
            order_id: record.outputs.order_id.unwrap_or_default(),
            state: pb::SagaState::from(record.state).into(),
            order,
        }))
    }

    async fn confirm_payment(
        &self,
        request: Request<pb::ConfirmPaymentRequest>,
    ) -> Result<Response<pb::ConfirmPaymentResponse>, Status> {
        let wait = self.wait_budget(request.metadata());
        let pb::ConfirmPaymentRequest {
            order_id,
            payment_ref,
        } = request.into_inner();
        let mut v = Violations::new();
        v.id("order_id", &order_id);
        v.id("payment_ref", &payment_ref);
        check(v)?;
        let key = format!("confirm:{order_id}");
        let input = SagaInput::Confirm {
            order_id,
            payment_ref,
        };
        let record = self
            .execute(SagaType::ConfirmPayment, key, input, wait)
            .await?;
        let (record, order) = settle(record)?;
        Ok(Response::new(pb::ConfirmPaymentResponse {
            saga_id: record.saga_id,
            state: pb::SagaState::from(record.state).into(),
            order,
        }))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let wait = self.wait_budget(request.metadata());
        let pb::CancelOrderRequest { order_id, reason } = request.into_inner();
        let mut v = Violations::new();
        v.id("order_id", &order_id);
        v.text("reason", &reason, MAX_NAME_BYTES, false);
        check(v)?;
        let key = format!("cancel:{order_id}");
        let reason = if reason.trim().is_empty() {
            "cancelled by the customer".to_owned()
        } else {
            reason
        };
        let input = SagaInput::Cancel {
            order_id,
            reason,
            only_if_unpaid: false,
        };
        let record = self
            .execute(SagaType::CancelOrder, key, input, wait)
            .await?;
        let (record, order) = settle(record)?;
        Ok(Response::new(pb::CancelOrderResponse {
            saga_id: record.saga_id,
            state: pb::SagaState::from(record.state).into(),
            order,
        }))
    }
}

#[tonic::async_trait]
impl<L: SagaLog> SagaAdminService for Api<L> {
    async fn get_saga(
        &self,
        request: Request<pb::GetSagaRequest>,
    ) -> Result<Response<pb::GetSagaResponse>, Status> {
        let pb::GetSagaRequest { saga_id } = request.into_inner();
        let record = self.load(&saga_id).await?;
        Ok(Response::new(pb::GetSagaResponse {
            saga: Some(record.into()),
        }))
    }

    async fn list_sagas(
        &self,
        request: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let pb::ListSagasRequest {
            state,
            page_size,
            page_token,
        } = request.into_inner();
        let limit = page_limit(page_size)?;
        let state = pb::SagaState::try_from(state).map_err(|_| {
            OrchestratorError::Invalid(vec![("state".into(), "unknown saga state".into())])
        })?;
        let before = if page_token.is_empty() {
            None
        } else {
            Some(page_token.parse::<u64>().map_err(|_| {
                OrchestratorError::Invalid(vec![(
                    "page_token".into(),
                    "is not a token from a previous ListSagas page".into(),
                )])
            })?)
        };
        let page = self
            .engine
            .log()
            .list(state_filter(state), before, limit)
            .await
            .map_err(OrchestratorError::from)?;
        Ok(Response::new(pb::ListSagasResponse {
            sagas: page.sagas.into_iter().map(Into::into).collect(),
            next_page_token: page.next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn retry_saga(
        &self,
        request: Request<pb::RetrySagaRequest>,
    ) -> Result<Response<pb::RetrySagaResponse>, Status> {
        let wait = self.wait_budget(request.metadata());
        let pb::RetrySagaRequest { saga_id } = request.into_inner();
        let record = self.load(&saga_id).await?;
        if record.state != SagaState::Failed {
            return Err(OrchestratorError::NotRetryable {
                saga_id,
                state: record.state,
                operation: "RetrySaga",
            }
            .into());
        }
        self.revive(record, "retried by an operator").await?;
        let record = match self.wait_for(&saga_id, wait).await {
            Ok(record) => record,
            Err(OrchestratorError::StillRunning { .. }) => self.load(&saga_id).await?,
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(pb::RetrySagaResponse {
            saga: Some(record.into()),
        }))
    }

    async fn abort_saga(
        &self,
        request: Request<pb::AbortSagaRequest>,
    ) -> Result<Response<pb::AbortSagaResponse>, Status> {
        let wait = self.wait_budget(request.metadata());
        let pb::AbortSagaRequest { saga_id, reason } = request.into_inner();
        let mut v = Violations::new();
        v.text("reason", &reason, MAX_ID_BYTES * 2, false);
        check(v)?;
        let mut record = self.load(&saga_id).await?;
        let note = if reason.trim().is_empty() {
            "aborted by an operator".to_owned()
        } else {
            format!("aborted by an operator: {reason}")
        };
        match record.state {
            SagaState::Completed | SagaState::Compensated => {
                return Err(OrchestratorError::NotRetryable {
                    saga_id,
                    state: record.state,
                    operation: "AbortSaga",
                }
                .into());
            }
            SagaState::Failed => {
                // Nothing drives a FAILED saga, so it is safe to rewrite here.
                record.error.get_or_insert_with(|| crate::model::SagaError {
                    code: tonic::Code::Aborted as i32,
                    reason: "SAGA_ABORTED".into(),
                    message: note.clone(),
                    metadata: Default::default(),
                    violations: Vec::new(),
                });
                record.failure_reason.clear();
                record.failed_from = None;
                record.transition(SagaState::Compensating, note);
                self.engine
                    .log()
                    .save(record, PaymentDeadline::Keep)
                    .await
                    .map_err(OrchestratorError::from)?;
            }
            SagaState::Running | SagaState::Compensating => {
                // Hand the abort to the task driving it, starting one if
                // needed, so two writers never race on the record.
                drop(self.engine.drive(&saga_id));
                self.engine.request_abort(&saga_id);
            }
        }
        let record = match self.wait_for(&saga_id, wait).await {
            Ok(record) => record,
            Err(OrchestratorError::StillRunning { .. }) => self.load(&saga_id).await?,
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(pb::AbortSagaResponse {
            saga: Some(record.into()),
        }))
    }
}
