//! A FUSE filesystem that loses, on a power cut, everything that was not
//! made durable, the way a disk without a battery-backed cache may.
//!
//! [`PowerCutFs::mount`] mounts it over a mount point; every operation
//! passes through to a backing directory, so the processes on it see an
//! ordinary filesystem. Beside that live state it keeps the durable image,
//! by POSIX's rules and no kinder:
//!
//! - a file's content (its bytes and its size) is durable as of its last
//!   `fsync` or `fdatasync`: the byte ranges written or truncated since are
//!   copied then into a shadow copy of the file;
//! - a directory's entries (creates, renames, unlinks, mkdir, rmdir) are
//!   durable as of its last `fsync`: an `fsync` of a new file does not make
//!   its name durable, only one of its directory does;
//! - what existed when it was mounted is durable.
//!
//! [`PowerCutFs::cut`] is the power cut: it unmounts (the processes on it
//! must be dead), builds the durable image from the root's durable entries
//! down, each file with its durable content, and mounts again over that.
//! A file whose name is durable but whose content was never synced comes
//! back empty; one whose name is not durable does not come back; a renamed
//! file whose directories were not synced is back under its old name with
//! its old content.
//!
//! Inode numbers are its own and never reused within a mount, so a durable
//! entry keeps pointing at the content it had even after the file was
//! unlinked or renamed over. Hard links and symbolic links are refused
//! (the stores make none). Locks are left to the kernel (local `flock`).
//! It needs root and `/dev/fuse`: fuser mounts with mount(2) itself, no
//! libfuse or fusermount.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

#[path = "fuse.rs"]
mod fuse;

use fuser::{BackgroundSession, Config, Errno, FileAttr, FileType, MountOption};

use self::fuse::{PowerCut, attr_of};

/// Chunk of the sparse copies (all-zero chunks are left as holes).
const CHUNK: usize = 256 * 1024;

/// What one cut dropped, for the test's report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Files whose live content differed from their durable content.
    pub files_rolled_back: usize,
    /// Directories whose live entries differed from their durable ones.
    pub dirs_rolled_back: usize,
}

/// A mounted power-cut filesystem (see the module docs). Dropping it
/// unmounts it.
pub struct PowerCutFs {
    mountpoint: PathBuf,
    work: tempfile::TempDir,
    generation: usize,
    session: Option<BackgroundSession>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for PowerCutFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerCutFs")
            .field("mountpoint", &self.mountpoint)
            .field("generation", &self.generation)
            .finish()
    }
}

impl PowerCutFs {
    /// Mounts an empty power-cut filesystem over `mountpoint` (an existing
    /// empty directory).
    pub fn mount(mountpoint: &Path) -> io::Result<Self> {
        let work = tempfile::tempdir()?;
        fs::create_dir(work.path().join("live-0"))?;
        let (session, state) = mount_over(mountpoint, work.path(), 0)?;
        Ok(Self {
            mountpoint: mountpoint.to_owned(),
            work,
            generation: 0,
            session: Some(session),
            state,
        })
    }

    /// The power cut: unmounts (every process using it must be dead),
    /// replaces the live state by the durable image and mounts it again.
    pub fn cut(&mut self) -> io::Result<Dropped> {
        self.unmount()?;
        let next = self.generation + 1;
        let live = self.work.path().join(format!("live-{next}"));
        fs::create_dir(&live)?;
        let dropped = {
            let state = lock(&self.state);
            state.build_durable(&live)?
        };
        let old = self.work.path().join(format!("live-{}", self.generation));
        fs::remove_dir_all(&old)?;
        fs::remove_dir_all(self.work.path().join(format!("shadow-{}", self.generation)))?;
        let (session, state) = mount_over(&self.mountpoint, self.work.path(), next)?;
        self.session = Some(session);
        self.state = state;
        self.generation = next;
        Ok(dropped)
    }

    /// From now on, until the next cut, every fsync is ignored (a disk
    /// that lies): the tests' negative control, which must see answers
    /// lost.
    pub fn ignore_syncs(&self) {
        lock(&self.state).ignore_syncs = true;
    }

    /// Makes everything durable as it is now (as a `sync` of the whole
    /// disk would): for a test's setup, before its cuts.
    pub fn sync_all(&self) -> io::Result<()> {
        lock(&self.state).sync_everything()
    }

    fn unmount(&mut self) -> io::Result<()> {
        match self.session.take().map(BackgroundSession::umount_and_join) {
            // The session's last read of /dev/fuse raced the unmount: the
            // kernel answers a read of a connection it has just ended with
            // ECONNABORTED instead of ENODEV (seen once in a run of the
            // filesystem's own test). The filesystem is unmounted either way.
            Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionAborted => Ok(()),
            Some(Err(e)) => Err(e),
            Some(Ok(())) | None => Ok(()),
        }
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!(
                "unmounting {} failed ({e}); detaching it",
                self.mountpoint.display()
            );
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Mounts generation `generation` (backing `live-N`, shadow `shadow-N`
/// under `work`) over `mountpoint`.
fn mount_over(
    mountpoint: &Path,
    work: &Path,
    generation: usize,
) -> io::Result<(BackgroundSession, Arc<Mutex<State>>)> {
    let live = work.join(format!("live-{generation}"));
    let shadow = work.join(format!("shadow-{generation}"));
    fs::create_dir(&shadow)?;
    let state = Arc::new(Mutex::new(State::scan(live, shadow)?));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("powercut".into()),
        MountOption::Subtype("powercut".into()),
    ];
    let fs = PowerCut {
        state: Arc::clone(&state),
    };
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    Ok((session, state))
}

/// One inode of the live tree.
#[derive(Debug, Clone)]
struct Node {
    parent: u64,
    name: OsString,
}

/// The live tree, the durable image and the open files.
#[derive(Debug)]
struct State {
    live: PathBuf,
    shadow: PathBuf,
    next_ino: u64,
    next_fh: u64,
    /// Where each live inode is (the root has no entry).
    nodes: HashMap<u64, Node>,
    /// Every inode's kind, live or not.
    kinds: HashMap<u64, FileType>,
    /// Live entries of each live directory.
    children: HashMap<u64, BTreeMap<OsString, u64>>,
    /// Durable entries of each directory (none: never synced, empty).
    durable: HashMap<u64, BTreeMap<OsString, u64>>,
    /// Byte ranges of each file changed since its last sync.
    dirty: HashMap<u64, Vec<(u64, u64)>>,
    /// Files whose durable content is in the shadow (the others: empty).
    has_shadow: HashSet<u64>,
    handles: HashMap<u64, (u64, Arc<File>)>,
    /// fsyncs make nothing durable ([`PowerCutFs::ignore_syncs`]).
    ignore_syncs: bool,
}

impl State {
    /// The tree under `live`, all of it durable (copied into `shadow`).
    fn scan(live: PathBuf, shadow: PathBuf) -> io::Result<Self> {
        let mut state = Self {
            live,
            shadow,
            next_ino: 2,
            next_fh: 1,
            nodes: HashMap::new(),
            kinds: HashMap::from([(1, FileType::Directory)]),
            children: HashMap::new(),
            durable: HashMap::new(),
            dirty: HashMap::new(),
            has_shadow: HashSet::new(),
            handles: HashMap::new(),
            ignore_syncs: false,
        };
        state.scan_dir(1)?;
        Ok(state)
    }

    fn scan_dir(&mut self, dir: u64) -> io::Result<()> {
        let path = self.path(dir);
        let mut entries = BTreeMap::new();
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let ino = self.new_ino();
            let name = entry.file_name();
            let kind = entry.file_type()?;
            self.nodes.insert(
                ino,
                Node {
                    parent: dir,
                    name: name.clone(),
                },
            );
            entries.insert(name, ino);
            if kind.is_dir() {
                self.kinds.insert(ino, FileType::Directory);
                self.scan_dir(ino)?;
            } else if kind.is_file() {
                self.kinds.insert(ino, FileType::RegularFile);
                let src = File::open(entry.path())?;
                let dst = File::create(self.shadow_path(ino))?;
                copy_sparse(&src, &dst)?;
                self.has_shadow.insert(ino);
            } else {
                return Err(io::Error::other(format!(
                    "{} is neither a file nor a directory",
                    entry.path().display()
                )));
            }
        }
        self.durable.insert(dir, entries.clone());
        self.children.insert(dir, entries);
        Ok(())
    }

    fn new_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn shadow_path(&self, ino: u64) -> PathBuf {
        self.shadow.join(ino.to_string())
    }

    /// The backing path of live inode `ino`.
    fn path(&self, ino: u64) -> PathBuf {
        let mut names = Vec::new();
        let mut at = ino;
        while at != 1 {
            let Some(node) = self.nodes.get(&at) else {
                break;
            };
            names.push(node.name.clone());
            at = node.parent;
        }
        let mut path = self.live.clone();
        for name in names.iter().rev() {
            path.push(name);
        }
        path
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.children
            .get(&parent)
            .and_then(|c| c.get(name))
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let meta = match self.handles.values().find(|(i, _)| *i == ino) {
            Some((_, file)) => file.metadata(),
            None => fs::symlink_metadata(self.path(ino)),
        }
        .map_err(Errno::from)?;
        Ok(attr_of(ino, &meta))
    }

    fn mark_dirty(&mut self, ino: u64, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let ranges = self.dirty.entry(ino).or_default();
        match ranges.last_mut() {
            Some(last) if last.0 <= start && start <= last.1 => last.1 = last.1.max(end),
            _ => ranges.push((start, end)),
        }
    }

    /// An fsync of file `ino` read through `file`: its changed ranges and
    /// size go to its shadow.
    fn sync_file(&mut self, ino: u64, file: &File) -> io::Result<()> {
        if self.ignore_syncs {
            return Ok(());
        }
        let ranges = self.dirty.remove(&ino).unwrap_or_default();
        let len = file.metadata()?.len();
        let shadow = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.shadow_path(ino))?;
        let mut buf = vec![0u8; CHUNK];
        for (start, end) in ranges {
            let mut at = start;
            let end = end.min(len);
            while at < end {
                let n = usize::try_from(end - at).unwrap_or(CHUNK).min(CHUNK);
                file.read_exact_at(&mut buf[..n], at)?;
                shadow.write_all_at(&buf[..n], at)?;
                at += n as u64;
            }
        }
        shadow.set_len(len)?;
        self.has_shadow.insert(ino);
        Ok(())
    }

    /// An fsync of directory `ino`: its live entries become its durable
    /// ones.
    fn sync_dir(&mut self, ino: u64) {
        if self.ignore_syncs {
            return;
        }
        let entries = self.children.get(&ino).cloned().unwrap_or_default();
        self.durable.insert(ino, entries);
    }

    fn sync_everything(&mut self) -> io::Result<()> {
        let dirs: Vec<u64> = self.children.keys().copied().collect();
        for dir in dirs {
            self.sync_dir(dir);
        }
        let files: Vec<u64> = self
            .kinds
            .iter()
            .filter(|(ino, k)| **k == FileType::RegularFile && self.nodes.contains_key(ino))
            .map(|(ino, _)| *ino)
            .collect();
        for ino in files {
            let file = File::open(self.path(ino))?;
            // Everything, not only what is marked: cheap enough for a setup.
            let len = file.metadata()?.len();
            self.dirty.insert(ino, vec![(0, len)]);
            self.sync_file(ino, &file)?;
        }
        Ok(())
    }

    /// Writes the durable image under `target` (an empty directory).
    fn build_durable(&self, target: &Path) -> io::Result<Dropped> {
        let mut dropped = Dropped::default();
        let mut seen = HashSet::new();
        self.build_dir(1, target, &mut seen, &mut dropped)?;
        Ok(dropped)
    }

    fn build_dir(
        &self,
        dir: u64,
        target: &Path,
        seen: &mut HashSet<u64>,
        dropped: &mut Dropped,
    ) -> io::Result<()> {
        let empty = BTreeMap::new();
        let entries = self.durable.get(&dir).unwrap_or(&empty);
        if self.children.get(&dir) != Some(entries) {
            dropped.dirs_rolled_back += 1;
        }
        for (name, &ino) in entries {
            // A directory renamed into itself's durable subtree: cut the loop.
            if !seen.insert(ino) && self.kinds.get(&ino) == Some(&FileType::Directory) {
                continue;
            }
            let path = target.join(name);
            match self.kinds.get(&ino) {
                Some(FileType::Directory) => {
                    fs::create_dir(&path)?;
                    self.build_dir(ino, &path, seen, dropped)?;
                }
                _ => {
                    let dst = File::create(&path)?;
                    if self.has_shadow.contains(&ino) {
                        copy_sparse(&File::open(self.shadow_path(ino))?, &dst)?;
                    }
                    if self.dirty.get(&ino).is_some_and(|r| !r.is_empty())
                        || !self.nodes.contains_key(&ino)
                    {
                        dropped.files_rolled_back += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Copies `src` into `dst` (truncated to `src`'s length), leaving holes
/// where `src` reads as zeros: the stores preallocate large sparse files.
fn copy_sparse(src: &File, dst: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    dst.set_len(0)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = usize::try_from(len - at).unwrap_or(CHUNK).min(CHUNK);
        src.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            dst.write_all_at(&buf[..n], at)?;
        }
        at += n as u64;
    }
    dst.set_len(len)
}
