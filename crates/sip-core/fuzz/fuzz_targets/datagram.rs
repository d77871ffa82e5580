//! One UDP datagram: framing, every accessor, validation, builders, editing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip_core::{Datagram, Limits, parse_datagram};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_message_size: 65_535,
        max_headers: 64,
        max_line_len: 4096,
    };
    match parse_datagram(bytes::Bytes::copy_from_slice(data), &limits) {
        Ok(Datagram::Message(m)) => sip_core_fuzz::exercise(&m),
        Ok(Datagram::KeepAlive) => {}
        Err(e) => sip_core_fuzz::unparsed(data, &e),
    }
});
