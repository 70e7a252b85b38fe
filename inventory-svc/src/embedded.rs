//! The inventory stores on the embedded engine (`inventory.fjall`).
//!
//! Tables: products by SKU, reservations by checkout saga (the business
//! record a release or a commit acts on, kept), and the barrier. Every
//! write is a participant's answer, so every write is durable before it is
//! answered.

use std::path::Path;

use microshop_storage::{
    StorageError,
    barrier::{self, ActionGate},
    decode,
    embedded::{Durable, EmbeddedDb, Sync, Table, Txn},
    encode,
};

use crate::{
    domain::{
        CommitOutcome, Product, ProductUpdate, ReleaseOutcome, Reservation, ReservationState,
        ReserveOutcome, ReservedLine, StockLine, merge_lines,
    },
    store::{CatalogStore, ReservationStore},
};

/// SKU → product.
pub const PRODUCTS: Table = Table::new(1, "products");
/// Checkout saga id → its reservation.
pub const RESERVATIONS: Table = Table::new(2, "reservations");

const OP_RESERVE: &str = "reserve";
const OP_RELEASE: &str = "release";
const OP_COMMIT: &str = "commit";

/// Inventory on redb (`inventory.redb` in the data directory).
#[derive(Clone, Debug)]
pub struct EmbeddedInventory {
    db: EmbeddedDb,
}

impl EmbeddedInventory {
    /// Opens or creates the store under `dir`.
    pub fn open(dir: &Path, durable: Durable) -> Result<Self, StorageError> {
        let db = EmbeddedDb::open(dir, "inventory", durable, |_| Ok(()))?;
        Ok(Self { db })
    }
}

fn load_product(txn: &Txn, sku: &str) -> Result<Option<Product>, StorageError> {
    txn.get(&PRODUCTS.str_key(sku))?
        .map(|v| decode(&v))
        .transpose()
}

fn save_product(txn: &mut Txn, product: &Product) -> Result<(), StorageError> {
    txn.put(PRODUCTS.str_key(&product.sku), encode(product)?);
    Ok(())
}

fn load_reservation(txn: &Txn, saga_id: &str) -> Result<Option<Reservation>, StorageError> {
    txn.get(&RESERVATIONS.str_key(saga_id))?
        .map(|v| decode(&v))
        .transpose()
}

fn save_reservation(
    txn: &mut Txn,
    saga_id: &str,
    reservation: &Reservation,
) -> Result<(), StorageError> {
    txn.put(RESERVATIONS.str_key(saga_id), encode(reservation)?);
    Ok(())
}

/// Moves `lines` between buckets of their products with `apply`.
fn move_units(
    txn: &mut Txn,
    lines: &[ReservedLine],
    apply: impl Fn(&mut Product, i64),
) -> Result<(), StorageError> {
    for line in lines {
        let mut product = load_product(txn, &line.sku)?.ok_or_else(|| {
            StorageError::Corrupt(format!("reserved sku {} has no product", line.sku))
        })?;
        apply(&mut product, line.quantity);
        save_product(txn, &product)?;
    }
    Ok(())
}

fn reserve_in(
    txn: &mut Txn,
    saga_id: &str,
    lines: &[StockLine],
) -> Result<ReserveOutcome, StorageError> {
    // Every check first: nothing is written unless every line fits.
    let merged = merge_lines(lines);
    let mut products = Vec::with_capacity(merged.len());
    for line in &merged {
        let Some(product) = load_product(txn, &line.sku)? else {
            return Ok(ReserveOutcome::UnknownSku(line.sku.clone()));
        };
        if product.available < line.quantity {
            return Ok(ReserveOutcome::OutOfStock {
                sku: line.sku.clone(),
                requested: line.quantity,
                available: product.available,
            });
        }
        products.push(product);
    }
    let mut reserved = Vec::with_capacity(merged.len());
    for (line, mut product) in merged.iter().zip(products) {
        product.available -= line.quantity;
        product.reserved += line.quantity;
        save_product(txn, &product)?;
        reserved.push(ReservedLine {
            sku: product.sku,
            name: product.name,
            quantity: line.quantity,
            unit_price: product.unit_price,
        });
    }
    save_reservation(
        txn,
        saga_id,
        &Reservation {
            lines: reserved.clone(),
            state: ReservationState::Reserved,
        },
    )?;
    Ok(ReserveOutcome::Reserved(reserved))
}

impl CatalogStore for EmbeddedInventory {
    async fn put_product(
        &self,
        update: ProductUpdate,
    ) -> Result<Result<Product, i64>, StorageError> {
        self.db
            .write(Sync::Durable, move |txn| {
                let existing = load_product(txn, &update.sku)?;
                let product = match update.apply(existing) {
                    Ok(product) => product,
                    Err(reserved) => return Ok(Err(reserved)),
                };
                save_product(txn, &product)?;
                Ok(Ok(product))
            })
            .await
    }

    async fn get_products(&self, skus: Vec<String>) -> Result<Vec<Option<Product>>, StorageError> {
        self.db
            .read(move |view| {
                skus.iter()
                    .map(|sku| {
                        view.get(&PRODUCTS.str_key(sku))?
                            .map(|v| decode(&v))
                            .transpose()
                    })
                    .collect()
            })
            .await
    }
}

impl ReservationStore for EmbeddedInventory {
    async fn reserve(
        &self,
        saga_id: String,
        lines: Vec<StockLine>,
    ) -> Result<Option<ReserveOutcome>, StorageError> {
        self.db
            .write(Sync::Durable, move |txn| {
                match barrier::action_gate(txn, &saga_id, OP_RESERVE, OP_RELEASE)? {
                    ActionGate::Replay(first) => return Ok(Some(first)),
                    ActionGate::Compensated => return Ok(None),
                    ActionGate::Proceed => {}
                }
                let outcome = reserve_in(txn, &saga_id, &lines)?;
                barrier::record(txn, &saga_id, OP_RESERVE, &outcome)?;
                Ok(Some(outcome))
            })
            .await
    }

    async fn release(&self, saga_id: String) -> Result<ReleaseOutcome, StorageError> {
        self.db
            .write(Sync::Durable, move |txn| {
                if let Some(first) = barrier::outcome(txn, &saga_id, OP_RELEASE)? {
                    return Ok(first);
                }
                let outcome = match load_reservation(txn, &saga_id)? {
                    None => ReleaseOutcome::NothingReserved,
                    Some(mut r) => {
                        let units = r.lines.iter().map(|l| l.quantity).sum();
                        let outcome = match r.state {
                            ReservationState::Reserved => {
                                move_units(txn, &r.lines, |p, q| {
                                    p.reserved -= q;
                                    p.available += q;
                                })?;
                                ReleaseOutcome::Released(units)
                            }
                            ReservationState::Committed => {
                                move_units(txn, &r.lines, |p, q| {
                                    p.available += q;
                                    p.restocked += q;
                                })?;
                                ReleaseOutcome::Restocked(units)
                            }
                            ReservationState::Released => ReleaseOutcome::Released(0),
                        };
                        r.state = ReservationState::Released;
                        save_reservation(txn, &saga_id, &r)?;
                        outcome
                    }
                };
                barrier::record(txn, &saga_id, OP_RELEASE, &outcome)?;
                Ok(outcome)
            })
            .await
    }

    async fn commit(&self, saga_id: String) -> Result<CommitOutcome, StorageError> {
        self.db
            .write(Sync::Durable, move |txn| {
                if let Some(first) = barrier::outcome(txn, &saga_id, OP_COMMIT)? {
                    return Ok(first);
                }
                let outcome = match load_reservation(txn, &saga_id)? {
                    None => CommitOutcome::NothingReserved,
                    // Already committed (its barrier entry expired since):
                    // the same answer, no second move. The reservation is
                    // the business record; it outlives the barrier.
                    Some(r) if r.state == ReservationState::Committed => {
                        CommitOutcome::Committed(r.lines.iter().map(|l| l.quantity).sum())
                    }
                    Some(r) if r.state != ReservationState::Reserved => CommitOutcome::Released,
                    Some(mut r) => {
                        move_units(txn, &r.lines, |p, q| {
                            p.reserved -= q;
                            p.sold += q;
                        })?;
                        r.state = ReservationState::Committed;
                        save_reservation(txn, &saga_id, &r)?;
                        CommitOutcome::Committed(r.lines.iter().map(|l| l.quantity).sum())
                    }
                };
                barrier::record(txn, &saga_id, OP_COMMIT, &outcome)?;
                Ok(outcome)
            })
            .await
    }
}

impl microshop_storage::Ping for EmbeddedInventory {
    async fn ping(&self) -> Result<(), StorageError> {
        self.db.ping().await
    }
}

impl microshop_storage::BarrierPurge for EmbeddedInventory {
    async fn purge_barrier(&self, before_ms: i64, limit: usize) -> Result<u64, StorageError> {
        self.db
            // Lost in a power cut, it is simply purged again.
            .write(Sync::Buffered, move |txn| {
                barrier::purge(txn, before_ms, limit)
            })
            .await
    }
}
