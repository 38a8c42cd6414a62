//! Writes a response frame's slices to a socket with vectored sends (`sendmsg`, one iovec
//! per slice), so a Fetch frame's batches go from the buffers they were read into straight to
//! the kernel. glommio's `TcpStream` has no `poll_write_vectored` (the `AsyncWrite` default
//! sends the first slice only, a system call per batch).
//!
//! Every send is non-blocking (`MSG_DONTWAIT`, as glommio's own writes first try). When the
//! socket's send buffer is full, one write through glommio waits for room, and sends what fits
//! of the current slice; vectored sends resume after it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use bytes::Bytes;
use futures::io::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::handlers::ResponseFrame;

/// Slices handed to one `sendmsg`: well under `IOV_MAX` (1024), and a frame has few slices
/// (framing pieces and batches of at most `fetch.max.bytes`).
const SLICES_PER_SEND_MAX: usize = 64;

/// Writes the whole frame, in order.
pub async fn write_frame(stream: &mut TcpStream, frame: &ResponseFrame) -> io::Result<()> {
    let mut unsent = Unsent::new(frame.slices());
    while let Some(current) = unsent.current() {
        match send_vectored(stream.as_raw_fd(), &unsent) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(sent) => unsent.advance(sent),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let sent = stream.write(current).await?;
                if sent == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                unsent.advance(sent);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// What is left of a frame: the slices from `slice_index`, the first from `offset`.
struct Unsent<'a> {
    slices: &'a [Bytes],
    slice_index: usize,
    offset: usize,
}

impl<'a> Unsent<'a> {
    fn new(slices: &'a [Bytes]) -> Self {
        let mut unsent = Self {
            slices,
            slice_index: 0,
            offset: 0,
        };
        unsent.advance(0);
        unsent
    }

    /// The unsent part of the current slice; `None` when all is sent.
    fn current(&self) -> Option<&'a [u8]> {
        self.slices
            .get(self.slice_index)
            .map(|slice| &slice[self.offset..])
    }

    /// The unsent parts, up to `SLICES_PER_SEND_MAX` of them.
    fn parts(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.current().into_iter().chain(
            self.slices
                .iter()
                .skip(self.slice_index + 1)
                .take(SLICES_PER_SEND_MAX - 1)
                .map(|slice| &slice[..]),
        )
    }

    /// Marks `sent` more bytes as sent, skipping empty slices.
    fn advance(&mut self, mut sent: usize) {
        while let Some(slice) = self.slices.get(self.slice_index) {
            let left = slice.len() - self.offset;
            if sent < left {
                self.offset += sent;
                return;
            }
            sent -= left;
            self.slice_index += 1;
            self.offset = 0;
        }
        assert_eq!(sent, 0, "the kernel sent no more than it was given");
    }
}

/// One non-blocking `sendmsg` of the unsent parts.
fn send_vectored(descriptor: RawFd, unsent: &Unsent<'_>) -> io::Result<usize> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iovecs = [empty; SLICES_PER_SEND_MAX];
    let mut count = 0;
    for (iovec, part) in iovecs.iter_mut().zip(unsent.parts()) {
        // sendmsg only reads through `iov_base`; the cast to `*mut` is what the C type asks.
        iovec.iov_base = part.as_ptr().cast_mut().cast();
        iovec.iov_len = part.len();
        count += 1;
    }
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = iovecs.as_mut_ptr();
    header.msg_iovlen = count;
    // MSG_NOSIGNAL: a peer that closed is an EPIPE error for this connection, not a signal.
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: the iovecs point into `unsent`'s slices, alive and unchanged for the call.
    let sent = unsafe { libc::sendmsg(descriptor, &raw const header, flags) };
    usize::try_from(sent).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::AsyncReadExt;
    use glommio::net::TcpListener;

    /// A frame far larger than the socket buffers, of more slices than one send takes, to a
    /// reader that starts late: sends come back short and would block, and the bytes arrive
    /// whole and in order.
    #[test]
    fn a_large_frame_of_many_slices_arrives_whole_through_a_full_socket() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let slices: Vec<Bytes> = (0..300_u32)
                    .map(|index| {
                        let size = 1 + (index as usize * 7919) % 100_000;
                        Bytes::from(vec![u8::try_from(index % 251).unwrap(); size])
                    })
                    .collect();
                let expected = slices.concat();
                let mut frame = ResponseFrame::default();
                for slice in slices {
                    frame.push(slice);
                }
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let address = listener.local_addr().unwrap();
                let reader = glommio::spawn_local(async move {
                    let mut stream = listener.accept().await.unwrap();
                    glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                    let mut received = Vec::new();
                    stream.read_to_end(&mut received).await.unwrap();
                    received
                });
                let mut writer = TcpStream::connect(address).await.unwrap();
                write_frame(&mut writer, &frame).await.unwrap();
                writer.close().await.unwrap();
                let received = reader.await;
                assert_eq!(received.len(), expected.len());
                assert!(received == expected, "the bytes arrive in order");
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn unsent_advances_across_slices_and_skips_empty_ones() {
        let slices = [
            Bytes::from_static(b""),
            Bytes::from_static(b"abc"),
            Bytes::from_static(b""),
            Bytes::from_static(b"defg"),
        ];
        let mut unsent = Unsent::new(&slices);
        assert_eq!(unsent.current(), Some(&b"abc"[..]));
        unsent.advance(2);
        assert_eq!(
            unsent.parts().collect::<Vec<_>>(),
            [&b"c"[..], b"", b"defg"]
        );
        unsent.advance(3);
        assert_eq!(unsent.current(), Some(&b"fg"[..]));
        unsent.advance(2);
        assert_eq!(unsent.current(), None);
    }
}
