//! Write-behind buffering for the active segment.
//!
//! Appended batches are copied into page-aligned buffers. The flusher takes every buffer in
//! one go ([`Appender::take_writes`]) and writes them with `O_DIRECT`: full buffers as they are,
//! the partly filled last one trimmed to whole pages with zeros after the data. The partial
//! last page is kept (copied into the next buffer) and rewritten by the next round as it
//! fills: the write-behind tail page.
//!
//! Between rounds that partial page is held on the heap (`idle_tail`), not in an io buffer:
//! glommio serves io buffers from the shard's small registered pool first, and a thousand
//! idle partitions each pinning a 4 KiB page there left none for the IO actually in flight
//! (issue 10, item 2). A DMA buffer exists only from the first append of a round until its
//! write completes.
//!
//! Invariant: buffers are contiguous and page-aligned in the file; `current` starts at
//! `current_position` and holds `current_filled` bytes; when `current` is `None`, those
//! bytes (less than a page, already handed to a write round) are `idle_tail`.
//! Contract: the caller writes one round completely before taking the next, because a
//! round's last page is rewritten by the next round and two writes of one page in flight
//! could land in either order.

use crate::io::{align_down, DiskFile, IoBuffer, PAGE_BYTES};

pub struct Appender<B> {
    full: Vec<(u64, B)>,
    current: Option<B>,
    /// The written partial last page while `current` is `None` (see the module docs).
    idle_tail: Vec<u8>,
    current_position: u64,
    current_filled: usize,
    /// Logical end of the segment: every byte appended so far.
    appended_bytes: u64,
    /// Logical end of what completed writes put in the file.
    written_bytes: u64,
    chunk_bytes: usize,
}

/// One write round: the buffers to write, and the logical end they bring the file to.
pub struct WriteRound<B> {
    pub writes: Vec<(u64, B)>,
    pub end_bytes: u64,
}

impl<B: IoBuffer> Appender<B> {
    /// An appender for a segment whose file holds `segment_bytes` of batches. The partial
    /// last page, if any, must be supplied so it can be rewritten whole.
    pub fn new(segment_bytes: u64, tail_page: &[u8], chunk_bytes: usize) -> Self {
        let partial = (segment_bytes % PAGE_BYTES as u64) as usize;
        assert_eq!(
            tail_page.len(),
            partial,
            "the tail page's bytes are needed to rewrite it"
        );
        Appender {
            full: Vec::new(),
            current: None,
            idle_tail: tail_page.to_vec(),
            current_position: align_down(segment_bytes),
            current_filled: partial,
            appended_bytes: segment_bytes,
            written_bytes: segment_bytes,
            chunk_bytes: chunk_bytes.max(PAGE_BYTES) / PAGE_BYTES * PAGE_BYTES,
        }
    }

    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }

    pub fn unwritten_bytes(&self) -> u64 {
        self.appended_bytes - self.written_bytes
    }

    /// Copies `bytes` to the end of the segment's buffers.
    pub fn append<F: DiskFile<Buffer = B>>(&mut self, file: &F, mut bytes: &[u8]) {
        self.appended_bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            let filled = self.current_filled;
            let buffer = self.current_with_room(file, bytes.len());
            let capacity = buffer.as_slice().len();
            let take = (capacity - filled).min(bytes.len());
            buffer.as_mut_slice()[filled..filled + take].copy_from_slice(&bytes[..take]);
            self.current_filled += take;
            bytes = &bytes[take..];
            if self.current_filled == capacity {
                let full = self.current.take().expect("current buffer");
                self.full.push((self.current_position, full));
                self.current_position += self.current_filled as u64;
                self.current_filled = 0;
            }
        }
    }

    /// The current buffer, grown when it cannot take `wanted` more bytes and is smaller
    /// than a chunk: to what is needed or twice its size, whichever is larger, at most a
    /// chunk. Growing copies what the buffer holds (usually under a page); a second buffer
    /// instead would cost a second IO per round, and always allocating (and zeroing) a whole
    /// chunk costs more than the copy for the small rounds of a latency-bound producer.
    fn current_with_room<F: DiskFile<Buffer = B>>(&mut self, file: &F, wanted: usize) -> &mut B {
        // No buffer open yet: capacity 0, while `current_filled` may count the idle tail.
        let capacity = self.current.as_ref().map_or(0, |b| b.as_slice().len());
        let room = capacity.saturating_sub(self.current_filled);
        if self.current.is_none() || (room < wanted && capacity < self.chunk_bytes) {
            let needed = (self.current_filled + wanted).next_multiple_of(PAGE_BYTES);
            let grown_bytes = needed.max(capacity * 2).min(self.chunk_bytes);
            let mut grown = file.alloc_buffer(grown_bytes);
            let old = match &self.current {
                Some(old) => &old.as_slice()[..self.current_filled],
                None => &self.idle_tail[..],
            };
            grown.as_mut_slice()[..self.current_filled].copy_from_slice(old);
            self.idle_tail.clear();
            self.current = Some(grown);
        }
        self.current.as_mut().expect("a buffer with room")
    }

    /// Everything appended since the last round, as page-aligned writes. The partial last
    /// page stays buffered for the next round.
    pub fn take_writes<F: DiskFile<Buffer = B>>(&mut self, file: &F) -> WriteRound<B> {
        let mut writes = std::mem::take(&mut self.full);
        let end_bytes = self.appended_bytes;
        // O_DIRECT writes whole pages at page-aligned positions (see the module docs).
        assert_eq!(
            self.current_position % PAGE_BYTES as u64,
            0,
            "the current buffer starts inside a page"
        );
        if self.current_filled > 0
            && self.current_position + (self.current_filled as u64) > self.written_bytes
        {
            let mut buffer = self.current.take().expect("filled buffer");
            let whole_pages = self.current_filled / PAGE_BYTES * PAGE_BYTES;
            let partial = self.current_filled - whole_pages;
            self.idle_tail
                .extend_from_slice(&buffer.as_slice()[whole_pages..self.current_filled]);
            // The page's bytes past the data must be zeros: recovery reads an all-zero
            // header as the end of the segment.
            let padded = self.current_filled.next_multiple_of(PAGE_BYTES);
            buffer.as_mut_slice()[self.current_filled..padded].fill(0);
            buffer.truncate(padded);
            writes.push((self.current_position, buffer));
            self.current_position += whole_pages as u64;
            self.current_filled = partial;
        }
        self.write_rewritten_page_apart(file, &mut writes);
        WriteRound { writes, end_bytes }
    }

    /// When a round's first write starts with the page an earlier round left partly
    /// written, that page goes in a write of its own (a copy of one page).
    ///
    /// Why: the rest of the round lands in space fallocated ahead and never written
    /// (unwritten extents). ext4 takes an `O_DIRECT` write without blocking only when its
    /// whole range is mapped alike; a range that starts in written blocks and runs into
    /// unwritten ones makes it answer `EAGAIN` to the non-blocking attempt of `io_uring`,
    /// which then hands the write to an io-wq worker thread: a thread wake-up, two context
    /// switches and a cross-CPU interrupt for every round. Measured on this machine: every
    /// write round of a busy partition went to io-wq before this split, almost none after
    /// (docs/BENCHMARKS.md, "Kernel work per produce request").
    fn write_rewritten_page_apart<F: DiskFile<Buffer = B>>(
        &self,
        file: &F,
        writes: &mut Vec<(u64, B)>,
    ) {
        let Some((position, buffer)) = writes.first_mut() else {
            return;
        };
        let starts_in_written_page = *position < self.written_bytes;
        if !starts_in_written_page || buffer.as_slice().len() <= PAGE_BYTES {
            return;
        }
        let mut page = file.alloc_buffer(PAGE_BYTES);
        page.as_mut_slice()
            .copy_from_slice(&buffer.as_slice()[..PAGE_BYTES]);
        buffer.trim_front(PAGE_BYTES);
        let page_position = *position;
        *position += PAGE_BYTES as u64;
        writes.insert(0, (page_position, page));
    }

    /// Records that a round's writes completed.
    pub fn mark_written(&mut self, end_bytes: u64) {
        // Rounds are written one at a time and end where the appends had reached: the
        // written end only grows and never passes what was appended. Once per round: cheap.
        assert!(
            end_bytes >= self.written_bytes && end_bytes <= self.appended_bytes,
            "a round ending at byte {end_bytes} with {} written and {} appended",
            self.written_bytes,
            self.appended_bytes
        );
        self.written_bytes = end_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Disk;
    use crate::sim::SimDisk;
    use std::path::Path;

    fn apply(image: &mut Vec<u8>, round: WriteRound<crate::sim::SimBuffer>) -> u64 {
        for (position, buffer) in round.writes {
            assert_eq!(position % PAGE_BYTES as u64, 0);
            let end = position as usize + buffer.as_slice().len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[position as usize..end].copy_from_slice(buffer.as_slice());
        }
        round.end_bytes
    }

    /// Runs `test` on an executor, with a fresh segment file on a simulated disk.
    fn on_sim_segment<F, Fut>(test: F)
    where
        F: FnOnce(crate::sim::SimFile) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        glommio::LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .make()
            .expect("executor")
            .run(async {
                let disk = SimDisk::new();
                let file = disk.open(Path::new("/seg"), true).await.expect("open");
                test(file).await;
            });
    }

    /// The last page of a recovered 5,000-byte segment: its 904 bytes past the first page.
    fn recovered_tail() -> Vec<u8> {
        (0..904_u32).map(|i| (i % 251) as u8 | 1).collect()
    }

    #[test]
    fn rounds_reproduce_the_appended_bytes_with_zero_padding() {
        on_sim_segment(|file| async move {
            let mut appender = Appender::new(0, &[], 3 * PAGE_BYTES);
            let mut expected = Vec::new();
            let mut image = Vec::new();
            for (round, sizes) in [[100, 5000, 1], [4095, 1, 20000], [7, 12289, 3]]
                .iter()
                .enumerate()
            {
                for (i, &size) in sizes.iter().enumerate() {
                    let bytes: Vec<u8> = (0..size)
                        .map(|j| (round * 31 + i * 7 + j) as u8 | 1)
                        .collect();
                    appender.append(&file, &bytes);
                    expected.extend_from_slice(&bytes);
                }
                let end = apply(&mut image, appender.take_writes(&file));
                appender.mark_written(end);
                assert_eq!(end as usize, expected.len());
                assert_eq!(&image[..expected.len()], &expected[..], "round {round}");
                assert!(
                    image[expected.len()..].iter().all(|&b| b == 0),
                    "zero padding"
                );
                assert_eq!(image.len() % PAGE_BYTES, 0);
            }
            assert!(
                appender.take_writes(&file).writes.is_empty(),
                "nothing left to write"
            );
        });
    }

    /// ext4 issues an `O_DIRECT` write without blocking only when its range is all written
    /// blocks or all fallocated ones (`write_rewritten_page_apart`): no write may start in
    /// the page an earlier round wrote and run on past it.
    #[test]
    fn no_write_runs_from_a_written_page_into_space_never_written() {
        on_sim_segment(|file| async move {
            let tail = recovered_tail();
            let mut appender = Appender::new(5000, &tail, 3 * PAGE_BYTES);
            let mut expected = vec![0_u8; PAGE_BYTES];
            expected.extend_from_slice(&tail);
            let mut image = expected.clone();
            image.resize(2 * PAGE_BYTES, 0);
            let mut split_rounds = 0;
            for (round, size) in [10_000, 1, 4095, 3, 30_000, 8192, 100].iter().enumerate() {
                let written = expected.len() as u64;
                let bytes: Vec<u8> = (0..*size).map(|j| (round * 13 + j) as u8 | 1).collect();
                appender.append(&file, &bytes);
                expected.extend_from_slice(&bytes);
                let round_writes = appender.take_writes(&file);
                let written_page = align_down(written);
                for (position, buffer) in &round_writes.writes {
                    let end = position + buffer.as_slice().len() as u64;
                    let in_written_page =
                        *position == written_page && written % PAGE_BYTES as u64 != 0;
                    assert!(
                        !in_written_page || end == written_page + PAGE_BYTES as u64,
                        "round {round}: a write from {position} to {end} starts in the \
                             page written up to {written} and runs past it"
                    );
                    assert!(
                        *position >= written_page,
                        "round {round}: rewrites old pages"
                    );
                }
                if round_writes.writes.len() > 1 && written % PAGE_BYTES as u64 != 0 {
                    split_rounds += 1;
                }
                let end = apply(&mut image, round_writes);
                appender.mark_written(end);
                assert_eq!(&image[..expected.len()], &expected[..], "round {round}");
                assert!(image[expected.len()..].iter().all(|&b| b == 0), "padding");
            }
            assert!(split_rounds >= 3, "rounds split apart: {split_rounds}");
        });
    }

    #[test]
    fn a_recovered_tail_page_is_rewritten_whole_from_the_heap() {
        on_sim_segment(|file| async move {
            let tail = recovered_tail();
            let mut appender = Appender::new(5000, &tail, 3 * PAGE_BYTES);
            assert!(
                appender.take_writes(&file).writes.is_empty(),
                "the tail is written"
            );
            appender.append(&file, &[7; 100]);
            let round = appender.take_writes(&file);
            assert_eq!(round.end_bytes, 5100);
            let [(position, buffer)] = &round.writes[..] else {
                panic!("one write expected, got {}", round.writes.len());
            };
            assert_eq!(*position, PAGE_BYTES as u64);
            let page = buffer.as_slice();
            assert_eq!(page.len(), PAGE_BYTES);
            assert_eq!(&page[..904], &tail[..]);
            assert!(page[904..1004].iter().all(|&b| b == 7));
            assert!(page[1004..].iter().all(|&b| b == 0), "zero padding");
        });
    }
}
