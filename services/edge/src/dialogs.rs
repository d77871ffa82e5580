//! Where the edges keep dialog records for accounting: the location service in a cluster
//! (any edge ends a call another edge answered), a table in memory in the all-in-one and
//! a standalone edge.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use location_client::{LocationClient, pb};

/// The dialog records, as the edge uses them.
#[async_trait]
pub trait DialogStore: Send + Sync {
    /// Create or update a record (fields left empty keep their stored value).
    async fn put(&self, d: pb::Dialog, ttl: Duration) -> Result<(), String>;
    /// End a record: the record as ended, `None` when there is none.
    async fn end(&self, end: pb::EndDialogRequest) -> Result<Option<pb::Dialog>, String>;
}

#[async_trait]
impl DialogStore for LocationClient {
    async fn put(&self, d: pb::Dialog, ttl: Duration) -> Result<(), String> {
        self.put_dialog(d, ttl)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn end(&self, end: pb::EndDialogRequest) -> Result<Option<pb::Dialog>, String> {
        self.end_dialog(end).await.map_err(|e| e.to_string())
    }
}

/// Records in this process, each until its time-to-live passes; bounded.
#[derive(Debug, Default)]
pub struct MemoryDialogs {
    map: Mutex<HashMap<(String, String), (pb::Dialog, Instant)>>,
}

/// Records held at most; past it expired ones are purged, then puts are refused.
const LIMIT: usize = 1_000_000;

impl MemoryDialogs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (pb::Dialog, Instant)>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl DialogStore for MemoryDialogs {
    async fn put(&self, d: pb::Dialog, ttl: Duration) -> Result<(), String> {
        let now = Instant::now();
        let mut map = self.lock();
        let key = (d.call_id.clone(), d.from_tag.clone());
        if map.len() >= LIMIT && !map.contains_key(&key) {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= LIMIT {
                return Err("dialog table full".into());
            }
        }
        match map.get_mut(&key).filter(|(_, until)| *until > now) {
            Some((stored, until)) => {
                location_client::merge_dialog(stored, &d);
                *until = now + ttl;
            }
            None => {
                map.insert(key, (d, now + ttl));
            }
        }
        Ok(())
    }

    async fn end(&self, end: pb::EndDialogRequest) -> Result<Option<pb::Dialog>, String> {
        let now = Instant::now();
        let mut map = self.lock();
        let key = (end.call_id, end.from_tag);
        let Some((stored, until)) = map.get_mut(&key).filter(|(_, until)| *until > now) else {
            return Ok(None);
        };
        stored.ended_at_ms = end.ended_at_ms;
        stored.end_reason = end.end_reason;
        if end.status != 0 {
            stored.status = end.status;
        }
        *until = now + Duration::from_secs(u64::from(end.ttl_secs.max(1)));
        Ok(Some(stored.clone()))
    }
}
