//! account: what billing gets from a call (the `[accounting]` section).
//!
//! The core builds a call's events as the INVITE transaction goes (attempt, first
//! ringing, answer, failure: [`CallTrack`]) and hands them to the driver as an
//! [`Ask::Account`](crate::core::Ask::Account); it never waits on them. At the answer it
//! also writes the dialog record (through the location service in a cluster), holding
//! what this edge knew of the call. The BYE may reach any edge: that edge ends the
//! record and completes it into the CDR ([`end_call`]). A failed or cancelled call is
//! accounted by the edge that held its INVITE transaction.
//!
//! Event ids are derived from the call (Call-ID, tags and the kind of event): a
//! retransmitted or repeated event (two BYEs crossing, a replay of the spool after a
//! crash) carries the same id, and consumers deduplicate on it.

use std::time::{Duration, Instant};

use location_client::pb;
use prost::Message;
use proto::cdr::v1 as cdr;
use sha2::{Digest, Sha256};
use sip_core::{SipMessage, Uri, default_reason};
use sip_txn::Target;

use crate::decision::{Hop, Plan};
use crate::shared::Shared;

/// The clock of events: Unix milliseconds for the core's (virtual, in tests) instants.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    t0: Instant,
    ms0: u64,
}

impl WallClock {
    /// `now` is the current Unix time.
    pub fn new(now: Instant) -> WallClock {
        WallClock {
            t0: now,
            ms0: sip_registrar::unix_now_ms(),
        }
    }

    /// Unix milliseconds at `at`.
    pub fn ms(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.t0);
        self.ms0
            .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// What the driver is to do for accounting.
#[derive(Debug)]
pub enum Record {
    /// Record these events.
    Events {
        /// The Call-ID: the partitioning key.
        key: String,
        /// The events.
        events: Vec<cdr::Envelope>,
    },
    /// The call was answered: write its dialog record, record the events.
    Answered {
        /// The record.
        dialog: pb::Dialog,
        /// The events.
        events: Vec<cdr::Envelope>,
    },
    /// A BYE: end the dialog record and record the call's CDR.
    Ended(EndCall),
    /// A 2xx to a re-INVITE or UPDATE (a session refresh, RFC 4028): the record lives on.
    Refreshed {
        /// Call-ID.
        call_id: String,
        /// The request's From tag and To tag: the record is under the caller's, which is
        /// either.
        tags: [String; 2],
        /// The interval the 2xx settles, s (0: none; the record keeps the dialog TTL).
        session_expires: u32,
    },
}

impl Record {
    /// Nothing to do: events only, and none (CDRs only).
    pub fn is_empty(&self) -> bool {
        matches!(self, Record::Events { events, .. } if events.is_empty())
    }
}

/// A BYE forwarded by this edge.
#[derive(Debug)]
pub struct EndCall {
    /// Call-ID.
    pub call_id: String,
    /// The BYE's From tag (the caller's when the caller hung up).
    pub from_tag: String,
    /// Its To tag.
    pub to_tag: String,
    /// When it arrived, Unix ms.
    pub at_ms: u64,
    /// End the call's relay session (its statistics go into the CDR).
    pub end_media: bool,
}

/// A call accounted by the edge holding its INVITE transaction.
#[derive(Debug)]
pub struct CallTrack {
    /// The CDR as known so far.
    cdr: cdr::Cdr,
    ringing: bool,
    answered: bool,
    /// The caller cancelled (its 487 is a cancellation, not a failure).
    pub cancelled: bool,
}

fn party(a: Result<sip_core::NameAddr<'_>, sip_core::Error>) -> cdr::Party {
    let Ok(a) = a else {
        return cdr::Party::default();
    };
    let user = match a.parsed_uri() {
        Ok(Uri::Sip(u)) => u.user.unwrap_or_default().to_owned(),
        _ => String::new(),
    };
    cdr::Party {
        user,
        uri: String::from_utf8_lossy(a.uri).into_owned(),
        display_name: a
            .display_name
            .map(|d| d.to_string_lossy())
            .unwrap_or_default(),
        authenticated_as: String::new(),
    }
}

fn transport_of(t: sip_txn::Transport) -> cdr::Transport {
    match t {
        sip_txn::Transport::Udp => cdr::Transport::Udp,
        sip_txn::Transport::Tcp => cdr::Transport::Tcp,
        sip_txn::Transport::Tls => cdr::Transport::Tls,
        sip_txn::Transport::Ws => cdr::Transport::Ws,
        sip_txn::Transport::Wss => cdr::Transport::Wss,
    }
}

fn via_transport(v: &sip_core::Via<'_>) -> cdr::Transport {
    match v.transport {
        sip_core::Transport::Udp => cdr::Transport::Udp,
        sip_core::Transport::Tcp => cdr::Transport::Tcp,
        sip_core::Transport::Tls => cdr::Transport::Tls,
        sip_core::Transport::Ws => cdr::Transport::Ws,
        sip_core::Transport::Wss => cdr::Transport::Wss,
        _ => cdr::Transport::Unspecified,
    }
}

/// A deterministic event id: the kind and a hash of the call's identity.
pub fn event_id(kind: &str, call_id: &str, from_tag: &str, to_tag: &str) -> String {
    let mut h = Sha256::new();
    for part in [kind, call_id, from_tag, to_tag] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let d = h.finalize();
    let mut id = String::with_capacity(kind.len() + 33);
    id.push_str(kind);
    id.push('-');
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in &d[..16] {
        id.push(char::from(HEX[usize::from(b >> 4)]));
        id.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    id
}

fn envelope(sh: &Shared, id: String, at_ms: u64, body: cdr::envelope::Body) -> cdr::Envelope {
    cdr::Envelope {
        event_id: id,
        produced_at_ms: at_ms,
        producer: sh.instance.clone(),
        body: Some(body),
    }
}

fn kind_name(k: cdr::CallEventKind) -> &'static str {
    match k {
        cdr::CallEventKind::Attempt => "attempt",
        cdr::CallEventKind::Ringing => "ringing",
        cdr::CallEventKind::Answered => "answered",
        cdr::CallEventKind::Ended => "ended",
        cdr::CallEventKind::Failed => "failed",
        cdr::CallEventKind::Unspecified => "event",
    }
}

/// The event, or `None` when `accounting.call_events` is off (CDRs only): not built at
/// all then (its id is a SHA-256, its body an allocation or two).
fn call_event(
    sh: &Shared,
    kind: cdr::CallEventKind,
    call: &cdr::CallId,
    at_ms: u64,
    code: u16,
    cause: cdr::EndCause,
) -> Option<cdr::Envelope> {
    if !sh.cfg.accounting.call_events {
        return None;
    }
    let id = event_id(kind_name(kind), &call.call_id, &call.from_tag, &call.to_tag);
    Some(envelope(
        sh,
        id,
        at_ms,
        cdr::envelope::Body::Event(cdr::CallEvent {
            kind: kind as i32,
            call: Some(call.clone()),
            at_ms,
            sip_code: u32::from(code),
            end_cause: cause as i32,
        }),
    ))
}

fn cdr_envelope(sh: &Shared, c: cdr::Cdr, at_ms: u64) -> cdr::Envelope {
    let call = c.call.clone().unwrap_or_default();
    let id = event_id("cdr", &call.call_id, &call.from_tag, &call.to_tag);
    envelope(sh, id, at_ms, cdr::envelope::Body::Cdr(c))
}

/// Post-dial delay: INVITE to the first ringing, else to the answer or the end.
fn post_dial_delay(c: &cdr::Cdr) -> u64 {
    let until = [c.ringing_at_ms, c.answered_at_ms, c.ended_at_ms]
        .into_iter()
        .find(|t| *t != 0)
        .unwrap_or(c.invite_at_ms);
    until.saturating_sub(c.invite_at_ms)
}

impl CallTrack {
    /// A new call (an initial INVITE being forwarded by `plan`, its first hop, or refused
    /// by this edge), as of `at_ms`. `None` without a Call-ID or From tag (validation refuses those anyway).
    pub fn start(
        sh: &Shared,
        invite: &SipMessage,
        source: Target,
        plan: Option<(&Plan, Option<&Hop>)>,
        at_ms: u64,
    ) -> Option<CallTrack> {
        let call_id = invite.call_id().ok()?;
        let from_tag = invite.from_tag().ok()??;
        let origin = crate::origin::origin(sh, invite, source);
        // Behind a dispatcher the client's transport is in the Via under the
        // dispatcher's; the hop to us is the dispatcher's.
        let (transport, dispatcher) = if origin.relayed {
            let client_via = invite.via().nth(1).and_then(Result::ok);
            (
                client_via.map_or(cdr::Transport::Unspecified, |v| via_transport(&v)),
                source.addr.to_string(),
            )
        } else {
            (transport_of(source.transport), String::new())
        };
        let mut caller = party(invite.from_header());
        if let Some((p, _)) = plan {
            // `<sip:user@realm>` as asserted; the CDR says `user@realm`.
            caller.authenticated_as = p
                .identity
                .user
                .as_deref()
                .map(|u| {
                    let u = u.trim_start_matches('<').trim_end_matches('>');
                    u.strip_prefix("sips:")
                        .or_else(|| u.strip_prefix("sip:"))
                        .unwrap_or(u)
                })
                .unwrap_or_default()
                .to_owned();
        }
        let (destination, destination_uri, media_relay) = match plan {
            Some((p, hop)) => (
                p.destination.clone().unwrap_or_default(),
                hop.and_then(|h| h.request_uri.clone()).unwrap_or_default(),
                p.anchor
                    .and_then(|i| sh.relays.as_ref()?.url(i).map(str::to_owned))
                    .unwrap_or_default(),
            ),
            None => Default::default(),
        };
        Some(CallTrack {
            cdr: cdr::Cdr {
                call: Some(cdr::CallId {
                    call_id: call_id.to_owned(),
                    from_tag: from_tag.to_owned(),
                    to_tag: String::new(),
                }),
                caller: Some(caller),
                callee: Some(party(invite.to_header())),
                request_uri: String::from_utf8_lossy(invite.request_uri_raw().unwrap_or_default())
                    .into_owned(),
                source: origin.addr.to_string(),
                source_transport: transport as i32,
                edge: sh.instance.clone(),
                dispatcher,
                media_relay,
                destination,
                destination_uri,
                invite_at_ms: at_ms,
                ..cdr::Cdr::default()
            },
            ringing: false,
            answered: false,
            cancelled: false,
        })
    }

    fn call(&self) -> cdr::CallId {
        self.cdr.call.clone().unwrap_or_default()
    }

    /// The attempt event.
    pub fn attempt(&self, sh: &Shared) -> Record {
        let call = self.call();
        Record::Events {
            key: call.call_id.clone(),
            events: call_event(
                sh,
                cdr::CallEventKind::Attempt,
                &call,
                self.cdr.invite_at_ms,
                0,
                cdr::EndCause::Unspecified,
            )
            .into_iter()
            .collect(),
        }
    }

    /// A provisional response forwarded: the ringing event for the first 18x.
    pub fn provisional(&mut self, sh: &Shared, code: u16, at_ms: u64) -> Option<Record> {
        if self.ringing || self.answered || !(180..200).contains(&code) {
            return None;
        }
        self.ringing = true;
        self.cdr.ringing_at_ms = at_ms;
        let call = self.call();
        Some(Record::Events {
            key: call.call_id.clone(),
            events: call_event(
                sh,
                cdr::CallEventKind::Ringing,
                &call,
                at_ms,
                code,
                cdr::EndCause::Unspecified,
            )
            .into_iter()
            .collect(),
        })
    }

    /// A 2xx forwarded: the answered event and the dialog record. Once per call (a
    /// second 2xx of a fork is a second dialog the caller will end at once).
    pub fn answered(&mut self, sh: &Shared, resp: &SipMessage, at_ms: u64) -> Option<Record> {
        if self.answered {
            return None;
        }
        self.answered = true;
        let to_tag = resp.to_tag().ok().flatten().unwrap_or_default().to_owned();
        if let Some(c) = &mut self.cdr.call {
            c.to_tag.clone_from(&to_tag);
        }
        self.cdr.answered_at_ms = at_ms;
        self.cdr.sip_code = u32::from(resp.status().unwrap_or(200));
        self.cdr.sip_reason =
            String::from_utf8_lossy(resp.reason().unwrap_or_default()).into_owned();
        let call = self.call();
        let event = call_event(
            sh,
            cdr::CallEventKind::Answered,
            &call,
            at_ms,
            resp.status().unwrap_or(200),
            cdr::EndCause::Unspecified,
        );
        let user = |p: &Option<cdr::Party>| p.as_ref().map(|p| p.uri.clone()).unwrap_or_default();
        let dialog = pb::Dialog {
            session_expires_secs: crate::session_timer::interval(resp).unwrap_or(0),
            call_id: call.call_id.clone(),
            from_tag: call.from_tag.clone(),
            to_tag,
            caller: user(&self.cdr.caller),
            callee: user(&self.cdr.callee),
            started_at_ms: self.cdr.invite_at_ms,
            answered_at_ms: at_ms,
            ended_at_ms: 0,
            edge_id: sh.instance.clone(),
            media_relay: self.cdr.media_relay.clone(),
            status: self.cdr.sip_code,
            end_reason: String::new(),
            call: self.cdr.encode_to_vec(),
            expires_at_ms: 0,
        };
        Some(Record::Answered {
            dialog,
            events: event.into_iter().collect(),
        })
    }

    /// A final failure forwarded (`by_proxy` false: the callee's) or generated by this
    /// edge (no such user, offline, Timer C...): the failed event and the call's CDR.
    pub fn failed(
        &mut self,
        sh: &Shared,
        code: u16,
        reason: &str,
        by_proxy: bool,
        at_ms: u64,
    ) -> Option<Record> {
        if self.answered {
            return None;
        }
        // The caller's CANCEL ends it with 487; anything else is a failure.
        let cause = if self.cancelled && code == 487 {
            cdr::EndCause::Cancel
        } else {
            cdr::EndCause::Failure
        };
        let mut c = std::mem::take(&mut self.cdr);
        self.answered = true;
        c.ended_at_ms = at_ms;
        c.sip_code = u32::from(code);
        c.sip_reason = if reason.is_empty() {
            default_reason(code).to_owned()
        } else {
            reason.to_owned()
        };
        c.end_cause = cause as i32;
        c.hung_up_by = if cause == cdr::EndCause::Cancel {
            cdr::HungUpBy::Caller
        } else if by_proxy {
            cdr::HungUpBy::Proxy
        } else {
            cdr::HungUpBy::Callee
        } as i32;
        c.post_dial_delay_ms = post_dial_delay(&c);
        c.recorded_by = sh.instance.clone();
        let call = c.call.clone().unwrap_or_default();
        let event = call_event(sh, cdr::CallEventKind::Failed, &call, at_ms, code, cause);
        Some(Record::Events {
            key: call.call_id.clone(),
            events: event
                .into_iter()
                .chain([cdr_envelope(sh, c, at_ms)])
                .collect(),
        })
    }
}

/// How long a record ended by a BYE stays, s: long enough for the other side's crossing
/// BYE and every retransmission (64·T1 = 32 s), with margin. Not the location service's
/// `ended_ttl_secs` (an hour, for records the cluster ended, whose late BYE may come
/// much later): at 2,000 calls/s that kept 7 million records.
const BYE_ENDED_KEEP_SECS: u32 = 64;

/// How many times the dialog record is tried at a BYE before the call is accounted from
/// its events alone (the location service is down).
const END_ATTEMPTS: u32 = 3;

/// Do what `r` says: record events, write or end the dialog record. Never fails: what
/// cannot be done is logged and counted.
pub async fn execute(sh: &Shared, r: Record) {
    let Some(acc) = &sh.accounting else { return };
    match r {
        Record::Events { key, events } => {
            for e in &events {
                acc.record(e, &key);
            }
        }
        Record::Answered { dialog, events } => {
            let key = dialog.call_id.clone();
            for e in &events {
                acc.record(e, &key);
            }
            let ttl = record_ttl(sh, dialog.session_expires_secs);
            if let Err(e) = sh.dialogs.put(dialog, ttl, false).await {
                // The BYE's edge will not find the record: the call is accounted from its
                // events (answered here, ended there).
                sh.metrics.dialog_record_failures.inc();
                tracing::warn!(call_id = %key, error = %e, "dialog record not written");
            } else {
                sh.metrics.dialogs_recorded.inc();
            }
        }
        Record::Ended(end) => end_call(sh, acc, end).await,
        Record::Refreshed {
            call_id,
            tags,
            session_expires,
        } => {
            let ttl = record_ttl(sh, session_expires);
            for tag in tags.iter().filter(|t| !t.is_empty()) {
                let d = pb::Dialog {
                    call_id: call_id.clone(),
                    from_tag: tag.clone(),
                    session_expires_secs: session_expires,
                    ..pb::Dialog::default()
                };
                match sh.dialogs.put(d, ttl, true).await {
                    Ok(true) => {
                        sh.metrics.dialogs_refreshed.inc();
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(%call_id, error = %e, "dialog record not refreshed");
                        return;
                    }
                }
            }
        }
    }
}

/// How long a dialog record lives from a write: its session interval, else the dialog TTL.
pub(crate) fn record_ttl(sh: &Shared, session_expires: u32) -> Duration {
    if session_expires > 0 {
        Duration::from_secs(u64::from(session_expires))
    } else {
        Duration::from_secs(sh.cfg.accounting.dialog_ttl_secs)
    }
}

/// Now and then: claim the calls past their time (no BYE, no session refresh) and write
/// each one's CDR. Every edge runs this; the store gives each call to one of them.
pub async fn reap_loop(sh: std::sync::Arc<Shared>) {
    let Some(acc) = sh.accounting.clone() else {
        return;
    };
    let every = Duration::from_secs(sh.cfg.accounting.reap_interval_secs);
    loop {
        tokio::time::sleep(every).await;
        let reaped = match sh.dialogs.reap(100).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "dialog records not reaped this time");
                continue;
            }
        };
        for d in reaped {
            let cause = match d.end_reason.as_str() {
                "session-expired" => cdr::EndCause::SessionExpired,
                location_client::TERMINATED => cdr::EndCause::Administrative,
                _ => cdr::EndCause::DialogTtl,
            };
            let stats = match &sh.relays {
                Some(relays) => relays.delete(&d.call_id, &d.from_tag, &d.to_tag).await,
                None => None,
            };
            tracing::info!(
                call_id = %d.call_id,
                reason = %d.end_reason,
                "call ended by the cluster: an operator's request, or no BYE and no refresh in time"
            );
            let at = d.ended_at_ms;
            complete(
                sh.as_ref(),
                &acc,
                &d,
                at,
                cause,
                cdr::HungUpBy::Proxy,
                stats,
            );
            sh.metrics.sessions_reaped.inc();
        }
    }
}

/// A BYE: end the dialog record (the caller's, or the callee's hanging up: the record
/// is keyed by the caller's tag, the callee's BYE carries it as To tag) and record the
/// CDR and the ended event.
async fn end_call(sh: &Shared, acc: &accounting::Accounting, end: EndCall) {
    let stats = match (&sh.relays, end.end_media) {
        (Some(relays), true) => {
            relays
                .delete(&end.call_id, &end.from_tag, &end.to_tag)
                .await
        }
        _ => None,
    };
    let req = |tag: &str| pb::EndDialogRequest {
        call_id: end.call_id.clone(),
        from_tag: tag.to_owned(),
        ended_at_ms: end.at_ms,
        end_reason: "bye".into(),
        status: 0,
        ttl_secs: BYE_ENDED_KEEP_SECS,
    };
    let mut found = None;
    'tries: for attempt in 0..END_ATTEMPTS {
        let mut failed = false;
        for (tag, by) in [
            (&end.from_tag, cdr::HungUpBy::Caller),
            (&end.to_tag, cdr::HungUpBy::Callee),
        ] {
            if tag.is_empty() {
                continue;
            }
            match sh.dialogs.end(req(tag)).await {
                Ok(Some(d)) => {
                    found = Some((d, by));
                    break 'tries;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(call_id = %end.call_id, attempt, error = %e, "dialog record not ended");
                    failed = true;
                }
            }
        }
        if !failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
    }
    let call = cdr::CallId {
        call_id: end.call_id.clone(),
        from_tag: end.from_tag.clone(),
        to_tag: end.to_tag.clone(),
    };
    let Some((d, by)) = found else {
        // No record: not a call answered through this cluster (or its record expired, or
        // the location service is down). The ended event still tells billing when.
        sh.metrics.cdr_without_dialog.inc();
        record_ended(sh, acc, &call, end.at_ms, cdr::EndCause::Bye);
        return;
    };
    if d.end_reason != "bye" {
        // The cluster ended it before this BYE came (its time ran out): its CDR is out.
        tracing::info!(call_id = %d.call_id, reason = %d.end_reason, "BYE for a call already ended by the cluster");
        return;
    }
    // A second BYE (both sides hung up at once) gets the first's record: the same CDR,
    // under the same event id.
    complete(sh, acc, &d, d.ended_at_ms, cdr::EndCause::Bye, by, stats);
}

/// The CDR of an answered call from its dialog record, completed by this edge: the ended
/// event and the CDR recorded.
fn complete(
    sh: &Shared,
    acc: &accounting::Accounting,
    d: &pb::Dialog,
    ended_at_ms: u64,
    cause: cdr::EndCause,
    by: cdr::HungUpBy,
    stats: Option<proto::media::v1::SessionStats>,
) {
    let mut c = cdr::Cdr::decode(d.call.as_slice()).unwrap_or_default();
    let call = c
        .call
        .get_or_insert_with(|| cdr::CallId {
            call_id: d.call_id.clone(),
            from_tag: d.from_tag.clone(),
            to_tag: d.to_tag.clone(),
        })
        .clone();
    if c.invite_at_ms == 0 {
        c.invite_at_ms = d.started_at_ms;
    }
    if c.answered_at_ms == 0 {
        c.answered_at_ms = d.answered_at_ms;
    }
    if c.edge.is_empty() {
        c.edge.clone_from(&d.edge_id);
    }
    c.ended_at_ms = ended_at_ms;
    c.billable_ms = ended_at_ms.saturating_sub(c.answered_at_ms);
    c.post_dial_delay_ms = post_dial_delay(&c);
    c.end_cause = cause as i32;
    c.hung_up_by = by as i32;
    c.recorded_by = sh.instance.clone();
    if let Some(s) = stats {
        c.media = s
            .sides
            .iter()
            .map(|m| cdr::MediaLeg {
                tag: m.tag.clone(),
                source: m.source.clone(),
                packets: m.packets,
                bytes: m.bytes,
                expected: m.expected,
                lost: m.lost,
                jitter_ms: m.jitter_ms,
                foreign_packets: m.foreign_packets,
            })
            .collect();
    }
    record_ended(sh, acc, &call, ended_at_ms, cause);
    acc.record(&cdr_envelope(sh, c, ended_at_ms), &call.call_id);
    sh.metrics.cdrs.inc();
}

/// The ended event of an answered call.
fn record_ended(
    sh: &Shared,
    acc: &accounting::Accounting,
    call: &cdr::CallId,
    at_ms: u64,
    cause: cdr::EndCause,
) {
    if let Some(e) = call_event(sh, cdr::CallEventKind::Ended, call, at_ms, 0, cause) {
        acc.record(&e, &call.call_id);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_ids_are_stable_across_versions() {
        // Consumers deduplicate on these across a rolling upgrade: the value for given
        // inputs must never change (SHA-256 of the length-prefixed parts, 16 bytes hex).
        assert_eq!(
            super::event_id("cdr", "acc1", "bob-acc1", "a1"),
            "cdr-45a10b9c8756d107f303861d4a41bf48"
        );
    }
}
