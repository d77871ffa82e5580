//! Helpers shared by the integration tests: REGISTER messages written as text and parsed
//! by sip-core, and a minimal executor for the store's futures.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use sip_core::SipMessage;
use sip_registrar::{
    Binding, Policy, RegisterError, RegisterOutcome, RegisterRequest, apply_register,
};

/// A REGISTER under construction.
#[derive(Debug, Clone)]
pub struct Reg {
    to: String,
    call_id: String,
    cseq: u32,
    contacts: Vec<String>,
    expires: Option<u32>,
    paths: Vec<String>,
    user_agent: Option<String>,
}

/// A REGISTER for `sip:alice@example.com` with this Call-ID and CSeq and nothing else.
pub fn reg(call_id: &str, cseq: u32) -> Reg {
    Reg {
        to: "<sip:alice@example.com>".into(),
        call_id: call_id.into(),
        cseq,
        contacts: Vec::new(),
        expires: None,
        paths: Vec::new(),
        user_agent: None,
    }
}

impl Reg {
    /// Replace the To value (written as given).
    pub fn to(mut self, to: &str) -> Reg {
        self.to = to.into();
        self
    }
    /// Add a Contact header line (written as given, may hold several values).
    pub fn contact(mut self, value: &str) -> Reg {
        self.contacts.push(value.into());
        self
    }
    /// Set the Expires header.
    pub fn expires(mut self, secs: u32) -> Reg {
        self.expires = Some(secs);
        self
    }
    /// Add a Path header line.
    pub fn path(mut self, value: &str) -> Reg {
        self.paths.push(value.into());
        self
    }
    /// Set User-Agent.
    pub fn user_agent(mut self, ua: &str) -> Reg {
        self.user_agent = Some(ua.into());
        self
    }

    /// The message text.
    pub fn text(&self) -> String {
        // The branch only needs to be a token; Call-IDs may hold `@`, which is not one.
        let branch: String = self
            .call_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let mut s = format!(
            "REGISTER sip:example.com SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{}x{}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=t{}\r\n\
             To: {}\r\n\
             Call-ID: {}\r\n\
             CSeq: {} REGISTER\r\n",
            self.cseq, branch, self.cseq, self.to, self.call_id, self.cseq
        );
        for p in &self.paths {
            s.push_str(&format!("Path: {p}\r\n"));
        }
        for c in &self.contacts {
            s.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = self.expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        if let Some(ua) = &self.user_agent {
            s.push_str(&format!("User-Agent: {ua}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s
    }

    /// The message, parsed by sip-core.
    pub fn message(&self) -> SipMessage {
        let text = self.text();
        SipMessage::parse(text.clone().into_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// The registration request extracted from the parsed message.
    pub fn request(&self, now: u64) -> RegisterRequest {
        RegisterRequest::from_message(&self.message(), now, None)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.text()))
    }

    /// Apply to `existing` with the default policy at `now`.
    pub fn apply(&self, existing: &[Binding], now: u64) -> Result<RegisterOutcome, RegisterError> {
        self.apply_with(existing, &Policy::default(), now)
    }

    /// Apply to `existing` with `policy` at `now`.
    pub fn apply_with(
        &self,
        existing: &[Binding],
        policy: &Policy,
        now: u64,
    ) -> Result<RegisterOutcome, RegisterError> {
        apply_register(existing, &self.request(now), policy, now)
    }
}

/// The contact URIs of a binding set, in order.
pub fn uris(bindings: &[Binding]) -> Vec<&str> {
    bindings.iter().map(|b| b.contact.as_str()).collect()
}

/// Drive a future to completion on this thread. The stores under test never wait on
/// anything, so a no-op waker is enough; the loop only guards against a spurious
/// `Pending`.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}
