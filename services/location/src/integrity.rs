//! Noticing that the store lost its data, and what to do then.
//!
//! Redis restarted without persistence, flushed, or a cluster master back empty: every
//! user and binding is gone, and the truthful-looking answers "no such user" and "not
//! registered" become 403 to every REGISTER and 404 to every call. Phones take a 403 as
//! final. So the store carries a provisioning marker (written once the users file is
//! in, see [`crate::backend::Backend::write_marker`]) and the service:
//!
//! * checks it every half second while the backend answers (so also right after a
//!   reconnect), and before every "not found" answer (the backend's
//!   [`BackendError::DataLoss`](crate::backend::BackendError::DataLoss));
//! * on loss answers every edge data call (Register, Lookup, GetCredentials, UseNonce,
//!   dialogs) UNAVAILABLE, which edges turn into 503 + Retry-After, is not ready (`/readyz`
//!   503 naming the loss), counts it, and logs one line; then, per
//!   `backend.on_data_loss`:
//!   * [`OnDataLoss::Reprovision`]: provisions the users file again, rewrites the marker
//!     and serves (phones re-register on their 503s or next refresh);
//!   * [`OnDataLoss::Unready`] (the default): stays so until the marker is back, which
//!     an operator brings about by restoring Redis from a backup (the marker is in it)
//!     or by restarting a location replica (starting provisions the users file and
//!     writes the marker; every replica sees it within half a second).
//!
//! The administrative calls (users, registrations listing and removal, stats) keep
//! working throughout: they show the store as it is, and are how an operator refills it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::backend::{Backend, BackendError};

/// What the service does when the store lost its data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDataLoss {
    /// Provision the users file again, rewrite the marker, serve. Users added later with
    /// `sipcluster users` and not in the file stay lost (they get 403 until added again),
    /// so this suits deployments whose file lists every user.
    Reprovision,
    /// Not ready, every data call UNAVAILABLE, until the marker is back (a restore, or a
    /// location replica restarted). The default: whatever was lost, no wrong answer is
    /// ever given, and an operator decides.
    #[default]
    Unready,
}

impl OnDataLoss {
    /// The configuration value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            OnDataLoss::Reprovision => "reprovision",
            OnDataLoss::Unready => "unready",
        }
    }
}

/// Whether the store is known whole, shared by the gRPC service and the monitor.
#[derive(Debug)]
pub struct DataGuard {
    /// True while no loss is known (a readiness condition).
    intact: Arc<AtomicBool>,
    /// A call met [`BackendError::DataLoss`]: check now rather than at the next tick.
    wake: Notify,
}

impl Default for DataGuard {
    fn default() -> DataGuard {
        DataGuard {
            intact: Arc::new(AtomicBool::new(true)),
            wake: Notify::new(),
        }
    }
}

impl DataGuard {
    /// Is a loss known now?
    #[must_use]
    pub fn is_lost(&self) -> bool {
        !self.intact.load(Ordering::Relaxed)
    }

    /// The readiness flag: true while no loss is known.
    #[must_use]
    pub fn intact_flag(&self) -> Arc<AtomicBool> {
        self.intact.clone()
    }

    /// UNAVAILABLE for a data call while a loss is known.
    pub(crate) fn check(&self, method: &str) -> Result<(), tonic::Status> {
        if self.is_lost() {
            return Err(tonic::Status::unavailable(format!(
                "{method}: the store lost its data (provisioning marker missing); not answering \
                 from it until it is provisioned again"
            )));
        }
        Ok(())
    }

    /// A call saw signs of loss: have the monitor look now.
    pub(crate) fn suspect(&self) {
        self.wake.notify_one();
    }

    /// Wait until [`suspect`](Self::suspect) is called.
    pub(crate) async fn suspected(&self) {
        self.wake.notified().await;
    }

    /// Mark lost; true when it was not known before.
    pub(crate) fn set_lost(&self) -> bool {
        self.intact.swap(false, Ordering::Relaxed)
    }

    /// Mark whole again; true when a loss was known.
    pub(crate) fn set_intact(&self) -> bool {
        !self.intact.swap(true, Ordering::Relaxed)
    }
}

/// Put every user of `users` that the store does not have (users already there are
/// left alone: a restarted replica must not undo a password change). Returns how many
/// were added.
pub async fn provision_users(
    b: &dyn Backend,
    users: &sip_auth::MemoryStore,
) -> Result<usize, BackendError> {
    let mut added = 0;
    for (user, realm, creds) in users.iter() {
        match b.credentials(user, realm).await {
            Ok(Some(_)) => {}
            // Absent, or absent because the store is empty: put it either way.
            Ok(None) | Err(BackendError::DataLoss) => {
                b.put_user(user, realm, creds).await?;
                added += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(added)
}

/// Provision: the users file (if any), then the marker that says the store is whole.
/// The marker goes last, so a store that has it has every user of the file.
pub async fn provision(
    b: &dyn Backend,
    users: Option<&sip_auth::MemoryStore>,
) -> Result<usize, BackendError> {
    let added = match users {
        Some(u) => provision_users(b, u).await?,
        None => 0,
    };
    b.write_marker().await?;
    Ok(added)
}
