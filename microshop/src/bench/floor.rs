//! The floor: what the saga's chain of gRPC hops costs with nothing else.
//! A client calls an orchestrator-like server whose PlaceOrder makes the
//! saga's participant calls in the saga's order (GetProducts, QuoteOrder,
//! ReserveStock, [DeductPoints], CreateOrder) on no-op participant
//! servers: no storage, no saga log, in-process over loopback.

use std::time::Duration;

use microshop_proto::{
    inventory::v1::{
        self as inv,
        inventory_service_client::InventoryServiceClient,
        inventory_service_server::{InventoryService, InventoryServiceServer},
    },
    loyalty::v1::{
        self as loy,
        loyalty_service_client::LoyaltyServiceClient,
        loyalty_service_server::{LoyaltyService, LoyaltyServiceServer},
    },
    orchestrator::v1::{
        self as pb,
        checkout_service_server::{CheckoutService, CheckoutServiceServer},
    },
    order::v1::{
        self as ord,
        order_service_client::OrderServiceClient,
        order_service_server::{OrderService, OrderServiceServer},
    },
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Endpoint, server::TcpIncoming},
};

fn unused<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the floor"))
}

#[derive(Clone, Copy)]
struct NoopInventory;

#[tonic::async_trait]
impl InventoryService for NoopInventory {
    async fn put_product(
        &self,
        _: Request<inv::PutProductRequest>,
    ) -> Result<Response<inv::PutProductResponse>, Status> {
        unused()
    }
    async fn get_product(
        &self,
        _: Request<inv::GetProductRequest>,
    ) -> Result<Response<inv::GetProductResponse>, Status> {
        unused()
    }
    async fn get_products(
        &self,
        _: Request<inv::GetProductsRequest>,
    ) -> Result<Response<inv::GetProductsResponse>, Status> {
        Ok(Response::new(inv::GetProductsResponse::default()))
    }
    async fn reserve_stock(
        &self,
        _: Request<inv::ReserveStockRequest>,
    ) -> Result<Response<inv::ReserveStockResponse>, Status> {
        Ok(Response::new(inv::ReserveStockResponse::default()))
    }
    async fn release_stock(
        &self,
        _: Request<inv::ReleaseStockRequest>,
    ) -> Result<Response<inv::ReleaseStockResponse>, Status> {
        unused()
    }
    async fn commit_stock(
        &self,
        _: Request<inv::CommitStockRequest>,
    ) -> Result<Response<inv::CommitStockResponse>, Status> {
        unused()
    }
}

#[derive(Clone, Copy)]
struct NoopLoyalty;

#[tonic::async_trait]
impl LoyaltyService for NoopLoyalty {
    async fn get_balance(
        &self,
        _: Request<loy::GetBalanceRequest>,
    ) -> Result<Response<loy::GetBalanceResponse>, Status> {
        unused()
    }
    async fn grant_points(
        &self,
        _: Request<loy::GrantPointsRequest>,
    ) -> Result<Response<loy::GrantPointsResponse>, Status> {
        unused()
    }
    async fn deduct_points(
        &self,
        _: Request<loy::DeductPointsRequest>,
    ) -> Result<Response<loy::DeductPointsResponse>, Status> {
        Ok(Response::new(loy::DeductPointsResponse::default()))
    }
    async fn refund_points(
        &self,
        _: Request<loy::RefundPointsRequest>,
    ) -> Result<Response<loy::RefundPointsResponse>, Status> {
        unused()
    }
    async fn earn_points(
        &self,
        _: Request<loy::EarnPointsRequest>,
    ) -> Result<Response<loy::EarnPointsResponse>, Status> {
        unused()
    }
}

#[derive(Clone, Copy)]
struct NoopOrder;

#[tonic::async_trait]
impl OrderService for NoopOrder {
    async fn quote_order(
        &self,
        _: Request<ord::QuoteOrderRequest>,
    ) -> Result<Response<ord::QuoteOrderResponse>, Status> {
        Ok(Response::new(ord::QuoteOrderResponse::default()))
    }
    async fn create_order(
        &self,
        _: Request<ord::CreateOrderRequest>,
    ) -> Result<Response<ord::CreateOrderResponse>, Status> {
        Ok(Response::new(ord::CreateOrderResponse::default()))
    }
    async fn cancel_order(
        &self,
        _: Request<ord::CancelOrderRequest>,
    ) -> Result<Response<ord::CancelOrderResponse>, Status> {
        unused()
    }
    async fn mark_paid(
        &self,
        _: Request<ord::MarkPaidRequest>,
    ) -> Result<Response<ord::MarkPaidResponse>, Status> {
        unused()
    }
    async fn mark_shipped(
        &self,
        _: Request<ord::MarkShippedRequest>,
    ) -> Result<Response<ord::MarkShippedResponse>, Status> {
        unused()
    }
    async fn get_order(
        &self,
        _: Request<ord::GetOrderRequest>,
    ) -> Result<Response<ord::GetOrderResponse>, Status> {
        unused()
    }
    async fn list_orders(
        &self,
        _: Request<ord::ListOrdersRequest>,
    ) -> Result<Response<ord::ListOrdersResponse>, Status> {
        unused()
    }
    async fn put_coupon(
        &self,
        _: Request<ord::PutCouponRequest>,
    ) -> Result<Response<ord::PutCouponResponse>, Status> {
        unused()
    }
    async fn get_coupon(
        &self,
        _: Request<ord::GetCouponRequest>,
    ) -> Result<Response<ord::GetCouponResponse>, Status> {
        unused()
    }
}

/// The floor's orchestrator: PlaceOrder makes the saga's participant calls
/// in the saga's order, with the same per-call timeout header, and nothing
/// else.
#[derive(Clone)]
struct FloorCheckout {
    inventory: InventoryServiceClient<Channel>,
    loyalty: LoyaltyServiceClient<Channel>,
    order: OrderServiceClient<Channel>,
}

fn timed<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(Duration::from_secs(3));
    r
}

#[tonic::async_trait]
impl CheckoutService for FloorCheckout {
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let req = request.into_inner();
        let skus = req.items.iter().map(|i| i.sku.clone()).collect();
        self.inventory
            .clone()
            .get_products(timed(inv::GetProductsRequest { skus }))
            .await?;
        self.order
            .clone()
            .quote_order(timed(ord::QuoteOrderRequest {
                lines: Vec::new(),
                coupon_code: req.coupon_code.clone(),
                points_to_redeem: req.points_to_redeem,
            }))
            .await?;
        let items = req
            .items
            .iter()
            .map(|i| inv::StockItem {
                sku: i.sku.clone(),
                quantity: i.quantity,
            })
            .collect();
        self.inventory
            .clone()
            .reserve_stock(timed(inv::ReserveStockRequest {
                saga_id: req.idempotency_key.clone(),
                items,
            }))
            .await?;
        if req.points_to_redeem > 0 {
            self.loyalty
                .clone()
                .deduct_points(timed(loy::DeductPointsRequest {
                    saga_id: req.idempotency_key.clone(),
                    customer_id: req.customer_id.clone(),
                    points: req.points_to_redeem,
                }))
                .await?;
        }
        self.order
            .clone()
            .create_order(timed(ord::CreateOrderRequest {
                saga_id: req.idempotency_key.clone(),
                customer_id: req.customer_id,
                lines: Vec::new(),
                coupon_code: req.coupon_code,
                redeemed_points: req.points_to_redeem,
                shipping: None,
            }))
            .await?;
        Ok(Response::new(pb::PlaceOrderResponse {
            saga_id: req.idempotency_key,
            state: pb::SagaState::Completed.into(),
            ..Default::default()
        }))
    }

    async fn confirm_payment(
        &self,
        _: Request<pb::ConfirmPaymentRequest>,
    ) -> Result<Response<pb::ConfirmPaymentResponse>, Status> {
        unused()
    }

    async fn cancel_order(
        &self,
        _: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        unused()
    }
}

/// The floor's four servers on loopback.
pub(super) struct Floor {
    pub(super) url: String,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

fn lazy_channel(addr: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Floor {
    pub(super) async fn start() -> anyhow::Result<Self> {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for _ in 0..4 {
            addrs.push(TcpListener::bind(any).await?);
        }
        let orch = addrs.pop().expect("four listeners");
        let ord_l = addrs.pop().expect("four listeners");
        let loy_l = addrs.pop().expect("four listeners");
        let inv_l = addrs.pop().expect("four listeners");
        let url = format!("http://{}", orch.local_addr()?);
        let checkout = FloorCheckout {
            inventory: InventoryServiceClient::new(lazy_channel(inv_l.local_addr()?)?),
            loyalty: LoyaltyServiceClient::new(lazy_channel(loy_l.local_addr()?)?),
            order: OrderServiceClient::new(lazy_channel(ord_l.local_addr()?)?),
        };
        let serve = |listener: TcpListener, router: tonic::service::Routes| {
            let mut rx = stop_rx.clone();
            async move {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                let _ = tonic::transport::Server::builder()
                    .add_routes(router)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await;
            }
        };
        use tonic::service::Routes;
        tasks.spawn(serve(
            inv_l,
            Routes::new(InventoryServiceServer::new(NoopInventory)),
        ));
        tasks.spawn(serve(
            loy_l,
            Routes::new(LoyaltyServiceServer::new(NoopLoyalty)),
        ));
        tasks.spawn(serve(
            ord_l,
            Routes::new(OrderServiceServer::new(NoopOrder)),
        ));
        tasks.spawn(serve(
            orch,
            Routes::new(CheckoutServiceServer::new(checkout)),
        ));
        Ok(Self { url, stop, tasks })
    }

    pub(super) async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
