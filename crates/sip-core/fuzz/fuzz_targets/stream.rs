//! A TCP byte stream delivered in fuzzer-chosen chunks: the decoder must frame the same
//! messages whatever the chunking, and consume exactly what it reports.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sip_core::{Frame, KeepAlive, Limits, StreamDecoder};

fn decode_all(data: &[u8], chunk: usize) -> (Vec<Vec<u8>>, usize, bool) {
    let mut d = StreamDecoder::new(Limits {
        max_message_size: 16_384,
        max_headers: 64,
        max_line_len: 4096,
    });
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut consumed = 0;
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(Frame::Message(m))) => {
                    consumed += m.as_bytes().len();
                    sip_core_fuzz::exercise(&m);
                    frames.push(m.as_bytes().to_vec());
                }
                Ok(Some(Frame::KeepAlive(k))) => {
                    consumed += match k {
                        KeepAlive::Ping => 4,
                        KeepAlive::Pong => 0,
                    };
                    frames.push(format!("{k:?}").into_bytes());
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = e.kind();
                    return (frames, consumed, true);
                }
            }
        }
    }
    (frames, consumed, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(c % 64) + 1;
    let (whole, _, whole_err) = decode_all(data, data.len());
    let (pieces, consumed, pieces_err) = decode_all(data, chunk);
    assert!(consumed <= data.len());
    // Chunking must not change the messages found before any error.
    if !whole_err && !pieces_err {
        let msgs = |f: &[Vec<u8>]| {
            f.iter()
                .filter(|x| !x.starts_with(b"Ping") && !x.starts_with(b"Pong"))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            msgs(&whole),
            msgs(&pieces),
            "framing depends on how the bytes arrive"
        );
    }
});
