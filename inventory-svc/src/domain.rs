//! Inventory domain types, free of wire and storage concerns.

use serde::{Deserialize, Serialize};

/// A catalog entry with its stock buckets.
/// Invariant: stock put + restocked = available + reserved + sold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Catalog unit price (smallest currency unit).
    pub unit_price: i64,
    /// Units free for reservation.
    pub available: i64,
    /// Units held by reservations.
    pub reserved: i64,
    /// Units committed by payments (never decreases).
    pub sold: i64,
    /// Units of cancelled paid orders put back on sale.
    pub restocked: i64,
}

impl Product {
    /// Units on hand: available + reserved.
    pub fn stock(&self) -> i64 {
        self.available + self.reserved
    }
}

/// What PutProduct sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductUpdate {
    /// Stock keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Catalog unit price.
    pub unit_price: i64,
    /// Units on hand wanted (available + reserved).
    pub stock: i64,
}

impl ProductUpdate {
    /// The product after this update of `existing` (`None`: a new one), or
    /// `Err(reserved)` when the stock asked is below the units reserved.
    pub fn apply(self, existing: Option<Product>) -> Result<Product, i64> {
        match existing {
            Some(existing) if self.stock < existing.reserved => Err(existing.reserved),
            Some(existing) => Ok(Product {
                name: self.name,
                unit_price: self.unit_price,
                available: self.stock - existing.reserved,
                ..existing
            }),
            None => Ok(Product {
                sku: self.sku,
                name: self.name,
                unit_price: self.unit_price,
                available: self.stock,
                reserved: 0,
                sold: 0,
                restocked: 0,
            }),
        }
    }
}

/// A quantity of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    /// Stock keeping unit.
    pub sku: String,
    /// Units.
    pub quantity: i64,
}

/// A reserved line, priced from the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLine {
    /// Stock keeping unit.
    pub sku: String,
    /// Catalog name.
    pub name: String,
    /// Units reserved.
    pub quantity: i64,
    /// Catalog unit price at reservation time.
    pub unit_price: i64,
}

/// Where a saga's reservation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationState {
    /// Units held in `reserved`.
    Reserved,
    /// Units moved to `sold`.
    Committed,
    /// Units given back to `available`.
    Released,
}

/// A saga's reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The lines, merged by SKU.
    pub lines: Vec<ReservedLine>,
    /// Where it is.
    pub state: ReservationState,
}

/// The outcome of ReserveStock, replayed to repeated deliveries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReserveOutcome {
    /// Every line reserved.
    Reserved(Vec<ReservedLine>),
    /// A SKU is unknown: nothing reserved.
    UnknownSku(String),
    /// A line is short: nothing reserved.
    OutOfStock {
        /// The first SKU short.
        sku: String,
        /// Units asked (merged).
        requested: i64,
        /// Units that were available.
        available: i64,
    },
}

/// The outcome of ReleaseStock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseOutcome {
    /// Reserved units went back to available.
    Released(i64),
    /// Sold units went back to available.
    Restocked(i64),
    /// No reservation existed (null compensation).
    NothingReserved,
}

/// The outcome of CommitStock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitOutcome {
    /// Units moved from reserved to sold.
    Committed(i64),
    /// The saga holds no reservation.
    NothingReserved,
    /// The reservation was released before payment.
    Released,
}

/// Merges lines naming the same SKU, keeping first-seen order.
pub fn merge_lines(lines: &[StockLine]) -> Vec<StockLine> {
    let mut merged: Vec<StockLine> = Vec::with_capacity(lines.len());
    for line in lines {
        match merged.iter_mut().find(|m| m.sku == line.sku) {
            Some(m) => m.quantity = m.quantity.saturating_add(line.quantity),
            None => merged.push(line.clone()),
        }
    }
    merged
}
