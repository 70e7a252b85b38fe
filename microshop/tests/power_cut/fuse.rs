//! The FUSE side of the power-cut filesystem ([`super::fs`]): every
//! request passes through to the backing directory and tells the model
//! what changed (the ranges written, the entries created, renamed or
//! removed) and what was synced.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, UNIX_EPOCH},
};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::{Node, State, lock};

/// No caching of entries or attributes in the kernel: every lookup comes
/// here, so nothing the kernel remembers can disagree with the model.
const TTL: Duration = Duration::ZERO;

pub(super) fn attr_of(ino: u64, meta: &fs::Metadata) -> FileAttr {
    let time = |secs: i64, nanos: i64| {
        UNIX_EPOCH
            + Duration::new(
                u64::try_from(secs).unwrap_or(0),
                u32::try_from(nanos).unwrap_or(0),
            )
    };
    let kind = if meta.is_dir() {
        FileType::Directory
    } else {
        FileType::RegularFile
    };
    FileAttr {
        ino: INodeNo(ino),
        size: meta.len(),
        blocks: meta.blocks(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
        crtime: time(meta.ctime(), meta.ctime_nsec()),
        kind,
        perm: u16::try_from(meta.permissions().mode() & 0o7777).unwrap_or(0o600),
        nlink: if meta.is_dir() { 2 } else { 1 },
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Opens `path` as `flags` ask, but always readable (an fsync through a
/// write-only handle reads what it copies), without O_APPEND (writes go
/// where the kernel says, so the changed range is known) and without the
/// flags the kernel already applied.
fn open_backing(path: &Path, flags: i32, create: bool) -> io::Result<File> {
    let acc = flags & libc::O_ACCMODE;
    let mut opts = OpenOptions::new();
    opts.read(true)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR);
    if create {
        opts.write(true).create_new(true).mode(0o644);
    }
    let passed =
        flags & !(libc::O_ACCMODE | libc::O_APPEND | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
    opts.custom_flags(passed & !libc::O_DIRECT).open(path)
}

/// The FUSE side: each request takes the state's lock for its length (one
/// request at a time, so the model's order is the requests' order).
pub(super) struct PowerCut {
    pub(super) state: Arc<Mutex<State>>,
}

impl PowerCut {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Filesystem for PowerCut {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let s = self.state();
        match s.child(parent.0, name).and_then(|ino| s.attr(ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let result = (|| -> io::Result<()> {
            let file = match fh.and_then(|fh| s.handles.get(&fh.0)) {
                Some((_, file)) => Arc::clone(file),
                None => Arc::new(
                    OpenOptions::new()
                        .write(size.is_some())
                        .read(true)
                        .open(s.path(ino.0))?,
                ),
            };
            if let Some(size) = size {
                let old = file.metadata()?.len();
                file.set_len(size)?;
                s.mark_dirty(ino.0, old.min(size), old.max(size));
            }
            if let Some(mode) = mode {
                file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
            }
            Ok(())
        })();
        match result.map_err(Errno::from).and_then(|()| s.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        let path = s.path(parent.0).join(name);
        if let Err(e) = fs::create_dir(&path) {
            return reply.error(e.into());
        }
        let ino = s.new_ino();
        s.nodes.insert(
            ino,
            Node {
                parent: parent.0,
                name: name.to_owned(),
            },
        );
        s.kinds.insert(ino, FileType::Directory);
        s.children.insert(ino, BTreeMap::new());
        s.children
            .entry(parent.0)
            .or_default()
            .insert(name.to_owned(), ino);
        match s.attr(ino) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let ino = match s.child(parent.0, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        let path = s.path(ino);
        if let Err(e) = fs::remove_file(&path) {
            return reply.error(e.into());
        }
        s.nodes.remove(&ino);
        if let Some(c) = s.children.get_mut(&parent.0) {
            c.remove(name);
        }
        reply.ok();
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut s = self.state();
        let ino = match s.child(parent.0, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = fs::remove_dir(s.path(ino)) {
            return reply.error(e.into());
        }
        s.nodes.remove(&ino);
        s.children.remove(&ino);
        if let Some(c) = s.children.get_mut(&parent.0) {
            c.remove(name);
        }
        reply.ok();
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let ino = match s.child(parent.0, name) {
            Ok(ino) => ino,
            Err(e) => return reply.error(e),
        };
        let replaced = s.child(newparent.0, newname).ok();
        if replaced.is_some() && flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return reply.error(Errno::EEXIST);
        }
        let from = s.path(ino);
        let to = s.path(newparent.0).join(newname);
        if let Err(e) = fs::rename(&from, &to) {
            return reply.error(e.into());
        }
        if let Some(old) = replaced {
            s.nodes.remove(&old);
            s.children.remove(&old);
        }
        if let Some(c) = s.children.get_mut(&parent.0) {
            c.remove(name);
        }
        s.children
            .entry(newparent.0)
            .or_default()
            .insert(newname.to_owned(), ino);
        s.nodes.insert(
            ino,
            Node {
                parent: newparent.0,
                name: newname.to_owned(),
            },
        );
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        let path = s.path(ino.0);
        if flags.0 & libc::O_TRUNC != 0 {
            let old = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            s.mark_dirty(ino.0, 0, old);
        }
        match open_backing(&path, flags.0, false) {
            Ok(file) => {
                if flags.0 & libc::O_TRUNC != 0
                    && let Err(e) = file.set_len(0)
                {
                    return reply.error(e.into());
                }
                let fh = s.next_fh;
                s.next_fh += 1;
                s.handles.insert(fh, (ino.0, Arc::new(file)));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e.into()),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let path = s.path(parent.0).join(name);
        let file = match open_backing(&path, flags, true) {
            Ok(file) => file,
            Err(e) => return reply.error(e.into()),
        };
        let ino = s.new_ino();
        s.nodes.insert(
            ino,
            Node {
                parent: parent.0,
                name: name.to_owned(),
            },
        );
        s.kinds.insert(ino, FileType::RegularFile);
        s.children
            .entry(parent.0)
            .or_default()
            .insert(name.to_owned(), ino);
        let fh = s.next_fh;
        s.next_fh += 1;
        s.handles.insert(fh, (ino, Arc::new(file)));
        match s.attr(ino) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.state().handles.get(&fh.0) {
            Some((_, file)) => Arc::clone(file),
            None => return reply.error(Errno::EBADF),
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(e.into()),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let file = match s.handles.get(&fh.0) {
            Some((_, file)) => Arc::clone(file),
            None => return reply.error(Errno::EBADF),
        };
        match file.write_all_at(data, offset) {
            Ok(()) => {
                s.mark_dirty(ino.0, offset, offset + data.len() as u64);
                reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX));
            }
            Err(e) => reply.error(e.into()),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.state();
        let file = match s.handles.get(&fh.0) {
            Some((_, file)) => Arc::clone(file),
            None => return reply.error(Errno::EBADF),
        };
        match s.sync_file(ino.0, &file) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = self.state();
        let Some(children) = s.children.get(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let parent = s.nodes.get(&ino.0).map_or(1, |n| n.parent);
        let mut entries = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        entries.extend(children.iter().map(|(name, &child)| {
            let kind = s
                .kinds
                .get(&child)
                .copied()
                .unwrap_or(FileType::RegularFile);
            (child, kind, name.clone())
        }));
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.state().sync_dir(ino.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
