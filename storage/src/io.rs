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
}

/// An open `DmaFile`, shared by the appender and readers of one segment.
#[derive(Clone)]
pub struct DmaDiskFile(Rc<glommio::io::DmaFile>);

impl Disk for DmaDisk {
    type File = DmaDiskFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let owned = dir.to_path_buf();
        off_reactor(move || std::fs::create_dir_all(owned)).await?;
        prime_iopoll_probe(dir).await
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

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Unlinking a file nothing holds open frees its blocks inside the call: for a large
        // topic that is seconds of ext4 work, which must not stall the shard's other
        // partitions.
        let dir = dir.to_path_buf();
        off_reactor(move || std::fs::remove_dir_all(dir)).await
    }

    async fn open(&self, path: &Path, create: bool) -> io::Result<DmaDiskFile> {
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(path)
            .await?;
        Ok(DmaDiskFile(Rc::new(file)))
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        let file = match glommio::io::DmaFile::open(path).await {
            Ok(file) => file,
            Err(error) => {
                let error = io::Error::from(error);
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
        debug_assert_eq!(len % PAGE_BYTES, 0);
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

/// Call on the data directory before glommio opens any `DmaFile` there (a partition log
/// does it itself).
///
/// glommio decides once per block device whether to send DMA reads to its IOPOLL ring, by
/// reading the first file opened there. When that file is empty (a new segment) the read
/// ends at EOF without touching the device and "succeeds", so glommio wrongly marks the
/// device pollable and every later read fails with EOPNOTSUPP (seen on virtio disks). Opening
/// a non-empty file first makes the probe reach the device and record the true answer in
/// glommio's process-wide cache. Done once per device per thread.
pub async fn prime_iopoll_probe(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    thread_local! {
        static PROBED_DEVICES: std::cell::RefCell<std::collections::HashSet<u64>> = std::cell::RefCell::default();
    }
    let device = std::fs::metadata(dir)?.dev();
    if PROBED_DEVICES.with(|probed| probed.borrow().contains(&device)) {
        return Ok(());
    }
    let probe_path = dir.join(".iopoll-probe");
    match std::fs::write(&probe_path, [0_u8; PAGE_BYTES]) {
        Ok(()) => {
            let opened = glommio::io::DmaFile::open(&probe_path).await;
            std::fs::remove_file(&probe_path)?;
            opened?.close().await?;
        }
        Err(error) if crate::error::is_no_space(&error) => {
            // A full disk must not keep intact partitions from opening: probe with a file
            // already there instead. Metadata files are written whole (a segment may be
            // preallocated space a read never takes to the device).
            let _ = std::fs::remove_file(&probe_path);
            let Some(existing) = written_file_in(dir) else {
                return Err(error);
            };
            glommio::io::DmaFile::open(&existing).await?.close().await?;
        }
        Err(error) => return Err(error),
    }
    PROBED_DEVICES.with(|probed| probed.borrow_mut().insert(device));
    Ok(())
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
