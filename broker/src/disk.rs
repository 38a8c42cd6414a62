//! The one disk every broker service reads and writes through: partition logs, the
//! controller's `cluster.meta`, the producer-id block file and producer-state snapshots.
//! A shard is handed a [`BrokerDisk`] at start and passes it to what it opens, so a test can
//! run those services on `storage`'s [`SimDisk`] (crash images, power cuts, torn writes)
//! while the binary runs on [`DmaDisk`].
//!
//! Why an enum and not a `D: Disk` parameter on `ShardServices`: a type parameter would spread to the
//! partition table, the group coordinator, the controller and every handler that names a
//! log, for a choice made once per process. The enum keeps those types concrete (one copy
//! of the broker's code), and its cost is one predictable branch per IO call, next to a
//! system call. The storage crate stays generic, so its own tests use `SimDisk` directly.
//!
//! Both variants keep the [`Disk`] contract; mixing them (a `SimDisk` buffer written to a
//! real file) is a programmer error and panics.

use std::io;
use std::path::Path;

use bytes::Bytes;

use crate::storage::io::{DmaDiskFile, DmaIoBuffer, IoBuffer};
use crate::storage::sim::{SimBuffer, SimDisk, SimFile};
use crate::storage::{Disk, DiskFile, DmaDisk};

/// A partition log on the broker's disk.
pub type PartitionLog = crate::storage::PartitionLog<BrokerDisk>;

/// The disk a shard's services use. Cheap to clone (a handle).
#[derive(Clone)]
pub enum BrokerDisk {
    /// The real disk: `O_DIRECT` through `io_uring`.
    Dma(DmaDisk),
    /// The simulated disk, for tests of whole services under crashes.
    Sim(SimDisk),
}

impl Default for BrokerDisk {
    fn default() -> Self {
        BrokerDisk::Dma(DmaDisk)
    }
}

impl std::fmt::Debug for BrokerDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BrokerDisk::Dma(_) => "BrokerDisk::Dma",
            BrokerDisk::Sim(_) => "BrokerDisk::Sim",
        })
    }
}

/// A file opened on a [`BrokerDisk`], of the same variant.
pub enum BrokerFile {
    Dma(DmaDiskFile),
    Sim(SimFile),
}

/// A buffer of a [`BrokerFile`], of the same variant.
pub enum BrokerBuffer {
    Dma(DmaIoBuffer),
    Sim(SimBuffer),
}

impl IoBuffer for BrokerBuffer {
    fn as_slice(&self) -> &[u8] {
        match self {
            BrokerBuffer::Dma(buffer) => buffer.as_slice(),
            BrokerBuffer::Sim(buffer) => buffer.as_slice(),
        }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            BrokerBuffer::Dma(buffer) => buffer.as_mut_slice(),
            BrokerBuffer::Sim(buffer) => buffer.as_mut_slice(),
        }
    }
    fn truncate(&mut self, len: usize) {
        match self {
            BrokerBuffer::Dma(buffer) => buffer.truncate(len),
            BrokerBuffer::Sim(buffer) => buffer.truncate(len),
        }
    }
    fn trim_front(&mut self, len: usize) {
        match self {
            BrokerBuffer::Dma(buffer) => buffer.trim_front(len),
            BrokerBuffer::Sim(buffer) => buffer.trim_front(len),
        }
    }
}

/// Forwards one call to whichever disk this is.
macro_rules! on_disk {
    ($disk:expr, $inner:ident => $call:expr) => {
        match $disk {
            BrokerDisk::Dma($inner) => $call,
            BrokerDisk::Sim($inner) => $call,
        }
    };
}

/// Forwards one call to whichever kind of file this is.
macro_rules! on_file {
    ($file:expr, $inner:ident => $call:expr) => {
        match $file {
            BrokerFile::Dma($inner) => $call,
            BrokerFile::Sim($inner) => $call,
        }
    };
}

impl Disk for BrokerDisk {
    type File = BrokerFile;

    async fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        on_disk!(self, disk => disk.create_dir_all(dir).await)
    }
    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        on_disk!(self, disk => disk.list_dir(dir).await)
    }
    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        on_disk!(self, disk => disk.sync_dir(dir).await)
    }
    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        on_disk!(self, disk => disk.remove_file(path).await)
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        on_disk!(self, disk => disk.rename(from, to).await)
    }
    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        on_disk!(self, disk => disk.remove_dir_all(dir).await)
    }
    async fn open(&self, path: &Path, create: bool) -> io::Result<BrokerFile> {
        Ok(match self {
            BrokerDisk::Dma(disk) => BrokerFile::Dma(disk.open(path, create).await?),
            BrokerDisk::Sim(disk) => BrokerFile::Sim(disk.open(path, create).await?),
        })
    }
    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        on_disk!(self, disk => disk.read_file(path).await)
    }
    async fn write_file_atomically(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        on_disk!(self, disk => disk.write_file_atomically(path, contents).await)
    }
}

impl DiskFile for BrokerFile {
    type Buffer = BrokerBuffer;

    fn alloc_buffer(&self, len: usize) -> BrokerBuffer {
        match self {
            BrokerFile::Dma(file) => BrokerBuffer::Dma(file.alloc_buffer(len)),
            BrokerFile::Sim(file) => BrokerBuffer::Sim(file.alloc_buffer(len)),
        }
    }
    async fn write_at(&self, buffer: BrokerBuffer, position: u64) -> io::Result<()> {
        match (self, buffer) {
            (BrokerFile::Dma(file), BrokerBuffer::Dma(buffer)) => {
                file.write_at(buffer, position).await
            }
            (BrokerFile::Sim(file), BrokerBuffer::Sim(buffer)) => {
                file.write_at(buffer, position).await
            }
            // Buffers come from `alloc_buffer` of a file on the same disk.
            _ => unreachable!("a buffer of one disk written to a file of another"),
        }
    }
    async fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        on_file!(self, file => file.read_at(position, len).await)
    }
    async fn fdatasync(&self) -> io::Result<()> {
        on_file!(self, file => file.fdatasync().await)
    }
    async fn preallocate(&self, len: u64) -> io::Result<()> {
        on_file!(self, file => file.preallocate(len).await)
    }
    async fn truncate(&self, len: u64) -> io::Result<()> {
        on_file!(self, file => file.truncate(len).await)
    }
    async fn size(&self) -> io::Result<u64> {
        on_file!(self, file => file.size().await)
    }
}
