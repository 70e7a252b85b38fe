//! The group fsync shared by `redb-none`, the fjall variants and `append`:
//! apart because it is the one durability mechanism they have in common.

use std::sync::{
    Arc, Condvar, Mutex,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::watch;

use crate::Res;

/// Group fsync: writers take a ticket after their write is in the engine;
/// one sync thread makes everything written so far durable with one call
/// and wakes every waiter whose ticket it covered.
pub(crate) struct GroupSync {
    written: AtomicU64,
    synced: watch::Sender<u64>,
    pending: Mutex<bool>,
    wake: Condvar,
    pub(crate) syncs: AtomicU64,
}

impl GroupSync {
    pub(crate) fn start(
        name: &str,
        mut sync: impl FnMut() -> Res<()> + Send + 'static,
    ) -> Res<Arc<Self>> {
        let me = Arc::new(Self {
            written: AtomicU64::new(0),
            synced: watch::channel(0).0,
            pending: Mutex::new(false),
            wake: Condvar::new(),
            syncs: AtomicU64::new(0),
        });
        let this = Arc::clone(&me);
        std::thread::Builder::new()
            .name(format!("{name}-sync"))
            .spawn(move || {
                loop {
                    {
                        let mut p = this.pending.lock().unwrap_or_else(|e| e.into_inner());
                        while !*p {
                            p = this.wake.wait(p).unwrap_or_else(|e| e.into_inner());
                        }
                        *p = false;
                    }
                    let target = this.written.load(Ordering::SeqCst);
                    if let Err(e) = sync() {
                        eprintln!("sync failed: {e}");
                        std::process::exit(2);
                    }
                    this.syncs.fetch_add(1, Ordering::Relaxed);
                    this.synced.send_replace(target);
                }
            })?;
        Ok(me)
    }

    /// Waits until everything written before the call is durable.
    pub(crate) async fn durable(&self) {
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.synced.subscribe();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            *p = true;
        }
        self.wake.notify_one();
        let _ = rx.wait_for(|s| *s >= ticket).await;
    }
}
