//! The stores of earlier versions, one redb file each, as `microshop
//! migrate` reads them: every table of every store, row by row, into the
//! import rows of this version's stores.
//!
//! Two layouts are read. The released one (0.x up to commit 999a96e) has no
//! barrier times, points ledger or saga → order index; the development
//! layout after it (up to ad9d018^) has them. What the first lacks is
//! derived as that layout's own upgrade on open derived it: every barrier
//! entry is timed at the migration (it expires one retention period
//! later), the points ledger comes from the barrier's deductions, refunds
//! and earnings, the saga → order index from the orders. Idempotency keys
//! and the saga log's listing indexes are rebuilt from the records (a
//! checkout's key moves into its customer's key space).
//!
//! A table this module does not know refuses the store before anything is
//! written: nothing is dropped silently.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{Context, bail};
use inventory_svc::{
    domain::{Product, Reservation},
    embedded::{EmbeddedInventory, ImportRow as InventoryRow},
};
use loyalty_svc::{
    domain::{Account, DeductOutcome, EarnOutcome, OrderPoints, RefundOutcome},
    embedded::{EmbeddedLoyalty, ImportRow as LoyaltyRow, OP_DEDUCT, OP_EARN, OP_REFUND},
};
use microshop_storage::{barrier::Entry, decode};
use orchestrator::{
    embedded::{EmbeddedSagaLog, ImportRow as SagaRow},
    model::SagaRecord,
};
use order_svc::{
    domain::{Coupon, Order},
    embedded::{EmbeddedOrders, ImportRow as OrderRow},
};
use redb::{
    Key, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, Value,
};

use super::{Counts, Writer};

const BARRIER: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("barrier");
const BARRIER_TIMES: TableDefinition<(i64, &str, &str), ()> = TableDefinition::new("barrier_times");
const BARRIER_TABLES: [&str; 3] = ["barrier", "barrier_times", "barrier_meta"];

const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products");
const RESERVATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("reservations");

const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
const LEDGER: TableDefinition<&str, &[u8]> = TableDefinition::new("order_points");

const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
const COUPONS: TableDefinition<&str, &[u8]> = TableDefinition::new("coupons");
const CUSTOMER_ORDERS: TableDefinition<(&str, u64), &str> = TableDefinition::new("customer_orders");
const ORDER_META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ORDER_SEQ: &str = "order_seq";

const SAGAS: TableDefinition<&str, &[u8]> = TableDefinition::new("sagas");
const DEADLINE_OF: TableDefinition<&str, i64> = TableDefinition::new("payment_deadline_of");
const SAGA_META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The saga log's indexes: counted, then rebuilt from the records.
const SAGA_INDEXES: [&str; 5] = [
    "idempotency_keys",
    "sagas_by_seq",
    "sagas_by_state",
    "unfinished_sagas",
    "payment_deadlines",
];

/// Every table store `name` may hold; anything else refuses the store.
pub fn known_tables(name: &str) -> Vec<&'static str> {
    let mut known = match name {
        "inventory" => vec!["products", "reservations"],
        "loyalty" => vec!["accounts", "order_points", "loyalty_meta"],
        "order" => vec![
            "orders",
            "coupons",
            "customer_orders",
            "meta",
            "saga_orders",
        ],
        "orchestrator" => {
            let mut t = vec!["sagas", "payment_deadline_of", "meta"];
            t.extend(SAGA_INDEXES);
            return t;
        }
        _ => Vec::new(),
    };
    known.extend(BARRIER_TABLES);
    known
}

/// One store's read transaction and the tables it holds.
pub struct Source {
    txn: ReadTransaction,
    tables: BTreeSet<String>,
}

impl Source {
    /// Reads `db`, refusing a table that store `name` never had.
    pub fn new(db: &impl ReadableDatabase, name: &str) -> anyhow::Result<Self> {
        let txn = db.begin_read().context("cannot read it")?;
        let tables: BTreeSet<String> = txn
            .list_tables()
            .context("cannot list its tables")?
            .map(|t| t.name().to_owned())
            .collect();
        let known = known_tables(name);
        let unknown: Vec<&String> = tables
            .iter()
            .filter(|t| !known.contains(&t.as_str()))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "it holds tables this version does not know ({}): is it from a newer \
                 version? Nothing was converted",
                unknown
                    .iter()
                    .map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(Self { txn, tables })
    }

    /// Table `def`, if the store has it.
    fn table<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
    ) -> anyhow::Result<Option<ReadOnlyTable<K, V>>> {
        if !self.tables.contains(def.name()) {
            return Ok(None);
        }
        self.txn
            .open_table(def)
            .map(Some)
            .with_context(|| format!("cannot open table {}", def.name()))
    }

    /// Counts the rows of table `name` whatever its types, if the store
    /// has it.
    fn count(&self, name: &str, counts: &mut Counts) -> anyhow::Result<()> {
        if !self.tables.contains(name) {
            return Ok(());
        }
        let handle = self
            .txn
            .list_tables()?
            .find(|t| t.name() == name)
            .with_context(|| format!("table {name} vanished"))?;
        let rows = self
            .txn
            .open_untyped_table(handle)
            .with_context(|| format!("cannot open table {name}"))?
            .len()?;
        counts.add(name, rows);
        Ok(())
    }
}

/// Decodes a stored value of `table`, naming where it is on failure.
fn value<T: serde::de::DeserializeOwned>(
    table: &str,
    key: &str,
    bytes: &[u8],
) -> anyhow::Result<T> {
    decode(bytes).with_context(|| format!("row {key:?} of table {table} does not decode"))
}

/// Every barrier entry, each with when it was recorded (its time from
/// `barrier_times` if the store has it, else `now_ms`), into `out`;
/// `inspect` sees each one first.
async fn barrier<R>(
    src: &Source,
    out: &mut Writer<impl super::Target<Row = R>>,
    counts: &mut Counts,
    now_ms: i64,
    wrap: fn(Entry) -> R,
    mut inspect: impl FnMut(&Entry) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut times: HashMap<(String, String), i64> = HashMap::new();
    if let Some(t) = src.table(BARRIER_TIMES)? {
        for row in t.iter()? {
            let (k, _) = row?;
            let (at, saga_id, op) = k.value();
            times.insert((saga_id.to_owned(), op.to_owned()), at);
        }
        counts.add("barrier_times", times.len() as u64);
    }
    src.count("barrier_meta", counts)?;
    let Some(t) = src.table(BARRIER)? else {
        return Ok(());
    };
    let mut n = 0;
    for row in t.iter()? {
        let (k, v) = row?;
        let (saga_id, op) = k.value();
        let outcome = v.value().to_vec();
        // The encoding is the same; only check it is one.
        value::<serde_json::Value>("barrier", saga_id, &outcome)?;
        let recorded_at_ms = times
            .get(&(saga_id.to_owned(), op.to_owned()))
            .copied()
            .unwrap_or(now_ms);
        let entry = Entry {
            saga_id: saga_id.to_owned(),
            op: op.to_owned(),
            outcome,
            recorded_at_ms,
        };
        inspect(&entry)?;
        out.push(wrap(entry)).await?;
        n += 1;
    }
    counts.add("barrier", n);
    Ok(())
}

/// `inventory.redb`.
pub async fn inventory(
    src: &Source,
    out: &mut Writer<EmbeddedInventory>,
    now_ms: i64,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    if let Some(t) = src.table(PRODUCTS)? {
        let mut n = 0;
        for row in t.iter()? {
            let (k, v) = row?;
            let p: Product = value("products", k.value(), v.value())?;
            out.push(InventoryRow::Product(p)).await?;
            n += 1;
        }
        counts.add("products", n);
    }
    if let Some(t) = src.table(RESERVATIONS)? {
        let mut n = 0;
        for row in t.iter()? {
            let (k, v) = row?;
            let reservation: Reservation = value("reservations", k.value(), v.value())?;
            out.push(InventoryRow::Reservation {
                saga_id: k.value().to_owned(),
                reservation,
            })
            .await?;
            n += 1;
        }
        counts.add("reservations", n);
    }
    barrier(src, out, &mut counts, now_ms, InventoryRow::Barrier, |_| {
        Ok(())
    })
    .await?;
    Ok(counts)
}

/// `loyalty.redb`. The points ledger of a checkout the store has none for
/// (every checkout, in the released layout) comes from its barrier entries.
pub async fn loyalty(
    src: &Source,
    out: &mut Writer<EmbeddedLoyalty>,
    now_ms: i64,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    if let Some(t) = src.table(ACCOUNTS)? {
        let mut n = 0;
        for row in t.iter()? {
            let (k, v) = row?;
            let a: Account = value("accounts", k.value(), v.value())?;
            out.push(LoyaltyRow::Account(a)).await?;
            n += 1;
        }
        counts.add("accounts", n);
    }
    let mut ledgered: HashSet<String> = HashSet::new();
    if let Some(t) = src.table(LEDGER)? {
        for row in t.iter()? {
            let (k, v) = row?;
            let points: OrderPoints = value("order_points", k.value(), v.value())?;
            ledgered.insert(k.value().to_owned());
            out.push(LoyaltyRow::Points {
                saga_id: k.value().to_owned(),
                points,
            })
            .await?;
        }
        counts.add("order_points", ledgered.len() as u64);
    }
    src.count("loyalty_meta", &mut counts)?;
    let mut derived: BTreeMap<String, OrderPoints> = BTreeMap::new();
    barrier(src, out, &mut counts, now_ms, LoyaltyRow::Barrier, |e| {
        if ledgered.contains(&e.saga_id) {
            return Ok(());
        }
        match e.op.as_str() {
            OP_DEDUCT => {
                if let DeductOutcome::Deducted {
                    customer_id,
                    points,
                    ..
                } = value("barrier", &e.saga_id, &e.outcome)?
                {
                    let p = derived.entry(e.saga_id.clone()).or_default();
                    p.customer_id = customer_id;
                    p.deducted = points;
                }
            }
            OP_REFUND => {
                if let RefundOutcome::Refunded { points, .. } =
                    value("barrier", &e.saga_id, &e.outcome)?
                {
                    derived.entry(e.saga_id.clone()).or_default().refunded = points;
                }
            }
            OP_EARN => {
                if let EarnOutcome::Earned {
                    customer_id,
                    points,
                    ..
                } = value("barrier", &e.saga_id, &e.outcome)?
                {
                    let p = derived.entry(e.saga_id.clone()).or_default();
                    p.customer_id = customer_id;
                    p.earned = Some(points);
                }
            }
            _ => {}
        }
        Ok(())
    })
    .await?;
    if !derived.is_empty() {
        counts.add("order_points (from the barrier)", derived.len() as u64);
    }
    for (saga_id, points) in derived {
        out.push(LoyaltyRow::Points { saga_id, points }).await?;
    }
    Ok(counts)
}

/// `order.redb`. The saga → order index is written from the orders (each
/// names its checkout), whether or not the store had it.
pub async fn order(
    src: &Source,
    out: &mut Writer<EmbeddedOrders>,
    now_ms: i64,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    if let Some(t) = src.table(ORDERS)? {
        let mut n = 0;
        for row in t.iter()? {
            let (k, v) = row?;
            let o: Order = value("orders", k.value(), v.value())?;
            if o.order_id != k.value() {
                bail!(
                    "row {:?} of table orders holds order {}",
                    k.value(),
                    o.order_id
                );
            }
            out.push(OrderRow::SagaOrder {
                saga_id: o.saga_id.clone(),
                order_id: o.order_id.clone(),
            })
            .await?;
            out.push(OrderRow::Order(Box::new(o))).await?;
            n += 1;
        }
        counts.add("orders", n);
    }
    src.count("saga_orders", &mut counts)?;
    if let Some(t) = src.table(COUPONS)? {
        let mut n = 0;
        for row in t.iter()? {
            let (k, v) = row?;
            let c: Coupon = value("coupons", k.value(), v.value())?;
            out.push(OrderRow::Coupon(c)).await?;
            n += 1;
        }
        counts.add("coupons", n);
    }
    if let Some(t) = src.table(CUSTOMER_ORDERS)? {
        let mut n = 0;
        for row in t.iter()? {
            let (k, v) = row?;
            let (customer_id, rev_seq) = k.value();
            out.push(OrderRow::CustomerOrder {
                customer_id: customer_id.to_owned(),
                seq: u64::MAX - rev_seq,
                order_id: v.value().to_owned(),
            })
            .await?;
            n += 1;
        }
        counts.add("customer_orders", n);
    }
    if let Some(t) = src.table(ORDER_META)? {
        if let Some(seq) = t.get(ORDER_SEQ)? {
            out.push(OrderRow::LastSeq(seq.value())).await?;
        }
        counts.add("meta", t.len()?);
    }
    barrier(src, out, &mut counts, now_ms, OrderRow::Barrier, |_| Ok(())).await?;
    Ok(counts)
}

/// A stored saga of the earlier log: one state byte, then the JSON record
/// (or, written before the state byte, the JSON record alone).
fn saga_of(saga_id: &str, bytes: &[u8]) -> anyhow::Result<SagaRecord> {
    let json = match bytes.first() {
        Some(b'{') => bytes,
        _ => bytes.get(1..).unwrap_or_default(),
    };
    let record: SagaRecord = value("sagas", saga_id, json)?;
    if record.saga_id != saga_id {
        bail!(
            "row {saga_id:?} of table sagas holds saga {}",
            record.saga_id
        );
    }
    Ok(record)
}

/// `orchestrator.redb`: the records, the payment deadlines and the last
/// seq; the indexes are counted and rebuilt from the records.
pub async fn orchestrator(
    src: &Source,
    out: &mut Writer<EmbeddedSagaLog>,
) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    if let Some(t) = src.table(SAGAS)? {
        let mut n = 0;
        for row in t.iter()? {
            let (k, v) = row?;
            let record = saga_of(k.value(), v.value())?;
            out.push(SagaRow::Saga(Box::new(record))).await?;
            n += 1;
        }
        counts.add("sagas", n);
    }
    for index in SAGA_INDEXES {
        src.count(index, &mut counts)?;
    }
    if let Some(t) = src.table(DEADLINE_OF)? {
        let mut n = 0;
        for row in t.iter()? {
            let (k, v) = row?;
            out.push(SagaRow::Deadline {
                order_id: k.value().to_owned(),
                due_ms: v.value(),
            })
            .await?;
            n += 1;
        }
        counts.add("payment_deadline_of", n);
    }
    if let Some(t) = src.table(SAGA_META)? {
        if let Some(seq) = t.get("seq")? {
            out.push(SagaRow::LastSeq(seq.value())).await?;
        }
        counts.add("meta", t.len()?);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use microshop_storage::{BarrierPurge, embedded::Durable};

    use super::*;

    /// A store of the layout after 999a96e times its barrier entries: the
    /// migration keeps each entry's time, so its retention runs from when
    /// it was recorded, not from the migration.
    #[tokio::test]
    async fn barrier_times_of_the_later_layout_are_kept() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("inventory.redb");
        let recorded = 1_700_000_000_000_i64;
        {
            let db = redb::Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            txn.open_table(BARRIER)
                .expect("barrier")
                .insert(("s-old", "release"), br#""NothingReserved""#.as_slice())
                .expect("insert");
            txn.open_table(BARRIER)
                .expect("barrier")
                .insert(("s-new", "release"), br#""NothingReserved""#.as_slice())
                .expect("insert");
            txn.open_table(BARRIER_TIMES)
                .expect("barrier_times")
                .insert((recorded, "s-old", "release"), ())
                .expect("insert");
            txn.commit().expect("commit");
        }
        let old = redb::ReadOnlyDatabase::open(&path).expect("open");
        let src = Source::new(&old, "inventory").expect("a known layout");
        let out_dir = dir.path().join("new");
        let store = EmbeddedInventory::open(&out_dir, Durable::Yes).expect("new store");
        let mut out = Writer::new(Some(store.clone()));
        let migrated_at = recorded + 86_400_000;
        let counts = inventory(&src, &mut out, migrated_at).await.expect("read");
        out.finish().await.expect("write");
        assert_eq!(
            counts.to_string(),
            "barrier_times 1, barrier 2",
            "rows per table"
        );
        // Just after its recorded time only the timed entry is due; the
        // other was timed at the migration.
        let purged = store.purge_barrier(recorded + 1, 10).await.expect("purge");
        assert_eq!(purged, 1);
        let purged = store
            .purge_barrier(migrated_at + 1, 10)
            .await
            .expect("purge");
        assert_eq!(purged, 1, "the untimed entry is timed at the migration");
    }
}
