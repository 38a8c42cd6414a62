//! A simulated disk for fault injection, modelled on `TigerBeetle`'s `testing/storage.zig` and
//! redb's crash-consistency tests. Every file keeps two images: `live` (what reads see, what
//! a process crash keeps) and `durable` (what a completed fdatasync covered, what a power cut
//! keeps). Directory entries are durable only after `sync_dir` of their directory.
//!
//! Faults: EIO on the next write or fdatasync, ENOSPC past a capacity, a "power cut" after N
//! data writes (everything afterwards fails with EIO, as if the machine stopped), and crash
//! images that drop unsynced bytes and may tear the last write at a sector boundary.
//!
//! After an fdatasync fails, the pages it covered are not durable, yet a later fdatasync
//! succeeds: the Linux behaviour behind "fsyncgate" that the log must not be fooled by.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use crate::io::{parent_of, temporary_path, Disk, DiskFile, IoBuffer, PAGE_BYTES};

/// The disk. Cheap to clone; all clones see the same files.
#[derive(Clone, Default)]
pub struct SimDisk(Rc<RefCell<SimState>>);

#[derive(Default)]
struct SimState {
    live_names: BTreeMap<PathBuf, FileRef>,
    durable_names: BTreeMap<PathBuf, FileRef>,
    faults: Faults,
    data_writes: u64,
    data_fdatasyncs: u64,
    /// Completed mutating operations of any kind (see [`SimDisk::power_cut_after_steps`]).
    steps: u64,
    /// The most recent write not yet covered by an fdatasync of its file.
    last_unsynced_write: Option<(FileRef, u64, Vec<u8>)>,
    /// Data files open now (handles not yet dropped), as file descriptors would be.
    open_files: usize,
}

#[derive(Default)]
#[allow(clippy::struct_excessive_bools)] // independent fault switches, not an encoded state
struct Faults {
    fail_next_write: bool,
    fail_next_fdatasync: bool,
    /// The next data-file open fails (as with EMFILE, too many open files).
    fail_next_open: bool,
    capacity_bytes: Option<u64>,
    power_cut_after_writes: Option<u64>,
    power_cut_after_steps: Option<u64>,
    powered_off: bool,
    /// Data-file fdatasyncs wait (as on a slow device) until released.
    fdatasyncs_stalled: bool,
    stalled_wakers: Vec<std::task::Waker>,
    /// fdatasyncs waiting for [`SimDisk::release_fdatasyncs`] now.
    stalled_waiting: usize,
}

type FileRef = Rc<RefCell<SimFileData>>;

#[derive(Default)]
struct SimFileData {
    live: Vec<u8>,
    durable: Vec<u8>,
}

/// What survives [`SimDisk::crash_image`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// A process crash (kill -9): every completed write and every name survives.
    ProcessCrash,
    /// A power cut: only fdatasync'd bytes and fsync'd directory entries survive.
    PowerCut,
    /// A power cut during which the last unsynced write reached the disk only in part:
    /// its first `keep_bytes` (a multiple of 512) landed on top of the durable image.
    PowerCutTearingLastWrite { keep_bytes: usize },
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO: {what}"))
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// The next data write fails with EIO (once).
    pub fn fail_next_write(&self) {
        self.0.borrow_mut().faults.fail_next_write = true;
    }

    /// The next [`Disk::open`] fails with EMFILE (once).
    pub fn fail_next_open(&self) {
        self.0.borrow_mut().faults.fail_next_open = true;
    }

    /// Data files open now: what file descriptors they would hold.
    pub fn open_files(&self) -> usize {
        self.0.borrow().open_files
    }

    /// The next data-file fdatasync fails with EIO (once); what it covered does not become
    /// durable.
    pub fn fail_next_fdatasync(&self) {
        self.0.borrow_mut().faults.fail_next_fdatasync = true;
    }

    /// Writes and preallocations that would grow the files past `bytes` fail with ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.0.borrow_mut().faults.capacity_bytes = bytes;
    }

    /// After `writes` more data writes complete, the machine "loses power": every later
    /// operation fails with EIO until [`SimDisk::crash_image`] is taken.
    pub fn power_cut_after_writes(&self, writes: u64) {
        let mut state = self.0.borrow_mut();
        state.faults.power_cut_after_writes = Some(state.data_writes + writes);
    }

    /// After `steps` more mutating operations complete (a file creation, write, fdatasync,
    /// truncation, preallocation, rename, removal or directory fsync, including each step
    /// inside [`Disk::write_file_atomically`]), the machine loses power as above. Trying
    /// every `steps` from 0 up cuts power between every pair of steps of an operation.
    pub fn power_cut_after_steps(&self, steps: u64) {
        let mut state = self.0.borrow_mut();
        state.faults.power_cut_after_steps = Some(state.steps + steps);
        if steps == 0 {
            state.faults.powered_off = true;
        }
    }

    /// Whether a power cut has happened: every operation now fails with EIO.
    pub fn is_powered_off(&self) -> bool {
        self.0.borrow().faults.powered_off
    }

    /// Mutating operations completed so far (what [`SimDisk::power_cut_after_steps`] counts).
    pub fn steps(&self) -> u64 {
        self.0.borrow().steps
    }

    /// Counts one completed mutating operation; the power goes off after the last one
    /// allowed. Called with no borrow of the state held.
    fn step(&self) {
        let mut state = self.0.borrow_mut();
        state.steps += 1;
        if state
            .faults
            .power_cut_after_steps
            .is_some_and(|limit| state.steps >= limit)
        {
            state.faults.powered_off = true;
        }
    }

    /// Data-file fdatasyncs issued from now on wait until [`SimDisk::release_fdatasyncs`],
    /// as on a device whose cache flush is slow.
    pub fn stall_fdatasyncs(&self) {
        self.0.borrow_mut().faults.fdatasyncs_stalled = true;
    }

    pub fn release_fdatasyncs(&self) {
        let mut state = self.0.borrow_mut();
        state.faults.fdatasyncs_stalled = false;
        for waker in state.faults.stalled_wakers.drain(..) {
            waker.wake();
        }
    }

    /// Data-file fdatasyncs waiting now for [`SimDisk::release_fdatasyncs`]: how many a
    /// caller has in flight at once.
    pub fn stalled_fdatasyncs(&self) -> usize {
        self.0.borrow().faults.stalled_waiting
    }

    async fn wait_while_stalled(&self) {
        /// Counts the wait as long as it lasts, also when the caller drops it.
        struct Waiting<'a>(&'a SimDisk);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0 .0.borrow_mut().faults.stalled_waiting -= 1;
            }
        }
        if !self.0.borrow().faults.fdatasyncs_stalled {
            return;
        }
        self.0.borrow_mut().faults.stalled_waiting += 1;
        let _waiting = Waiting(self);
        std::future::poll_fn(|cx| {
            let mut state = self.0.borrow_mut();
            if state.faults.fdatasyncs_stalled {
                state.faults.stalled_wakers.push(cx.waker().clone());
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(())
        })
        .await;
    }

    pub fn data_writes(&self) -> u64 {
        self.0.borrow().data_writes
    }

    /// fdatasyncs of data files (segments), not those inside atomic metadata writes.
    pub fn data_fdatasyncs(&self) -> u64 {
        self.0.borrow().data_fdatasyncs
    }

    /// A fresh disk holding what survives a crash of this one.
    #[must_use]
    pub fn crash_image(&self, mode: CrashMode) -> SimDisk {
        let state = self.0.borrow();
        let names = match mode {
            CrashMode::ProcessCrash => &state.live_names,
            _ => &state.durable_names,
        };
        let torn = match (mode, &state.last_unsynced_write) {
            (CrashMode::PowerCutTearingLastWrite { keep_bytes }, Some((file, pos, bytes))) => {
                Some((file, *pos, &bytes[..keep_bytes.min(bytes.len())]))
            }
            _ => None,
        };
        let mut image = SimState::default();
        for (path, file) in names {
            let old = file.borrow();
            let mut contents = if mode == CrashMode::ProcessCrash {
                old.live.clone()
            } else {
                old.durable.clone()
            };
            if let Some((torn_file, pos, kept)) = torn {
                if Rc::ptr_eq(torn_file, file) {
                    write_into(&mut contents, pos, kept);
                }
            }
            let new = Rc::new(RefCell::new(SimFileData {
                live: contents.clone(),
                durable: contents,
            }));
            image.live_names.insert(path.clone(), new.clone());
            image.durable_names.insert(path.clone(), new);
        }
        SimDisk(Rc::new(RefCell::new(image)))
    }

    /// The live bytes of a file, for tests to inspect.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        self.0
            .borrow()
            .live_names
            .get(path)
            .map(|f| f.borrow().live.clone())
    }

    /// The live length of a file (data and preallocation), without copying it.
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        self.0
            .borrow()
            .live_names
            .get(path)
            .map(|f| f.borrow().live.len() as u64)
    }

    /// Damages a file in both images, as media corruption would.
    pub fn corrupt(&self, path: &Path, damage: impl FnOnce(&mut Vec<u8>)) {
        let state = self.0.borrow();
        let file = state.live_names.get(path).expect("file to corrupt exists");
        let mut data = file.borrow_mut();
        damage(&mut data.live);
        let data = &mut *data;
        data.durable.clone_from(&data.live);
    }

    /// Paths of every live file, for tests.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.0.borrow().live_names.keys().cloned().collect()
    }

    fn check_powered(&self, what: &str) -> io::Result<()> {
        if self.0.borrow().faults.powered_off {
            return Err(eio(what));
        }
        Ok(())
    }

    fn total_live_bytes(state: &SimState) -> u64 {
        state
            .live_names
            .values()
            .map(|f| f.borrow().live.len() as u64)
            .sum()
    }

    fn check_growth(state: &SimState, old_len: usize, new_len: usize) -> io::Result<()> {
        if let Some(capacity) = state.faults.capacity_bytes {
            let growth = new_len.saturating_sub(old_len) as u64;
            if growth > 0 && Self::total_live_bytes(state) + growth > capacity {
                return Err(enospc());
            }
        }
        Ok(())
    }
}

/// Real IO takes time, during which other tasks run; the simulated disk yields once per
/// write, fdatasync and fallocate so interleavings (and group commit) happen as they would.
async fn io_latency() {
    yield_once().await;
}

/// Gives every other ready task of the executor a turn, then resumes.
pub async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

fn write_into(contents: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let end = pos as usize + bytes.len();
    if contents.len() < end {
        contents.resize(end, 0);
    }
    contents[pos as usize..end].copy_from_slice(bytes);
}

/// An open simulated file: a handle on the inode, so it survives renames and removals.
pub struct SimFile {
    disk: SimDisk,
    data: FileRef,
}

impl Drop for SimFile {
    fn drop(&mut self) {
        if let Ok(mut state) = self.disk.0.try_borrow_mut() {
            state.open_files -= 1;
        }
    }
}

impl SimFile {
    /// fdatasync; `data_file` says whether it counts as (and can be failed as) a data-file
    /// fdatasync rather than part of an atomic metadata write.
    async fn sync(&self, data_file: bool) -> io::Result<()> {
        io_latency().await;
        if data_file {
            self.disk.wait_while_stalled().await;
        }
        self.disk.check_powered("fdatasync")?;
        let mut state = self.disk.0.borrow_mut();
        let covers_last = state
            .last_unsynced_write
            .as_ref()
            .is_some_and(|(file, _, _)| Rc::ptr_eq(file, &self.data));
        if covers_last {
            state.last_unsynced_write = None;
        }
        if data_file && std::mem::take(&mut state.faults.fail_next_fdatasync) {
            // The kernel reports the error once and drops the dirty pages' error state;
            // what was written is not on disk, though reads still see it.
            return Err(eio("fdatasync"));
        }
        let mut data = self.data.borrow_mut();
        let data = &mut *data;
        data.durable.clone_from(&data.live);
        if data_file {
            state.data_fdatasyncs += 1;
        }
        drop(state);
        self.disk.step();
        Ok(())
    }
}

/// A plain heap buffer; alignment does not matter in memory.
pub struct SimBuffer(Vec<u8>);

impl IoBuffer for SimBuffer {
    fn as_slice(&self) -> &[u8] {
        &self.0
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn truncate(&mut self, len: usize) {
        assert_eq!(len % PAGE_BYTES, 0, "O_DIRECT writes are whole pages");
        self.0.truncate(len);
    }
    fn trim_front(&mut self, len: usize) {
        assert_eq!(len % PAGE_BYTES, 0, "O_DIRECT writes start on a page");
        self.0.drain(..len);
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    async fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.check_powered("mkdir")
    }

    async fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.0.borrow();
        Ok(state
            .live_names
            .keys()
            .filter(|path| parent_of(path) == dir)
            .filter_map(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check_powered("fsync directory")?;
        let mut state = self.0.borrow_mut();
        state.durable_names.retain(|path, _| parent_of(path) != dir);
        let entries: Vec<_> = state
            .live_names
            .iter()
            .filter(|(path, _)| parent_of(path) == dir)
            .map(|(path, file)| (path.clone(), file.clone()))
            .collect();
        state.durable_names.extend(entries);
        drop(state);
        self.step();
        Ok(())
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check_powered("unlink")?;
        let removed = self.0.borrow_mut().live_names.remove(path);
        match removed {
            Some(_) => {
                self.step();
                Ok(())
            }
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check_powered("rename")?;
        let mut state = self.0.borrow_mut();
        let data = state
            .live_names
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.live_names.insert(to.to_path_buf(), data);
        drop(state);
        self.step();
        Ok(())
    }

    async fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.check_powered("rmdir")?;
        let mut state = self.0.borrow_mut();
        state.live_names.retain(|path, _| !path.starts_with(dir));
        state.durable_names.retain(|path, _| !path.starts_with(dir));
        drop(state);
        self.step();
        Ok(())
    }

    async fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        self.check_powered("open")?;
        let mut state = self.0.borrow_mut();
        if std::mem::take(&mut state.faults.fail_next_open) {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let data = match state.live_names.get(path) {
            Some(data) => {
                let data = data.clone();
                drop(state);
                data
            }
            None if create => {
                let data = FileRef::default();
                state.live_names.insert(path.to_path_buf(), data.clone());
                drop(state);
                self.step();
                data
            }
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        self.0.borrow_mut().open_files += 1;
        Ok(SimFile {
            disk: self.clone(),
            data,
        })
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        self.check_powered("read")?;
        Ok(self.contents(path))
    }

    async fn write_file_atomically(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let temporary = temporary_path(path);
        let file = self.open(&temporary, true).await?;
        file.truncate(0).await?;
        {
            let state = self.0.borrow();
            Self::check_growth(&state, 0, contents.len())?;
        }
        self.check_powered("write")?;
        write_into(&mut file.data.borrow_mut().live, 0, contents);
        self.step();
        file.sync(false).await?;
        self.check_powered("rename")?;
        {
            let mut state = self.0.borrow_mut();
            let data = state
                .live_names
                .remove(&temporary)
                .expect("temporary exists");
            state.live_names.insert(path.to_path_buf(), data);
        }
        self.step();
        self.sync_dir(parent_of(path)).await
    }
}

impl DiskFile for SimFile {
    type Buffer = SimBuffer;

    fn alloc_buffer(&self, len: usize) -> SimBuffer {
        // Not zeroed, like DMA memory: garbage shows up on disk if padding is not cleared.
        SimBuffer(vec![0xAA; len])
    }

    async fn write_at(&self, buffer: SimBuffer, position: u64) -> io::Result<()> {
        io_latency().await;
        assert_eq!(
            position % PAGE_BYTES as u64,
            0,
            "O_DIRECT writes are page-aligned"
        );
        assert_eq!(
            buffer.0.len() % PAGE_BYTES,
            0,
            "O_DIRECT writes are whole pages"
        );
        self.disk.check_powered("write")?;
        let mut state = self.disk.0.borrow_mut();
        if std::mem::take(&mut state.faults.fail_next_write) {
            return Err(eio("write"));
        }
        let old_len = self.data.borrow().live.len();
        SimDisk::check_growth(&state, old_len, position as usize + buffer.0.len())?;
        write_into(&mut self.data.borrow_mut().live, position, &buffer.0);
        state.data_writes += 1;
        state.last_unsynced_write = Some((self.data.clone(), position, buffer.0));
        if state
            .faults
            .power_cut_after_writes
            .is_some_and(|n| state.data_writes >= n)
        {
            state.faults.powered_off = true;
        }
        drop(state);
        self.disk.step();
        Ok(())
    }

    async fn read_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        self.disk.check_powered("read")?;
        let data = self.data.borrow();
        let start = (position as usize).min(data.live.len());
        let end = (start + len).min(data.live.len());
        Ok(Bytes::copy_from_slice(&data.live[start..end]))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.sync(true).await
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        io_latency().await;
        self.disk.check_powered("fallocate")?;
        let old_len = self.data.borrow().live.len();
        if (old_len as u64) < len {
            SimDisk::check_growth(&self.disk.0.borrow(), old_len, len as usize)?;
            self.data.borrow_mut().live.resize(len as usize, 0);
        }
        self.disk.step();
        Ok(())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.disk.check_powered("truncate")?;
        self.data.borrow_mut().live.resize(len as usize, 0);
        self.disk.step();
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.data.borrow().live.len() as u64)
    }
}

/// A deterministic generator (xorshift64*) for seeded simulations and property tests: a
/// failing seed replays exactly. Replayable choices, not statistical quality.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    /// Any seed, 0 included, gives a usable (non-zero) state.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..bound`; 0 when `bound` is 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// A value in `low..=high` (`low <= high`).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }
}
