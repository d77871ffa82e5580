//! Media anchoring: the edge's side of the media relay.
//!
//! The edge keeps no media state between transactions. Every SDP it anchors goes to a
//! relay, which names the session by Call-ID and tags, so any edge can handle any later
//! request of the call: a re-INVITE or an ACK asks each relay in turn (`Answer` never
//! creates), a BYE deletes on every relay. New calls go to the least-loaded healthy relay
//! by the `Load` reports polled every second.
//!
//! The SDP side is plain functions over bytes ([`media_of`], [`rewrite`]): the relay's
//! address and ports go into `c=`, `m=` and `a=rtcp` with `sdp`'s line-level
//! rewriter, every other byte stays as it was.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use grpc_auth::{AuthChannel, Bearer};
use proto::media::v1 as pb;
use proto::media::v1::media_relay_client::MediaRelayClient;
use sdp::Sdp;
use sip_core::{HeaderName, SipMessage};
use tonic::transport::Endpoint;

use crate::config::{ConfigError, MediaConfig};

/// Static payload types' RTP clocks (RFC 3551); dynamic ones come from `a=rtpmap`.
fn static_clock(pt: u8) -> Option<u32> {
    match pt {
        0..=9 | 12 | 13 | 15 | 18 => Some(8000),
        10 | 11 => Some(44_100),
        14 | 25 | 26 | 28 | 31..=34 => Some(90_000),
        _ => None,
    }
}

/// Whether a message carries an SDP body.
#[must_use]
pub fn has_sdp(msg: &SipMessage) -> bool {
    !msg.body().is_empty()
        && msg.header(HeaderName::ContentType).is_some_and(|v| {
            v.split(|b| *b == b';')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"application/sdp"))
        })
}

/// The media sections of an SDP body as the relay wants them; `None` if it does not
/// parse (it is then forwarded untouched).
#[must_use]
pub fn media_of(body: &[u8]) -> Option<Vec<pb::Media>> {
    let sdp = Sdp::parse(body).ok()?;
    let mut out = Vec::with_capacity(sdp.media().len());
    for (i, m) in sdp.media().iter().enumerate() {
        let address = sdp
            .effective_address(i)
            .and_then(|a| a.ip())
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        let first = m.formats().next().and_then(|f| f.parse::<u8>().ok());
        let rtpmap = first.and_then(|pt| {
            sdp.media_attributes(i)?.find_map(|a| {
                if a.name() != "rtpmap" {
                    return None;
                }
                let v = a.value_str()?;
                let (num, rest) = v.split_once(' ')?;
                if num.parse::<u8>().ok()? != pt {
                    return None;
                }
                rest.split('/').nth(1)?.parse::<u32>().ok()
            })
        });
        out.push(pb::Media {
            address,
            port: u32::from(m.port()),
            rtcp_port: m.rtcp().map(|r| u32::from(r.port())),
            rtcp_mux: m.rtcp_mux(),
            clock_rate: rtpmap.or(first.and_then(static_clock)).unwrap_or(8000),
            secure: m.proto().contains("SAVP"),
        });
    }
    (!out.is_empty()).then_some(out)
}

/// Whether the SDP puts any media on a private address (a party behind a NAT).
#[must_use]
pub fn private_media(body: &[u8]) -> bool {
    media_of(body).is_some_and(|ms| {
        ms.iter()
            .filter_map(|m| m.address.parse::<IpAddr>().ok())
            .any(crate::nat::is_private)
    })
}

/// `body` with the relay's address and ports; `None` if it does not parse or the reply
/// does not match its media sections.
#[must_use]
pub fn rewrite(body: &[u8], reply: &pb::UpdateReply) -> Option<Bytes> {
    let ip: IpAddr = reply.address.parse().ok()?;
    let sdp = Sdp::parse(body).ok()?;
    if reply.media.len() != sdp.media().len() {
        return None;
    }
    let mut rw = sdp.rewriter();
    if sdp.session_connection().is_some() || sdp.media().iter().any(|m| m.connection().is_none()) {
        rw.set_session_connection(ip);
    }
    for (i, (m, local)) in sdp.media().iter().zip(&reply.media).enumerate() {
        if m.port() == 0 || local.port == 0 {
            continue;
        }
        let port = u16::try_from(local.port).ok()?;
        let rtcp = u16::try_from(local.rtcp_port).ok()?;
        if m.connection().is_some() {
            rw.set_media_connection(i, ip).ok()?;
        }
        rw.set_media_port(i, port).ok()?;
        if m.rtcp().is_some() || (rtcp != port && rtcp != port.wrapping_add(1)) {
            rw.set_rtcp(i, rtcp, Some(ip)).ok()?;
        }
    }
    Some(rw.finish_bytes())
}

/// The SDP of a response (18x/2xx) or an ACK, for a call anchored at relay `hint`:
/// `msg` with the relay's ports, or `None` to forward it as it is. `offer` when the
/// message carries the offer (the request had none: a late offer), else the answer.
pub async fn anchor_sdp(
    relays: &Relays,
    hint: Option<usize>,
    msg: &SipMessage,
    sender: &str,
    peer: &str,
    offer: bool,
) -> Option<SipMessage> {
    let call_id = msg.call_id().ok()?;
    let media = media_of(msg.body())?;
    match relays
        .update(hint, call_id, sender, peer, media, offer)
        .await
    {
        Ok(Some((_, reply))) => {
            let body = rewrite(msg.body(), &reply)?;
            let mut ed = sip_core::Editor::new(msg);
            ed.set_body(body.to_vec());
            ed.finish_message().ok()
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(call_id, error = %e, "media relay unreachable for an answer");
            None
        }
    }
}

/// Why a relay call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaFailure {
    /// No relay is healthy and accepting new sessions.
    #[error("no media relay available")]
    NoRelay,
    /// The relay refused or did not answer in time.
    #[error("media relay {0}: {1}")]
    Relay(usize, String),
}

struct RelayEntry {
    url: String,
    client: MediaRelayClient<AuthChannel>,
    healthy: AtomicBool,
    draining: AtomicBool,
    sessions: AtomicU32,
}

/// The configured relays, their health and load.
pub struct Relays {
    relays: Vec<RelayEntry>,
    timeout: Duration,
    strict: bool,
    /// After each poll: some relay answered and takes new sessions. False until the
    /// first poll has answered (readiness: an edge whose calls would all get 503 is not
    /// ready).
    available: Arc<AtomicBool>,
}

impl std::fmt::Debug for Relays {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.relays.iter().map(|r| r.url.as_str()).collect();
        f.debug_struct("Relays").field("relays", &urls).finish()
    }
}

impl Relays {
    /// Clients for `cfg.relays` (connected lazily), presenting the edge token of
    /// `cfg.token_file`; `None` when there are no relays.
    pub fn new(cfg: &MediaConfig) -> Result<Option<Arc<Relays>>, ConfigError> {
        if cfg.relays.is_empty() {
            return Ok(None);
        }
        let bearer = Bearer::new(
            crate::config::read_token("media.token_file", cfg.token_file.as_deref())?.as_ref(),
        );
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let mut relays = Vec::new();
        for url in &cfg.relays {
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| ConfigError::new("media.relays", format!("{url}: {e}")))?
                .connect_timeout(timeout)
                .timeout(timeout)
                .tcp_nodelay(true);
            relays.push(RelayEntry {
                url: url.clone(),
                client: MediaRelayClient::new(bearer.clone().channel(endpoint.connect_lazy())),
                // Healthy until the first poll says otherwise: a new edge can take calls
                // at once.
                healthy: AtomicBool::new(true),
                draining: AtomicBool::new(false),
                sessions: AtomicU32::new(0),
            });
        }
        Ok(Some(Arc::new(Relays {
            relays,
            timeout,
            strict: cfg.strict,
            available: Arc::new(AtomicBool::new(false)),
        })))
    }

    /// Poll every relay's load once a second, for ever; `up` counts those that answer.
    pub fn spawn_monitor(
        self: &Arc<Self>,
        up: prometheus_client::metrics::gauge::Gauge,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // What the log said last: none answering is worth a line from the first
            // poll on, not only after one answered.
            let mut said = None;
            loop {
                tick.tick().await;
                for r in &me.relays {
                    let mut c = r.client.clone();
                    let res = tokio::time::timeout(me.timeout, c.load(pb::LoadRequest {})).await;
                    match res {
                        Ok(Ok(l)) => {
                            let l = l.into_inner();
                            if !r.healthy.swap(true, Ordering::Relaxed) {
                                tracing::info!(relay = %r.url, "media relay reachable");
                            }
                            r.draining.store(l.draining, Ordering::Relaxed);
                            r.sessions.store(l.sessions, Ordering::Relaxed);
                        }
                        _ => {
                            if r.healthy.swap(false, Ordering::Relaxed) {
                                tracing::warn!(relay = %r.url, "media relay unreachable");
                            }
                        }
                    }
                }
                let healthy = me
                    .relays
                    .iter()
                    .filter(|r| r.healthy.load(Ordering::Relaxed))
                    .count();
                up.set(i64::try_from(healthy).unwrap_or(i64::MAX));
                let any = !me.candidates().is_empty();
                me.available.store(any, Ordering::Relaxed);
                if said != Some(any) {
                    if !any {
                        tracing::warn!(
                            relays = me.relays.len(),
                            "no media relay answers or takes new sessions: calls that need one get 503"
                        );
                    } else if said.is_some() {
                        tracing::info!("a media relay takes new sessions again");
                    }
                    said = Some(any);
                }
            }
        })
    }

    /// True while some relay answered the last poll and takes new sessions.
    pub fn available(&self) -> Arc<AtomicBool> {
        self.available.clone()
    }

    fn request(
        &self,
        call_id: &str,
        sender: &str,
        peer: &str,
        media: Vec<pb::Media>,
    ) -> pb::UpdateRequest {
        pb::UpdateRequest {
            call_id: call_id.into(),
            sender_tag: sender.into(),
            peer_tag: peer.into(),
            media,
            strict: self.strict,
            reply_family: pb::Family::Same as i32,
        }
    }

    /// Relays that can take a new session, least loaded first.
    pub fn candidates(&self) -> Vec<usize> {
        let mut c: Vec<usize> = (0..self.relays.len())
            .filter(|&i| {
                let r = &self.relays[i];
                r.healthy.load(Ordering::Relaxed) && !r.draining.load(Ordering::Relaxed)
            })
            .collect();
        c.sort_by_key(|&i| self.relays[i].sessions.load(Ordering::Relaxed));
        c
    }

    /// A new session (the offer of a new call): the least-loaded relay, the next one if
    /// it fails.
    pub async fn offer(
        &self,
        call_id: &str,
        sender: &str,
        peer: &str,
        media: Vec<pb::Media>,
    ) -> Result<(usize, pb::UpdateReply), MediaFailure> {
        let mut last = MediaFailure::NoRelay;
        for i in self.candidates().into_iter().take(2) {
            let r = &self.relays[i];
            let mut c = r.client.clone();
            let req = self.request(call_id, sender, peer, media.clone());
            match tokio::time::timeout(self.timeout, c.offer(req)).await {
                Ok(Ok(reply)) => {
                    r.sessions.fetch_add(1, Ordering::Relaxed);
                    return Ok((i, reply.into_inner()));
                }
                Ok(Err(s)) => {
                    if s.code() == tonic::Code::Unavailable {
                        r.draining.store(true, Ordering::Relaxed);
                    }
                    last = MediaFailure::Relay(i, s.message().to_owned());
                }
                Err(_) => {
                    r.healthy.store(false, Ordering::Relaxed);
                    last = MediaFailure::Relay(i, "timeout".into());
                }
            }
        }
        Err(last)
    }

    /// An SDP of an existing session (a re-INVITE, an answer, an ACK): the relay that
    /// holds it (`hint` first), or `None` when no relay knows the call.
    pub async fn update(
        &self,
        hint: Option<usize>,
        call_id: &str,
        sender: &str,
        peer: &str,
        media: Vec<pb::Media>,
        create: bool,
    ) -> Result<Option<(usize, pb::UpdateReply)>, MediaFailure> {
        let order = hint
            .into_iter()
            .chain((0..self.relays.len()).filter(|i| Some(*i) != hint));
        let mut failure = None;
        for i in order {
            let Some(r) = self.relays.get(i) else {
                continue;
            };
            let mut c = r.client.clone();
            let req = self.request(call_id, sender, peer, media.clone());
            let res = if create && Some(i) == hint {
                tokio::time::timeout(self.timeout, c.offer(req)).await
            } else {
                tokio::time::timeout(self.timeout, c.answer(req)).await
            };
            match res {
                Ok(Ok(reply)) => return Ok(Some((i, reply.into_inner()))),
                Ok(Err(s)) if s.code() == tonic::Code::NotFound => continue,
                Ok(Err(s)) => failure = Some(MediaFailure::Relay(i, s.message().to_owned())),
                Err(_) => failure = Some(MediaFailure::Relay(i, "timeout".into())),
            }
        }
        failure.map_or(Ok(None), Err)
    }

    /// End the call's session wherever it is: its statistics, `None` when no relay had
    /// it (or none answered).
    pub async fn delete(&self, call_id: &str, tag: &str, other: &str) -> Option<pb::SessionStats> {
        for r in &self.relays {
            let mut c = r.client.clone();
            let req = pb::SessionRef {
                call_id: call_id.into(),
                tag: tag.into(),
                other_tag: other.into(),
            };
            if let Ok(Ok(stats)) = tokio::time::timeout(self.timeout, c.delete(req)).await {
                let s = stats.into_inner();
                tracing::debug!(call_id, relay = %r.url, sides = s.sides.len(), "media session deleted");
                r.sessions.fetch_sub(1, Ordering::Relaxed);
                return Some(s);
            }
        }
        None
    }

    /// The URL of relay `i` (for the CDR).
    pub fn url(&self, i: usize) -> Option<&str> {
        self.relays.get(i).map(|r| r.url.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &[u8] = b"v=0\r\no=alice 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\n\
t=0 0\r\nm=audio 49170 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
m=video 51372 RTP/SAVP 96\r\na=rtpmap:96 H264/90000\r\na=rtcp:53000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:xyz\r\n";

    #[test]
    fn media_sections_for_the_relay() {
        let m = media_of(OFFER).expect("sdp");
        assert_eq!(m.len(), 2);
        assert_eq!(
            (
                m[0].address.as_str(),
                m[0].port,
                m[0].rtcp_port,
                m[0].clock_rate,
                m[0].secure
            ),
            ("10.0.0.5", 49170, None, 8000, false)
        );
        assert_eq!(
            (m[1].port, m[1].rtcp_port, m[1].clock_rate, m[1].secure),
            (51372, Some(53000), 90_000, true)
        );
        assert!(private_media(OFFER));
        assert!(media_of(b"not sdp").is_none());
    }

    #[test]
    fn rewrite_changes_only_addresses_and_ports() {
        let reply = pb::UpdateReply {
            address: "203.0.113.9".into(),
            media: vec![
                pb::LocalMedia {
                    port: 30000,
                    rtcp_port: 30001,
                },
                pb::LocalMedia {
                    port: 30002,
                    rtcp_port: 30003,
                },
            ],
            instance: "r".into(),
        };
        let out = rewrite(OFFER, &reply).expect("rewritten");
        let text = std::str::from_utf8(&out).expect("utf8");
        assert!(text.contains("c=IN IP4 203.0.113.9\r\n"), "{text}");
        assert!(text.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{text}");
        assert!(text.contains("m=video 30002 RTP/SAVP 96\r\n"), "{text}");
        assert!(
            text.contains("a=rtcp:30003 IN IP4 203.0.113.9\r\n"),
            "{text}"
        );
        // The key, the origin and everything else: byte for byte.
        assert!(text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:xyz\r\n"));
        assert!(text.contains("o=alice 1 1 IN IP4 10.0.0.5\r\n"));
        // A reply for the wrong number of sections is refused, not half applied.
        let mut short = reply.clone();
        short.media.pop();
        assert!(rewrite(OFFER, &short).is_none());
    }
}
