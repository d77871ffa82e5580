//! Every token the cluster reads back from a message (crate dispatch-core): dispatcher
//! flow tokens (plain and with the internal address sealed), edge flow tokens, the signed
//! client address and TLS peer name of a dispatcher's Via, dialog tokens, and the values
//! topology hiding seals into Vias and Record-Routes. Whatever the text, decoding gives a
//! value or `None`, never a panic; and what verifies re-encodes to the same text.
#![no_main]

use dispatch_core::{FlowToken, TokenKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let key = TokenKey::new(b"fuzz-cluster-secret-0123");
    let _ = FlowToken::peek(&text);
    let _ = FlowToken::peek_with(&key, &text);
    if let Some(t) = FlowToken::decode(&key, &text) {
        assert!(
            t.encode(&key).eq_ignore_ascii_case(&text)
                || t.encode_sealed(&key).eq_ignore_ascii_case(&text),
            "a verified token re-encodes to itself"
        );
    }
    let hider = dispatch_core::relay::hiding::Hider::new(key.derive(b"topology hiding"));
    if let Some(values) = hider.open(&text) {
        // Only what was sealed opens: the fuzzer cannot forge a seal.
        assert!(values.len() <= 32);
    }
    let _ = dispatch_core::relay::hiding::hidden_param(data);
    let _ = dispatch_core::relay::hiding::without_hidden(data);
    let (branch, signed) = text.split_once(';').unwrap_or(("z9hG4bK-scd0", &text));
    let _ = key.verify_source(branch, signed);
    if let Some(name) = key.verify_peer(branch, signed) {
        let again = key.sign_peer(branch, &name).unwrap_or_default();
        assert!(again.eq_ignore_ascii_case(signed), "a verified name re-signs to itself");
    }
    let _ = key.dialog_check(signed, branch, [Some("a"), Some(branch)]);
    if let Ok(nonce_key) = sip_auth::NonceKey::new(
        b"fuzz-nonce-secret-0123456789",
        std::time::Duration::from_secs(300),
    ) {
        let _ = dispatch_core::token::edge::decode(&nonce_key, &text);
    }
});
