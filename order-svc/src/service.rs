//! The OrderService gRPC handlers: validate, call the store, convert.

use microshop_proto::order::v1::{self as pb, order_service_server::OrderService};
use microshop_runtime::validate::{
    MAX_AMOUNT, MAX_ID_BYTES, MAX_LINES, MAX_NAME_BYTES, MAX_QUANTITY, Violations,
};
use tonic::{Request, Response, Status};

use crate::{
    conversions::coupon_kind_from_wire,
    domain::{
        CancelOutcome, CouponKind, CouponUpdate, CreateOutcome, NewOrder, OrderLine, PayOutcome,
        ShipOutcome,
    },
    error::OrderError,
    pricing::{OverRedemption, PricingRules, price},
    store::{CouponStore, OrderQueries, OrderStore},
};

/// Longest coupon code accepted, in bytes.
pub const MAX_COUPON_CODE_BYTES: usize = 64;
/// Longest shipping address accepted, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 1024;
/// Longest phone number accepted, in bytes.
pub const MAX_PHONE_BYTES: usize = 32;
/// Longest cancellation reason accepted, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Orders per ListOrders page when the request leaves it at zero.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Most orders per ListOrders page.
pub const MAX_PAGE_SIZE: usize = 100;

/// The OrderService implementation over any store.
#[derive(Clone, Debug)]
pub struct Orders<S> {
    store: S,
    rules: PricingRules,
}

impl<S> Orders<S> {
    /// A service over `store` pricing with `rules`.
    pub fn new(store: S, rules: PricingRules) -> Self {
        Self { store, rules }
    }
}

fn check(v: Violations) -> Result<(), OrderError> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(OrderError::Invalid(v.into_inner()))
    }
}

fn check_lines(v: &mut Violations, lines: &[pb::OrderLine]) {
    if lines.is_empty() {
        v.add("lines", "must hold at least one line");
    } else if lines.len() > MAX_LINES {
        v.add("lines", format!("must hold at most {MAX_LINES} lines"));
    }
    for (i, line) in lines.iter().enumerate() {
        v.id(&format!("lines[{i}].sku"), &line.sku);
        v.text(
            &format!("lines[{i}].name"),
            &line.name,
            MAX_NAME_BYTES,
            true,
        );
        v.positive(&format!("lines[{i}].quantity"), line.quantity, MAX_QUANTITY);
        v.positive(
            &format!("lines[{i}].unit_price"),
            line.unit_price,
            MAX_AMOUNT,
        );
    }
}

fn check_coupon_code(v: &mut Violations, field: &str, code: &str) {
    v.id(field, code);
    if code.len() > MAX_COUPON_CODE_BYTES {
        v.add(
            field,
            format!("must be at most {MAX_COUPON_CODE_BYTES} bytes"),
        );
    }
}

fn check_optional_coupon_code(v: &mut Violations, field: &str, code: &str) {
    if !code.is_empty() {
        check_coupon_code(v, field, code);
    }
}

/// The page token of the order numbered `seq` (base 10; opaque to clients).
fn encode_page_token(seq: u64) -> String {
    seq.to_string()
}

/// The order number a page token stands for; `None` when malformed.
fn decode_page_token(token: &str) -> Option<u64> {
    token.parse::<u64>().ok().filter(|seq| *seq > 0)
}

#[tonic::async_trait]
impl<S: CouponStore + OrderStore + OrderQueries> OrderService for Orders<S> {
    async fn quote_order(
        &self,
        request: Request<pb::QuoteOrderRequest>,
    ) -> Result<Response<pb::QuoteOrderResponse>, Status> {
        let pb::QuoteOrderRequest {
            lines,
            coupon_code,
            points_to_redeem,
        } = request.into_inner();
        let mut v = Violations::new();
        check_lines(&mut v, &lines);
        check_optional_coupon_code(&mut v, "coupon_code", &coupon_code);
        v.non_negative("points_to_redeem", points_to_redeem, MAX_AMOUNT);
        check(v)?;
        let coupon = if coupon_code.is_empty() {
            None
        } else {
            // Only existence is checked: whether a use is left is decided
            // atomically by CreateOrder.
            let found = self
                .store
                .get_coupon(coupon_code.clone())
                .await
                .map_err(OrderError::from)?;
            Some(found.ok_or(OrderError::CouponInvalid(coupon_code))?)
        };
        let lines: Vec<OrderLine> = lines.into_iter().map(OrderLine::from).collect();
        let pricing = price(&self.rules, &lines, coupon.as_ref(), points_to_redeem).map_err(
            |OverRedemption { max_points }| OrderError::OverRedemption {
                field: "points_to_redeem",
                requested: points_to_redeem,
                max_points,
            },
        )?;
        Ok(Response::new(pb::QuoteOrderResponse {
            pricing: Some(pricing.into()),
            pricing_rules: Some(self.rules.into()),
        }))
    }

    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        v.id("saga_id", &req.saga_id);
        microshop_runtime::observe::record_saga_id(&req.saga_id);
        v.id("customer_id", &req.customer_id);
        check_lines(&mut v, &req.lines);
        check_optional_coupon_code(&mut v, "coupon_code", &req.coupon_code);
        v.non_negative("redeemed_points", req.redeemed_points, MAX_AMOUNT);
        if let Some(s) = &req.shipping {
            v.text("shipping.name", &s.name, MAX_NAME_BYTES, false);
            v.text("shipping.address", &s.address, MAX_ADDRESS_BYTES, false);
            v.text("shipping.phone", &s.phone, MAX_PHONE_BYTES, false);
        }
        check(v)?;
        let order = NewOrder::from(req);
        let saga_id = order.saga_id.clone();
        let outcome = self
            .store
            .create_order(order, self.rules)
            .await
            .map_err(OrderError::from)?;
        match outcome {
            None => Err(OrderError::SagaCompensated(saga_id).into()),
            Some(CreateOutcome::Created(order)) => Ok(Response::new(pb::CreateOrderResponse {
                order: Some((*order).into()),
            })),
            Some(CreateOutcome::CouponInvalid(code)) => Err(OrderError::CouponInvalid(code).into()),
            Some(CreateOutcome::CouponExhausted(code)) => {
                Err(OrderError::CouponExhausted(code).into())
            }
            Some(CreateOutcome::OverRedemption {
                requested,
                max_points,
            }) => Err(OrderError::OverRedemption {
                field: "redeemed_points",
                requested,
                max_points,
            }
            .into()),
        }
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let pb::CancelOrderRequest {
            saga_id,
            order_id,
            reason,
            only_if_unpaid,
        } = request.into_inner();
        let mut v = Violations::new();
        v.id("saga_id", &saga_id);
        microshop_runtime::observe::record_saga_id(&saga_id);
        v.optional_id("order_id", &order_id);
        v.text("reason", &reason, MAX_REASON_BYTES, false);
        check(v)?;
        let reason = if reason.trim().is_empty() {
            "cancelled".to_owned()
        } else {
            reason
        };
        let given = Some(order_id).filter(|id| !id.is_empty());
        let outcome = self
            .store
            .cancel_order(saga_id.clone(), given, reason, only_if_unpaid)
            .await
            .map_err(OrderError::from)?;
        match outcome {
            CancelOutcome::Cancelled(order) => Ok(Response::new(pb::CancelOrderResponse {
                order: Some(order.into()),
            })),
            CancelOutcome::NothingCreated => {
                Ok(Response::new(pb::CancelOrderResponse { order: None }))
            }
            CancelOutcome::WrongOrder { given } => Err(OrderError::WrongOrder {
                saga_id,
                order_id: given,
            }
            .into()),
            CancelOutcome::NotCancellable(order) => Err(OrderError::NotCancellable {
                order_id: order.order_id,
                status: order.status,
            }
            .into()),
        }
    }

    async fn mark_paid(
        &self,
        request: Request<pb::MarkPaidRequest>,
    ) -> Result<Response<pb::MarkPaidResponse>, Status> {
        let pb::MarkPaidRequest {
            saga_id,
            order_id,
            payment_ref,
        } = request.into_inner();
        let mut v = Violations::new();
        v.id("saga_id", &saga_id);
        microshop_runtime::observe::record_saga_id(&saga_id);
        v.id("order_id", &order_id);
        v.text("payment_ref", &payment_ref, MAX_ID_BYTES, true);
        check(v)?;
        let outcome = self
            .store
            .mark_paid(saga_id.clone(), order_id.clone(), payment_ref)
            .await
            .map_err(OrderError::from)?;
        match outcome {
            PayOutcome::Paid(order) => Ok(Response::new(pb::MarkPaidResponse {
                order: Some(order.into()),
            })),
            PayOutcome::UnknownOrder => Err(OrderError::UnknownOrder(order_id).into()),
            PayOutcome::WrongSaga => Err(OrderError::WrongSaga { saga_id, order_id }.into()),
            PayOutcome::NotPayable(order) => Err(OrderError::NotPayable(order.order_id).into()),
        }
    }

    async fn mark_shipped(
        &self,
        request: Request<pb::MarkShippedRequest>,
    ) -> Result<Response<pb::MarkShippedResponse>, Status> {
        let pb::MarkShippedRequest { order_id } = request.into_inner();
        let mut v = Violations::new();
        v.id("order_id", &order_id);
        check(v)?;
        let outcome = self
            .store
            .mark_shipped(order_id.clone())
            .await
            .map_err(OrderError::from)?;
        match outcome {
            ShipOutcome::Shipped(order) => Ok(Response::new(pb::MarkShippedResponse {
                order: Some(order.into()),
            })),
            ShipOutcome::UnknownOrder => Err(OrderError::UnknownOrder(order_id).into()),
            ShipOutcome::NotShippable(order) => Err(OrderError::NotShippable {
                order_id: order.order_id,
                status: order.status,
            }
            .into()),
        }
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let caller = microshop_runtime::auth::caller(&request);
        let pb::GetOrderRequest { order_id } = request.into_inner();
        let mut v = Violations::new();
        v.id("order_id", &order_id);
        check(v)?;
        let found = self
            .store
            .get_order(order_id.clone())
            .await
            .map_err(OrderError::from)?;
        // A customer sees only its own orders; another's and an unknown
        // one get the same PERMISSION_DENIED, so nothing leaks.
        if let Some(c) = caller.as_ref().filter(|c| !c.role.is_privileged())
            && found.as_ref().is_none_or(|o| o.customer_id != c.subject)
        {
            return Err(microshop_runtime::auth::permission_denied());
        }
        match found {
            Some(order) => Ok(Response::new(pb::GetOrderResponse {
                order: Some(order.into()),
            })),
            None => Err(OrderError::UnknownOrder(order_id).into()),
        }
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = microshop_runtime::auth::caller(&request);
        let pb::ListOrdersRequest {
            customer_id,
            page_size,
            page_token,
        } = request.into_inner();
        let mut v = Violations::new();
        v.id("customer_id", &customer_id);
        microshop_runtime::auth::check_subject(caller.as_ref(), &customer_id)?;
        let page_size = match usize::try_from(page_size) {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(n) if n <= MAX_PAGE_SIZE => n,
            _ => {
                v.add(
                    "page_size",
                    format!("must be 1 to {MAX_PAGE_SIZE}, or 0 for {DEFAULT_PAGE_SIZE}"),
                );
                DEFAULT_PAGE_SIZE
            }
        };
        let after = if page_token.is_empty() {
            None
        } else {
            let parsed = decode_page_token(&page_token);
            if parsed.is_none() {
                v.add(
                    "page_token",
                    "is not a token from a previous page; pass next_page_token as returned, \
                     or leave it empty for the first page",
                );
            }
            parsed
        };
        check(v)?;
        let page = self
            .store
            .list_orders(customer_id, page_size, after)
            .await
            .map_err(OrderError::from)?;
        Ok(Response::new(pb::ListOrdersResponse {
            orders: page.orders.into_iter().map(Into::into).collect(),
            next_page_token: page.next_after.map(encode_page_token).unwrap_or_default(),
        }))
    }

    async fn put_coupon(
        &self,
        request: Request<pb::PutCouponRequest>,
    ) -> Result<Response<pb::PutCouponResponse>, Status> {
        let pb::PutCouponRequest {
            code,
            kind,
            value,
            usage_limit,
        } = request.into_inner();
        let mut v = Violations::new();
        check_coupon_code(&mut v, "code", &code);
        let kind_parsed = coupon_kind_from_wire(kind);
        match kind_parsed {
            None => v.add(
                "kind",
                format!(
                    "{kind} is not a coupon kind; use COUPON_KIND_PERCENTAGE or COUPON_KIND_FIXED"
                ),
            ),
            Some(CouponKind::Percentage) => v.positive("value", value, 100),
            Some(CouponKind::Fixed) => v.positive("value", value, MAX_AMOUNT),
        }
        v.positive("usage_limit", usage_limit, MAX_AMOUNT);
        check(v)?;
        // Checked above: an unset or unknown kind is a violation.
        let kind = kind_parsed.ok_or_else(|| {
            OrderError::Invalid(vec![("kind".to_owned(), "is not a coupon kind".to_owned())])
        })?;
        let coupon = self
            .store
            .put_coupon(CouponUpdate {
                code,
                kind,
                value,
                usage_limit,
            })
            .await
            .map_err(OrderError::from)?;
        Ok(Response::new(coupon.into()))
    }

    async fn get_coupon(
        &self,
        request: Request<pb::GetCouponRequest>,
    ) -> Result<Response<pb::GetCouponResponse>, Status> {
        let pb::GetCouponRequest { code } = request.into_inner();
        let mut v = Violations::new();
        check_coupon_code(&mut v, "code", &code);
        check(v)?;
        let found = self
            .store
            .get_coupon(code.clone())
            .await
            .map_err(OrderError::from)?;
        match found {
            Some(coupon) => Ok(Response::new(coupon.into())),
            None => Err(OrderError::UnknownCoupon(code).into()),
        }
    }
}
