//! Entry point of the `wire_decoding` fuzz target (`fuzz/fuzz_targets/`), kept in the crate so
//! the committed corpus replays through exactly the same code in `cargo test` as under
//! `cargo fuzz`. Compiled for tests and with the `fuzzing` feature only.
//!
//! Panics only when an invariant breaks: any input must end in a frame or an error.

use bytes::BytesMut;

use crate::wire::{frame_body_length, Frame, WireLimits, FRAME_LENGTH_BYTES};

/// Decodes arbitrary bytes as one broker-to-broker frame, under the default limit and under a
/// small one. A frame that decodes must encode back to the same bytes (the encoding is
/// canonical), decode again to the same value, and expand into raft messages between its
/// two nodes.
pub fn wire_decoding(data: &[u8]) {
    let small = WireLimits {
        frame_bytes_max: 256,
    };
    let _ = Frame::decode(data, &small);
    let limits = WireLimits::default();
    if let Ok(prefix) =
        <[u8; FRAME_LENGTH_BYTES]>::try_from(data.get(..FRAME_LENGTH_BYTES).unwrap_or(&[]))
    {
        let _ = frame_body_length(prefix, &limits);
    }
    let Ok(frame) = Frame::decode(data, &limits) else {
        return;
    };
    assert_eq!(frame.encoded_size(), data.len());
    let mut encoded = BytesMut::new();
    frame.encode(&mut encoded);
    assert_eq!(&encoded[..], data, "a decoded frame encodes to other bytes");
    let again = Frame::decode(&encoded, &limits).expect("a re-encoded frame decodes");
    assert_eq!(again, frame);
    let (from, to) = (frame.from_node, frame.to_node);
    for (_, message) in frame.into_group_messages() {
        assert_eq!((message.from, message.to), (from, to));
    }
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file (`fuzz/corpus/wire_decoding/`) through the entry
    //! point above, so a crash the fuzzer once found stays fixed under plain `cargo test`.
    use std::path::Path;

    use super::*;

    #[test]
    fn wire_decoding_corpus_replays() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/wire_decoding");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} holds no corpus", dir.display());
        let mut decoded = 0;
        for path in files {
            let bytes = std::fs::read(&path).expect("corpus file");
            println!("{}", path.display());
            wire_decoding(&bytes);
            decoded += usize::from(Frame::decode(&bytes, &WireLimits::default()).is_ok());
        }
        // The seeds are real frames: the replay must reach the re-encoding checks.
        assert!(decoded > 0, "no corpus input decoded");
    }
}
