//! The fuser adapter: translates FUSE requests into calls on the filesystem core and the
//! core's results into replies. Nothing else happens here.
//!
//! Every op opens an [`Op`] (ENTER) that ends as its reply is sent (EXIT): ended just
//! before the reply is written, so an op's span always lies within the syscall that caused
//! it. For reads the `Op` travels inside the parked reply, so a read answered later by the
//! data path ends its op exactly then. No callback here waits: the core never blocks (see
//! `fs`).

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
use crate::ops::{Op, OpKind, OpRegistry};
use crate::reads::DataReply;

/// How long the kernel may cache attributes and entries. Short, because entries come and
/// go with stage/unstage; file contents are cached across opens regardless (keep_cache),
/// since a replaced entry always gets a new inode.
const ATTR_TTL: Duration = Duration::from_secs(1);

/// Background (read-ahead) requests the kernel may have outstanding.
const MAX_BACKGROUND: u16 = 1024;

pub struct FuseAdapter {
    fs: Arc<Fs>,
    /// Where every op is registered from ENTER to EXIT.
    ops: Arc<OpRegistry>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, ops: Arc<OpRegistry>) -> FuseAdapter {
        FuseAdapter { fs, ops }
    }
}

/// The errno for `error` (mapped in one place, `FsError::errno`), recorded on `op`, which
/// ends: call it as the reply's argument, so EXIT precedes the reply.
fn failed(op: Op, error: &FsError) -> Errno {
    fail(op, Errno::from_i32(error.errno()))
}

/// `errno`, recorded on `op` (metrics and the op's span), which ends.
fn fail(op: Op, errno: Errno) -> Errno {
    op.failed(errno.code());
    op.answered();
    errno
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

/// Opens the op for request `req` about inode `ino` (0 if none), in the adapter's
/// registry: `op!(self, req, Lookup, parent.0, name = ..)`. Its span is a debug span:
/// exported when span export is on, free otherwise.
macro_rules! op {
    ($adapter:expr, $req:expr, $kind:ident, $ino:expr $(, $($field:tt)*)?) => {
        $adapter.ops.enter(
            OpKind::$kind,
            $req.unique().0,
            ($req.pid(), $req.uid()),
            $ino,
            tracing::debug_span!(
                OpKind::$kind.span_name(),
                op = OpKind::$kind.label(),
                pid = $req.pid(),
                unique = $req.unique().0,
                ino = $ino,
                errno = tracing::field::Empty
                $(, $($field)*)?
            ),
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

    fn span(&self) -> Option<Arc<tracing::Span>> {
        Some(self.op.span_handle())
    }

    fn data(self: Box<Self>, parts: &[std::io::IoSlice<'_>]) {
        let FuseReadReply { reply, op } = *self;
        op.replied_bytes(parts.iter().map(|p| p.len()).sum());
        op.answered();
        reply.data_vectored(parts);
    }

    fn error(self: Box<Self>, error: FsError) {
        let FuseReadReply { reply, op } = *self;
        tracing::debug!(parent: op.span(), %error, "read failed");
        reply.error(failed(op, &error));
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _op = op!(self, req, Init, 0);
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
        let _op = self.ops.enter(
            OpKind::Destroy,
            0,
            (0, 0),
            0,
            tracing::debug_span!("fuse.destroy", op = "destroy"),
        );
        tracing::info!("FUSE session destroyed");
    }

    fn interrupt(&self, req: &Request, unique: RequestId) -> Result<(), Errno> {
        let op = op!(
            self,
            req,
            Interrupt,
            0,
            interrupted = unique.0,
            outcome = tracing::field::Empty
        );
        // Never EAGAIN: with a descriptor per thread it would reach the wrong one and be
        // dropped, and with one thread it would make the kernel resend at once. A read not
        // seen yet is answered with EINTR when it arrives (see `reads`).
        let outcome = self.fs.interrupt(unique.0);
        op.span().record("outcome", tracing::field::debug(outcome));
        op.answered();
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let op = op!(self, req, Lookup, parent.0, name = ?name);
        let Some(name) = name.to_str() else {
            return reply.error(fail(op, Errno::ENOENT));
        };
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => {
                op.answered();
                reply.entry(&ATTR_TTL, &file_attr(&attr), Generation(0))
            }
            Err(e) => reply.error(failed(op, &e)),
        }
    }

    fn forget(&self, req: &Request, ino: INodeNo, nlookup: u64) {
        let _op = op!(self, req, Forget, ino.0, nlookup);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let op = op!(self, req, Getattr, ino.0);
        match self.fs.getattr(ino.0) {
            Ok(attr) => {
                op.answered();
                reply.attr(&ATTR_TTL, &file_attr(&attr))
            }
            Err(e) => reply.error(failed(op, &e)),
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let op = op!(self, req, Access, ino.0, mask = mask.bits());
        match self.fs.access(ino.0, mask.contains(AccessFlags::W_OK)) {
            Ok(()) => {
                op.answered();
                reply.ok()
            }
            Err(e) => reply.error(failed(op, &e)),
        }
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let op = op!(self, req, Statfs, ino.0);
        let s = self.fs.statfs();
        op.answered();
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
        let op = op!(self, req, Open, ino.0, flags = flags.0);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open(ino.0, write) {
            // Objects are immutable while staged: let the kernel keep cached pages. Nothing
            // is ever written, so close need not ask us to flush (one round trip less).
            Ok(fh) => {
                op.answered();
                reply.opened(
                    FileHandle(fh),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
                )
            }
            Err(e) => reply.error(failed(op, &e)),
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
        let op = op!(
            self,
            req,
            Read,
            ino.0,
            fh = fh.0,
            offset,
            size,
            bytes = tracing::field::Empty
        );
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
        let op = op!(self, req, Release, ino.0, fh = fh.0);
        self.fs.release(fh.0);
        op.answered();
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
        op!(self, req, Flush, ino.0, fh = fh.0).answered();
        reply.ok(); // read-only: nothing to flush
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, _size: u32, reply: ReplyXattr) {
        let op = op!(self, req, Getxattr, ino.0, name = ?name);
        match self.fs.getattr(ino.0) {
            Ok(_) => reply.error(fail(op, Errno::from_i32(libc::ENODATA))), // no extended attributes
            Err(e) => reply.error(failed(op, &e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let op = op!(self, req, Listxattr, ino.0);
        match self.fs.getattr(ino.0) {
            Ok(_) => {
                op.answered();
                if size == 0 {
                    reply.size(0)
                } else {
                    reply.data(&[])
                }
            }
            Err(e) => reply.error(failed(op, &e)),
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
        let op = op!(self, req, Ioctl, ino.0, fh = fh.0, cmd);
        // Not a terminal or a device: what tools like dd probe for (TCGETS) is not here.
        reply.error(fail(op, Errno::from_i32(libc::ENOTTY)));
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let op = op!(self, req, Opendir, ino.0);
        match self.fs.opendir(ino.0) {
            Ok(fh) => {
                op.answered();
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(failed(op, &e)),
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
        let op = op!(self, req, Readdir, ino.0, fh = fh.0, offset);
        let page = match self.fs.readdir(fh.0, offset) {
            Ok(page) => page,
            Err(e) => return reply.error(failed(op, &e)),
        };
        for (next, entry) in page {
            let kind = match entry.kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            // `next` is the offset of the entry after this one; the kernel sends it back.
            if reply.add(INodeNo(entry.ino), next, kind, &entry.name) {
                break;
            }
        }
        op.answered();
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
        let op = op!(self, req, Releasedir, ino.0, fh = fh.0);
        self.fs.releasedir(fh.0);
        op.answered();
        reply.ok();
    }
}
