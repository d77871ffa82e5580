//! limit: the cluster-wide call limits (`[call_limits]`), the stage after the request is
//! decided and before it is forwarded.
//!
//! A new call (an initial INVITE about to be forwarded) is admitted against the limits
//! of its account (the authenticated caller), its domain and its trunk (the destination
//! set it is routed to): concurrent calls and new calls per second, each 0 for none. The
//! count is exact across the cluster: every edge asks the location service
//! (`AcquireCall`: one atomic check of every key, all or nothing), the all-in-one a
//! table in its memory. A refused call gets `refuse_code`; a store that cannot answer,
//! 503 + Retry-After (our outage is never the caller's "busy").
//!
//! The slots are given back by whoever sees the call end: the edge holding the INVITE
//! transaction at a failure or a CANCEL, any edge at the BYE. They live `setup_ttl_secs`
//! until the answer, then the dialog's time-to-live (refreshed with the session), so a
//! call whose edge died frees its slots when that runs out.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use location_client::limits::{Admission, SlotTable};
use location_client::{LocationClient, pb};

use crate::config::{CallLimitsConfig, Limit};

/// Where the counts live.
#[async_trait]
pub trait CallLimits: Send + Sync {
    /// Admit a call against `limits`, all or nothing.
    async fn acquire(
        &self,
        call_id: &str,
        from_tag: &str,
        limits: Vec<pb::CallLimit>,
        ttl: Duration,
    ) -> Result<Admission, String>;
    /// Extend a call's slots; false when it holds none.
    async fn refresh(&self, call_id: &str, from_tag: &str, ttl: Duration) -> Result<bool, String>;
    /// Give a call's slots back, named by either tag; true when it held some.
    async fn release(&self, call_id: &str, tags: &[&str]) -> Result<bool, String>;
}

#[async_trait]
impl CallLimits for LocationClient {
    async fn acquire(
        &self,
        call_id: &str,
        from_tag: &str,
        limits: Vec<pb::CallLimit>,
        ttl: Duration,
    ) -> Result<Admission, String> {
        let r = self
            .acquire_call(call_id, from_tag, limits, ttl)
            .await
            .map_err(|e| e.to_string())?;
        Ok(if r.granted {
            Admission::Granted
        } else {
            Admission::Refused {
                key: r.refused_key,
                by: if r.refused_by == "cps" {
                    "cps"
                } else {
                    "calls"
                },
            }
        })
    }

    async fn refresh(&self, call_id: &str, from_tag: &str, ttl: Duration) -> Result<bool, String> {
        self.refresh_call(call_id, from_tag, ttl)
            .await
            .map_err(|e| e.to_string())
    }

    async fn release(&self, call_id: &str, tags: &[&str]) -> Result<bool, String> {
        self.release_call(call_id, tags)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The limits in this process (the all-in-one, a standalone edge).
#[derive(Debug, Default)]
pub struct MemoryLimits(Mutex<SlotTable>);

impl MemoryLimits {
    fn table(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl CallLimits for MemoryLimits {
    async fn acquire(
        &self,
        call_id: &str,
        from_tag: &str,
        limits: Vec<pb::CallLimit>,
        ttl: Duration,
    ) -> Result<Admission, String> {
        let member = location_client::limits::call_member(call_id, from_tag);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(self
            .table()
            .acquire(&member, &limits, ms, sip_registrar::unix_now_ms()))
    }

    async fn refresh(&self, call_id: &str, from_tag: &str, ttl: Duration) -> Result<bool, String> {
        let member = location_client::limits::call_member(call_id, from_tag);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(self
            .table()
            .refresh(&member, ms, sip_registrar::unix_now_ms()))
    }

    async fn release(&self, call_id: &str, tags: &[&str]) -> Result<bool, String> {
        let members: Vec<String> = tags
            .iter()
            .map(|t| location_client::limits::call_member(call_id, t))
            .collect();
        Ok(self.table().release(&members, sip_registrar::unix_now_ms()))
    }
}

/// `call_limits.trunk_peers`, parsed: which trunk a call comes from.
#[derive(Debug, Default)]
pub struct TrunkPeers(Vec<(String, Vec<dispatch_core::Cidr>, Vec<String>)>);

impl TrunkPeers {
    /// From the (validated) configuration.
    pub fn new(cfg: &CallLimitsConfig) -> TrunkPeers {
        let tls = crate::config::TLS_PEER;
        TrunkPeers(
            cfg.trunk_peers
                .iter()
                .map(|(trunk, peers)| {
                    let blocks = peers.iter().filter_map(|p| p.parse().ok()).collect();
                    let names = peers
                        .iter()
                        .filter_map(|p| p.strip_prefix(tls))
                        .map(str::to_ascii_lowercase)
                        .collect();
                    (trunk.clone(), blocks, names)
                })
                .collect(),
        )
    }

    /// The trunk a request from `addr` (with the verified certificate name `peer`) comes
    /// from, the first that names it: its index (see [`TrunkPeers::name`]).
    pub fn index_of(&self, addr: std::net::IpAddr, peer: Option<&str>) -> Option<usize> {
        if self.0.is_empty() {
            return None;
        }
        self.0.iter().position(|(_, blocks, names)| {
            dispatch_core::security::any_contains(blocks, addr)
                || peer.is_some_and(|p| names.iter().any(|n| n.eq_ignore_ascii_case(p)))
        })
    }

    /// The name of the trunk at `index`.
    pub fn name(&self, index: usize) -> Option<&str> {
        self.0.get(index).map(|(trunk, _, _)| trunk.as_str())
    }

    /// [`TrunkPeers::index_of`], named.
    pub fn of(&self, addr: std::net::IpAddr, peer: Option<&str>) -> Option<&str> {
        self.index_of(addr, peer).and_then(|i| self.name(i))
    }
}

/// The kinds of key, for the refusal metric's `limit` label.
pub const KINDS: [&str; 3] = ["account", "domain", "trunk"];

/// The limits a call is admitted against: its account's (the authenticated user,
/// `<sip:alice@example.com>`), its domain's, its trunks' (the destination set it goes
/// to, the trunk it comes from: one key when they are the same).
pub fn limits_for(
    cfg: &CallLimitsConfig,
    user: Option<&str>,
    trunk: Option<&str>,
    from_trunk: Option<&str>,
) -> Vec<pb::CallLimit> {
    let mut out = Vec::new();
    let mut push = |kind: &str, name: &str, l: Limit| {
        if l.calls > 0 || l.cps > 0 {
            out.push(pb::CallLimit {
                key: format!("{kind}:{name}"),
                max_calls: l.calls,
                max_cps: l.cps,
            });
        }
    };
    if let Some(u) = user {
        let account = u
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim_start_matches("sips:")
            .trim_start_matches("sip:")
            .to_ascii_lowercase();
        let own = cfg.accounts.get(&account).copied().unwrap_or(cfg.account);
        push("account", &account, own);
        if let Some((_, domain)) = account.split_once('@') {
            let d = cfg.domains.get(domain).copied().unwrap_or(cfg.domain);
            push("domain", domain, d);
        }
    }
    for t in trunk
        .into_iter()
        .chain(from_trunk.filter(|f| Some(*f) != trunk))
    {
        if let Some(l) = cfg.trunks.get(t) {
            push("trunk", t, *l);
        }
    }
    out
}

/// Admit a new call (an initial INVITE about to be forwarded by `plan`) against the call
/// limits: `None` to go on (with `plan.limited` set when it holds slots), or the refusal
/// (`refuse_code`; 503 + Retry-After when the store cannot answer).
pub(crate) async fn admit(
    sh: &crate::shared::Shared,
    txn: sip_txn::ServerTxnId,
    msg: &sip_core::SipMessage,
    plan: &mut crate::decision::Plan,
    from_trunk: Option<&str>,
) -> Option<crate::decision::Decision> {
    let store = sh.limits.as_ref()?;
    if msg.method() != Some(sip_core::Method::Invite) || msg.to_tag().ok().flatten().is_some() {
        return None;
    }
    let limits = limits_for(
        &sh.cfg.call_limits,
        plan.identity.user.as_deref(),
        plan.destination.as_deref(),
        from_trunk,
    );
    if limits.is_empty() {
        return None;
    }
    let call_id = msg.call_id().ok()?;
    let from_tag = msg.from_tag().ok().flatten()?;
    let ttl = Duration::from_secs(u64::from(sh.cfg.call_limits.setup_ttl_secs));
    match store.acquire(call_id, from_tag, limits, ttl).await {
        Ok(Admission::Granted) => {
            plan.limited = true;
            None
        }
        Ok(Admission::Refused { key, by }) => {
            let limit = kind_of(&key);
            sh.metrics
                .call_limit_refusals
                .get_or_create(&crate::metrics::LimitLabel { limit, by })
                .inc();
            tracing::debug!(%call_id, %key, by, "call refused: over its call limit");
            Some(crate::decision::respond(
                txn,
                msg,
                sh.cfg.call_limits.refuse_code,
            ))
        }
        Err(e) => {
            sh.metrics.call_limit_errors.inc();
            tracing::warn!(%call_id, error = %e, "call limits cannot be checked: 503");
            // The admission may have been applied before the answer was lost: give it
            // back (a no-op if it was not; if the store is down, its TTL does).
            let _ = store.release(call_id, &[from_tag]).await;
            Some(crate::decision::unavailable(sh, txn, msg))
        }
    }
}

/// What the core asks of the limits once a call is under way.
#[derive(Debug)]
pub enum Op {
    /// The call failed or ended: give its slots back. Named by the tags of the request
    /// ending it (the slots are under the caller's tag, which is one of them).
    Release {
        /// Call-ID.
        call_id: String,
        /// Candidate caller's tags.
        tags: Vec<String>,
    },
    /// The call was answered or its session refreshed: its slots live `ttl` more.
    Refresh {
        /// Call-ID.
        call_id: String,
        /// Candidate caller's tags (a refresh may come from either side).
        tags: Vec<String>,
        /// From now.
        ttl: Duration,
    },
}

/// Do `op`. A failure leaves the slots to their time-to-live: logged, counted.
pub async fn execute(sh: &crate::shared::Shared, op: Op) {
    let Some(store) = &sh.limits else { return };
    let result = match &op {
        Op::Release { call_id, tags } => {
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            store.release(call_id, &tags).await.map(drop)
        }
        Op::Refresh { call_id, tags, ttl } => {
            let mut r = Ok(());
            for t in tags {
                match store.refresh(call_id, t, *ttl).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        r = Err(e);
                        break;
                    }
                }
            }
            r
        }
    };
    if let Err(e) = result {
        sh.metrics.call_limit_errors.inc();
        tracing::warn!(?op, error = %e, "call limit slots not updated: they lapse at their time-to-live");
    }
}

/// The `limit` label of a refused key (`account:...` → `account`).
pub fn kind_of(key: &str) -> &'static str {
    KINDS
        .into_iter()
        .find(|k| key.strip_prefix(k).is_some_and(|r| r.starts_with(':')))
        .unwrap_or("account")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_for_account_domain_and_trunk_with_overrides() {
        let mut cfg = CallLimitsConfig::default();
        assert!(limits_for(&cfg, Some("<sip:alice@example.com>"), Some("pstn"), None).is_empty());
        cfg.account = Limit { calls: 5, cps: 0 };
        cfg.accounts
            .insert("alice@example.com".into(), Limit { calls: 2, cps: 1 });
        cfg.domains
            .insert("example.com".into(), Limit { calls: 0, cps: 10 });
        cfg.trunks
            .insert("pstn".into(), Limit { calls: 30, cps: 5 });
        let keys = |u, t| {
            limits_for(&cfg, u, t, None)
                .into_iter()
                .map(|l| (l.key, l.max_calls, l.max_cps))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(Some("<sip:Alice@Example.com>"), Some("pstn")),
            [
                ("account:alice@example.com".into(), 2, 1),
                ("domain:example.com".into(), 0, 10),
                ("trunk:pstn".into(), 30, 5)
            ]
        );
        assert_eq!(
            keys(Some("<sip:bob@other.org>"), None),
            [("account:bob@other.org".into(), 5, 0)]
        );
        // A trusted trunk's call (no user) to a set with no limit: nothing to count.
        assert!(keys(None, Some("other-set")).is_empty());
        assert_eq!(kind_of("domain:example.com"), "domain");
        assert_eq!(kind_of("trunk:pstn"), "trunk");
    }

    #[test]
    fn a_trunks_calls_in_and_out_share_its_key() {
        let mut cfg = CallLimitsConfig::default();
        cfg.trunks
            .insert("pstn".into(), Limit { calls: 30, cps: 0 });
        cfg.trunks.insert("pbx".into(), Limit { calls: 5, cps: 0 });
        cfg.trunk_peers.insert(
            "pstn".into(),
            vec!["192.0.2.0/24".into(), "tls:Carrier.example.net".into()],
        );
        let peers = TrunkPeers::new(&cfg);
        let ip = |s: &str| s.parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(peers.of(ip("192.0.2.77"), None), Some("pstn"));
        assert_eq!(
            peers.of(ip("198.51.100.1"), Some("carrier.example.net")),
            Some("pstn")
        );
        assert_eq!(
            peers.of(ip("198.51.100.1"), Some("other.example.net")),
            None
        );
        let keys = |to, from| {
            limits_for(&cfg, None, to, from)
                .into_iter()
                .map(|l| l.key)
                .collect::<Vec<_>>()
        };
        // Out to pstn, in from pstn: the same channels.
        assert_eq!(keys(Some("pstn"), None), ["trunk:pstn"]);
        assert_eq!(keys(None, Some("pstn")), ["trunk:pstn"]);
        // From pstn to pstn (a hairpin) counts once; from pstn to the pbx, both.
        assert_eq!(keys(Some("pstn"), Some("pstn")), ["trunk:pstn"]);
        assert_eq!(keys(Some("pbx"), Some("pstn")), ["trunk:pbx", "trunk:pstn"]);
    }
}
