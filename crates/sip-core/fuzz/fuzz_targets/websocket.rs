//! SIP over WebSocket input (crate sip-ws): an upgrade request, then frames delivered in
//! fuzzer-chosen chunks. The handshake parser and the frame decoder must answer anything
//! with a value or an error, never a panic, and never consume more than they were given.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sip_ws::{Decoder, Event};

fn frames(data: &[u8], chunk: usize, server: bool) {
    let mut d = if server {
        Decoder::server(4096)
    } else {
        Decoder::client(4096)
    };
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match d.decode(&mut buf) {
                Ok(Some(e)) => {
                    assert!(buf.len() < before, "an event consumed nothing");
                    if let Event::Message(m) = e {
                        assert!(m.len() <= 4096, "a message over the cap");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = e.close_code();
                    return;
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The upgrade: with any origin, and with one allowed.
    let origins = ["https://phones.example.com".to_owned()];
    for allowed in [&[][..], &origins[..]] {
        match sip_ws::handshake::parse(rest, allowed) {
            Ok(Some(u)) => {
                assert!(u.head_len <= rest.len());
                let _ = u.response();
            }
            Ok(None) => {}
            Err(e) => {
                let _ = e.response();
            }
        }
    }
    // The frames, in chunks of 1..=64 bytes, as a server and as a client reads them.
    frames(rest, usize::from(mode & 63) + 1, mode & 64 == 0);
    let _ = sip_ws::frame::data_payload(rest);
});
