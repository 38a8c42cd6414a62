//! Kafka wire framing, pure: a frame is a big-endian `i32` size followed by that many
//! bytes. The size is checked against the limit before any buffer for the body exists,
//! so a hostile size costs nothing.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes of the size prefix in front of every frame.
pub const FRAME_SIZE_PREFIX_BYTES: usize = 4;

/// Why a byte stream cannot be framed; the connection is closed with this as the reason.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "frame declares {declared} bytes, above the {max}-byte limit (socket.request.max.bytes)"
    )]
    TooLarge { declared: usize, max: usize },
    #[error("frame declares a negative size ({declared})")]
    NegativeSize { declared: i32 },
    #[error("frame of {declared} bytes is too short for a request header")]
    TooShort { declared: usize },
}

/// Smallest request: `api_key` (2) + `api_version` (2) + `correlation_id` (4) + `client_id` length (2).
const REQUEST_HEADER_BYTES_MIN: usize = 10;

/// Reads the size prefix at the front of `buffered` and checks it against `frame_bytes_max`.
/// Returns `Ok(None)` when fewer than four bytes are buffered.
pub fn peek_frame_size(
    buffered: &[u8],
    frame_bytes_max: usize,
) -> Result<Option<usize>, FrameError> {
    let Some(prefix) = buffered.get(..FRAME_SIZE_PREFIX_BYTES) else {
        return Ok(None);
    };
    let declared = i32::from_be_bytes(prefix.try_into().expect("slice of four bytes"));
    let Ok(size) = usize::try_from(declared) else {
        return Err(FrameError::NegativeSize { declared });
    };
    if size > frame_bytes_max {
        return Err(FrameError::TooLarge {
            declared: size,
            max: frame_bytes_max,
        });
    }
    if size < REQUEST_HEADER_BYTES_MIN {
        return Err(FrameError::TooShort { declared: size });
    }
    Ok(Some(size))
}

/// Smallest room offered to the socket per read. An idle connection holds this much, so
/// 10,000 idle connections hold 40 MiB of receive buffers.
pub const READ_BYTES_MIN: usize = 4 * 1024;
/// Room a frame may grow to before it has to show as many bytes as it asks for.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A connection's receive buffer: bytes read from the socket, split into frames without
/// copying. `bytes[..filled]` holds received data; the rest is zeroed room for the next
/// read, kept between reads so no byte is zeroed twice. Pure: the caller does the reading.
pub struct FrameBuffer {
    bytes: BytesMut,
    filled: usize,
    frame_bytes_max: usize,
}

impl FrameBuffer {
    pub fn new(frame_bytes_max: usize) -> Self {
        Self {
            bytes: BytesMut::new(),
            filled: 0,
            frame_bytes_max,
        }
    }

    /// Changes the largest frame taken from here on (a SASL connection reads small frames
    /// until its client has authenticated).
    pub fn set_frame_bytes_max(&mut self, frame_bytes_max: usize) {
        self.frame_bytes_max = frame_bytes_max;
    }

    /// Declared size of the frame at the front, once its prefix has arrived (checked
    /// against the limit: the caller reserves budget for it before `read_space` allocates).
    pub fn pending_frame_size(&self) -> Result<Option<usize>, FrameError> {
        peek_frame_size(&self.bytes[..self.filled], self.frame_bytes_max)
    }

    /// The next complete frame body, if one has fully arrived.
    pub fn take_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(size) = self.pending_frame_size()? else {
            return Ok(None);
        };
        if self.filled < FRAME_SIZE_PREFIX_BYTES + size {
            return Ok(None);
        }
        self.bytes.advance(FRAME_SIZE_PREFIX_BYTES);
        self.filled -= FRAME_SIZE_PREFIX_BYTES + size;
        Ok(Some(self.bytes.split_to(size).freeze()))
    }

    /// Room to read into: up to the rest of the pending frame, but never more than twice
    /// the bytes already here (beyond `READ_CHUNK_BYTES`). Memory follows the bytes that
    /// arrived, not the size a frame declares, so a client that declares 100 MiB and
    /// trickles costs what it sent; growth by doubling copies each byte at most once on
    /// average. Only call after `pending_frame_size` has been checked.
    pub fn read_space(&mut self) -> &mut [u8] {
        let frame_bytes = match self.pending_frame_size() {
            Ok(Some(size)) => FRAME_SIZE_PREFIX_BYTES + size,
            _ => FRAME_SIZE_PREFIX_BYTES,
        };
        let room = frame_bytes
            .saturating_sub(self.filled)
            .min(self.filled.max(READ_CHUNK_BYTES))
            .max(READ_BYTES_MIN);
        if self.bytes.len() < self.filled + room / 2 {
            self.bytes.resize(self.filled + room, 0);
        }
        &mut self.bytes[self.filled..]
    }

    /// Bytes of memory the buffer holds (received plus room for the next read).
    pub fn allocated_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Records that `count` bytes were read into `read_space`.
    pub fn commit(&mut self, count: usize) {
        assert!(
            self.filled + count <= self.bytes.len(),
            "read past the read space"
        );
        self.filled += count;
    }

    /// Bytes received but not yet taken as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> BytesMut {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&(body.len() as i32).to_be_bytes());
        buffer.extend_from_slice(body);
        buffer
    }

    #[test]
    fn oversized_frame_is_rejected_from_its_prefix_alone() {
        // Only the prefix is present: the limit check must not need the body.
        let prefix = 200_000_000_i32.to_be_bytes();
        let error = peek_frame_size(&prefix, 100 * 1024 * 1024).unwrap_err();
        assert_eq!(
            error,
            FrameError::TooLarge {
                declared: 200_000_000,
                max: 100 * 1024 * 1024
            }
        );
    }

    #[test]
    fn negative_and_tiny_sizes_are_rejected() {
        assert_eq!(
            peek_frame_size(&(-1_i32).to_be_bytes(), 1000),
            Err(FrameError::NegativeSize { declared: -1 })
        );
        assert_eq!(
            peek_frame_size(&3_i32.to_be_bytes(), 1000),
            Err(FrameError::TooShort { declared: 3 })
        );
    }

    #[test]
    fn truncated_frame_waits_for_more_bytes() {
        let whole = framed(&[7_u8; 32]);
        for cut in 0..whole.len() {
            let mut buffer = FrameBuffer::new(1000);
            feed(&mut buffer, &whole[..cut], 64);
            assert_eq!(buffer.take_frame(), Ok(None), "cut at {cut}");
            assert_eq!(
                buffer.buffered_bytes(),
                cut,
                "nothing consumed from a partial frame"
            );
        }
    }

    fn feed(buffer: &mut FrameBuffer, mut input: &[u8], read_size: usize) {
        while !input.is_empty() {
            let space = buffer.read_space();
            let count = space.len().min(read_size).min(input.len());
            space[..count].copy_from_slice(&input[..count]);
            buffer.commit(count);
            input = &input[count..];
        }
    }

    #[test]
    fn frame_buffer_reassembles_frames_from_any_read_sizes() {
        let mut wire = framed(&[1_u8; 12]).to_vec();
        wire.extend_from_slice(&framed(&vec![2_u8; 100_000]));
        wire.extend_from_slice(&framed(&[3_u8; 10]));
        for read_size in [1, 7, 4096, 1 << 20] {
            let mut buffer = FrameBuffer::new(1 << 20);
            let mut frames = Vec::new();
            for chunk in wire.chunks(read_size) {
                feed(&mut buffer, chunk, read_size);
                while let Some(frame) = buffer.take_frame().unwrap() {
                    frames.push(frame);
                }
            }
            let sizes: Vec<usize> = frames.iter().map(Bytes::len).collect();
            assert_eq!(sizes, vec![12, 100_000, 10], "read size {read_size}");
            assert!(frames[1].iter().all(|byte| *byte == 2));
            assert_eq!(buffer.buffered_bytes(), 0);
        }
    }

    #[test]
    fn frame_buffer_refuses_an_oversized_frame_before_making_room_for_it() {
        let mut buffer = FrameBuffer::new(1000);
        feed(&mut buffer, &5000_i32.to_be_bytes(), 4);
        assert_eq!(
            buffer.pending_frame_size(),
            Err(FrameError::TooLarge {
                declared: 5000,
                max: 1000
            })
        );
        assert_eq!(
            buffer.take_frame(),
            Err(FrameError::TooLarge {
                declared: 5000,
                max: 1000
            })
        );
    }

    #[test]
    fn memory_follows_received_bytes_not_the_declared_frame_size() {
        // A client declares a 100 MiB frame and trickles: room grows with what arrived.
        let mut buffer = FrameBuffer::new(100 * 1024 * 1024);
        feed(&mut buffer, &(100 * 1024 * 1024_i32).to_be_bytes(), 4);
        assert!(buffer.read_space().len() <= 2 * READ_CHUNK_BYTES);
        let trickled = vec![0_u8; 1024 * 1024];
        feed(&mut buffer, &trickled, 4096);
        assert!(
            buffer.allocated_bytes() <= 3 * (1024 * 1024 + 4),
            "{} bytes held for 1 MiB received",
            buffer.allocated_bytes()
        );
    }

    #[test]
    fn an_idle_connection_holds_a_small_buffer() {
        let mut buffer = FrameBuffer::new(100 * 1024 * 1024);
        assert_eq!(buffer.read_space().len(), READ_BYTES_MIN);
    }

    #[test]
    fn back_to_back_frames_split_in_order() {
        let mut wire = framed(&[1_u8; 12]);
        wire.extend_from_slice(&framed(&[2_u8; 20]));
        wire.extend_from_slice(&[0, 0]);
        let mut buffer = FrameBuffer::new(1000);
        feed(&mut buffer, &wire, wire.len());
        assert_eq!(&buffer.take_frame().unwrap().unwrap()[..], &[1_u8; 12]);
        assert_eq!(&buffer.take_frame().unwrap().unwrap()[..], &[2_u8; 20]);
        assert_eq!(buffer.take_frame(), Ok(None));
        assert_eq!(buffer.buffered_bytes(), 2);
    }
}
