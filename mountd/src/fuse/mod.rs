//! The fuser adapter: translates FUSE requests into calls on the filesystem core and the
//! core's results into replies. Nothing else happens here.
//!
//! Every op opens an [`Op`] (ENTER) that ends when its reply is sent (EXIT). For reads the
//! `Op` travels inside the parked reply, so a read answered later by the data path ends
//! its op exactly then. No callback here waits: the core never blocks (see `fs`).

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    IoctlFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, RequestId,
};

use crate::FsError;
use crate::fs::{Attr, Fs, KernelCache, Kind, Unlinked};
use crate::ops::Op;
use crate::store::DataReply;

/// How long the kernel may cache attributes and entries. Short, because entries come and
/// go with stage/unstage; file contents are cached across opens regardless (keep_cache),
/// since a replaced entry always gets a new inode.
const ATTR_TTL: Duration = Duration::from_secs(1);

/// Background (read-ahead) requests the kernel may have outstanding.
const MAX_BACKGROUND: u16 = 1024;

pub struct FuseAdapter {
    fs: Arc<Fs>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>) -> FuseAdapter {
        FuseAdapter { fs }
    }
}

fn errno(error: &FsError) -> Errno {
    Errno::from_i32(error.errno())
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.blocks,
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind: match attr.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
        },
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: crate::fs::BLOCK_SIZE,
        flags: 0,
    }
}

/// Opens the op for request `req`: `op!(req, "fuse.lookup", ino = .., name = ..)`.
macro_rules! op {
    ($req:expr, $name:literal $(, $($field:tt)*)?) => {
        Op::enter(
            $name,
            $req.unique().0,
            $req.pid(),
            tracing::trace_span!($name, pid = $req.pid() $(, $($field)*)?),
        )
    };
}

/// The kernel's name cache, reached through FUSE notifications.
pub struct NotifierCache(pub fuser::Notifier);

impl KernelCache for NotifierCache {
    fn forget_name(&self, unlinked: &Unlinked) {
        let result = self.0.delete(
            INodeNo(unlinked.parent),
            INodeNo(unlinked.ino),
            OsStr::new(&unlinked.name),
        );
        // ENOENT: the kernel had not cached it. Anything else only delays the name's
        // disappearance until its TTL runs out.
        if let Err(e) = result
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::debug!(name = unlinked.name, error = %e, "kernel name invalidation failed");
        }
    }
}

/// A read's reply and its op, parked together until the data path answers.
struct FuseReadReply {
    reply: ReplyData,
    op: Op,
}

impl DataReply for FuseReadReply {
    fn waiting(&self, what: String) {
        self.op.waiting_for(what);
    }

    fn data(self: Box<Self>, data: &[u8]) {
        self.reply.data(data);
        drop(self.op);
    }

    fn error(self: Box<Self>, error: FsError) {
        tracing::debug!(parent: self.op.span(), %error, "read failed");
        self.reply.error(errno(&error));
        drop(self.op);
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _op = op!(req, "fuse.init");
        // Let the kernel read ahead as far as it allows; our own read-ahead goes further.
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
        }
        // Kernel read-ahead arrives as background requests, which no process waits on and
        // so no interrupt ever frees. Parked on a stalled remote they hold the kernel's
        // background slots until their deadline; with the default (16) they would stall
        // read-ahead of every other file. Allow many.
        let _ = config.set_max_background(MAX_BACKGROUND);
        tracing::info!(mountpoint = %self.fs.config().mountpoint.display(), "FUSE session initialised");
        Ok(())
    }

    fn destroy(&mut self) {
        // No request to take an id from: the kernel sends DESTROY once, at unmount.
        let _op = Op::enter("fuse.destroy", 0, 0, tracing::trace_span!("fuse.destroy"));
        tracing::info!("FUSE session destroyed");
    }

    fn interrupt(&self, req: &Request, unique: RequestId) -> Result<(), Errno> {
        let _op = op!(req, "fuse.interrupt", interrupted = unique.0);
        if self.fs.interrupt(unique.0) {
            Ok(())
        } else {
            // Not parked: answered already (the kernel drops this), or still queued in
            // another thread (the kernel sends the interrupt again).
            Err(Errno::EAGAIN)
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _op = op!(req, "fuse.lookup", ino = parent.0, name = ?name);
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&ATTR_TTL, &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        let _op = op!(req, "fuse.forget", ino = ino.0, nlookup);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _op = op!(req, "fuse.getattr", ino = ino.0);
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&ATTR_TTL, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _op = op!(req, "fuse.access", ino = ino.0, mask = mask.bits());
        match self.fs.access(ino.0, mask.contains(AccessFlags::W_OK)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _op = op!(req, "fuse.statfs");
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks,
            0,
            0,
            s.files,
            0,
            s.block_size,
            s.name_max,
            s.block_size,
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _op = op!(req, "fuse.open", ino = ino.0, flags = flags.0);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open(ino.0, write) {
            // Objects are immutable while staged: let the kernel keep cached pages.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let op = op!(req, "fuse.read", ino = ino.0, fh = fh.0, offset, size);
        op.describe(format!(
            "ino {} fh {} bytes {offset}..{}",
            ino.0,
            fh.0,
            offset + u64::from(size)
        ));
        let reply = Box::new(FuseReadReply { reply, op });
        self.fs.read(req.unique().0, fh.0, offset, size, reply);
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _op = op!(req, "fuse.release", ino = ino.0, fh = fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _op = op!(req, "fuse.flush", ino = ino.0, fh = fh.0);
        reply.ok(); // read-only: nothing to flush
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, _size: u32, reply: ReplyXattr) {
        let _op = op!(req, "fuse.getxattr", ino = ino.0, name = ?name);
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.error(Errno::from_i32(libc::ENODATA)), // no extended attributes
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _op = op!(req, "fuse.listxattr", ino = ino.0);
        match self.fs.getattr(ino.0) {
            Ok(_) if size == 0 => reply.size(0),
            Ok(_) => reply.data(&[]),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _op = op!(req, "fuse.ioctl", ino = ino.0, fh = fh.0, cmd);
        // Not a terminal or a device: what tools like dd probe for (TCGETS) is not here.
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _op = op!(req, "fuse.opendir", ino = ino.0);
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _op = op!(req, "fuse.readdir", ino = ino.0, fh = fh.0, offset);
        let entries = match self.fs.readdir(fh.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(&e)),
        };
        for (i, entry) in entries.iter().enumerate().skip(offset as usize) {
            let kind = match entry.kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            // The offset given is that of the next entry.
            if reply.add(INodeNo(entry.ino), i as u64 + 1, kind, &entry.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _op = op!(req, "fuse.releasedir", ino = ino.0, fh = fh.0);
        self.fs.releasedir(fh.0);
        reply.ok();
    }
}
