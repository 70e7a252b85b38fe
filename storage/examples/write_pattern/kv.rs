//! The stores' operations over numbered tables of byte keys and values, the
//! one `Mesh` that fjall and the append file share; apart so both engines
//! write exactly the same records.

use std::future::Future;

use crate::{
    Res,
    records::{
        COUPON, Coupon, CreateRecord, NewOrder, Product, Reservation, ReservationState,
        ReserveOutcome, ReservedLine, SagaState, build_order, now_ms, seed_coupon, seed_products,
    },
    saga::{BeginRec, Mesh, SaveBody, SaveRec},
};

/// A write transaction over numbered tables of byte keys and values.
pub(crate) trait KvTx {
    fn get(&mut self, table: usize, key: &[u8]) -> Res<Option<Vec<u8>>>;
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]);
    fn del(&mut self, table: usize, key: &[u8]);
}

// Saga log tables.
const T_SAGAS: usize = 0;
pub(crate) const T_KEYS: usize = 1;
const T_BY_SEQ: usize = 2;
const T_BY_STATE: usize = 3;
const T_UNFINISHED: usize = 4;
pub(crate) const T_META: usize = 5;
const T_DELTAS: usize = 6;
pub(crate) const LOG_TABLES: [&str; 7] = [
    "sagas",
    "idempotency_keys",
    "sagas_by_seq",
    "sagas_by_state",
    "unfinished_sagas",
    "meta",
    "saga_deltas",
];
// Inventory tables.
pub(crate) const T_PRODUCTS: usize = 0;
const T_RESERVATIONS: usize = 1;
pub(crate) const T_INV_BARRIER: usize = 2;
pub(crate) const INVENTORY_TABLES: [&str; 3] = ["products", "reservations", "barrier"];
// Order tables.
const T_ORDERS: usize = 0;
pub(crate) const T_COUPONS: usize = 1;
const T_CUSTOMER_ORDERS: usize = 2;
pub(crate) const T_ORDER_META: usize = 3;
pub(crate) const T_ORDER_BARRIER: usize = 4;
pub(crate) const ORDER_TABLES: [&str; 5] =
    ["orders", "coupons", "customer_orders", "meta", "barrier"];

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            v.push(0);
        }
        v.extend_from_slice(p);
    }
    v
}

fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

fn delta_key(saga_id: &[u8], n: u8) -> Vec<u8> {
    let mut v = saga_id.to_vec();
    v.push(n);
    v
}

fn kv_u64(v: Option<Vec<u8>>) -> u64 {
    v.and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

fn kv_begin(tx: &mut dyn KvTx, b: &BeginRec) -> Res<u64> {
    if tx.get(T_KEYS, b.key.as_bytes())?.is_some() {
        return Err("duplicate idempotency key".into());
    }
    let seq = kv_u64(tx.get(T_META, b"seq")?) + 1;
    tx.put(T_META, b"seq", &seq.to_be_bytes());
    let id = b.saga_id.as_bytes();
    tx.put(T_KEYS, b.key.as_bytes(), id);
    tx.put(T_BY_SEQ, &seq.to_be_bytes(), id);
    tx.put(T_SAGAS, id, &b.bytes);
    tx.put(T_BY_STATE, &seq_key(&[b.state], seq), id);
    tx.put(T_UNFINISHED, id, &seq.to_be_bytes());
    Ok(seq)
}

fn kv_save(tx: &mut dyn KvTx, s: &SaveRec) -> Res<()> {
    let id = s.saga_id.as_bytes();
    match &s.body {
        SaveBody::Full(bytes) => tx.put(T_SAGAS, id, bytes),
        SaveBody::Delta(n, bytes) => tx.put(T_DELTAS, &delta_key(id, *n), bytes),
    }
    if s.old_state != s.new_state {
        tx.del(T_BY_STATE, &seq_key(&[s.old_state], s.seq));
        tx.put(T_BY_STATE, &seq_key(&[s.new_state], s.seq), id);
        if s.new_state == SagaState::Completed.index() {
            tx.del(T_UNFINISHED, id);
        } else {
            tx.put(T_UNFINISHED, id, &s.seq.to_be_bytes());
        }
    }
    Ok(())
}

fn kv_purge(tx: &mut dyn KvTx, sagas: &[(String, String, u64)]) {
    for (id, key, seq) in sagas {
        tx.del(T_SAGAS, id.as_bytes());
        tx.del(T_KEYS, key.as_bytes());
        tx.del(T_BY_SEQ, &seq.to_be_bytes());
        tx.del(T_BY_STATE, &seq_key(&[SagaState::Completed.index()], *seq));
        for n in 1..=3u8 {
            tx.del(T_DELTAS, &delta_key(id.as_bytes(), n));
        }
    }
}

/// The barrier gate: `action` must not have run, nor its compensation.
fn kv_gate(tx: &mut dyn KvTx, table: usize, saga_id: &str, action: &str, comp: &str) -> Res<()> {
    if tx
        .get(table, &cat(&[saga_id.as_bytes(), action.as_bytes()]))?
        .is_some()
        || tx
            .get(table, &cat(&[saga_id.as_bytes(), comp.as_bytes()]))?
            .is_some()
    {
        return Err("delivered twice".into());
    }
    Ok(())
}

fn kv_reserve(tx: &mut dyn KvTx, saga_id: &str, sku: &str, qty: i64) -> Res<()> {
    kv_gate(tx, T_INV_BARRIER, saga_id, "reserve", "release")?;
    let mut product: Product =
        serde_json::from_slice(&tx.get(T_PRODUCTS, sku.as_bytes())?.ok_or("unknown sku")?)?;
    if product.available < qty {
        return Err("out of stock".into());
    }
    product.available -= qty;
    product.reserved += qty;
    tx.put(T_PRODUCTS, sku.as_bytes(), &serde_json::to_vec(&product)?);
    let line = ReservedLine {
        sku: product.sku,
        name: product.name,
        quantity: qty,
        unit_price: product.unit_price,
    };
    let reservation = Reservation {
        lines: vec![line.clone()],
        state: ReservationState::Reserved,
    };
    tx.put(
        T_RESERVATIONS,
        saga_id.as_bytes(),
        &serde_json::to_vec(&reservation)?,
    );
    tx.put(
        T_INV_BARRIER,
        &cat(&[saga_id.as_bytes(), b"reserve"]),
        &serde_json::to_vec(&ReserveOutcome::Reserved(vec![line]))?,
    );
    Ok(())
}

fn kv_create(tx: &mut dyn KvTx, new: NewOrder) -> Res<()> {
    let saga_id = new.saga_id.clone();
    kv_gate(tx, T_ORDER_BARRIER, &saga_id, "create", "cancel")?;
    let coupon: Option<Coupon> = tx
        .get(T_COUPONS, COUPON.as_bytes())?
        .map(|v| serde_json::from_slice(&v))
        .transpose()?;
    let order = build_order(new, coupon.as_ref(), now_ms());
    let seq = kv_u64(tx.get(T_ORDER_META, b"order_seq")?) + 1;
    tx.put(T_ORDER_META, b"order_seq", &seq.to_be_bytes());
    tx.put(
        T_ORDERS,
        order.order_id.as_bytes(),
        &serde_json::to_vec(&order)?,
    );
    let mut customer = order.customer_id.as_bytes().to_vec();
    customer.push(0);
    tx.put(
        T_CUSTOMER_ORDERS,
        &seq_key(&customer, u64::MAX - seq),
        order.order_id.as_bytes(),
    );
    tx.put(
        T_ORDER_BARRIER,
        &cat(&[saga_id.as_bytes(), b"create"]),
        &serde_json::to_vec(&CreateRecord::Created {
            order_id: order.order_id,
        })?,
    );
    Ok(())
}

fn kv_seed_inventory(tx: &mut dyn KvTx) -> Res<()> {
    for p in seed_products() {
        tx.put(T_PRODUCTS, p.sku.as_bytes(), &serde_json::to_vec(&p)?);
    }
    Ok(())
}

fn kv_seed_orders(tx: &mut dyn KvTx) -> Res<()> {
    tx.put(
        T_COUPONS,
        COUPON.as_bytes(),
        &serde_json::to_vec(&seed_coupon())?,
    );
    Ok(())
}

/// A byte-KV store of the mesh: one of fjall or the append file.
pub(crate) trait KvStore: Send + Sync + 'static {
    fn write<R: Send>(
        &self,
        f: impl FnOnce(&mut dyn KvTx) -> Res<R> + Send,
    ) -> impl Future<Output = Res<R>> + Send;
    fn syncs(&self) -> u64;
    fn settle(&self) -> Res<()> {
        Ok(())
    }
    fn get(&self, _table: usize, _key: &[u8]) -> Res<Option<usize>> {
        Ok(None)
    }
}

pub(crate) struct KvMesh<S> {
    pub(crate) log: S,
    pub(crate) inventory: S,
    pub(crate) orders: S,
}

impl<S: KvStore> Mesh for KvMesh<S> {
    async fn seed(&self) -> Res<()> {
        self.inventory.write(kv_seed_inventory).await?;
        self.orders.write(kv_seed_orders).await
    }
    async fn begin(&self, b: BeginRec) -> Res<u64> {
        self.log.write(|tx| kv_begin(tx, &b)).await
    }
    async fn save(&self, s: SaveRec) -> Res<()> {
        self.log.write(|tx| kv_save(tx, &s)).await
    }
    async fn reserve(&self, saga_id: String, sku: String, qty: i64) -> Res<()> {
        self.inventory
            .write(|tx| kv_reserve(tx, &saga_id, &sku, qty))
            .await
    }
    async fn create_order(&self, order: NewOrder) -> Res<()> {
        self.orders.write(|tx| kv_create(tx, order)).await
    }
    fn syncs(&self) -> Option<u64> {
        Some(self.log.syncs() + self.inventory.syncs() + self.orders.syncs())
    }
    fn settle(&self) -> Res<()> {
        self.log.settle()?;
        self.inventory.settle()?;
        self.orders.settle()
    }
    fn get_saga(&self, saga_id: &str) -> Res<Option<usize>> {
        self.log.get(T_SAGAS, saga_id.as_bytes())
    }
    async fn purge(&self, sagas: Vec<(String, String, u64)>) -> Res<()> {
        self.log
            .write(|tx| {
                kv_purge(tx, &sagas);
                Ok(())
            })
            .await
    }
    async fn fill(&self, sagas: Vec<(BeginRec, SaveRec)>) -> Res<()> {
        self.log
            .write(|tx| {
                for (b, mut s) in sagas {
                    s.seq = kv_begin(tx, &b)?;
                    kv_save(tx, &s)?;
                }
                Ok(())
            })
            .await
    }
}
