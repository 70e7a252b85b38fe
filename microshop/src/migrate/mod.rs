//! `microshop migrate`: converts a data directory of an earlier version
//! (one `NAME.redb` file per store) to this version's stores (one
//! `NAME.fjall` directory each), once, with every service of the directory
//! stopped. `docs/deployment.md` ("Upgrading from the redb stores") is the
//! operator's side of it.
//!
//! For each old file, in a store of its own:
//! 1. the old file is opened, which locks it: a running old service
//!    refuses the migration, and none can start and write to the file
//!    while it runs;
//! 2. a `NAME.fjall` already there refuses it unless it is empty, or is
//!    this migration's own, left by an interrupted run (two stores are
//!    never merged). Telling which opens it, as a service would: fjall
//!    may replay and rewrite its journal, never its data;
//! 3. every table is read ([`redb_v1`]) and written to a fresh store in
//!    `.NAME.migrating/` beside it, which is then fsync'd whole, files and
//!    directories, with a [`MIGRATED_FROM`] row saying where it came from;
//! 4. that store is renamed into place, then the old file to
//!    `NAME.redb.migrated`, each rename made durable.
//!
//! Each step runs for every store before the next runs for any: a store
//! that is not ready (steps 1 and 2, and listing its tables) refuses the
//! whole run with nothing converted, and a row that does not decode or a
//! full disk (step 3) stops it before any store is in place. So an
//! operator does not find some stores converted and others not (which the
//! old binary would serve half empty) unless step 4's renames themselves
//! fail, which the next run finishes.
//!
//! A crash anywhere leaves either the old file alone in charge (the
//! services refuse to start on it; a rerun starts over) or the new store in
//! place beside the old file (the services use the new store; a rerun sees
//! its [`MIGRATED_FROM`] row and only renames the old file). Never a
//! half-written store in place. A second run finds nothing to migrate.

mod redb_v1;

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context, bail};
use inventory_svc::embedded::EmbeddedInventory;
use loyalty_svc::embedded::EmbeddedLoyalty;
use microshop_storage::{
    StorageError,
    embedded::{self, Durable, EmbeddedDb, MIGRATED_FROM, legacy_path, store_path},
};
use orchestrator::embedded::EmbeddedSagaLog;
use order_svc::embedded::EmbeddedOrders;

use crate::cli::MigrateArgs;

/// The stores of a data directory, in the order they are migrated.
pub const STORES: [&str; 4] = ["inventory", "loyalty", "order", "orchestrator"];

/// Rows one write job takes.
const BATCH: usize = 1_000;

/// The key of the [`MIGRATED_FROM`] row.
const FROM_KEY: &str = "from";

/// A crash point of `microshop migrate` (tests only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failpoint {
    /// The new store is written and fsync'd, not yet in place.
    Staged,
    /// The new store is in place; the old file is not yet renamed.
    Placed,
}

impl FromStr for Failpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "staged" => Ok(Self::Staged),
            "placed" => Ok(Self::Placed),
            other => Err(format!(
                "unknown migrate failpoint {other:?} (staged or placed)"
            )),
        }
    }
}

/// Rows per table of one store, in the order they were read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts(pub Vec<(String, u64)>);

impl Counts {
    fn add(&mut self, table: &str, rows: u64) {
        self.0.push((table.to_owned(), rows));
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no tables");
        }
        let parts: Vec<String> = self.0.iter().map(|(t, n)| format!("{t} {n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// What `microshop migrate` did with one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its old file was converted (or, on a dry run, would be).
    Migrated(Counts),
    /// An interrupted run had put its new store in place: only the old
    /// file was renamed (or, on a dry run, would be).
    Finished,
}

/// A store this version writes into, for [`Writer`].
pub trait Target {
    /// What it imports.
    type Row;
    /// Writes `rows` (buffered).
    fn import(&self, rows: Vec<Self::Row>) -> impl Future<Output = Result<(), StorageError>>;
    /// Makes every import durable.
    fn sync(&self) -> impl Future<Output = Result<(), StorageError>>;
}

macro_rules! target {
    ($store:ty, $row:ty) => {
        impl Target for $store {
            type Row = $row;
            async fn import(&self, rows: Vec<$row>) -> Result<(), StorageError> {
                <$store>::import(self, rows).await
            }
            async fn sync(&self) -> Result<(), StorageError> {
                <$store>::sync(self).await
            }
        }
    };
}
target!(EmbeddedInventory, inventory_svc::embedded::ImportRow);
target!(EmbeddedLoyalty, loyalty_svc::embedded::ImportRow);
target!(EmbeddedOrders, order_svc::embedded::ImportRow);
target!(EmbeddedSagaLog, orchestrator::embedded::ImportRow);

/// Rows on their way into a store, written in batches; a dry run's has no
/// store and drops them (they were read and decoded, which is the check).
pub struct Writer<T: Target> {
    target: Option<T>,
    rows: Vec<T::Row>,
}

impl<T: Target> Writer<T> {
    fn new(target: Option<T>) -> Self {
        Self {
            target,
            rows: Vec::new(),
        }
    }

    async fn push(&mut self, row: T::Row) -> anyhow::Result<()> {
        if self.target.is_none() {
            return Ok(());
        }
        self.rows.push(row);
        if self.rows.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(t) = &self.target
            && !self.rows.is_empty()
        {
            t.import(std::mem::take(&mut self.rows))
                .await
                .context("cannot write the new store")?;
        }
        Ok(())
    }

    /// Writes what is left and makes it all durable.
    async fn finish(mut self) -> anyhow::Result<()> {
        self.flush().await?;
        if let Some(t) = &self.target {
            t.sync().await.context("cannot fsync the new store")?;
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Where store `name` is written before it is put in place.
fn staging_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.migrating"))
}

/// The name an old file is kept under once converted.
pub fn migrated_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.redb.migrated"))
}

/// The old files of `dir` not migrated yet (`NAME.redb` without a
/// `NAME.fjall`), by file name.
pub fn unmigrated(dir: &Path) -> Vec<String> {
    STORES
        .into_iter()
        .filter(|name| embedded::unmigrated(dir, name))
        .map(|name| format!("{name}.redb"))
        .collect()
}

/// Runs `microshop migrate`, printing what it does per store. Every store
/// is checked first (old file readable and not in use, nothing in the way
/// of its new store): if any is not ready, each problem is reported and
/// nothing is converted (a rollback to the old binary still finds every
/// old file). Then every store is staged, then every store put in place;
/// an error names the store, and only one while putting stores in place
/// leaves the stores before it migrated.
pub async fn run(args: &MigrateArgs) -> anyhow::Result<()> {
    let dir = &args.data_dir;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let mut ready = Vec::new();
    let mut failed = Vec::new();
    for name in STORES {
        let checked = check_store(dir, name, args.dry_run).await;
        if matches!(checked, Ok(None | Some(Ready::Leftover(_))))
            && migrated_path(dir, name).exists()
        {
            println!("{name}: already migrated ({name}.redb.migrated)");
        }
        match checked {
            Ok(Some(r)) => ready.push((name, r)),
            Ok(None) => {}
            Err(e) => {
                eprintln!("microshop migrate: {name}: not ready: {e:#}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} not ready to migrate (the reason is above{}); nothing was converted: fix \
             it and run `microshop migrate` again",
            failed.join(", "),
            if failed.len() > 1 { ", per store" } else { "" }
        );
    }
    // Every store written and fsync'd beside the data before any is put in
    // place: a row that does not decode, or a full disk, stops the run
    // while every old file is still in charge.
    for (name, r) in &mut ready {
        stage_store(dir, name, r, args.dry_run, args.failpoint)
            .await
            .with_context(|| format!("{name}: not migrated (nothing was put in place)"))?;
    }
    let mut done = 0;
    for (name, r) in ready {
        let outcome = place_store(dir, name, r, args.dry_run, args.failpoint)
            .await
            .with_context(|| format!("{name}: not migrated"))?;
        let Some(outcome) = outcome else {
            continue;
        };
        done += 1;
        let would = if args.dry_run { "would be " } else { "" };
        match outcome {
            Outcome::Migrated(counts) => {
                println!(
                    "{name}: {name}.redb {would}migrated into {name}.fjall \
                     (the old file {would}kept as {name}.redb.migrated)"
                );
                println!("  {counts}");
            }
            Outcome::Finished => println!(
                "{name}: an interrupted migration {would}finished: {name}.fjall is in \
                 place, {name}.redb {would}renamed to {name}.redb.migrated"
            ),
        }
    }
    if done == 0 {
        println!(
            "nothing to migrate in {}: no store of an earlier version (NAME.redb)",
            dir.display()
        );
    } else if args.dry_run {
        println!("dry run: nothing was changed");
    }
    Ok(())
}

/// The old file, open. Read-only where it can be: that leaves the file as
/// it was (a rollback finds it untouched) and still locks out an old
/// service, which opens it for writing. A file not shut down cleanly must
/// be repaired first, which only a writer does.
enum Old {
    ReadOnly(redb::ReadOnlyDatabase),
    Repaired(redb::Database),
}

fn open_old(path: &Path, dry_run: bool) -> anyhow::Result<Old> {
    let shown = path.display();
    let in_use = || anyhow::anyhow!("{shown} is in use: stop the service using it first");
    match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => Ok(Old::ReadOnly(db)),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(in_use()),
        Err(redb::DatabaseError::RepairAborted) if dry_run => bail!(
            "{shown} was not shut down cleanly and needs a repair, which a dry run does \
             not make: run `microshop migrate` without --dry-run (it repairs the file \
             first)"
        ),
        Err(redb::DatabaseError::RepairAborted) => match redb::Database::open(path) {
            Ok(db) => Ok(Old::Repaired(db)),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(in_use()),
            Err(e) => Err(e).with_context(|| format!("cannot repair {shown}")),
        },
        Err(e) => Err(e).with_context(|| format!("cannot open {shown}")),
    }
}

/// What is at `NAME.fjall` already.
enum Existing {
    None,
    /// An empty store (nothing lost by replacing it).
    Empty,
    /// This migration's own store, put in place by an interrupted run.
    Ours,
}

async fn existing_store(dir: &Path, name: &str) -> anyhow::Result<Existing> {
    let path = store_path(dir, name);
    if !path.exists() {
        return Ok(Existing::None);
    }
    let in_use = || {
        format!(
            "{} is in use: stop the service using it first",
            path.display()
        )
    };
    let db = EmbeddedDb::open(dir, name, Durable::No, |_| Ok(())).map_err(|e| match e {
        StorageError::Backend(m) if m.contains("in use") => anyhow::anyhow!(in_use()),
        other => anyhow::anyhow!("cannot open {}: {other}", path.display()),
    })?;
    let read = db
        .read(|v| {
            let ours = v.get(&MIGRATED_FROM.str_key(FROM_KEY))?.is_some();
            let empty = v.scan(.., 1, false)?.is_empty();
            Ok((ours, empty))
        })
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    match read {
        (true, _) => Ok(Existing::Ours),
        (false, true) => Ok(Existing::Empty),
        (false, false) => bail!(
            "{} already holds data written by this version; migrate never merges two \
             stores: move one of {} and {name}.redb aside, then run it again",
            path.display(),
            path.display()
        ),
    }
}

/// A store checked and ready to convert: its old file open (which keeps
/// old services out) and readable, and nothing at `NAME.fjall` that a
/// conversion would lose.
enum Ready {
    /// No old file, but the empty staging directory of a run that crashed
    /// after its last rename.
    Leftover(PathBuf),
    /// This migration's own store is in place already (an interrupted
    /// run): only the old file's rename is left.
    Placed(Old),
    /// To convert.
    Convert(Box<Convert>),
}

/// A store to convert: its old file, open and being read, what is at
/// `NAME.fjall` now, and the rows per table once staged (or, on a dry run,
/// read).
struct Convert {
    old: Old,
    src: redb_v1::Source,
    existing: Existing,
    counts: Option<Counts>,
}

/// Checks store `name` of `dir` without changing anything (beyond the
/// repair an old file not shut down cleanly needs): `None` when it has
/// nothing to migrate.
async fn check_store(dir: &Path, name: &str, dry_run: bool) -> anyhow::Result<Option<Ready>> {
    let old_path = legacy_path(dir, name);
    if !old_path.exists() {
        let staging = staging_dir(dir, name);
        return Ok(staging.exists().then_some(Ready::Leftover(staging)));
    }
    // Held until the old file is renamed: no old service writes to it
    // meanwhile.
    let old = open_old(&old_path, dry_run)?;
    let retired = migrated_path(dir, name);
    if retired.exists() {
        bail!(
            "{} exists already beside {} (a store migrated before?): move one of them \
             aside, then run migrate again",
            retired.display(),
            old_path.display()
        );
    }
    let existing = existing_store(dir, name).await?;
    if matches!(existing, Existing::Ours) {
        return Ok(Some(Ready::Placed(old)));
    }
    let src = match &old {
        Old::ReadOnly(db) => redb_v1::Source::new(db, name),
        Old::Repaired(db) => redb_v1::Source::new(db, name),
    }
    .with_context(|| format!("cannot read {}", old_path.display()))?;
    Ok(Some(Ready::Convert(Box::new(Convert {
        old,
        src,
        existing,
        counts: None,
    }))))
}

/// Writes a store to convert beside the data (`.NAME.migrating/`), with
/// the [`MIGRATED_FROM`] row last, and fsyncs it; on a dry run only reads
/// it. Every row is decoded here, for every store, before any store is put
/// in place. Other stores pass through.
async fn stage_store(
    dir: &Path,
    name: &str,
    ready: &mut Ready,
    dry_run: bool,
    failpoint: Option<Failpoint>,
) -> anyhow::Result<()> {
    let Ready::Convert(convert) = ready else {
        return Ok(());
    };
    let Convert { src, counts, .. } = &mut **convert;
    if dry_run {
        *counts = Some(copy(src, name, None).await?);
        return Ok(());
    }
    let staging = staging_dir(dir, name);
    if staging.exists() {
        // What an interrupted run left: never in place, so never used.
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    std::fs::create_dir(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let copied = copy(src, name, Some(&staging)).await?;
    // The row saying where the store came from, written last: a store
    // with it is complete.
    let from = serde_json::json!({
        "file": format!("{name}.redb"),
        "at_ms": now_ms(),
        "rows": copied.0,
    })
    .to_string();
    drop(
        EmbeddedDb::open(&staging, name, Durable::Yes, |txn| {
            txn.put(MIGRATED_FROM.str_key(FROM_KEY), from.into_bytes());
            Ok(())
        })
        .context("cannot mark the new store")?,
    );
    let staged = store_path(&staging, name);
    fsync_tree(&staged)?;
    fsync_dir(&staging)?;
    if failpoint == Some(Failpoint::Staged) {
        crash("staged");
    }
    *counts = Some(copied);
    Ok(())
}

/// Puts a staged store in place and retires its old file, each rename made
/// durable (nothing on a dry run); `None` when there was nothing to report
/// (a leftover staging directory removed).
async fn place_store(
    dir: &Path,
    name: &str,
    ready: Ready,
    dry_run: bool,
    failpoint: Option<Failpoint>,
) -> anyhow::Result<Option<Outcome>> {
    let staging = staging_dir(dir, name);
    let (old, src, existing, counts) = match ready {
        Ready::Leftover(staging) => {
            if !dry_run {
                std::fs::remove_dir_all(&staging)
                    .with_context(|| format!("cannot remove {}", staging.display()))?;
            }
            return Ok(None);
        }
        Ready::Placed(old) => {
            if !dry_run {
                retire_old(dir, name)?;
                if staging.exists() {
                    std::fs::remove_dir_all(&staging)
                        .with_context(|| format!("cannot remove {}", staging.display()))?;
                }
            }
            drop(old);
            return Ok(Some(Outcome::Finished));
        }
        Ready::Convert(convert) => {
            let Convert {
                old,
                src,
                existing,
                counts,
            } = *convert;
            (
                old,
                src,
                existing,
                counts.context("the store was not staged")?,
            )
        }
    };
    if dry_run {
        return Ok(Some(Outcome::Migrated(counts)));
    }
    let target = store_path(dir, name);
    if matches!(existing, Existing::Empty) {
        // Checked again: a service started since the check could have
        // written to it, and what it wrote must not be deleted.
        existing_store(dir, name).await?;
        std::fs::remove_dir_all(&target)
            .with_context(|| format!("cannot remove the empty {}", target.display()))?;
    }
    let staged = store_path(&staging, name);
    std::fs::rename(&staged, &target)
        .with_context(|| format!("cannot move {} to {}", staged.display(), target.display()))?;
    fsync_dir(dir)?;
    if failpoint == Some(Failpoint::Placed) {
        crash("placed");
    }
    retire_old(dir, name)?;
    drop((src, old));
    std::fs::remove_dir(&staging)
        .with_context(|| format!("cannot remove {}", staging.display()))?;
    Ok(Some(Outcome::Migrated(counts)))
}

/// Reads every table of the old store into a new one under `staging`
/// (none: a dry run), fsync'd.
async fn copy(src: &redb_v1::Source, name: &str, staging: Option<&Path>) -> anyhow::Result<Counts> {
    let now = now_ms();
    let opened = |e: StorageError| anyhow::anyhow!("cannot create the new store: {e}");
    let counts = match name {
        "inventory" => {
            let store = staging
                .map(|d| EmbeddedInventory::open(d, Durable::Yes))
                .transpose()
                .map_err(opened)?;
            let mut out = Writer::new(store);
            let counts = redb_v1::inventory(src, &mut out, now).await?;
            out.finish().await?;
            counts
        }
        "loyalty" => {
            let store = staging
                .map(|d| EmbeddedLoyalty::open(d, Durable::Yes))
                .transpose()
                .map_err(opened)?;
            let mut out = Writer::new(store);
            let counts = redb_v1::loyalty(src, &mut out, now).await?;
            out.finish().await?;
            counts
        }
        "order" => {
            let store = staging
                .map(|d| EmbeddedOrders::open(d, Durable::Yes))
                .transpose()
                .map_err(opened)?;
            let mut out = Writer::new(store);
            let counts = redb_v1::order(src, &mut out, now).await?;
            out.finish().await?;
            counts
        }
        "orchestrator" => {
            let store = staging
                .map(|d| EmbeddedSagaLog::open(d, Durable::Yes))
                .transpose()
                .map_err(opened)?;
            let mut out = Writer::new(store);
            let counts = redb_v1::orchestrator(src, &mut out).await?;
            out.finish().await?;
            counts
        }
        other => bail!("unknown store {other}"),
    };
    Ok(counts)
}

/// Renames the old file to `NAME.redb.migrated`, durably.
fn retire_old(dir: &Path, name: &str) -> anyhow::Result<()> {
    let (from, to) = (legacy_path(dir, name), migrated_path(dir, name));
    if to.exists() {
        bail!(
            "{} exists already (a store migrated before?): move it aside, then run \
             migrate again",
            to.display()
        );
    }
    std::fs::rename(&from, &to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))?;
    fsync_dir(dir)
}

/// Stops the process dead, as a power cut or a kill would.
fn crash(point: &str) -> ! {
    eprintln!("migrate failpoint {point}: aborting");
    std::process::abort()
}

fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync {}", dir.display()))
}

/// Fsyncs every file and directory under `root` (fjall makes its journal
/// durable; its table files and directory entries are made so here).
fn fsync_tree(root: &Path) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(root).with_context(|| format!("cannot read {}", root.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            fsync_tree(&path)?;
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot fsync {}", path.display()))?;
        }
    }
    fsync_dir(root)
}

#[cfg(test)]
mod tests {
    use redb::TableDefinition;

    use super::*;

    /// The migration reads the old file read-only, which must still keep
    /// an old service (a writer) out while it runs, and be kept out by one.
    #[test]
    fn the_read_only_open_and_a_writer_exclude_each_other() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("inventory.redb");
        {
            let db = redb::Database::create(&path).expect("create");
            let txn = db.begin_write().expect("write");
            txn.open_table(TableDefinition::<&str, &[u8]>::new("products"))
                .expect("table");
            txn.commit().expect("commit");
        }
        let reading = open_old(&path, false).expect("a clean file opens read-only");
        assert!(matches!(reading, Old::ReadOnly(_)));
        assert!(matches!(
            redb::Database::open(&path),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
        drop(reading);
        let writer = redb::Database::open(&path).expect("free again");
        let refused = open_old(&path, false).err().expect("refused");
        assert!(refused.to_string().contains("is in use"), "{refused}");
        drop(writer);
    }
}
