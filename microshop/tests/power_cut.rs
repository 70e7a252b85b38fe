//! Power-cut tests: the data directories are on a FUSE filesystem that
//! forgets, at a cut, everything not made durable (`power_cut/fs.rs`).

mod cluster;
#[path = "power_cut/fs.rs"]
mod fs;

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    path::Path,
};

use fs::PowerCutFs;

/// Whether this machine can mount the filesystem (root and /dev/fuse).
/// Without it the tests are skipped, except under CI, where they fail.
fn can_mount() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let fuse = Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let why = format!(
        "the power-cut tests need root and /dev/fuse (root: {root}, /dev/fuse: {fuse})"
    );
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(!ci, "{why}");
    eprintln!("skipped: {why}");
    false
}

fn read(path: &Path) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path).ok()?.read_to_end(&mut out).ok()?;
    Some(out)
}

/// The filesystem's own model, against POSIX: what was synced survives a
/// cut, what was not is gone.
#[test]
fn filesystem_drops_what_was_not_synced() {
    if !can_mount() {
        return;
    }
    let mnt = tempfile::tempdir().expect("mount point");
    let mut pfs = PowerCutFs::mount(mnt.path()).expect("mount the power-cut filesystem");
    let root = mnt.path();
    let dir = root.join("d");
    std::fs::create_dir(&dir).unwrap();
    let synced = dir.join("synced");
    let unsynced = dir.join("unsynced");
    let orphan = dir.join("orphan");
    // A file written and fsync'd, its directory fsync'd: durable.
    let mut f = File::create(&synced).unwrap();
    f.write_all(b"durable").unwrap();
    f.sync_all().unwrap();
    // A file whose name is durable but whose write is not.
    let mut g = File::create(&unsynced).unwrap();
    g.write_all(b"first").unwrap();
    g.sync_data().unwrap();
    File::open(&dir).unwrap().sync_all().unwrap();
    File::open(root).unwrap().sync_all().unwrap();
    g.write_all(b" and lost").unwrap();
    // A later write to the synced file, then a truncate: both lost.
    f.write_all(b" plus lost").unwrap();
    OpenOptions::new()
        .write(true)
        .open(&synced)
        .unwrap()
        .set_len(3)
        .unwrap();
    // A file created, written and fsync'd, but its directory not: gone.
    let mut h = File::create(&orphan).unwrap();
    h.write_all(b"nameless").unwrap();
    h.sync_all().unwrap();
    // A rename whose directory is not fsync'd: undone. An unlink too.
    std::fs::rename(&synced, dir.join("renamed")).unwrap();
    std::fs::remove_file(&unsynced).unwrap();
    // A new directory with a synced file, the parent not synced: gone.
    std::fs::create_dir(root.join("newdir")).unwrap();
    let mut k = File::create(root.join("newdir/file")).unwrap();
    k.write_all(b"x").unwrap();
    k.sync_all().unwrap();
    File::open(root.join("newdir")).unwrap().sync_all().unwrap();
    drop((f, g, h, k));

    let dropped = pfs.cut().expect("cut");
    assert_eq!(read(&synced).as_deref(), Some(&b"durable"[..]));
    assert_eq!(read(&unsynced).as_deref(), Some(&b"first"[..]));
    assert!(!orphan.exists(), "a file whose directory was not synced survived");
    assert!(!dir.join("renamed").exists(), "an unsynced rename survived");
    assert!(!root.join("newdir").exists(), "an unsynced mkdir survived");
    assert!(dropped.files_rolled_back >= 2, "{dropped:?}");

    // After the cut it works as before: sync a rename and it stays.
    std::fs::rename(&synced, dir.join("renamed")).unwrap();
    File::open(&dir).unwrap().sync_all().unwrap();
    let mut u = OpenOptions::new().append(true).open(&unsynced).unwrap();
    u.write_all(b" kept").unwrap();
    u.sync_data().unwrap();
    drop(u);
    pfs.cut().expect("second cut");
    assert!(!synced.exists());
    assert_eq!(read(&dir.join("renamed")).as_deref(), Some(&b"durable"[..]));
    assert_eq!(read(&unsynced).as_deref(), Some(&b"first kept"[..]));
    println!("power-cut filesystem: the model holds");
}
