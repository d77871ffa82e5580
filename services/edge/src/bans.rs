//! bans: the cluster's bans, shared through the location service, so that a source one
//! edge banned (a flood, failed logins) or a user it locked is dropped or refused by
//! every edge until the ban ends.
//!
//! * An edge reports each ban it starts (`Ban`), without waiting.
//! * Failed logins are counted across the cluster too (`CountFailure`): 20 failures from
//!   one source spread over three edges ban it as 20 at one edge would. Each edge's own
//!   count ([`crate::guard::Guard`]) still bans at once on its own.
//! * Every edge reads the bans in force every `security.ban_sync_ms` (`ListBans`) and
//!   applies them ([`crate::guard::Guard::apply`]): a banned source's datagrams are then
//!   dropped by this edge's transports before they are parsed.
//!
//! The all-in-one and a standalone edge have no cluster: their own guard is all of it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use location_client::{LocationClient, pb};

use crate::guard::Lockout;
use crate::shared::Shared;

/// Where the cluster's bans are kept.
#[async_trait]
pub trait ClusterBans: Send + Sync {
    /// Ban `subject` for `secs` across the cluster.
    async fn ban(&self, subject: &str, secs: u32) -> Result<(), String>;
    /// The bans in force.
    async fn list(&self) -> Result<Vec<pb::BanEvent>, String>;
    /// Count one failed login; the bans it starts.
    async fn count_failure(&self, r: pb::CountFailureRequest) -> Result<Vec<pb::BanEvent>, String>;
}

#[async_trait]
impl ClusterBans for LocationClient {
    async fn ban(&self, subject: &str, secs: u32) -> Result<(), String> {
        LocationClient::ban(self, subject, secs)
            .await
            .map_err(|e| e.to_string())
    }

    async fn list(&self) -> Result<Vec<pb::BanEvent>, String> {
        self.list_bans().await.map_err(|e| e.to_string())
    }

    async fn count_failure(&self, r: pb::CountFailureRequest) -> Result<Vec<pb::BanEvent>, String> {
        LocationClient::count_failure(self, r)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Tell the cluster of a ban this edge started (without waiting).
pub fn publish(sh: &Shared, l: &Lockout) {
    let Some(bans) = sh.bans.clone() else { return };
    let (subject, d) = l.subject();
    let secs = u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX);
    tokio::spawn(async move {
        if let Err(e) = bans.ban(&subject, secs).await {
            tracing::warn!(%subject, error = %e, "ban not shared with the cluster: in force on this edge only");
        }
    });
}

/// Count a failed login from `ip` claiming `user` (`user@realm`, empty when not
/// counted) across the cluster, without waiting. The bans it starts are in the cluster's
/// list: every edge, this one included, applies them at its next read.
pub fn count_failure(sh: &Shared, ip: std::net::IpAddr, user: &str) {
    let Some(bans) = sh.bans.clone() else { return };
    if sh.guard.allowed(ip) {
        return;
    }
    let s = &sh.cfg.security;
    let r = pb::CountFailureRequest {
        source: sip_transport::blocklist::source_subject(ip),
        user: if user.is_empty() {
            String::new()
        } else {
            format!("user:{user}")
        },
        window_secs: secs(s.auth_failure_window_secs),
        per_source: s.auth_failures_per_source,
        per_user: s.auth_failures_per_user,
        source_ban_secs: secs(s.source_ban_secs),
        user_lock_secs: secs(s.user_lock_secs),
    };
    tokio::spawn(async move {
        if let Err(e) = bans.count_failure(r).await {
            tracing::debug!(error = %e, "failed login not counted by the cluster");
        }
    });
}

fn secs(s: u64) -> u32 {
    u32::try_from(s).unwrap_or(u32::MAX)
}

/// Apply bans read from the cluster; log the ones new to this edge.
fn apply(sh: &Shared, bans: &[pb::BanEvent]) {
    let now = Instant::now();
    let now_ms = sip_registrar::unix_now_ms();
    for b in bans {
        let until = location_client::bans::ban_until(b, now, now_ms);
        if sh.guard.apply(&b.subject, until, now) {
            tracing::info!(
                subject = %b.subject,
                secs = (until - now).as_secs(),
                "ban from the cluster now in force on this edge"
            );
        }
    }
}

/// Every `ban_sync_ms`: read the cluster's bans (in a cluster) and set the gauges of
/// the bans in force here.
pub async fn sync_loop(sh: Arc<Shared>) {
    let every = Duration::from_millis(sh.cfg.security.ban_sync_ms);
    let mut failing = false;
    loop {
        if let Some(bans) = &sh.bans {
            match bans.list().await {
                Ok(list) => {
                    failing = false;
                    apply(&sh, &list);
                }
                Err(e) => {
                    // Once per outage: this edge's own bans go on meanwhile.
                    if !failing {
                        tracing::warn!(error = %e, "the cluster's bans cannot be read: this edge's own apply meanwhile");
                    }
                    failing = true;
                }
            }
        }
        let (sources, users) = sh.guard.counts(Instant::now());
        sh.metrics
            .banned_sources
            .set(i64::try_from(sources).unwrap_or(i64::MAX));
        sh.metrics
            .locked_users
            .set(i64::try_from(users).unwrap_or(i64::MAX));
        tokio::time::sleep(every).await;
    }
}
