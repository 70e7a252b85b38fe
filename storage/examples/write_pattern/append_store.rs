//! The `append` engine: an append-only file per store, the lower bound any
//! engine is compared with.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::Write as _,
    path::Path,
    sync::{Arc, Mutex, atomic::Ordering},
};

use crate::{
    Res,
    group_sync::GroupSync,
    kv::{KvStore, KvTx},
};

/// An append-only log per store, with in-memory maps of the tables that
/// are read back (products, coupons, counters, barrier, keys): the least
/// any engine can do for the same records.
struct AppendState {
    maps: Vec<HashMap<Vec<u8>, Vec<u8>>>,
    kept: &'static [usize],
    buf: Vec<u8>,
}

struct AppendTx<'a>(&'a mut AppendState);

impl KvTx for AppendTx<'_> {
    fn get(&mut self, table: usize, key: &[u8]) -> Res<Option<Vec<u8>>> {
        Ok(self.0.maps[table].get(key).cloned())
    }
    fn put(&mut self, table: usize, key: &[u8], value: &[u8]) {
        if self.0.kept.contains(&table) {
            self.0.maps[table].insert(key.to_vec(), value.to_vec());
        }
        let b = &mut self.0.buf;
        b.push(u8::try_from(table).unwrap_or(u8::MAX));
        b.extend_from_slice(&u32::try_from(key.len()).unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&u32::try_from(value.len()).unwrap_or(0).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(value);
    }
    fn del(&mut self, table: usize, key: &[u8]) {
        self.0.maps[table].remove(key);
        let b = &mut self.0.buf;
        b.push(0x80 | u8::try_from(table).unwrap_or(0x7f));
        b.extend_from_slice(&u32::try_from(key.len()).unwrap_or(0).to_le_bytes());
        b.extend_from_slice(key);
    }
}

pub(crate) struct AppendStore {
    state: Arc<Mutex<AppendState>>,
    sync: Arc<GroupSync>,
}

impl AppendStore {
    pub(crate) fn open(dir: &Path, name: &str, tables: usize, kept: &'static [usize]) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?;
        let state = Arc::new(Mutex::new(AppendState {
            maps: (0..tables).map(|_| HashMap::new()).collect(),
            kept,
            buf: Vec::new(),
        }));
        let st = Arc::clone(&state);
        let sync = GroupSync::start(name, move || {
            let buf = std::mem::take(&mut st.lock().unwrap_or_else(|e| e.into_inner()).buf);
            file.write_all(&buf)?;
            file.sync_data()?;
            Ok(())
        })?;
        Ok(Self { state, sync })
    }
}

impl KvStore for AppendStore {
    async fn write<R: Send>(&self, f: impl FnOnce(&mut dyn KvTx) -> Res<R> + Send) -> Res<R> {
        let r = {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut AppendTx(&mut st))?
        };
        self.sync.durable().await;
        Ok(r)
    }
    fn syncs(&self) -> u64 {
        self.sync.syncs.load(Ordering::Relaxed)
    }
}
