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
    /// Create or update a record (fields left empty keep their stored value); with
    /// `touch_only`, only an existing one: whether there was one.
    async fn put(&self, d: pb::Dialog, ttl: Duration, touch_only: bool) -> Result<bool, String>;
    /// End a record: the record as ended, `None` when there is none.
    async fn end(&self, end: pb::EndDialogRequest) -> Result<Option<pb::Dialog>, String>;
    /// Claim up to `limit` records past their deadline, each ended there (for this caller
    /// only): see the location service's `ReapDialogs`.
    async fn reap(&self, limit: u32) -> Result<Vec<pb::Dialog>, String>;
}

#[async_trait]
impl DialogStore for LocationClient {
    async fn put(&self, d: pb::Dialog, ttl: Duration, touch_only: bool) -> Result<bool, String> {
        self.put_dialog(d, ttl, touch_only)
            .await
            .map(|d| d.is_some())
            .map_err(|e| e.to_string())
    }

    async fn end(&self, end: pb::EndDialogRequest) -> Result<Option<pb::Dialog>, String> {
        self.end_dialog(end).await.map_err(|e| e.to_string())
    }

    async fn reap(&self, limit: u32) -> Result<Vec<pb::Dialog>, String> {
        self.reap_dialogs(limit).await.map_err(|e| e.to_string())
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
    async fn put(&self, d: pb::Dialog, ttl: Duration, touch_only: bool) -> Result<bool, String> {
        let now = Instant::now();
        let mut map = self.lock();
        let key = (d.call_id.clone(), d.from_tag.clone());
        let live = map.get(&key).is_some_and(|(_, until)| *until > now);
        if touch_only && !live {
            return Ok(false);
        }
        if map.len() >= LIMIT && !map.contains_key(&key) {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= LIMIT {
                return Err("dialog table full".into());
            }
        }
        let deadline = sip_registrar::unix_now_ms()
            .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let keep = now + ttl + REAP_GRACE;
        match map.get_mut(&key).filter(|(_, until)| *until > now) {
            Some((stored, until)) => {
                location_client::merge_dialog(stored, &d);
                stored.expires_at_ms = deadline;
                *until = keep;
            }
            None => {
                let mut d = d;
                d.expires_at_ms = deadline;
                map.insert(key, (d, keep));
            }
        }
        Ok(true)
    }

    async fn end(&self, end: pb::EndDialogRequest) -> Result<Option<pb::Dialog>, String> {
        let now = Instant::now();
        let mut map = self.lock();
        let key = (end.call_id, end.from_tag);
        let Some((stored, until)) = map.get_mut(&key).filter(|(_, until)| *until > now) else {
            return Ok(None);
        };
        if stored.ended_at_ms != 0 {
            // The first end stands (a second BYE, a BYE after the reaper).
            return Ok(Some(stored.clone()));
        }
        stored.ended_at_ms = end.ended_at_ms;
        stored.end_reason = end.end_reason;
        if end.status != 0 {
            stored.status = end.status;
        }
        *until = now + Duration::from_secs(u64::from(end.ttl_secs.max(1)));
        Ok(Some(stored.clone()))
    }

    async fn reap(&self, limit: u32) -> Result<Vec<pb::Dialog>, String> {
        let now = Instant::now();
        let now_ms = sip_registrar::unix_now_ms();
        let mut map = self.lock();
        // Records past their keeping time go here, at the reaper's pace: without it they
        // stayed until the table was full (a million records, a gigabyte, then a purge
        // under the lock on the SIP path).
        map.retain(|_, (_, until)| *until > now);
        let mut out = Vec::new();
        for (d, until) in map.values_mut() {
            if out.len() >= limit as usize {
                break;
            }
            if *until <= now
                || d.ended_at_ms != 0
                || d.expires_at_ms == 0
                || d.expires_at_ms > now_ms
            {
                continue;
            }
            d.ended_at_ms = d.expires_at_ms;
            location_client::reaped_reason(d).clone_into(&mut d.end_reason);
            *until = now + ENDED_KEEP;
            out.push(d.clone());
        }
        Ok(out)
    }
}

/// How long a record stays past its deadline for a reaper (as the location service's).
const REAP_GRACE: Duration = Duration::from_secs(600);
/// How long a reaped record stays readable.
const ENDED_KEEP: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_records_leave_the_table_at_the_next_reaping() {
        let store = MemoryDialogs::default();
        for i in 0..3 {
            let d = pb::Dialog {
                call_id: format!("c{i}"),
                from_tag: "f".into(),
                ..pb::Dialog::default()
            };
            assert_eq!(store.put(d, Duration::from_secs(60), false).await, Ok(true));
        }
        // Two end by BYE, kept a second; the third lives on.
        for i in 0..2 {
            let ended = store
                .end(pb::EndDialogRequest {
                    call_id: format!("c{i}"),
                    from_tag: "f".into(),
                    ended_at_ms: 1,
                    end_reason: "bye".into(),
                    status: 0,
                    ttl_secs: 1,
                })
                .await
                .unwrap();
            assert!(ended.is_some());
        }
        assert_eq!(
            store.reap(100).await.unwrap().len(),
            0,
            "none past its time"
        );
        assert_eq!(
            store.lock().len(),
            3,
            "ended records readable for their second"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(store.reap(100).await.unwrap().len(), 0);
        assert_eq!(
            store.lock().len(),
            1,
            "the ended ones are gone, not kept until full"
        );
    }
}
