//! The process allocator, with one difference from the system one: very large allocations
//! are reserved lazily (`mmap` with `MAP_NORESERVE`) instead of being refused.
//!
//! Why: the generated codec (`kafka-protocol` 0.18) decodes an array by first calling
//! `Vec::with_capacity(declared_count)` and only then reading the elements. A hostile frame
//! declaring 2^31 elements asks for ~150 GB at once; the system allocator refuses, and Rust
//! aborts the whole process on a refused allocation (CVE-2022-34917 is the same bug class in
//! Kafka itself). Reserved lazily, that capacity costs address space only: decoding fails
//! after at most one element per remaining frame byte, the reservation is unmapped, and the
//! connection is closed with a decode error like any other malformed frame.
//!
//! Nothing legitimate in the broker allocates this much (frames are at most
//! `request_frame_bytes_max`, 100 MiB by default), so the lazy path sees only hostile
//! counts or genuinely huge buffers, which behave the same either way.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this size are lazily reserved; smaller ones go to `System`.
const LAZY_RESERVATION_BYTES_MIN: usize = 256 * 1024 * 1024;
/// `mmap` returns page-aligned memory; larger alignments stay with `System`.
const PAGE_BYTES: usize = 4096;

pub struct LazyHugeAllocator;

fn is_lazy(layout: Layout) -> bool {
    layout.size() >= LAZY_RESERVATION_BYTES_MIN && layout.align() <= PAGE_BYTES
}

// SAFETY: every pointer handed out is either from `System` (and returned to it) or from an
// anonymous private mapping of exactly `layout.size()` bytes (and unmapped with that size);
// `is_lazy` depends only on the layout, which callers must pass back unchanged.
unsafe impl GlobalAlloc for LazyHugeAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_lazy(layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            address.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_lazy(layout) {
            // SAFETY: anonymous mappings are zero-filled.
            unsafe { self.alloc(layout) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        if is_lazy(layout) {
            // SAFETY: `pointer` came from our mmap of exactly this size.
            unsafe { libc::munmap(pointer.cast(), layout.size()) };
        } else {
            // SAFETY: `pointer` came from System with this layout.
            unsafe { System.dealloc(pointer, layout) };
        }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align(new_size, layout.align())
            .expect("caller guarantees a valid layout");
        if !is_lazy(layout) && !is_lazy(new_layout) {
            // SAFETY: both sides are System's; forwarded with the caller's guarantees.
            return unsafe { System.realloc(pointer, layout, new_size) };
        }
        // SAFETY: allocate, copy the common prefix, free the old block, as GlobalAlloc's
        // default realloc does, but through our own alloc/dealloc so each side is paired.
        unsafe {
            let moved = self.alloc(new_layout);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(pointer, moved, layout.size().min(new_size));
                self.dealloc(pointer, layout);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kafka_protocol::messages::MetadataRequest;
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn hostile_array_count_is_a_decode_error_not_an_abort() {
        // Metadata v1: topics array declaring i32::MAX entries, with no bytes behind it.
        let mut frame = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(MetadataRequest::decode(&mut frame, 1).is_err());
    }
}
