//! The embedded store on a disk that fills up: a write that finds no room
//! answers `StorageError::Full` and changes nothing, reads and health say
//! so until space is freed, and then the same store (no restart) serves
//! again with every acknowledged write intact.
//!
//! The disk is a small tmpfs this test mounts, so it needs root; under CI
//! (`CI` set, not `false`/`0`) it fails rather than skips without it.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use microshop_storage::{
    StorageError,
    embedded::{Durable, EmbeddedDb, Sync},
};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "false" | "0"))
}

/// A tmpfs of `mib` MiB, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                !in_ci(),
                "cannot mount a tmpfs (this test needs root and `mount`)"
            );
            eprintln!("skipped: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the file system under `dir` with one file, to the last byte.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = File::create(&path).expect("filler");
    let chunk = vec![0x5a_u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling: {e}"),
        }
    }
    // What is left over after the last whole chunk.
    for _ in 0..64 {
        if f.write(&[0x5a; 512]).is_err() {
            break;
        }
    }
    path
}

fn key(i: u32) -> Vec<u8> {
    let mut k = b"k".to_vec();
    k.extend_from_slice(&i.to_be_bytes());
    k
}

async fn put(db: &EmbeddedDb, i: u32, sync: Sync) -> Result<(), StorageError> {
    db.write(sync, move |txn| {
        txn.put(key(i), vec![7_u8; 2048]);
        Ok(())
    })
    .await
}

async fn read(db: &EmbeddedDb, i: u32) -> Result<bool, StorageError> {
    db.read(|v| v.get(&key(i)).map(|v| v.is_some())).await
}

#[tokio::test]
async fn a_full_disk_refuses_writes_then_serves_again_once_space_is_freed() {
    let Some(disk) = SmallDisk::mount(32) else {
        return;
    };
    let db = EmbeddedDb::open(disk.path(), "probe", Durable::Yes, |_| Ok(())).expect("open");
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        let sync = if i % 2 == 0 {
            Sync::Durable
        } else {
            Sync::Buffered
        };
        put(&db, i, sync).await.expect("a write with room");
        acknowledged.push(i);
    }

    let filler = fill(disk.path());
    // The journal's buffer may take a few more writes before the OS is
    // asked for room; the first that needs it fails, and so does every
    // one after it.
    let mut next = 1_000;
    let full = loop {
        match put(&db, next, Sync::Durable).await {
            Ok(()) => acknowledged.push(next),
            Err(e) => break e,
        }
        next += 1;
        assert!(next < 10_000, "writes never failed on a full disk");
    };
    assert!(matches!(full, StorageError::Full(_)), "{full:?}");
    assert!(full.to_string().contains("full"), "{full}");
    let refused = next;
    let again = put(&db, refused + 1, Sync::Buffered)
        .await
        .expect_err("a full store refuses every write");
    assert!(matches!(again, StorageError::Full(_)), "{again:?}");
    let ping = db.ping().await.expect_err("health sees the full disk");
    assert!(matches!(ping, StorageError::Full(_)), "{ping:?}");

    std::fs::remove_file(&filler).expect("free the space");
    let started = Instant::now();
    loop {
        match put(&db, refused + 2, Sync::Durable).await {
            Ok(()) => break,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the store did not serve again after space was freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    db.ping().await.expect("healthy again");
    for i in &acknowledged {
        assert!(
            read(&db, *i).await.expect("read"),
            "acknowledged write {i} lost"
        );
    }
    assert!(
        !read(&db, refused).await.expect("read"),
        "the refused write changed nothing"
    );
    assert!(read(&db, refused + 2).await.expect("read"));

    // And after a reopen from disk, the same.
    drop(db);
    let db = EmbeddedDb::open(disk.path(), "probe", Durable::Yes, |_| Ok(())).expect("reopen");
    for i in acknowledged.iter().chain([&(refused + 2)]) {
        assert!(
            read(&db, *i).await.expect("read"),
            "write {i} lost on reopen"
        );
    }
    assert!(!read(&db, refused).await.expect("read"));
}
