//! The LoyaltyService gRPC handlers: validate, call the store, convert.

use microshop_proto::loyalty::v1::{self as pb, loyalty_service_server::LoyaltyService};
use microshop_runtime::validate::{MAX_AMOUNT, Violations};
use tonic::{Request, Response, Status};

use crate::{
    domain::{Account, DEFAULT_EARN_AMOUNT_PER_POINT, DeductOutcome, MAX_GRANT, points_for},
    error::LoyaltyError,
    store::{AccountStore, PointsLedgerStore},
};

/// The LoyaltyService implementation over any store.
#[derive(Clone, Debug)]
pub struct Loyalty<S> {
    store: S,
    earn_amount_per_point: i64,
}

impl<S> Loyalty<S> {
    /// A service over `store`, earning one point per
    /// [`DEFAULT_EARN_AMOUNT_PER_POINT`] paid.
    pub fn new(store: S) -> Self {
        Self {
            store,
            earn_amount_per_point: DEFAULT_EARN_AMOUNT_PER_POINT,
        }
    }

    /// Earns one point per `amount` paid instead (must be greater than zero;
    /// a non-positive rate earns nothing).
    #[must_use]
    pub fn with_earn_amount_per_point(mut self, amount: i64) -> Self {
        self.earn_amount_per_point = amount;
        self
    }
}

fn check(v: Violations) -> Result<(), LoyaltyError> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(LoyaltyError::Invalid(v.into_inner()))
    }
}

#[tonic::async_trait]
impl<S: AccountStore + PointsLedgerStore> LoyaltyService for Loyalty<S> {
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let caller = microshop_runtime::auth::caller(&request);
        let pb::GetBalanceRequest { customer_id } = request.into_inner();
        let mut v = Violations::new();
        v.id("customer_id", &customer_id);
        check(v)?;
        microshop_runtime::auth::check_subject(caller.as_ref(), &customer_id)?;
        let account = self
            .store
            .account(customer_id.clone())
            .await
            .map_err(LoyaltyError::from)?
            .unwrap_or_else(|| Account::guest(customer_id));
        Ok(Response::new(account.into()))
    }

    async fn grant_points(
        &self,
        request: Request<pb::GrantPointsRequest>,
    ) -> Result<Response<pb::GrantPointsResponse>, Status> {
        let pb::GrantPointsRequest {
            customer_id,
            points,
        } = request.into_inner();
        let mut v = Violations::new();
        v.id("customer_id", &customer_id);
        v.non_negative("points", points, MAX_GRANT);
        check(v)?;
        let account = self
            .store
            .grant(customer_id, points)
            .await
            .map_err(LoyaltyError::from)?;
        Ok(Response::new(account.into()))
    }

    async fn deduct_points(
        &self,
        request: Request<pb::DeductPointsRequest>,
    ) -> Result<Response<pb::DeductPointsResponse>, Status> {
        let pb::DeductPointsRequest {
            saga_id,
            customer_id,
            points,
        } = request.into_inner();
        let mut v = Violations::new();
        v.id("saga_id", &saga_id);
        microshop_runtime::observe::record_saga_id(&saga_id);
        v.id("customer_id", &customer_id);
        v.positive("points", points, MAX_AMOUNT);
        check(v)?;
        let outcome = self
            .store
            .deduct(saga_id.clone(), customer_id.clone(), points)
            .await
            .map_err(LoyaltyError::from)?;
        match outcome {
            None => Err(LoyaltyError::SagaCompensated(saga_id).into()),
            Some(DeductOutcome::Deducted {
                customer_id: _,
                points,
                balance,
            }) => Ok(Response::new(pb::DeductPointsResponse {
                saga_id,
                points,
                balance,
            })),
            Some(DeductOutcome::NotAMember) => Err(LoyaltyError::NotAMember(customer_id).into()),
            Some(DeductOutcome::InsufficientPoints { balance, requested }) => {
                Err(LoyaltyError::InsufficientPoints {
                    customer_id,
                    balance,
                    requested,
                }
                .into())
            }
        }
    }

    async fn refund_points(
        &self,
        request: Request<pb::RefundPointsRequest>,
    ) -> Result<Response<pb::RefundPointsResponse>, Status> {
        let pb::RefundPointsRequest { saga_id } = request.into_inner();
        let mut v = Violations::new();
        v.id("saga_id", &saga_id);
        microshop_runtime::observe::record_saga_id(&saga_id);
        check(v)?;
        let outcome = self
            .store
            .refund(saga_id.clone())
            .await
            .map_err(LoyaltyError::from)?;
        Ok(Response::new(pb::RefundPointsResponse {
            saga_id,
            points: outcome.points(),
        }))
    }

    async fn earn_points(
        &self,
        request: Request<pb::EarnPointsRequest>,
    ) -> Result<Response<pb::EarnPointsResponse>, Status> {
        let pb::EarnPointsRequest {
            saga_id,
            customer_id,
            amount_paid,
            earn_amount_per_point,
        } = request.into_inner();
        let mut v = Violations::new();
        v.id("saga_id", &saga_id);
        microshop_runtime::observe::record_saga_id(&saga_id);
        v.id("customer_id", &customer_id);
        v.non_negative("amount_paid", amount_paid, MAX_AMOUNT);
        v.non_negative("earn_amount_per_point", earn_amount_per_point, MAX_AMOUNT);
        check(v)?;
        // The order's own rate, so a payment confirmed after a change of
        // settings earns what the order promised; callers that predate the
        // field send 0 and get the configured rate. A repeated delivery
        // replays the first credit whatever it sends (the barrier).
        let rate = if earn_amount_per_point > 0 {
            earn_amount_per_point
        } else {
            self.earn_amount_per_point
        };
        let points = points_for(amount_paid, rate);
        let outcome = self
            .store
            .earn(saga_id.clone(), customer_id, points)
            .await
            .map_err(LoyaltyError::from)?;
        let (points, balance) = outcome.points_and_balance();
        Ok(Response::new(pb::EarnPointsResponse {
            saga_id,
            points,
            balance,
        }))
    }
}
