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
use microshop_runtime::{
    auth::{self, Caller},
    deadline::parse_grpc_timeout,
    errors::unavailable_status,
    metrics::metrics,
    validate::{MAX_AMOUNT, MAX_ID_BYTES, MAX_LINES, MAX_NAME_BYTES, MAX_QUANTITY, Violations},
};
use microshop_storage::embedded::Sync;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};

use crate::{
    conversions::{millis_of, state_filter, type_filter},
    engine::{Engine, Resume},
    error::OrchestratorError,
    log::{Begin, PaymentDeadline, SagaFilter, SagaLog},
    model::{Address, CartLine, SagaInput, SagaRecord, SagaState, SagaType},
    steps::order_snapshot,
};

/// Longest coupon code, in bytes.
const MAX_COUPON_BYTES: usize = 64;
/// Longest address, in bytes.
const MAX_ADDRESS_BYTES: usize = 1024;
/// Longest phone number, in bytes.
const MAX_PHONE_BYTES: usize = 32;
/// The idempotency key of an order's confirmation: one per order.
pub(crate) const CONFIRM_KEY_PREFIX: &str = "confirm:";
/// How long a retry waits for a saga that compensates for a recorded
/// error before answering that error: its compensations normally end in
/// milliseconds, but one against a participant that is down retries for
/// its whole budget.
const DECIDED_WAIT: Duration = Duration::from_secs(1);

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
            (Begin::Created(record), synced) => {
                microshop_runtime::observe::record_saga_id(&record.saga_id);
                let saga_id = record.saga_id.clone();
                let rx = self.engine.drive_created(record, synced);
                return self.outcome(&saga_id, rx, wait).await;
            }
            (Begin::Existing(record), _) => {
                if !same_request(&record.input, &input) {
                    return Err(OrchestratorError::KeyReused {
                        key,
                        saga_id: record.saga_id,
                    });
                }
                record
            }
        };
        microshop_runtime::observe::record_saga_id(&record.saga_id);
        // An ended saga answers as it ended (FAILED is the dead letter: an
        // operator resumes it, not a client retry). A waiting one is
        // driven only if its wait is over, else answers at once.
        if record.state.is_terminal() {
            return Ok(record);
        }
        // Compensating for a recorded error, its outcome is decided: give
        // the compensation a moment to end, then answer that error even if
        // a compensation still retries against a participant that is down.
        let wait = if record.state == SagaState::Compensating && record.error.is_some() {
            wait.min(DECIDED_WAIT)
        } else {
            wait
        };
        self.wait_for(&record.saga_id, wait).await
    }

    /// Drives `saga_id` and waits up to `wait` for it to end.
    async fn wait_for(
        &self,
        saga_id: &str,
        wait: Duration,
    ) -> Result<SagaRecord, OrchestratorError> {
        let rx = self.engine.drive(saga_id);
        self.outcome(saga_id, rx, wait).await
    }

    /// Waits up to `wait` for the outcome `rx` delivers.
    async fn outcome(
        &self,
        saga_id: &str,
        rx: tokio::sync::watch::Receiver<Option<crate::engine::Outcome>>,
        wait: Duration,
    ) -> Result<SagaRecord, OrchestratorError> {
        match Engine::<L>::wait(rx, wait).await {
            Some(Ok(record)) => Ok(record),
            Some(Err(why)) => Err(OrchestratorError::Interrupted {
                saga_id: saga_id.to_owned(),
                why,
            }),
            None => match self.engine.log().get(saga_id.to_owned()).await? {
                // Compensating for a recorded error: the outcome is decided
                // (`settle` answers it), however long the compensation's
                // retries still take.
                Some(record)
                    if record.state == SagaState::Compensating && record.error.is_some() =>
                {
                    Ok(record)
                }
                Some(record) => Err(still_running(&record)),
                None => Err(OrchestratorError::UnknownSaga(saga_id.to_owned())),
            },
        }
    }

    /// Puts a FAILED saga back to where it failed from, in `actor`'s name.
    async fn revive(
        &self,
        mut record: SagaRecord,
        note: &str,
        actor: &str,
    ) -> Result<SagaRecord, OrchestratorError> {
        let resume = record.failed_from.unwrap_or(SagaState::Compensating);
        record.failure_reason.clear();
        record.failed_from = None;
        record.transition_by(resume, note, actor);
        // An operator's decision: durable before it is acted on.
        self.engine
            .log()
            .save(&record, PaymentDeadline::Keep, Sync::Durable)
            .await?;
        metrics().dead_letters_changed(-1);
        Ok(record)
    }

    /// Allows a customer or guest to act only on its own order. The order's
    /// owner comes from order-svc; an unknown order and another customer's
    /// order get the same PERMISSION_DENIED, so nothing about it leaks.
    async fn check_order_owner(
        &self,
        caller: Option<&Caller>,
        order_id: &str,
    ) -> Result<(), Status> {
        let Some(caller) = caller else {
            return Ok(());
        };
        if caller.role.is_privileged() {
            return Ok(());
        }
        let p = self.engine.participants();
        let request = p.request(ord::GetOrderRequest {
            order_id: order_id.to_owned(),
        });
        match p.order.clone().get_order(request).await {
            Ok(response) => match response.into_inner().order {
                Some(order) if order.customer_id == caller.subject => Ok(()),
                _ => Err(auth::permission_denied()),
            },
            Err(status) if status.code() == Code::NotFound => Err(auth::permission_denied()),
            Err(status) => Err(unavailable_status("order-svc", &status)),
        }
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

/// Turns an ended saga into the answer's parts, or its error. A saga that
/// compensates for a recorded error already has its outcome: it answers
/// that error (e.g. `CHECKOUT_EXPIRED`), which the log holds durably,
/// instead of making the client wait for the outage or the compensation's
/// retries.
fn settle(record: SagaRecord) -> Result<(SagaRecord, Option<ord::Order>), OrchestratorError> {
    match record.state {
        SagaState::Completed => {
            let order = order_snapshot(&record.outputs);
            Ok((record, order))
        }
        SagaState::Compensated => match record.error.clone() {
            Some(error) => Err(OrchestratorError::Rejected {
                saga_id: record.saga_id,
                state: SagaState::Compensated,
                error: Box::new(error),
            }),
            None => Err(OrchestratorError::SagaFailed {
                saga_id: record.saga_id,
                reason: "compensated without a recorded error".into(),
            }),
        },
        SagaState::Compensating => match record.error.clone() {
            Some(error) => Err(OrchestratorError::Rejected {
                saga_id: record.saga_id,
                state: SagaState::Compensating,
                error: Box::new(error),
            }),
            None => Err(still_running(&record)),
        },
        SagaState::Failed => Err(OrchestratorError::SagaFailed {
            saga_id: record.saga_id,
            reason: record.failure_reason,
        }),
        SagaState::Running => Err(still_running(&record)),
    }
}

fn still_running(record: &SagaRecord) -> OrchestratorError {
    OrchestratorError::StillRunning {
        saga_id: record.saga_id.clone(),
        state: record.state,
        waiting_for: record
            .waiting
            .as_ref()
            .map(|w| w.participants.clone())
            .unwrap_or_default(),
        misconfigured: record.waiting.as_ref().is_some_and(|w| w.misconfigured),
    }
}

/// Who makes an admin call, for the saga's history.
fn actor_of(caller: Option<&Caller>) -> String {
    caller.map_or_else(|| "anonymous".to_owned(), |c| c.subject.clone())
}

/// `base`, with the caller's reason when one was given.
fn with_reason(base: &str, reason: &str) -> String {
    if reason.trim().is_empty() {
        base.to_owned()
    } else {
        format!("{base}: {}", reason.trim())
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
        let caller = auth::caller(&request);
        let req = request.into_inner();
        validate_place(&req)?;
        auth::check_subject(caller.as_ref(), &req.customer_id)?;
        auth::check_redeem(caller.as_ref(), req.points_to_redeem)?;
        let (key, input) = place_input(req);
        let record = self.execute(SagaType::PlaceOrder, key, input, wait).await?;
        let (record, order) = settle(record)?;
        if let Some(order_id) = &record.outputs.order_id {
            microshop_runtime::observe::record_order_id(order_id);
        }
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
        let caller = auth::caller(&request);
        let pb::ConfirmPaymentRequest {
            order_id,
            payment_ref,
        } = request.into_inner();
        let mut v = Violations::new();
        v.id("order_id", &order_id);
        v.id("payment_ref", &payment_ref);
        check(v)?;
        self.check_order_owner(caller.as_ref(), &order_id).await?;
        microshop_runtime::observe::record_order_id(&order_id);
        let key = format!("{CONFIRM_KEY_PREFIX}{order_id}");
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
        let caller = auth::caller(&request);
        let pb::CancelOrderRequest { order_id, reason } = request.into_inner();
        let mut v = Violations::new();
        v.id("order_id", &order_id);
        v.text("reason", &reason, MAX_NAME_BYTES, false);
        check(v)?;
        self.check_order_owner(caller.as_ref(), &order_id).await?;
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
            r#type,
            customer_id,
            order_id,
            updated_before,
        } = request.into_inner();
        let limit = page_limit(page_size)?;
        let mut v = Violations::new();
        let state = pb::SagaState::try_from(state).ok();
        if state.is_none() {
            v.add("state", "unknown saga state");
        }
        let saga_type = pb::SagaType::try_from(r#type).ok();
        if saga_type.is_none() {
            v.add("type", "unknown saga type");
        }
        if !customer_id.is_empty() {
            v.id("customer_id", &customer_id);
        }
        if !order_id.is_empty() {
            v.id("order_id", &order_id);
        }
        let before = if page_token.is_empty() {
            None
        } else {
            let parsed = page_token.parse::<u64>().ok();
            if parsed.is_none() {
                v.add(
                    "page_token",
                    "is not a token from a previous ListSagas page",
                );
            }
            parsed
        };
        check(v)?;
        let filter = SagaFilter {
            state: state.and_then(state_filter),
            saga_type: saga_type.and_then(type_filter),
            customer_id: (!customer_id.is_empty()).then_some(customer_id),
            order_id: (!order_id.is_empty()).then_some(order_id),
            updated_before_ms: updated_before.as_ref().map(millis_of),
        };
        let page = self
            .engine
            .log()
            .list(filter, before, limit)
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
        let actor = actor_of(auth::caller(&request).as_ref());
        let pb::RetrySagaRequest { saga_id, reason } = request.into_inner();
        let mut v = Violations::new();
        v.text("reason", &reason, MAX_ID_BYTES * 2, false);
        check(v)?;
        let record = self.load(&saga_id).await?;
        let note = with_reason("retried by an operator", &reason);
        let rx = match record.state {
            SagaState::Failed => {
                self.revive(record, &note, &actor).await?;
                self.engine.drive(&saga_id)
            }
            // Waiting for a participant, or not picked up yet (after a
            // restart): drive it now. One being driven is left alone.
            SagaState::Running | SagaState::Compensating if !self.engine.is_active(&saga_id) => {
                self.engine.drive_now(&saga_id, Resume { actor, note })
            }
            state => {
                return Err(OrchestratorError::NotRetryable {
                    saga_id,
                    state,
                    operation: "RetrySaga",
                    applies_to: "FAILED sagas and sagas waiting for a participant",
                }
                .into());
            }
        };
        let record = match self.outcome(&saga_id, rx, wait).await {
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
        let actor = actor_of(auth::caller(&request).as_ref());
        let pb::AbortSagaRequest { saga_id, reason } = request.into_inner();
        let mut v = Violations::new();
        v.text("reason", &reason, MAX_ID_BYTES * 2, false);
        check(v)?;
        let mut record = self.load(&saga_id).await?;
        let note = with_reason("aborted by an operator", &reason);
        let rx = match record.state {
            SagaState::Completed | SagaState::Compensated => {
                return Err(OrchestratorError::NotRetryable {
                    saga_id,
                    state: record.state,
                    operation: "AbortSaga",
                    applies_to: "FAILED and unfinished sagas",
                }
                .into());
            }
            SagaState::Failed => {
                // Nothing drives a FAILED saga, so it is safe to rewrite here.
                record.error.get_or_insert_with(|| crate::model::SagaError {
                    code: tonic::Code::FailedPrecondition as i32,
                    reason: "SAGA_ABORTED".into(),
                    message: note.clone(),
                    metadata: Default::default(),
                    violations: Vec::new(),
                });
                record.failure_reason.clear();
                record.failed_from = None;
                record.transition_by(SagaState::Compensating, note, &actor);
                self.engine
                    .log()
                    .save(&record, PaymentDeadline::Keep, Sync::Durable)
                    .await
                    .map_err(OrchestratorError::from)?;
                metrics().dead_letters_changed(-1);
                self.engine.drive(&saga_id)
            }
            SagaState::Running | SagaState::Compensating => {
                // Hand the abort to the task driving it, starting one if
                // needed (now, even if it waits for a participant), so two
                // writers never race on the record.
                let rx = self.engine.drive_now(
                    &saga_id,
                    Resume {
                        actor: actor.clone(),
                        note: note.clone(),
                    },
                );
                self.engine.request_abort(&saga_id, &actor, &note);
                rx
            }
        };
        let record = match self.outcome(&saga_id, rx, wait).await {
            Ok(record) => record,
            Err(OrchestratorError::StillRunning { .. }) => self.load(&saga_id).await?,
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(pb::AbortSagaResponse {
            saga: Some(record.into()),
        }))
    }
}

#[cfg(test)]
mod tests;
