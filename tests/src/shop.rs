//! The shop: clients of every service plus the universe of what a
//! scenario seeded, with typed calls that panic on an unexpected error.

use microshop::{
    invariants::{self, Summary, Universe},
    mesh::{MeshAddrs, MeshClients},
};
use microshop_proto::{
    inventory::v1 as inv, loyalty::v1 as loy, orchestrator::v1 as orch, order::v1 as ord,
};
use microshop_runtime::validate::id_problem;
use tonic::{Response, Status};

use crate::{
    poll::quiesce,
    settings::{CONNECT_WITHIN, SETTLE_WITHIN},
};

/// Clients of a mesh and the universe of what a scenario created.
#[derive(Clone, Debug)]
pub struct Shop {
    /// Clients of every service.
    pub clients: MeshClients,
    /// SKUs, customers and coupons to check.
    pub universe: Universe,
}

impl Shop {
    /// A shop over `clients`, nothing seeded.
    pub fn new(clients: MeshClients) -> Self {
        Self {
            clients,
            universe: Universe::default(),
        }
    }

    /// Connects to every service of `addrs`.
    pub async fn connect(addrs: &MeshAddrs) -> Self {
        let clients = MeshClients::connect(addrs, CONNECT_WITHIN)
            .await
            .expect("connect to every service of the mesh");
        Self::new(clients)
    }

    /// Puts a product (sku, name = sku, price, stock) and records its stock.
    pub async fn put_product(
        &mut self,
        sku: &str,
        unit_price: i64,
        stock: i64,
    ) -> inv::PutProductResponse {
        let resp = self
            .clients
            .inventory
            .clone()
            .put_product(inv::PutProductRequest {
                sku: sku.into(),
                name: format!("product {sku}"),
                unit_price,
                stock,
            })
            .await
            .unwrap_or_else(|e| panic!("PutProduct {sku}: {e:?}"))
            .into_inner();
        self.universe.skus.insert(sku.into(), stock);
        resp
    }

    /// Grants `points` to `customer` (making them a member).
    pub async fn grant_points(&mut self, customer: &str, points: i64) -> loy::GrantPointsResponse {
        let resp = self
            .clients
            .loyalty
            .clone()
            .grant_points(loy::GrantPointsRequest {
                customer_id: customer.into(),
                points,
            })
            .await
            .unwrap_or_else(|e| panic!("GrantPoints {customer}: {e:?}"))
            .into_inner();
        self.universe.customers.insert(customer.into());
        resp
    }

    /// Puts a coupon.
    pub async fn put_coupon(
        &mut self,
        code: &str,
        kind: ord::CouponKind,
        value: i64,
        usage_limit: i64,
    ) -> ord::PutCouponResponse {
        let resp = self
            .clients
            .order
            .clone()
            .put_coupon(ord::PutCouponRequest {
                code: code.into(),
                kind: kind.into(),
                value,
                usage_limit,
            })
            .await
            .unwrap_or_else(|e| panic!("PutCoupon {code}: {e:?}"))
            .into_inner();
        self.universe.coupons.insert(code.into());
        resp
    }

    /// PlaceOrder through the CheckoutService (a well-formed customer id
    /// joins the universe whatever the outcome).
    pub async fn place_order(
        &mut self,
        request: orch::PlaceOrderRequest,
    ) -> Result<orch::PlaceOrderResponse, Status> {
        if id_problem(&request.customer_id).is_none() {
            self.universe.customers.insert(request.customer_id.clone());
        }
        self.clients
            .checkout
            .clone()
            .place_order(request)
            .await
            .map(Response::into_inner)
    }

    /// PlaceOrder that must succeed.
    pub async fn place_ok(&mut self, request: orch::PlaceOrderRequest) -> orch::PlaceOrderResponse {
        let key = request.idempotency_key.clone();
        self.place_order(request)
            .await
            .unwrap_or_else(|e| panic!("PlaceOrder {key}: {e:?}"))
    }

    /// ConfirmPayment.
    pub async fn confirm_payment(
        &self,
        order_id: &str,
        payment_ref: &str,
    ) -> Result<orch::ConfirmPaymentResponse, Status> {
        self.clients
            .checkout
            .clone()
            .confirm_payment(orch::ConfirmPaymentRequest {
                order_id: order_id.into(),
                payment_ref: payment_ref.into(),
            })
            .await
            .map(Response::into_inner)
    }

    /// CancelOrder.
    pub async fn cancel_order(
        &self,
        order_id: &str,
        reason: &str,
    ) -> Result<orch::CancelOrderResponse, Status> {
        self.clients
            .checkout
            .clone()
            .cancel_order(orch::CancelOrderRequest {
                order_id: order_id.into(),
                reason: reason.into(),
            })
            .await
            .map(Response::into_inner)
    }

    /// A product's stock ledger.
    pub async fn product(&self, sku: &str) -> inv::GetProductResponse {
        self.clients
            .inventory
            .clone()
            .get_product(inv::GetProductRequest { sku: sku.into() })
            .await
            .unwrap_or_else(|e| panic!("GetProduct {sku}: {e:?}"))
            .into_inner()
    }

    /// A customer's points ledger.
    pub async fn balance(&self, customer: &str) -> loy::GetBalanceResponse {
        self.clients
            .loyalty
            .clone()
            .get_balance(loy::GetBalanceRequest {
                customer_id: customer.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetBalance {customer}: {e:?}"))
            .into_inner()
    }

    /// A coupon and its use count.
    pub async fn coupon(&self, code: &str) -> ord::GetCouponResponse {
        self.clients
            .order
            .clone()
            .get_coupon(ord::GetCouponRequest { code: code.into() })
            .await
            .unwrap_or_else(|e| panic!("GetCoupon {code}: {e:?}"))
            .into_inner()
    }

    /// An order, read from order-svc.
    pub async fn order(&self, order_id: &str) -> ord::Order {
        self.clients
            .order
            .clone()
            .get_order(ord::GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetOrder {order_id}: {e:?}"))
            .into_inner()
            .order
            .unwrap_or_else(|| panic!("GetOrder {order_id} returned no order"))
    }

    /// Every order of `customer` (all pages).
    pub async fn orders_of(&self, customer: &str) -> Vec<ord::Order> {
        let mut client = self.clients.order.clone();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_orders(ord::ListOrdersRequest {
                    customer_id: customer.into(),
                    page_size: 100,
                    page_token: token,
                })
                .await
                .unwrap_or_else(|e| panic!("ListOrders {customer}: {e:?}"))
                .into_inner();
            out.extend(page.orders);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }

    /// One saga, from the SagaAdminService.
    pub async fn saga(&self, saga_id: &str) -> orch::Saga {
        self.clients
            .admin
            .clone()
            .get_saga(orch::GetSagaRequest {
                saga_id: saga_id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetSaga {saga_id}: {e:?}"))
            .into_inner()
            .saga
            .unwrap_or_else(|| panic!("GetSaga {saga_id} returned no saga"))
    }

    /// Every saga (all pages of ListSagas).
    pub async fn sagas(&self) -> Vec<orch::Saga> {
        invariants::all_sagas(&mut self.clients.admin.clone())
            .await
            .unwrap_or_else(|e| panic!("ListSagas: {e}"))
    }

    /// Sagas in `state` (all pages of ListSagas with a state filter).
    pub async fn sagas_in(&self, state: orch::SagaState) -> Vec<orch::Saga> {
        let mut admin = self.clients.admin.clone();
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = admin
                .list_sagas(orch::ListSagasRequest {
                    state: state.into(),
                    page_size: 100,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("ListSagas {}: {e:?}", state.as_str_name()))
                .into_inner();
            out.extend(page.sagas);
            if page.next_page_token.is_empty() {
                return out;
            }
            token = page.next_page_token;
        }
    }

    /// Waits (bounded) until no saga is RUNNING or COMPENSATING; returns
    /// every saga as last listed.
    pub async fn quiesce(&self) -> Vec<orch::Saga> {
        quiesce(&self.clients.admin, SETTLE_WITHIN).await
    }

    /// Quiesces, then checks the invariants over everything seeded;
    /// panics with the first violation.
    pub async fn assert_invariants(&self) -> Summary {
        self.quiesce().await;
        invariants::check(&self.clients, &self.universe)
            .await
            .unwrap_or_else(|v| panic!("{v}\nuniverse: {:?}", self.universe))
    }
}
