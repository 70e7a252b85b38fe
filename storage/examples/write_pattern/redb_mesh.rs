//! The redb engines (`redb-now`, `redb-none`): the stores' table layout and
//! operations on redb transactions; apart from the byte KV because redb has
//! typed tables of its own.

use std::{
    fs::OpenOptions,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use microshop_storage::{decode, encode};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition,
    WriteTransaction, backends::FileBackend,
};

use crate::{
    Res,
    group_sync::GroupSync,
    records::{
        COUPON, Coupon, CreateRecord, NewOrder, Product, Reservation, ReservationState,
        ReserveOutcome, ReservedLine, SagaState, build_order, now_ms, seed_coupon, seed_products,
    },
    redb_group::{
        Durable, EmbeddedDb, StorageError,
        barrier::{self, ActionGate},
    },
    saga::{BeginRec, Mesh, SaveBody, SaveRec},
};

const SAGAS: TableDefinition<&str, &[u8]> = TableDefinition::new("sagas");
const KEYS: TableDefinition<&str, &str> = TableDefinition::new("idempotency_keys");
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("sagas_by_seq");
const BY_STATE: TableDefinition<(u8, u64), &str> = TableDefinition::new("sagas_by_state");
const UNFINISHED: TableDefinition<&str, u64> = TableDefinition::new("unfinished_sagas");
const SAGA_META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SAGA_DELTAS: TableDefinition<(&str, u8), &[u8]> = TableDefinition::new("saga_deltas");
const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products");
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");
const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
const COUPONS: TableDefinition<&str, &[u8]> = TableDefinition::new("coupons");
const CUSTOMER_ORDERS: TableDefinition<(&str, u64), &str> = TableDefinition::new("customer_orders");
const ORDER_META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn rb_init_log(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(SAGAS)?;
    txn.open_table(KEYS)?;
    txn.open_table(BY_SEQ)?;
    txn.open_table(BY_STATE)?;
    txn.open_table(UNFINISHED)?;
    txn.open_table(SAGA_META)?;
    txn.open_table(SAGA_DELTAS)?;
    Ok(())
}

fn rb_init_inventory(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(PRODUCTS)?;
    txn.open_table(RESERVATIONS)?;
    barrier::init(txn)
}

fn rb_init_orders(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(ORDERS)?;
    txn.open_table(COUPONS)?;
    txn.open_table(CUSTOMER_ORDERS)?;
    txn.open_table(ORDER_META)?;
    barrier::init(txn)
}

fn rb_seed_inventory(txn: &WriteTransaction) -> Result<(), StorageError> {
    let mut t = txn.open_table(PRODUCTS)?;
    for p in seed_products() {
        t.insert(p.sku.as_str(), encode(&p)?.as_slice())?;
    }
    Ok(())
}

fn rb_seed_orders(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(COUPONS)?
        .insert(COUPON, encode(&seed_coupon())?.as_slice())?;
    Ok(())
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(what.to_owned())
}

/// The orchestrator's begin (orchestrator/src/embedded.rs), minus the
/// record decoding of a duplicate key.
fn rb_begin(txn: &WriteTransaction, b: &BeginRec) -> Result<u64, StorageError> {
    if txn.open_table(KEYS)?.get(b.key.as_str())?.is_some() {
        return Err(corrupt("duplicate idempotency key"));
    }
    let seq = {
        let mut meta = txn.open_table(SAGA_META)?;
        let next = meta.get("seq")?.map_or(1, |v| v.value() + 1);
        meta.insert("seq", next)?;
        next
    };
    let id = b.saga_id.as_str();
    txn.open_table(KEYS)?.insert(b.key.as_str(), id)?;
    txn.open_table(BY_SEQ)?.insert(seq, id)?;
    if txn
        .open_table(SAGAS)?
        .insert(id, b.bytes.as_slice())?
        .is_some()
    {
        return Err(corrupt("saga created twice"));
    }
    txn.open_table(BY_STATE)?.insert((b.state, seq), id)?;
    txn.open_table(UNFINISHED)?.insert(id, seq)?;
    Ok(seq)
}

/// The orchestrator's save: the old state comes from the replaced record.
fn rb_save(txn: &WriteTransaction, s: &SaveRec) -> Result<(), StorageError> {
    let id = s.saga_id.as_str();
    let old = match &s.body {
        SaveBody::Full(bytes) => {
            let mut sagas = txn.open_table(SAGAS)?;
            let old = sagas.insert(id, bytes.as_slice())?;
            old.and_then(|v| v.value().first().copied())
                .ok_or_else(|| corrupt("save of unknown saga"))?
        }
        SaveBody::Delta(n, bytes) => {
            txn.open_table(SAGA_DELTAS)?
                .insert((id, *n), bytes.as_slice())?;
            s.old_state
        }
    };
    if old != s.new_state {
        let mut by_state = txn.open_table(BY_STATE)?;
        by_state.remove((old, s.seq))?;
        by_state.insert((s.new_state, s.seq), id)?;
        let mut unfinished = txn.open_table(UNFINISHED)?;
        if s.new_state == SagaState::Completed.index() {
            unfinished.remove(id)?;
        } else {
            unfinished.insert(id, s.seq)?;
        }
    }
    Ok(())
}

fn rb_purge(txn: &WriteTransaction, sagas: &[(String, String, u64)]) -> Result<(), StorageError> {
    let mut t = txn.open_table(SAGAS)?;
    let mut keys = txn.open_table(KEYS)?;
    let mut by_seq = txn.open_table(BY_SEQ)?;
    let mut by_state = txn.open_table(BY_STATE)?;
    let mut deltas = txn.open_table(SAGA_DELTAS)?;
    for (id, key, seq) in sagas {
        t.remove(id.as_str())?;
        keys.remove(key.as_str())?;
        by_seq.remove(*seq)?;
        by_state.remove((SagaState::Completed.index(), *seq))?;
        for n in 1..=3 {
            deltas.remove((id.as_str(), n))?;
        }
    }
    Ok(())
}

/// Inventory's ReserveStock (inventory-svc/src/embedded.rs) for one line.
fn rb_reserve(
    txn: &WriteTransaction,
    saga_id: &str,
    sku: &str,
    qty: i64,
) -> Result<(), StorageError> {
    match barrier::action_gate::<ReserveOutcome>(txn, saga_id, "reserve", "release")? {
        ActionGate::Proceed => {}
        _ => return Err(corrupt("reserve delivered twice")),
    }
    let mut product: Product = {
        let t = txn.open_table(PRODUCTS)?;
        let found = t.get(sku)?.ok_or_else(|| corrupt("unknown sku"))?;
        decode(found.value())?
    };
    if product.available < qty {
        return Err(corrupt("out of stock"));
    }
    product.available -= qty;
    product.reserved += qty;
    txn.open_table(PRODUCTS)?
        .insert(sku, encode(&product)?.as_slice())?;
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
    txn.open_table(RESERVATIONS)?
        .insert(saga_id, encode(&reservation)?.as_slice())?;
    barrier::record(
        txn,
        saga_id,
        "reserve",
        &ReserveOutcome::Reserved(vec![line]),
    )
}

/// Order's CreateOrder (order-svc/src/embedded.rs).
fn rb_create(txn: &WriteTransaction, new: NewOrder) -> Result<(), StorageError> {
    let saga_id = new.saga_id.clone();
    match barrier::action_gate::<CreateRecord>(txn, &saga_id, "create", "cancel")? {
        ActionGate::Proceed => {}
        _ => return Err(corrupt("create delivered twice")),
    }
    let coupon: Option<Coupon> = {
        let t = txn.open_table(COUPONS)?;
        let found = t.get(COUPON)?;
        found.map(|v| decode(v.value())).transpose()?
    };
    let order = build_order(new, coupon.as_ref(), now_ms());
    let seq = {
        let mut meta = txn.open_table(ORDER_META)?;
        let last = meta.get("order_seq")?.map_or(0, |v| v.value());
        meta.insert("order_seq", last + 1)?;
        last + 1
    };
    txn.open_table(ORDERS)?
        .insert(order.order_id.as_str(), encode(&order)?.as_slice())?;
    txn.open_table(CUSTOMER_ORDERS)?.insert(
        (order.customer_id.as_str(), u64::MAX - seq),
        order.order_id.as_str(),
    )?;
    barrier::record(
        txn,
        &saga_id,
        "create",
        &CreateRecord::Created {
            order_id: order.order_id,
        },
    )
}

/// redb-now: the crate's own EmbeddedDb, as every service opens it.
pub(crate) struct RedbNow {
    log: EmbeddedDb,
    inventory: EmbeddedDb,
    orders: EmbeddedDb,
}

impl RedbNow {
    pub(crate) fn open(dir: &Path) -> Res<Self> {
        Ok(Self {
            log: EmbeddedDb::open(dir, "orchestrator", Durable::Yes, rb_init_log)?,
            inventory: EmbeddedDb::open(dir, "inventory", Durable::Yes, rb_init_inventory)?,
            orders: EmbeddedDb::open(dir, "order", Durable::Yes, rb_init_orders)?,
        })
    }
}

impl Mesh for RedbNow {
    async fn seed(&self) -> Res<()> {
        self.inventory.write(rb_seed_inventory).await?;
        self.orders.write(rb_seed_orders).await?;
        Ok(())
    }
    async fn begin(&self, b: BeginRec) -> Res<u64> {
        Ok(self.log.write(move |txn| rb_begin(txn, &b)).await?)
    }
    async fn save(&self, s: SaveRec) -> Res<()> {
        Ok(self.log.write(move |txn| rb_save(txn, &s)).await?)
    }
    async fn reserve(&self, saga_id: String, sku: String, qty: i64) -> Res<()> {
        Ok(self
            .inventory
            .write(move |txn| rb_reserve(txn, &saga_id, &sku, qty))
            .await?)
    }
    async fn create_order(&self, order: NewOrder) -> Res<()> {
        Ok(self.orders.write(move |txn| rb_create(txn, order)).await?)
    }
    fn syncs(&self) -> Option<u64> {
        None
    }
    async fn purge(&self, sagas: Vec<(String, String, u64)>) -> Res<()> {
        Ok(self.log.write(move |txn| rb_purge(txn, &sagas)).await?)
    }
}

/// A redb file backend that counts its `sync_data` calls.
#[derive(Debug)]
struct CountingBackend {
    inner: FileBackend,
    syncs: Arc<AtomicU64>,
}

type Bound = std::ops::Bound<u64>;

impl StorageBackend for CountingBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound, end: Bound) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound, end: Bound) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound, end: Bound) -> Result<(), redb::BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound, end: Bound) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound, end: Bound) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound, end: Bound) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

/// One redb file written from the calling task with non-durable commits,
/// made durable by a group sync (an empty durable commit).
struct RedbNoneStore {
    db: Arc<Database>,
    sync: Arc<GroupSync>,
}

impl RedbNoneStore {
    fn open(
        dir: &Path,
        name: &str,
        syncs: &Arc<AtomicU64>,
        init: impl FnOnce(&WriteTransaction) -> Result<(), StorageError>,
    ) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(format!("{name}.redb")))?;
        let backend = CountingBackend {
            inner: FileBackend::new(file)?,
            syncs: Arc::clone(syncs),
        };
        let db = Arc::new(
            Database::builder()
                .set_cache_size(16 * 1024 * 1024)
                .create_with_backend(backend)?,
        );
        let txn = db.begin_write()?;
        init(&txn)?;
        txn.commit()?;
        let sync_db = Arc::clone(&db);
        let sync = GroupSync::start(name, move || {
            // Durability::Immediate (the default): persists every
            // Durability::None commit before it.
            let txn = sync_db.begin_write()?;
            txn.commit()?;
            Ok(())
        })?;
        Ok(Self { db, sync })
    }

    fn apply<R>(&self, f: impl FnOnce(&WriteTransaction) -> Result<R, StorageError>) -> Res<R> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)?;
        match f(&txn) {
            Ok(r) => {
                txn.commit()?;
                Ok(r)
            }
            Err(e) => {
                txn.abort()?;
                Err(e.into())
            }
        }
    }

    async fn write<R>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<R, StorageError>,
    ) -> Res<R> {
        let r = self.apply(f)?;
        self.sync.durable().await;
        Ok(r)
    }
}

pub(crate) struct RedbNone {
    log: RedbNoneStore,
    inventory: RedbNoneStore,
    orders: RedbNoneStore,
    syncs: Arc<AtomicU64>,
}

impl RedbNone {
    pub(crate) fn open(dir: &Path) -> Res<Self> {
        let syncs = Arc::new(AtomicU64::new(0));
        Ok(Self {
            log: RedbNoneStore::open(dir, "orchestrator", &syncs, rb_init_log)?,
            inventory: RedbNoneStore::open(dir, "inventory", &syncs, rb_init_inventory)?,
            orders: RedbNoneStore::open(dir, "order", &syncs, rb_init_orders)?,
            syncs,
        })
    }
}

impl Mesh for RedbNone {
    async fn seed(&self) -> Res<()> {
        self.inventory.write(rb_seed_inventory).await?;
        self.orders.write(rb_seed_orders).await?;
        Ok(())
    }
    async fn begin(&self, b: BeginRec) -> Res<u64> {
        self.log.write(|txn| rb_begin(txn, &b)).await
    }
    async fn save(&self, s: SaveRec) -> Res<()> {
        self.log.write(|txn| rb_save(txn, &s)).await
    }
    async fn reserve(&self, saga_id: String, sku: String, qty: i64) -> Res<()> {
        self.inventory
            .write(|txn| rb_reserve(txn, &saga_id, &sku, qty))
            .await
    }
    async fn create_order(&self, order: NewOrder) -> Res<()> {
        self.orders.write(|txn| rb_create(txn, order)).await
    }
    fn syncs(&self) -> Option<u64> {
        Some(self.syncs.load(Ordering::Relaxed))
    }
    fn get_saga(&self, saga_id: &str) -> Res<Option<usize>> {
        let txn = self.log.db.begin_read()?;
        let t = txn.open_table(SAGAS)?;
        Ok(t.get(saga_id)?.map(|v| v.value().len()))
    }
    async fn purge(&self, sagas: Vec<(String, String, u64)>) -> Res<()> {
        self.log.write(|txn| rb_purge(txn, &sagas)).await
    }
    async fn fill(&self, sagas: Vec<(BeginRec, SaveRec)>) -> Res<()> {
        self.log
            .write(|txn| {
                for (b, mut s) in sagas {
                    s.seq = rb_begin(txn, &b)?;
                    rb_save(txn, &s)?;
                }
                Ok(())
            })
            .await
    }
}
