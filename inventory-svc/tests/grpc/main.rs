//! inventory-svc end to end: the real server (`run`) on a loopback port, a
//! fresh data directory per test, and the generated gRPC client.
//!
//! The tests, by concern: `catalog` (PutProduct/GetProduct round trips and
//! reservations priced from the catalog), `stock` (the oversell race, the
//! randomized ledger, all or nothing), `barriers` (the participant barrier:
//! replays, null compensations, commit and release), `bad_input` (refusals
//! that name the field, unknown SKUs) and `restart` (data and barriers
//! across a restart).

mod bad_input;
mod barriers;
mod catalog;
mod restart;
mod stock;

use std::path::Path;

use inventory_svc::{InventoryConfig, run};
use microshop_proto::inventory::v1::{
    CommitStockRequest, CommitStockResponse, GetProductRequest, GetProductResponse,
    PutProductRequest, PutProductResponse, ReleaseStockRequest, ReleaseStockResponse,
    ReserveStockRequest, ReserveStockResponse, ReservedLine, StockItem,
    inventory_service_client::InventoryServiceClient,
};
use microshop_runtime::{Reason, errors::reason_of, testing::TestServer};
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt;

type Client = InventoryServiceClient<Channel>;

/// A running server and a client of it.
pub(crate) struct Server {
    pub(crate) client: Client,
    inner: TestServer,
}

impl Server {
    /// Serves `dir` on a fresh loopback port and connects to it.
    pub(crate) async fn start(dir: &Path) -> Self {
        let inner = TestServer::start(|listener, shutdown| {
            run(
                listener,
                InventoryConfig::new(microshop_runtime::testing::server_args(dir)),
                shutdown,
            )
        })
        .await;
        Self {
            client: InventoryServiceClient::new(inner.channel.clone()),
            inner,
        }
    }

    /// Stops the server gracefully and waits for it to finish.
    pub(crate) async fn stop(self) {
        drop(self.client);
        self.inner.stop().await;
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

pub(crate) async fn put(
    client: &mut Client,
    sku: &str,
    name: &str,
    unit_price: i64,
    stock: i64,
) -> Result<PutProductResponse, Status> {
    client
        .put_product(PutProductRequest {
            sku: sku.into(),
            name: name.into(),
            unit_price,
            stock,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Fetches a product and checks the bucket invariants every answer must hold.
pub(crate) async fn product(client: &mut Client, sku: &str) -> GetProductResponse {
    let p = client
        .get_product(GetProductRequest { sku: sku.into() })
        .await
        .unwrap_or_else(|s| panic!("get product {sku}: {s:?}"))
        .into_inner();
    assert_sane(
        &p.sku,
        p.stock,
        p.available,
        p.reserved,
        p.sold,
        p.restocked,
    );
    p
}

pub(crate) fn assert_sane(
    sku: &str,
    stock: i64,
    available: i64,
    reserved: i64,
    sold: i64,
    restocked: i64,
) {
    assert!(
        available >= 0 && reserved >= 0 && sold >= 0 && restocked >= 0,
        "negative bucket for {sku}: available {available}, reserved {reserved}, \
         sold {sold}, restocked {restocked}"
    );
    assert_eq!(
        stock,
        available + reserved,
        "{sku}: stock must be available + reserved"
    );
}

fn items(lines: &[(&str, i64)]) -> Vec<StockItem> {
    lines
        .iter()
        .map(|&(sku, quantity)| StockItem {
            sku: sku.into(),
            quantity,
        })
        .collect()
}

pub(crate) async fn reserve(
    client: &mut Client,
    saga_id: &str,
    lines: &[(&str, i64)],
) -> Result<ReserveStockResponse, Status> {
    client
        .reserve_stock(ReserveStockRequest {
            saga_id: saga_id.into(),
            items: items(lines),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub(crate) async fn release(client: &mut Client, saga_id: &str) -> ReleaseStockResponse {
    client
        .release_stock(ReleaseStockRequest {
            saga_id: saga_id.into(),
        })
        .await
        .unwrap_or_else(|s| panic!("release {saga_id}: {s:?}"))
        .into_inner()
}

pub(crate) async fn commit(
    client: &mut Client,
    saga_id: &str,
) -> Result<CommitStockResponse, Status> {
    client
        .commit_stock(CommitStockRequest {
            saga_id: saga_id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub(crate) fn line(sku: &str, name: &str, quantity: i64, unit_price: i64) -> ReservedLine {
    ReservedLine {
        sku: sku.into(),
        name: name.into(),
        quantity,
        unit_price,
    }
}

pub(crate) fn assert_rejected(status: &Status, code: Code, reason: Reason) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(status), Some(reason), "{status:?}");
}

/// The fields named by the status's `google.rpc.BadRequest`.
pub(crate) fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|br| {
            br.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// `(available, reserved, sold, restocked)` of a product.
pub(crate) fn buckets(p: &GetProductResponse) -> (i64, i64, i64, i64) {
    (p.available, p.reserved, p.sold, p.restocked)
}
