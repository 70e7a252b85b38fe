//! The one place wire (prost) types and domain types meet. Every message is
//! destructured field by field, so a field added to the proto breaks the
//! build here until it is handled.

use microshop_proto::inventory::v1 as pb;

use crate::domain::{Product, ProductUpdate, ReleaseOutcome, ReservedLine, StockLine};

impl From<pb::PutProductRequest> for ProductUpdate {
    fn from(req: pb::PutProductRequest) -> Self {
        let pb::PutProductRequest {
            sku,
            name,
            unit_price,
            stock,
        } = req;
        Self {
            sku,
            name,
            unit_price,
            stock,
        }
    }
}

impl From<pb::StockItem> for StockLine {
    fn from(item: pb::StockItem) -> Self {
        let pb::StockItem { sku, quantity } = item;
        Self { sku, quantity }
    }
}

impl From<StockLine> for pb::StockItem {
    fn from(line: StockLine) -> Self {
        let StockLine { sku, quantity } = line;
        Self { sku, quantity }
    }
}

impl From<ReservedLine> for pb::ReservedLine {
    fn from(line: ReservedLine) -> Self {
        let ReservedLine {
            sku,
            name,
            quantity,
            unit_price,
        } = line;
        Self {
            sku,
            name,
            quantity,
            unit_price,
        }
    }
}

impl From<pb::ReservedLine> for ReservedLine {
    fn from(line: pb::ReservedLine) -> Self {
        let pb::ReservedLine {
            sku,
            name,
            quantity,
            unit_price,
        } = line;
        Self {
            sku,
            name,
            quantity,
            unit_price,
        }
    }
}

impl From<Product> for pb::Product {
    fn from(p: Product) -> Self {
        let stock = p.stock();
        let Product {
            sku,
            name,
            unit_price,
            available,
            reserved,
            sold,
            restocked,
        } = p;
        Self {
            sku,
            name,
            unit_price,
            stock,
            available,
            reserved,
            sold,
            restocked,
        }
    }
}

impl From<pb::Product> for Product {
    fn from(p: pb::Product) -> Self {
        let pb::Product {
            sku,
            name,
            unit_price,
            stock: _, // derived: available + reserved
            available,
            reserved,
            sold,
            restocked,
        } = p;
        Self {
            sku,
            name,
            unit_price,
            available,
            reserved,
            sold,
            restocked,
        }
    }
}

impl From<Product> for pb::GetProductResponse {
    fn from(p: Product) -> Self {
        let pb::Product {
            sku,
            name,
            unit_price,
            stock,
            available,
            reserved,
            sold,
            restocked,
        } = p.into();
        Self {
            sku,
            name,
            unit_price,
            stock,
            available,
            reserved,
            sold,
            restocked,
        }
    }
}

impl From<Product> for pb::PutProductResponse {
    fn from(p: Product) -> Self {
        let pb::Product {
            sku,
            name,
            unit_price,
            stock,
            available,
            reserved,
            sold,
            restocked,
        } = p.into();
        Self {
            sku,
            name,
            unit_price,
            stock,
            available,
            reserved,
            sold,
            restocked,
        }
    }
}

/// The wire outcome and unit count of a release.
pub fn release_to_wire(outcome: ReleaseOutcome) -> (pb::ReleaseOutcome, i64) {
    match outcome {
        ReleaseOutcome::Released(units) => (pb::ReleaseOutcome::Released, units),
        ReleaseOutcome::Restocked(units) => (pb::ReleaseOutcome::Restocked, units),
        ReleaseOutcome::NothingReserved => (pb::ReleaseOutcome::NothingReserved, 0),
    }
}
