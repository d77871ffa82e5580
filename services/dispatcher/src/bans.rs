//! bans: floods and the cluster's bans at the public entry point.
//!
//! * Flood detection (`flood_rate`): the public transports count each source's messages
//!   before parsing them ([`sip_transport::FloodMeter`]); a source over the rate is
//!   banned here at once, and the ban is shared through the location service (`Ban`), so
//!   every edge and every other dispatcher drops the source too.
//! * The cluster's bans (`location_endpoint`): the edges ban sources too (their own
//!   floods, failed logins: their `guard`); the list is read every `sync_ms` and applied
//!   to the public transports' blocklist. A flood from a banned source then costs a hash
//!   lookup here, not a parse and a relay to an edge that drops it.
//!
//! Users locked for failed logins are the edges' business (they see the credentials);
//! only source bans apply here. Allow-listed sources and the members of our destination
//! sets are never counted nor banned here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_core::Cidr;
use location_client::{ClientConfig, LocationClient};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sip_transport::flood::FloodBan;
use sip_transport::{Blocklist, FloodMeter};
use tokio::sync::mpsc;

use crate::DispatcherError;
use crate::config::{BansConfig, DispatcherConfig};

/// The bans' metrics (`sipcluster_dispatcher_*`).
#[derive(Clone, Debug, Default)]
pub struct BanMetrics {
    /// Sources whose traffic is dropped on arrival now.
    pub banned_sources: Gauge,
    /// Reads of the cluster's list, by `result` (`ok`, `failed`).
    pub reads: Family<[(&'static str, &'static str); 1], Counter>,
    /// Sources this dispatcher banned for flooding.
    pub flood_bans: Counter,
}

impl BanMetrics {
    /// Under the `sipcluster_dispatcher` prefix.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "banned_sources",
            "Sources whose SIP traffic is dropped on arrival (the cluster's bans)",
            self.banned_sources.clone(),
        );
        r.register(
            "ban_reads",
            "Reads of the cluster's ban list from the location service, by result",
            self.reads.clone(),
        );
        r.register(
            "flood_bans",
            "Sources banned by this dispatcher for sending over bans.flood_rate messages a second",
            self.flood_bans.clone(),
        );
        for result in ["ok", "failed"] {
            let _ = self.reads.get_or_create(&[("result", result)]);
        }
    }
}

/// The location client that reads the bans, when `[bans]` names the service. Builds a
/// lazy connection: inside the runtime.
pub fn client(cfg: &BansConfig) -> Result<Option<Arc<LocationClient>>, DispatcherError> {
    let Some((endpoint, token)) = settings(cfg)? else {
        return Ok(None);
    };
    let client = LocationClient::new(ClientConfig {
        endpoint,
        timeout: Duration::from_millis(cfg.timeout_ms),
        connect_timeout: Duration::from_millis(cfg.timeout_ms),
        retries: 0,
        credentials_ttl: Duration::ZERO,
        token,
    })
    .map_err(|e| telemetry::ConfigError::new("bans.location_endpoint", e.to_string()))?;
    Ok(Some(Arc::new(client)))
}

/// The location service's URL (checked) and the edge token (read), when `[bans]` names
/// the service: what [`client`] needs, read without connecting (`check-config` runs
/// this with no runtime).
pub fn settings(
    cfg: &BansConfig,
) -> Result<Option<(String, Option<grpc_auth::Token>)>, DispatcherError> {
    let Some(endpoint) = cfg.location_endpoint.clone() else {
        return Ok(None);
    };
    LocationClient::check_endpoint(&endpoint)
        .map_err(|e| telemetry::ConfigError::new("bans.location_endpoint", e.to_string()))?;
    let token = match &cfg.token_file {
        Some(f) => {
            Some(
                grpc_auth::Token::from_file(f).map_err(|e| grpc_auth::AuthError::Setting {
                    setting: "bans.token_file",
                    problem: Box::new(e),
                })?,
            )
        }
        None => None,
    };
    Ok(Some((endpoint, token)))
}

/// The sources never counted nor banned here: the allow-listed blocks (validated at
/// start) and the members of our destination sets (the trunks we send calls to: their
/// answers and calls add up to more than any phone, and cutting one off is an outage).
pub fn allowed(cfg: &DispatcherConfig) -> Vec<Cidr> {
    let members = cfg
        .sets
        .iter()
        .flat_map(|s| &s.targets)
        .map(|t| t.address.ip().to_string());
    cfg.bans
        .allow_list
        .iter()
        .cloned()
        .chain(members)
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The public side's flood meter, when `flood_rate` is set, and where its bans go.
pub fn flood_meter(
    cfg: &DispatcherConfig,
) -> Option<(Arc<FloodMeter>, mpsc::UnboundedReceiver<FloodBan>)> {
    let b = &cfg.bans;
    if b.flood_rate == 0 {
        return None;
    }
    let allow = allowed(cfg);
    let (meter, bans) = FloodMeter::new(
        b.flood_rate,
        Duration::from_secs(b.flood_ban_secs),
        move |ip| dispatch_core::security::any_contains(&allow, ip),
    );
    Some((Arc::new(meter), bans))
}

/// Each flood ban of the meter: logged, counted, and shared with the cluster (when the
/// location service is named) without waiting.
pub async fn report_floods(
    mut bans: mpsc::UnboundedReceiver<FloodBan>,
    cluster: Option<Arc<LocationClient>>,
    metrics: BanMetrics,
) {
    while let Some((ip, ban)) = bans.recv().await {
        metrics.flood_bans.inc();
        let subject = sip_transport::blocklist::source_subject(ip);
        tracing::warn!(%subject, secs = ban.as_secs(), "flooding source banned at the public side");
        let Some(client) = cluster.clone() else {
            continue;
        };
        let secs = u32::try_from(ban.as_secs().max(1)).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            if let Err(e) = client.ban(&subject, secs).await {
                tracing::warn!(%subject, error = %e, "flood ban not shared with the cluster: in force at this dispatcher only");
            }
        });
    }
}

/// Apply the source bans of a list read at `now` (`now_unix_ms` on the wall clock),
/// except to `allowed` sources; how many were new here.
pub fn apply(
    blocklist: &Blocklist,
    bans: &[location_client::pb::BanEvent],
    allowed: &[Cidr],
    now: Instant,
    now_unix_ms: u64,
) -> usize {
    let mut new = 0;
    for b in bans {
        let Some(ip) = sip_transport::blocklist::subject_source(&b.subject) else {
            continue;
        };
        if dispatch_core::security::any_contains(allowed, ip) {
            continue;
        }
        let until = location_client::bans::ban_until(b, now, now_unix_ms);
        if until <= now {
            continue;
        }
        if !blocklist.blocked(ip, now) {
            new += 1;
            tracing::info!(subject = %b.subject, secs = (until - now).as_secs(), "ban from the cluster now in force at this dispatcher");
        }
        blocklist.block(ip, until);
    }
    new
}

/// Every `every`: read the cluster's bans and apply them to `blocklist`. A failed read
/// is logged once per outage; the bans in force stay until they end.
pub async fn sync_loop(
    client: Arc<LocationClient>,
    blocklist: Arc<Blocklist>,
    allowed: Vec<Cidr>,
    every: Duration,
    metrics: BanMetrics,
) {
    let mut failing = false;
    loop {
        match client.list_bans().await {
            Ok(list) => {
                metrics.reads.get_or_create(&[("result", "ok")]).inc();
                if failing {
                    tracing::info!("the cluster's bans are read again");
                }
                failing = false;
                let now_ms = location_client::bans::unix_now_ms();
                let now = Instant::now();
                apply(&blocklist, &list, &allowed, now, now_ms);
                let n = i64::try_from(blocklist.count(now)).unwrap_or(i64::MAX);
                metrics.banned_sources.set(n);
            }
            Err(e) => {
                metrics.reads.get_or_create(&[("result", "failed")]).inc();
                if !failing {
                    tracing::warn!(error = %e, "the cluster's bans cannot be read: the ones in force stay until they end, the edges still drop banned sources");
                }
                failing = true;
            }
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use location_client::pb::BanEvent;

    #[test]
    fn source_bans_apply_and_users_do_not() {
        let b = Blocklist::default();
        let now = Instant::now();
        let list = [
            BanEvent {
                subject: "source:192.0.2.1".into(),
                until_ms: 15_000,
            },
            BanEvent {
                subject: "user:alice@example.com".into(),
                until_ms: 15_000,
            },
            BanEvent {
                subject: "source:192.0.2.2".into(),
                until_ms: 9_000,
            },
        ];
        let allowed = ["192.0.2.3".parse().unwrap_or_else(|_| unreachable!())];
        let listed = |s: &str| BanEvent {
            subject: format!("source:{s}"),
            until_ms: 15_000,
        };
        let list = [list.as_slice(), &[listed("192.0.2.3")]].concat();
        assert_eq!(apply(&b, &list, &allowed, now, 10_000), 1);
        assert!(
            !b.blocked("192.0.2.3".parse().unwrap_or_else(|_| unreachable!()), now),
            "allow-listed"
        );
        assert!(b.blocked("192.0.2.1".parse().unwrap_or_else(|_| unreachable!()), now));
        assert!(
            !b.blocked("192.0.2.2".parse().unwrap_or_else(|_| unreachable!()), now),
            "over"
        );
        assert_eq!(apply(&b, &list, &allowed, now, 10_000), 0, "nothing new");
        assert!(!b.blocked(
            "192.0.2.1".parse().unwrap_or_else(|_| unreachable!()),
            now + Duration::from_secs(5)
        ));
    }

    #[test]
    fn set_members_and_the_allow_list_are_never_counted() {
        let mut cfg = DispatcherConfig::default();
        cfg.bans.flood_rate = 2;
        cfg.bans.allow_list = vec!["198.51.100.0/24".into()];
        cfg.sets.push(crate::config::SetConfig {
            name: "pstn".into(),
            algorithm: "hash".into(),
            targets: vec![crate::config::SetTarget {
                address: "192.0.2.10:5061".parse().unwrap_or_else(|_| unreachable!()),
                transport: "tls".into(),
                weight: 1,
                priority: 0,
            }],
        });
        let (meter, _bans) = flood_meter(&cfg).unwrap_or_else(|| unreachable!());
        let now = Instant::now();
        for who in ["192.0.2.10", "198.51.100.7"] {
            let ip = who.parse().unwrap_or_else(|_| unreachable!());
            assert!((0..100).all(|_| !meter.over(ip, now)), "{who} counted");
        }
        let phone = "203.0.113.5".parse().unwrap_or_else(|_| unreachable!());
        assert!(
            (0..3).any(|_| meter.over(phone, now)),
            "a phone over the rate"
        );
    }
}
