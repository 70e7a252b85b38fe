//! The InventoryService gRPC handlers: validate, call the store, convert.

use microshop_proto::inventory::v1::{self as pb, inventory_service_server::InventoryService};
use microshop_runtime::validate::{
    MAX_AMOUNT, MAX_LINES, MAX_NAME_BYTES, MAX_QUANTITY, Violations,
};
use tonic::{Request, Response, Status};

use crate::{
    conversions::release_to_wire,
    domain::{CommitOutcome, ProductUpdate, ReserveOutcome, StockLine},
    error::InventoryError,
    store::{CatalogStore, ReservationStore},
};

/// The InventoryService implementation over any store.
#[derive(Clone, Debug)]
pub struct Inventory<S> {
    store: S,
}

impl<S> Inventory<S> {
    /// A service over `store`.
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

fn check(v: Violations) -> Result<(), InventoryError> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(InventoryError::Invalid(v.into_inner()))
    }
}

fn check_lines(v: &mut Violations, items: &[pb::StockItem]) {
    if items.is_empty() {
        v.add("items", "must hold at least one line");
    } else if items.len() > MAX_LINES {
        v.add("items", format!("must hold at most {MAX_LINES} lines"));
    }
    for (i, item) in items.iter().enumerate() {
        v.id(&format!("items[{i}].sku"), &item.sku);
        v.positive(&format!("items[{i}].quantity"), item.quantity, MAX_QUANTITY);
    }
}

#[tonic::async_trait]
impl<S: CatalogStore + ReservationStore> InventoryService for Inventory<S> {
    async fn put_product(
        &self,
        request: Request<pb::PutProductRequest>,
    ) -> Result<Response<pb::PutProductResponse>, Status> {
        let update = ProductUpdate::from(request.into_inner());
        let mut v = Violations::new();
        v.id("sku", &update.sku);
        v.text("name", &update.name, MAX_NAME_BYTES, true);
        v.positive("unit_price", update.unit_price, MAX_AMOUNT);
        v.non_negative("stock", update.stock, MAX_AMOUNT);
        check(v)?;
        let sku = update.sku.clone();
        match self
            .store
            .put_product(update)
            .await
            .map_err(InventoryError::from)?
        {
            Ok(product) => Ok(Response::new(product.into())),
            Err(reserved) => Err(InventoryError::StockBelowReserved { sku, reserved }.into()),
        }
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        let pb::GetProductRequest { sku } = request.into_inner();
        let mut v = Violations::new();
        v.id("sku", &sku);
        check(v)?;
        let found = self
            .store
            .get_products(vec![sku.clone()])
            .await
            .map_err(InventoryError::from)?;
        match found.into_iter().next().flatten() {
            Some(product) => Ok(Response::new(product.into())),
            None => Err(InventoryError::UnknownSku(sku).into()),
        }
    }

    async fn get_products(
        &self,
        request: Request<pb::GetProductsRequest>,
    ) -> Result<Response<pb::GetProductsResponse>, Status> {
        let pb::GetProductsRequest { skus } = request.into_inner();
        let mut v = Violations::new();
        if skus.is_empty() || skus.len() > MAX_LINES {
            v.add("skus", format!("must hold 1 to {MAX_LINES} skus"));
        }
        for (i, sku) in skus.iter().enumerate() {
            v.id(&format!("skus[{i}]"), sku);
        }
        check(v)?;
        let found = self
            .store
            .get_products(skus.clone())
            .await
            .map_err(InventoryError::from)?;
        let mut products = Vec::with_capacity(found.len());
        for (sku, product) in skus.into_iter().zip(found) {
            products.push(product.ok_or(InventoryError::UnknownSku(sku))?.into());
        }
        Ok(Response::new(pb::GetProductsResponse { products }))
    }

    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        let pb::ReserveStockRequest { saga_id, items } = request.into_inner();
        let mut v = Violations::new();
        v.id("saga_id", &saga_id);
        microshop_runtime::observe::record_saga_id(&saga_id);
        check_lines(&mut v, &items);
        check(v)?;
        let lines: Vec<StockLine> = items.into_iter().map(StockLine::from).collect();
        let outcome = self
            .store
            .reserve(saga_id.clone(), lines)
            .await
            .map_err(InventoryError::from)?;
        match outcome {
            None => Err(InventoryError::SagaCompensated(saga_id).into()),
            Some(ReserveOutcome::Reserved(lines)) => Ok(Response::new(pb::ReserveStockResponse {
                saga_id,
                lines: lines.into_iter().map(Into::into).collect(),
            })),
            Some(ReserveOutcome::UnknownSku(sku)) => Err(InventoryError::UnknownSku(sku).into()),
            Some(ReserveOutcome::OutOfStock {
                sku,
                requested,
                available,
            }) => {
                microshop_runtime::metrics::metrics().stock_out();
                Err(InventoryError::OutOfStock {
                    sku,
                    requested,
                    available,
                }
                .into())
            }
        }
    }

    async fn release_stock(
        &self,
        request: Request<pb::ReleaseStockRequest>,
    ) -> Result<Response<pb::ReleaseStockResponse>, Status> {
        let pb::ReleaseStockRequest { saga_id } = request.into_inner();
        let mut v = Violations::new();
        v.id("saga_id", &saga_id);
        microshop_runtime::observe::record_saga_id(&saga_id);
        check(v)?;
        let outcome = self
            .store
            .release(saga_id.clone())
            .await
            .map_err(InventoryError::from)?;
        let (outcome, units) = release_to_wire(outcome);
        Ok(Response::new(pb::ReleaseStockResponse {
            saga_id,
            outcome: outcome.into(),
            units,
        }))
    }

    async fn commit_stock(
        &self,
        request: Request<pb::CommitStockRequest>,
    ) -> Result<Response<pb::CommitStockResponse>, Status> {
        let pb::CommitStockRequest { saga_id } = request.into_inner();
        let mut v = Violations::new();
        v.id("saga_id", &saga_id);
        microshop_runtime::observe::record_saga_id(&saga_id);
        check(v)?;
        match self
            .store
            .commit(saga_id.clone())
            .await
            .map_err(InventoryError::from)?
        {
            CommitOutcome::Committed(units) => {
                Ok(Response::new(pb::CommitStockResponse { saga_id, units }))
            }
            CommitOutcome::NothingReserved => {
                Ok(Response::new(pb::CommitStockResponse { saga_id, units: 0 }))
            }
            CommitOutcome::Released => Err(InventoryError::ReservationReleased(saga_id).into()),
        }
    }
}
