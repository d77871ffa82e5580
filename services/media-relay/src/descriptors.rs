//! The relay's file descriptors, sized to its port range at start.
//!
//! Every port of the range may be an open socket (a pair in use holds two, RTP and
//! RTCP), so the process's `RLIMIT_NOFILE` must hold the whole range plus what else the
//! relay opens. A pod cannot set its limit: the container runtime gives a soft and a hard
//! one (often 1024 and 2^20). So at start the soft limit is raised to what the range
//! needs, within the hard limit ([`telemetry::nofile`]).
//!
//! When even the hard limit is short, the relay uses only the ports that fit (the low end
//! of its range) and lowers `max_sessions` to match, with a WARN giving the numbers and
//! the gauges `sipcluster_media_fd_limit`, `sipcluster_media_fd_needed` and
//! `sipcluster_media_max_sessions`. It does not refuse to start: in Kubernetes the
//! operator cannot change the runtime's hard limit from the pod spec, and a relay that
//! serves part of its range is worth more than one in CrashLoopBackOff; a full relay
//! answers RESOURCE_EXHAUSTED like any full relay, and the edges pick relays by the load
//! each reports. Without the cap, binds beyond the limit would fail with EMFILE, which the
//! engine cannot tell from a port held by another process (it retires that pair for
//! good), and the gRPC and metrics listeners could no longer accept. Only a limit too low
//! for two port pairs per worker (one answered call each) refuses to start.

use crate::config::MediaRelayConfig;
use crate::metrics::Metrics;
use telemetry::nofile::{NoFile, NoFileError};

/// Descriptors kept for everything but media sockets: about 16 the process holds
/// anyway (stdio, the runtime's epoll, eventfd and signal pipe, the control and metrics
/// listeners), 32 for the metrics endpoint's connections (its budget,
/// `telemetry::HttpLimits`) and 80 for control connections: one HTTP/2 connection per
/// edge pod (tonic multiplexes every call over it) and the operators' commands.
pub const RESERVE: u64 = 128;

/// Descriptors of each forwarding worker besides its sockets: its epoll and the
/// registry's duplicate of it.
pub const RESERVE_PER_WORKER: u64 = 2;

/// The reserve of a relay with `workers` forwarding threads.
#[must_use]
pub fn reserve(workers: usize) -> u64 {
    RESERVE + RESERVE_PER_WORKER * workers as u64
}

/// Descriptors the configured range needs: every port of it, plus the reserve.
#[must_use]
pub fn needed(cfg: &MediaRelayConfig) -> u64 {
    u64::from(cfg.port_max.saturating_sub(cfg.port_min)) + 1 + reserve(cfg.workers)
}

/// What the range and the session cap are under a descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Descriptors the configured range needs ([`needed`]).
    pub needed: u64,
    /// The highest port used: `port_max`, or lower when the limit is short.
    pub port_max: u16,
    /// The session cap in force: `max_sessions`, or lower when the limit is short.
    pub max_sessions: usize,
    /// The limit is short: part of the range is unused and the cap may be lowered.
    pub short: bool,
}

/// The limit leaves too few descriptors for the relay to be of any use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "RLIMIT_NOFILE {limit} (hard limit {hard}) leaves {ports} descriptors for media sockets \
     after a reserve of {reserve}; {workers} worker(s) need at least {min} (two port pairs \
     each) and ports {port_min}-{port_max} need {needed} in all: raise the nofile limit of \
     the container runtime (or systemd's LimitNOFILE), or run fewer workers"
)]
pub struct TooFewDescriptors {
    /// The soft limit in force after raising it.
    pub limit: u64,
    /// The hard limit (`unlimited` when none).
    pub hard: String,
    /// Descriptors left for media sockets.
    pub ports: u64,
    /// The reserve.
    pub reserve: u64,
    /// Forwarding workers.
    pub workers: usize,
    /// The fewest media sockets that are of use.
    pub min: u64,
    /// The configured range.
    pub port_min: u16,
    /// The configured range.
    pub port_max: u16,
    /// Descriptors the configured range needs.
    pub needed: u64,
}

/// The range and session cap of `cfg` under a soft limit of `limit` descriptors (`None`:
/// unlimited). `hard` is only for the error message.
///
/// Short of [`needed`]: the ports that fit after the reserve, from `port_min` up, ending
/// on a whole even/odd pair, and at most one session per two of those pairs (an answered
/// call holds one pair facing each party); capping sessions so, an offer that is accepted
/// finds a pair for its answer, instead of the call failing once the callee has answered.
pub fn fit(
    cfg: &MediaRelayConfig,
    limit: Option<u64>,
    hard: Option<u64>,
) -> Result<Fit, TooFewDescriptors> {
    let needed = needed(cfg);
    let whole = Fit {
        needed,
        port_max: cfg.port_max,
        max_sessions: cfg.max_sessions,
        short: false,
    };
    let Some(limit) = limit.filter(|l| *l < needed) else {
        return Ok(whole);
    };
    let reserve = reserve(cfg.workers);
    let ports = limit.saturating_sub(reserve);
    // The pool's pairs start at the first even port (an odd port_min is skipped, but it
    // is counted here: a bound on sockets, not the pool's arithmetic).
    let first = u64::from(cfg.port_min) + u64::from(cfg.port_min % 2);
    let mut last = (u64::from(cfg.port_min) + ports).saturating_sub(1);
    if last % 2 == 0 {
        last = last.saturating_sub(1);
    }
    let pairs = (last + 1).saturating_sub(first) / 2;
    let min_pairs = 2 * cfg.workers as u64;
    if pairs < min_pairs {
        return Err(TooFewDescriptors {
            limit,
            hard: hard.map_or_else(|| "unlimited".to_owned(), |h| h.to_string()),
            ports,
            reserve,
            workers: cfg.workers,
            min: 2 * min_pairs + u64::from(cfg.port_min % 2),
            port_min: cfg.port_min,
            port_max: cfg.port_max,
            needed,
        });
    }
    let sessions = usize::try_from(pairs / 2).unwrap_or(usize::MAX);
    Ok(Fit {
        needed,
        // `last` is below port_max here (the limit is short of the whole range).
        port_max: u16::try_from(last)
            .unwrap_or(cfg.port_max)
            .min(cfg.port_max),
        max_sessions: cfg.max_sessions.min(sessions),
        short: true,
    })
}

fn gauge(v: Option<u64>) -> i64 {
    v.map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Raise this process's soft `RLIMIT_NOFILE` toward what `cfg`'s range needs, then return
/// `cfg` with the range and session cap that fit the limit in force ([`fit`]), logged and
/// published (`sipcluster_media_fd_limit`, `sipcluster_media_fd_needed`,
/// `sipcluster_media_max_sessions`).
pub fn size_to_limit(
    cfg: &MediaRelayConfig,
    metrics: &Metrics,
) -> Result<MediaRelayConfig, TooFewDescriptors> {
    let needed = needed(cfg);
    let (before, now) = match NoFile::raise_soft(needed) {
        Ok(limits) => limits,
        Err(e) => {
            // Raising a soft limit within the hard one is always permitted; a failure
            // (a seccomp filter, say) leaves the limit as it is, and the range is sized
            // to that one.
            let now = NoFile::of_process().unwrap_or(NoFile {
                soft: None,
                hard: None,
            });
            match &e {
                NoFileError::Get(_) => tracing::warn!(
                    error = %e,
                    "cannot read RLIMIT_NOFILE; the port range is not sized to it"
                ),
                NoFileError::Set { .. } => tracing::warn!(
                    error = %e,
                    needed,
                    soft = now.soft,
                    "cannot raise RLIMIT_NOFILE; the port range is sized to the limit as it is"
                ),
            }
            (now, now)
        }
    };
    let fit = fit(cfg, now.soft, now.hard)?;
    metrics.fd_limit.set(gauge(now.soft));
    metrics.fd_needed.set(gauge(Some(needed)));
    metrics
        .max_sessions
        .set(gauge(Some(fit.max_sessions as u64)));
    if now.soft != before.soft {
        tracing::info!(
            needed,
            soft_before = before.soft,
            soft = now.soft,
            hard = now.hard,
            "RLIMIT_NOFILE soft limit raised to fit the media port range"
        );
    }
    if fit.short {
        tracing::warn!(
            needed,
            soft = before.soft,
            hard = now.hard,
            fd_limit = now.soft,
            reserve = reserve(cfg.workers),
            ports = %format!("{}-{}", cfg.port_min, fit.port_max),
            configured_ports = %format!("{}-{}", cfg.port_min, cfg.port_max),
            max_sessions = fit.max_sessions,
            configured_max_sessions = cfg.max_sessions,
            "RLIMIT_NOFILE hard limit too low for the media port range: only the ports that \
             fit are used and max_sessions is lowered; raise the nofile limit of the container \
             runtime (or systemd's LimitNOFILE) to at least `needed`"
        );
    }
    Ok(MediaRelayConfig {
        port_max: fit.port_max,
        max_sessions: fit.max_sessions,
        ..cfg.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(port_min: u16, port_max: u16, workers: usize) -> MediaRelayConfig {
        MediaRelayConfig {
            port_min,
            port_max,
            workers,
            ..MediaRelayConfig::default()
        }
    }

    #[test]
    fn the_range_and_the_cap_fit_the_limit() {
        // The default range, 10,000 ports, one worker: 10,000 + 128 + 2.
        let c = cfg(30_000, 39_999, 1);
        assert_eq!(needed(&c), 10_130);
        // Enough, or unlimited: everything as configured.
        for limit in [Some(10_130), Some(1 << 20), None] {
            let f = fit(&c, limit, None).expect("fits");
            assert_eq!(
                (f.port_max, f.max_sessions, f.short),
                (39_999, 100_000, false)
            );
        }
        // One short: the last pair goes (a pair is never split), sessions are pairs / 2.
        let f = fit(&c, Some(10_129), None).expect("fits");
        assert_eq!((f.port_max, f.max_sessions, f.short), (39_997, 2499, true));
        // 256: 126 ports after the reserve, 30000-30125, 63 pairs, 31 answered calls.
        let f = fit(&c, Some(256), Some(256)).expect("fits");
        assert_eq!((f.port_max, f.max_sessions), (30_125, 31));
        // A configured cap below what fits stays.
        let small = MediaRelayConfig {
            max_sessions: 10,
            ..c.clone()
        };
        assert_eq!(fit(&small, Some(256), None).expect("fits").max_sessions, 10);
        // An odd port_min: that port is never a pair's, the sockets stay within the limit.
        let f = fit(&cfg(30_001, 39_999, 1), Some(256), None).expect("fits");
        assert_eq!((f.port_max, f.max_sessions), (30_125, 31));
        // Workers each keep two descriptors and need two pairs.
        let c4 = cfg(30_000, 39_999, 4);
        assert_eq!(needed(&c4), 10_136);
        let f = fit(&c4, Some(256), None).expect("fits");
        assert_eq!((f.port_max, f.max_sessions), (30_119, 30));
    }

    #[test]
    fn a_limit_below_two_pairs_per_worker_is_refused() {
        let c = cfg(30_000, 39_999, 2);
        // 132 reserved, 8 ports: two pairs for each of two workers.
        assert_eq!(
            fit(&c, Some(140), None).expect("fits").max_sessions,
            2,
            "the least that runs"
        );
        let e = fit(&c, Some(139), Some(139)).expect_err("too few");
        assert_eq!((e.ports, e.min, e.needed), (7, 8, 10_132));
        assert!(e.to_string().contains("hard limit 139"), "{e}");
        assert!(fit(&c, Some(100), None).is_err());
    }
}
