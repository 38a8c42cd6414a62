//! The IO seam. Everything the log does to a disk goes through [`Disk`] and [`DiskFile`], so
//! tests can swap in [`crate::sim::SimDisk`], which tracks written against durable bytes and
//! injects crashes, torn writes, EIO and ENOSPC. [`DmaDisk`] is the real thing: glommio
//! `DmaFile`s, i.e. `O_DIRECT` through `io_uring`.
//!
//! Contract for data files: writes are whole 4 KiB pages at 4 KiB-aligned positions
//! ([`PAGE_BYTES`]); a completed write survives a process crash; only a completed
//! [`DiskFile::fdatasync`] makes it survive a power cut. Small metadata files (index,
//! checkpoint, marker) go through [`Disk::write_file_atomically`] / [`Disk::read_file`].
//!
//! Both traits are used from a single glommio executor: futures are `!Send`, no `dyn`.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

/// The `O_DIRECT` alignment every data write respects.
pub const PAGE_BYTES: usize = 4096;

pub fn align_down(value: u64) -> u64 {
    value & !(PAGE_BYTES as u64 - 1)
}

pub fn align_up(value: u64) -> u64 {
    align_down(value + PAGE_BYTES as u64 - 1)
}

/// A page-aligned buffer a [`DiskFile`] can write without copying.
pub trait IoBuffer {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
    /// Shortens the buffer to `len` bytes (a multiple of [`PAGE_BYTES`]) before a write.
    fn truncate(&mut self, len: usize);
    /// Drops the first `len` bytes (a multiple of [`PAGE_BYTES`]) before a write, without
    /// moving the rest.
    fn trim_front(&mut self, len: usize);
}

/// A directory tree of files. Cheap to clone (a handle).
#[allow(async_fn_in_trait)] // single-executor use: the futures never cross threads
pub trait Disk: Clone + 'static {
    type File: DiskFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) directly inside `dir`.
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals inside `dir` durable.
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    async fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to`, atomically replacing any file named `to`; durable once the
    /// directory is synced.
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Opens a data file for reading and writing, creating it when `create` is set.
    async fn open(&self, path: &Path, create: bool) -> io::Result<Self::File>;
    /// Reads a whole small file; `Ok(None)` when it does not exist.
    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Replaces `path` with `contents` so that a crash leaves the old or the new file whole:
    /// write a temporary file, fdatasync it, rename it over `path`, fsync the directory.
    async fn write_file_atomically(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
}

/// One open data file.
#[allow(async_fn_in_trait)]
pub trait DiskFile: 'static {
    type Buffer: IoBuffer;

    /// A page-aligned buffer of `len` bytes (`len` a multiple of the page). Its contents are
    /// unspecified: writers fill what they write and zero any padding themselves, so large
    /// buffers are not cleared twice.
    fn alloc_buffer(&self, len: usize) -> Self::Buffer;
    /// Writes the whole buffer at `position`; both are page-aligned.
    async fn write_at(&self, buffer: Self::Buffer, position: u64) -> io::Result<()>;
    /// Reads up to `len` bytes at `position` (any alignment); shorter only at end of file.
    async fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes>;
    async fn fdatasync(&self) -> io::Result<()>;
    /// Allocates blocks up to `len` bytes and sets the file size to at least `len`, so
    /// appends inside it change no size metadata.
    async fn preallocate(&self, len: u64) -> io::Result<()>;
    async fn truncate(&self, len: u64) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
}

/// The production disk: glommio `DmaFile` (`O_DIRECT`, `io_uring`) for data files.
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaDisk;

/// A glommio `DmaBuffer`; registered `io_uring` memory when the pool has room, else aligned
/// heap memory (glommio falls back by itself when registration is refused by memlock).
pub struct DmaIoBuffer(glommio::io::DmaBuffer);

impl IoBuffer for DmaIoBuffer {
    fn as_slice(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.0.as_bytes_mut()
    }
    fn truncate(&mut self, len: usize) {
        debug_assert_eq!(len % PAGE_BYTES, 0);
        self.0.trim_to_size(len);
    }
    fn trim_front(&mut self, len: usize) {
        debug_assert_eq!(len % PAGE_BYTES, 0);
        self.0.trim_front(len);
    }
}

/// An open `DmaFile`, shared by the appender and readers of one segment.
#[derive(Clone)]
pub struct DmaDiskFile(Rc<glommio::io::DmaFile>);

impl Disk for DmaDisk {
    type File = DmaDiskFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let owned = dir.to_path_buf();
        off_reactor(move || std::fs::create_dir_all(owned)).await
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = dir.to_path_buf();
        off_reactor(move || {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(dir)? {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            Ok(names)
        })
        .await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let directory = glommio::io::Directory::open(dir).await?;
        let synced = directory.sync().await;
        directory.close().await?;
        Ok(synced?)
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        Ok(glommio::io::remove(path).await?)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        Ok(glommio::io::rename(from, to).await?)
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Unlinking a file nothing holds open frees its blocks inside the call: for a large
        // topic that is seconds of ext4 work, which must not stall the shard's other
        // partitions.
        let dir = dir.to_path_buf();
        off_reactor(move || std::fs::remove_dir_all(dir)).await
    }

    async fn open(&self, path: &Path, create: bool) -> io::Result<DmaDiskFile> {
        let mut options = glommio::io::OpenOptions::new();
        options.read(true).write(true).create(create);
        Ok(DmaDiskFile(Rc::new(open_dma(path, &options).await?)))
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let file = match open_dma(path, glommio::io::OpenOptions::new().read(true)).await {
            Ok(file) => file,
            Err(error) => {
                return match error.kind() {
                    io::ErrorKind::NotFound => Ok(None),
                    _ => Err(error),
                };
            }
        };
        let size = file.file_size().await?;
        let contents = match size {
            0 => Vec::new(), // a zero-length DMA read is not worth asking glommio for
            _ => file.read_at(0, size as usize).await?.to_vec(),
        };
        file.close().await?;
        Ok(Some(contents))
    }

    async fn write_file_atomically(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let temporary = temporary_path(path);
        let file = DmaDisk.open(&temporary, true).await?;
        file.truncate(0).await?;
        let padded = align_up(contents.len() as u64) as usize;
        let mut buffer = file.alloc_buffer(padded.max(PAGE_BYTES));
        buffer.as_mut_slice()[..contents.len()].copy_from_slice(contents);
        buffer.as_mut_slice()[contents.len()..].fill(0);
        file.write_at(buffer, 0).await?;
        file.truncate(contents.len() as u64).await?;
        file.fdatasync().await?;
        glommio::io::rename(&temporary, path).await?;
        self.sync_dir(parent_of(path)).await
    }
}

impl DiskFile for DmaDiskFile {
    type Buffer = DmaIoBuffer;

    fn alloc_buffer(&self, len: usize) -> DmaIoBuffer {
        // Served from the shard's registered pool while it has room, else from the heap
        // (glommio falls back by itself); only a 0-byte request can fail, and panics.
        debug_assert!(len > 0 && len % PAGE_BYTES == 0);
        DmaIoBuffer(self.0.alloc_dma_buffer(len))
    }

    async fn write_at(&self, buffer: DmaIoBuffer, position: u64) -> io::Result<()> {
        let len = buffer.0.len();
        let written = self.0.write_at(buffer.0, position).await?;
        if written != len {
            // O_DIRECT writes into preallocated space do not come back short; if one does,
            // the page is not on disk and must not be reported as written.
            return Err(io::Error::other(format!(
                "short write: {written} of {len} bytes"
            )));
        }
        Ok(())
    }

    async fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        if len == 0 {
            // glommio sizes a read's buffer by its aligned span, here 0 bytes; its pool answers
            // a 0-byte request with a block only while it has one free, and otherwise
            // glommio panics ("Buffer allocation failed", sys/uring.rs) and takes the shard
            // down: the crash of issue 10, item 2, once many partitions opened at once.
            return Ok(Bytes::new());
        }
        let read = self.0.read_at(position, len).await?;
        // One copy out of the DMA buffer: glommio's ReadResult is !Send and cannot back a
        // `Bytes`. Records inside are never decoded or re-encoded.
        Ok(Bytes::copy_from_slice(&read))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        Ok(self.0.fdatasync().await?)
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        Ok(self.0.pre_allocate(len, false).await?)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        Ok(self.0.truncate(len).await?)
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.0.file_size().await?)
    }
}

/// Opens a `DmaFile`. Every `DmaFile` of the process (broker start-up and recovery,
/// `check-data`, tools) is opened here, so glommio's IOPOLL decision for the device is always
/// settled by [`settle_iopoll`] before glommio could take it from the file being opened.
async fn open_dma(
    path: &Path,
    options: &glommio::io::OpenOptions,
) -> io::Result<glommio::io::DmaFile> {
    settle_iopoll(parent_of(path)).await?;
    Ok(options.dma_open(path).await?)
}

/// How many directories [`settle_iopoll`] remembers per thread.
const SETTLED_DIRS_MAX: usize = 256;

thread_local! {
    /// Directories whose device is settled: every open (each roll, each segment at
    /// recovery) comes here, and a directory seen before needs no `stat` at all. At most
    /// [`SETTLED_DIRS_MAX`]: it held every partition directory the thread ever opened
    /// (about 90 bytes each, never given back when a topic was deleted).
    static SETTLED_DIRS: std::cell::RefCell<std::collections::HashSet<PathBuf>> = std::cell::RefCell::default();
}

/// Settles, once per device and thread, whether glommio sends DMA reads to its IOPOLL ring.
///
/// glommio decides that (per thread, per device) by reading the first page of the first
/// `DmaFile` opened there. When that file is empty, or its first page is preallocated but
/// never written (a new or idle segment), the read ends without reaching the device and
/// "succeeds", so glommio wrongly marks the device pollable and every later read on it fails
/// with EOPNOTSUPP (os error 95; seen on virtio disks): `check-data` called healthy data
/// unreadable when an empty `__consumer_offsets` segment happened to be opened first. So
/// the first `DmaFile` opened on a device is always a page just written here. Concurrent
/// openers wait for that one probe instead of each writing their own.
async fn settle_iopoll(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    thread_local! {
        static SETTLED_DEVICES: std::cell::RefCell<std::collections::HashSet<u64>> = std::cell::RefCell::default();
        static ONE_PROBE_AT_A_TIME: Rc<glommio::sync::Semaphore> = Rc::new(glommio::sync::Semaphore::new(1));
    }
    if SETTLED_DIRS.with(|settled| settled.borrow().contains(dir)) {
        return Ok(());
    }
    let owned = dir.to_path_buf();
    let device = off_reactor(move || Ok(std::fs::metadata(owned)?.dev())).await?;
    let settled = || SETTLED_DEVICES.with(|settled| settled.borrow().contains(&device));
    if !settled() {
        let turn = ONE_PROBE_AT_A_TIME.with(Rc::clone);
        let _permit = turn.acquire_permit(1).await.expect("never closed");
        // Another opener may have probed the device while this one waited.
        if !settled() {
            probe_iopoll(dir).await?;
            SETTLED_DEVICES.with(|settled| settled.borrow_mut().insert(device));
        }
    }
    SETTLED_DIRS.with(|settled| {
        let mut settled = settled.borrow_mut();
        // Forgetting costs only a `stat` at the next open of a forgotten directory; a
        // partition's opens come together (its segments at recovery, then a roll now and
        // then), so a small set still spares most of them.
        if settled.len() >= SETTLED_DIRS_MAX {
            settled.clear();
        }
        settled.insert(dir.to_path_buf());
    });
    Ok(())
}

/// Opens a written page in `dir` as the device's first `DmaFile`: a probe file of its own
/// (unique per process and call, so shards probing one directory do not remove each other's;
/// `.tmp` so a crash leftover is removed by recovery), or, when nothing can be written there
/// (a full disk, a read-only directory), a written metadata file already there.
async fn probe_iopoll(dir: &Path) -> io::Result<()> {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let probe = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe_path = dir.join(format!(".iopoll-probe-{}-{probe}.tmp", std::process::id()));
    let direct_open = |path: PathBuf| async move {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .dma_open(&path)
            .await?;
        Ok::<_, io::Error>(file.close().await?)
    };
    let written = {
        let probe_path = probe_path.clone();
        off_reactor(move || std::fs::write(probe_path, [0_u8; PAGE_BYTES])).await
    };
    let remove_probe = {
        let probe_path = probe_path.clone();
        move || off_reactor(move || std::fs::remove_file(probe_path))
    };
    match written {
        Ok(()) => {
            let opened = direct_open(probe_path).await;
            remove_probe().await?;
            opened
        }
        Err(error) => {
            // A full disk must not keep intact partitions from opening (or check-data from
            // reading): probe with a file already there. Metadata files are written whole (a
            // segment may be preallocated space a read never takes to the device).
            let _ = remove_probe().await;
            let dir = dir.to_path_buf();
            match off_reactor(move || Ok(written_file_in(&dir))).await? {
                Some(existing) => direct_open(existing).await,
                None => Err(error),
            }
        }
    }
}

/// A non-empty file in `dir` (or its parent, the data directory) that is not a segment.
fn written_file_in(dir: &Path) -> Option<PathBuf> {
    let is_written = |path: &Path| {
        path.extension().is_none_or(|extension| extension != "log")
            && std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.len() > 0)
    };
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten().map(|entry| entry.path()))
        .find(|path| is_written(path))
}

/// Runs a blocking filesystem call on the executor's blocking thread pool (glommio's, the
/// one its own rename, remove and truncate use), so the shard's reactor keeps serving while
/// the kernel works: directory walks, creations and removals have no `io_uring` op in glommio
/// 0.9, and a `std::fs` call on the shard thread stops every partition of the shard for as
/// long as it takes. Must be called from a glommio executor.
async fn off_reactor<R: Send + 'static>(
    call: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> io::Result<R> {
    glommio::executor().spawn_blocking(call).await
}

pub(crate) fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

pub(crate) fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or_else(|| Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker that creates and deletes topics for months opens ever new partition
    /// directories: what this thread remembers of them stays bounded.
    #[test]
    fn settled_directories_stay_bounded() {
        let root = tempfile::tempdir().unwrap();
        let root_path = root.path().to_path_buf();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let directories = SETTLED_DIRS_MAX + 44;
                for n in 0..directories {
                    let dir = root_path.join(format!("topic-{n}"));
                    DmaDisk.create_dir_all(&dir).await.unwrap();
                    drop(DmaDisk.open(&dir.join("00.log"), true).await.unwrap());
                    let remembered = SETTLED_DIRS.with(|settled| settled.borrow().len());
                    assert!(remembered <= SETTLED_DIRS_MAX, "{remembered} directories");
                    assert!(SETTLED_DIRS.with(|settled| settled.borrow().contains(&dir)));
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
