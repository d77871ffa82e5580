//! The process's descriptor limit (`RLIMIT_NOFILE`), read and raised the same way by
//! every service that sizes something by it: the SIP transports cap their inbound TCP
//! connections below it, the media relay raises it to fit its port range.
//!
//! A process cannot raise its hard limit (that takes `CAP_SYS_RESOURCE`, which a pod
//! does not have), but it may always raise its soft limit up to the hard one. Container
//! runtimes and systemd commonly give a soft limit of 1024, kept low for old programs
//! that use `select()` (which cannot watch a descriptor above 1023), with a hard limit
//! of 2^20 or so; every service here waits with epoll, so a higher soft limit costs
//! nothing but the descriptors actually opened.

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// Why the limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum NoFileError {
    /// `getrlimit` failed.
    #[error("getrlimit(RLIMIT_NOFILE): {0}")]
    Get(nix::Error),
    /// `setrlimit` failed.
    #[error("setrlimit(RLIMIT_NOFILE) to a soft limit of {soft}: {source}")]
    Set {
        /// The soft limit asked for.
        soft: u64,
        /// The error.
        source: nix::Error,
    },
}

/// The soft and hard `RLIMIT_NOFILE` (`None`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// Descriptors the process may hold now.
    pub soft: Option<u64>,
    /// The most the soft limit may be raised to.
    pub hard: Option<u64>,
}

fn finite(v: u64) -> Option<u64> {
    (v != RLIM_INFINITY).then_some(v)
}

impl NoFile {
    /// The limits of this process now.
    pub fn of_process() -> Result<NoFile, NoFileError> {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(NoFileError::Get)?;
        Ok(NoFile {
            soft: finite(soft),
            hard: finite(hard),
        })
    }

    /// The soft limit to set so that `want` descriptors fit: `want`, or the hard limit
    /// when that is lower. `None` when the soft limit already admits `want` or is already
    /// at the hard limit: a limit is never lowered (someone set it high on purpose).
    #[must_use]
    pub fn raised_soft(self, want: u64) -> Option<u64> {
        let target = self.hard.map_or(want, |h| want.min(h));
        match self.soft {
            None => None,
            Some(soft) => (soft < target).then_some(target),
        }
    }

    /// Raise this process's soft limit toward `want` ([`NoFile::raised_soft`]) and
    /// return the limits in force, with the soft limit they had before.
    pub fn raise_soft(want: u64) -> Result<(NoFile, NoFile), NoFileError> {
        let before = NoFile::of_process()?;
        let Some(soft) = before.raised_soft(want) else {
            return Ok((before, before));
        };
        setrlimit(
            Resource::RLIMIT_NOFILE,
            soft,
            before.hard.unwrap_or(RLIM_INFINITY),
        )
        .map_err(|source| NoFileError::Set { soft, source })?;
        Ok((
            before,
            NoFile {
                soft: Some(soft),
                ..before
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_within_the_hard_one_and_never_lowered() {
        let l = |soft, hard| NoFile { soft, hard };
        // Kubernetes' common case: soft 1024, hard 2^20; a 10,000-port relay wants 10,130.
        assert_eq!(
            l(Some(1024), Some(1 << 20)).raised_soft(10_130),
            Some(10_130)
        );
        // The hard limit is as far as it goes.
        assert_eq!(l(Some(256), Some(4096)).raised_soft(10_130), Some(4096));
        // Already enough, already at the hard limit, or unlimited: left alone.
        assert_eq!(l(Some(1 << 20), Some(1 << 20)).raised_soft(10_130), None);
        assert_eq!(l(Some(256), Some(256)).raised_soft(10_130), None);
        assert_eq!(l(None, None).raised_soft(10_130), None);
        assert_eq!(l(Some(1024), None).raised_soft(10_130), Some(10_130));
    }
}
