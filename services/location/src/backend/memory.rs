//! The in-process backend: the registrar's own [`sip_registrar::MemoryStore`] for
//! bindings, maps for users and dialogs. Dialog TTLs are enforced on read and by a sweep
//! at each reaping (and on a write to a full table), so a forgotten dialog does not live
//! forever.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use foldhash::HashMap;
use location_client::pb;
use sip_auth::Credentials;
use sip_registrar::{
    Aor, Binding, LocationStore, MemoryStore, Policy, RegisterError, RegisterOutcome,
    RegisterRequest, StoreError, unix_now_ms,
};
use tokio::sync::broadcast;

use super::{
    Backend, BackendError, Counts, DialogEnd, DialogKey, Events, Page, REAP_GRACE_SECS, event,
    merge_dialog, reaped_reason, removal_event,
};

/// Everything in this process's memory.
#[derive(Debug)]
pub struct MemoryBackend {
    bindings: MemoryStore,
    users: Mutex<sip_auth::MemoryStore>,
    dialogs: Mutex<HashMap<DialogKey, (pb::Dialog, Instant)>>,
    nonces: sip_auth::MemoryNonceUses,
    slots: Mutex<super::SlotTable>,
    /// Bans in force: subject → until (Unix ms).
    bans: Mutex<HashMap<String, u64>>,
    /// Failed logins: subject → (count, end of its window in Unix ms).
    failures: Mutex<HashMap<String, (u32, u64)>>,
    events: Events,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Writers replace whole values after pure computations, so a poisoned map is consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryBackend {
    /// An empty backend applying `policy`, seeded with `users`.
    pub fn new(policy: Policy, users: sip_auth::MemoryStore) -> MemoryBackend {
        MemoryBackend {
            bindings: MemoryStore::new(policy),
            users: Mutex::new(users),
            dialogs: Mutex::new(HashMap::default()),
            nonces: sip_auth::MemoryNonceUses::default(),
            slots: Mutex::default(),
            bans: Mutex::default(),
            failures: Mutex::default(),
            events: broadcast::channel(1024).0,
        }
    }

    fn publish(&self, e: pb::BindingEvent) {
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(Arc::new(e));
    }
}

/// Dialog records kept at most; beyond it expired ones are swept first, then the write
/// is refused rather than growing without bound.
const DIALOG_LIMIT: usize = 1_000_000;

#[async_trait]
impl Backend for MemoryBackend {
    async fn register(
        &self,
        req: RegisterRequest,
        now: u64,
    ) -> Result<Result<RegisterOutcome, RegisterError>, BackendError> {
        // The AOR is kept only when someone watches (the all-in-one's hot path pays no
        // copy for events nobody reads).
        let watched = (self.events.receiver_count() > 0).then(|| req.aor.clone());
        match self.bindings.register(req, now).await {
            Ok(o) => {
                if o.changed()
                    && let Some(aor) = watched
                {
                    // Two REGISTERs of one AOR may publish in the other order than they
                    // applied (the publish is outside the store's lock): each event
                    // carries the set as stored when it is sent, so the last one a
                    // watcher sees is the current set whatever the order.
                    let mut ev = event(&aor, &o, now);
                    let current = self.bindings.lookup(&aor, now).await.unwrap_or_default();
                    ev.bindings = current
                        .iter()
                        .map(location_client::convert::binding_to)
                        .collect();
                    self.publish(ev);
                }
                Ok(Ok(o))
            }
            Err(StoreError::Rule(e)) => Ok(Err(e)),
            Err(e) => Err(BackendError::Redis(e.to_string())),
        }
    }

    async fn lookup(&self, aor: &Aor, now: u64) -> Result<Vec<Binding>, BackendError> {
        self.bindings
            .lookup(aor, now)
            .await
            .map_err(|e| BackendError::Redis(e.to_string()))
    }

    async fn remove(
        &self,
        aor: &Aor,
        contact: Option<&str>,
        now: u64,
    ) -> Result<u32, BackendError> {
        let n = self.bindings.remove(aor, contact, now);
        if n > 0 {
            let left = self.bindings.lookup(aor, now).await.unwrap_or_default();
            let removed = u32::try_from(n).unwrap_or(u32::MAX);
            self.publish(removal_event(aor, &left, removed, now));
        }
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn list(&self, page_token: &str, limit: usize, now: u64) -> Result<Page, BackendError> {
        // The token is the last AOR of the previous page: AOR order is stable.
        let after = (!page_token.is_empty()).then_some(page_token);
        let (page, more) = self.bindings.page(after, limit, now);
        let next = match (more, page.last()) {
            (true, Some((aor, _))) => aor.as_str().to_owned(),
            _ => String::new(),
        };
        Ok((page, next))
    }

    fn summary(&self) -> String {
        format!("memory ({} users)", lock(&self.users).len())
    }

    async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<Credentials>, BackendError> {
        Ok(lock(&self.users).get(username, realm).cloned())
    }

    async fn put_user(
        &self,
        username: &str,
        realm: &str,
        creds: &Credentials,
    ) -> Result<bool, BackendError> {
        Ok(lock(&self.users)
            .insert(username, realm, creds.clone())
            .is_some())
    }

    async fn remove_user(&self, username: &str, realm: &str) -> Result<bool, BackendError> {
        Ok(lock(&self.users).remove(username, realm).is_some())
    }

    async fn list_users(&self, realm: &str) -> Result<Vec<String>, BackendError> {
        Ok(lock(&self.users).usernames(realm))
    }

    async fn put_dialog(
        &self,
        d: &pb::Dialog,
        ttl_secs: u32,
        touch_only: bool,
    ) -> Result<Option<pb::Dialog>, BackendError> {
        let key = DialogKey {
            call_id: d.call_id.clone(),
            from_tag: d.from_tag.clone(),
        };
        let now = Instant::now();
        let until = now + Duration::from_secs(u64::from(ttl_secs) + u64::from(REAP_GRACE_SECS));
        let mut map = lock(&self.dialogs);
        let live = map.get(&key).is_some_and(|(_, t)| *t > now);
        if touch_only && !live {
            return Ok(None);
        }
        if map.len() >= DIALOG_LIMIT && !map.contains_key(&key) {
            map.retain(|_, (_, t)| *t > now);
            if map.len() >= DIALOG_LIMIT {
                return Err(BackendError::Contention("dialog table full".into()));
            }
        }
        let entry = map
            .entry(key)
            .or_insert_with(|| (pb::Dialog::default(), until));
        if entry.1 <= now {
            entry.0 = pb::Dialog::default();
        }
        merge_dialog(&mut entry.0, d);
        entry.0.expires_at_ms = unix_now_ms() + u64::from(ttl_secs) * 1000;
        entry.1 = until;
        Ok(Some(entry.0.clone()))
    }

    async fn reap_dialogs(
        &self,
        now_ms: u64,
        limit: usize,
        ended_ttl_secs: u32,
    ) -> Result<Vec<pb::Dialog>, BackendError> {
        let now = Instant::now();
        let mut map = lock(&self.dialogs);
        // Expired records go at the reapers' pace, not only when the table is full.
        map.retain(|_, (_, t)| *t > now);
        let mut out = Vec::new();
        for (d, until) in map.values_mut() {
            if out.len() >= limit {
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
            reaped_reason(d).clone_into(&mut d.end_reason);
            *until = now + Duration::from_secs(u64::from(ended_ttl_secs));
            out.push(d.clone());
        }
        Ok(out)
    }

    async fn end_dialog(
        &self,
        key: &DialogKey,
        end: &DialogEnd,
        ttl_secs: u32,
    ) -> Result<Option<pb::Dialog>, BackendError> {
        let now = Instant::now();
        let mut map = lock(&self.dialogs);
        let Some(entry) = map.get_mut(key).filter(|(_, t)| *t > now) else {
            return Ok(None);
        };
        if entry.0.ended_at_ms != 0 {
            // The first end stands (a second BYE, a BYE after the reaper).
            return Ok(Some(entry.0.clone()));
        }
        merge_dialog(
            &mut entry.0,
            &pb::Dialog {
                ended_at_ms: end.ended_at_ms,
                end_reason: end.reason.clone(),
                status: end.status,
                ..pb::Dialog::default()
            },
        );
        entry.1 = now + Duration::from_secs(u64::from(ttl_secs));
        Ok(Some(entry.0.clone()))
    }

    async fn get_dialog(&self, key: &DialogKey) -> Result<Option<pb::Dialog>, BackendError> {
        let now = Instant::now();
        Ok(lock(&self.dialogs)
            .get(key)
            .filter(|(_, t)| *t > now)
            .map(|(d, _)| d.clone()))
    }

    async fn list_dialogs(
        &self,
        call_id: &str,
        page_token: &str,
        limit: usize,
    ) -> Result<(Vec<pb::Dialog>, String), BackendError> {
        // The token is the last key of the previous page ("call-id LF from-tag": a
        // Call-ID holds no line break): pages in key order, whatever changes between.
        let after = page_token.split_once('\n');
        let now = Instant::now();
        let map = lock(&self.dialogs);
        let mut active: Vec<&pb::Dialog> = map
            .values()
            .filter(|(d, until)| *until > now && d.ended_at_ms == 0)
            .map(|(d, _)| d)
            .filter(|d| call_id.is_empty() || d.call_id == call_id)
            .filter(|d| {
                after.is_none_or(|(c, f)| (d.call_id.as_str(), d.from_tag.as_str()) > (c, f))
            })
            .collect();
        active.sort_by(|a, b| (&a.call_id, &a.from_tag).cmp(&(&b.call_id, &b.from_tag)));
        let next = match active.get(limit) {
            Some(_) => active
                .get(limit - 1)
                .map(|d| format!("{}\n{}", d.call_id, d.from_tag))
                .unwrap_or_default(),
            None => String::new(),
        };
        Ok((active.into_iter().take(limit).cloned().collect(), next))
    }

    async fn terminate_dialog(
        &self,
        key: &DialogKey,
        now_ms: u64,
    ) -> Result<Option<pb::Dialog>, BackendError> {
        let now = Instant::now();
        let mut map = lock(&self.dialogs);
        let Some((d, _)) = map.get_mut(key).filter(|(_, t)| *t > now) else {
            return Ok(None);
        };
        if d.ended_at_ms == 0 {
            super::TERMINATED.clone_into(&mut d.end_reason);
            d.expires_at_ms = now_ms;
        }
        Ok(Some(d.clone()))
    }

    async fn use_nonce(&self, nonce: &str, nc: &str, ttl_secs: u32) -> Result<bool, BackendError> {
        Ok(self.nonces.first_use_at(
            nonce,
            nc,
            Duration::from_secs(u64::from(ttl_secs)),
            Instant::now(),
        ))
    }

    async fn acquire_call(
        &self,
        member: &str,
        limits: &[pb::CallLimit],
        ttl_secs: u32,
        now_ms: u64,
    ) -> Result<super::Admission, BackendError> {
        let ttl_ms = u64::from(ttl_secs) * 1000;
        Ok(lock(&self.slots).acquire(member, limits, ttl_ms, now_ms))
    }

    async fn refresh_call(
        &self,
        member: &str,
        ttl_secs: u32,
        now_ms: u64,
    ) -> Result<bool, BackendError> {
        Ok(lock(&self.slots).refresh(member, u64::from(ttl_secs) * 1000, now_ms))
    }

    async fn release_call(&self, members: &[String], now_ms: u64) -> Result<bool, BackendError> {
        Ok(lock(&self.slots).release(members, now_ms))
    }

    async fn ban(&self, subject: &str, until_ms: u64) -> Result<(), BackendError> {
        let mut bans = lock(&self.bans);
        if bans.len() >= super::MAX_BANS && !bans.contains_key(subject) {
            let now = unix_now_ms();
            bans.retain(|_, u| *u > now);
        }
        let e = bans.entry(subject.to_owned()).or_insert(until_ms);
        *e = (*e).max(until_ms);
        Ok(())
    }

    async fn list_bans(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<pb::BanEvent>, BackendError> {
        let mut bans = lock(&self.bans);
        bans.retain(|_, u| *u > now_ms);
        let mut out: Vec<pb::BanEvent> = bans
            .iter()
            .map(|(s, u)| pb::BanEvent {
                subject: s.clone(),
                until_ms: *u,
            })
            .collect();
        // The longest-lasting first when cut.
        out.sort_by_key(|b| std::cmp::Reverse(b.until_ms));
        out.truncate(limit);
        Ok(out)
    }

    async fn count_failure(
        &self,
        r: &pb::CountFailureRequest,
        now_ms: u64,
    ) -> Result<Vec<pb::BanEvent>, BackendError> {
        let window_ms = u64::from(r.window_secs.max(1)) * 1000;
        let mut started = Vec::new();
        for (subject, limit, secs) in super::failure_subjects(r) {
            let count = {
                let mut f = lock(&self.failures);
                if f.len() >= super::MAX_BANS {
                    f.retain(|_, (_, end)| *end > now_ms);
                }
                let e = f.entry(subject.clone()).or_insert((0, now_ms + window_ms));
                if e.1 <= now_ms {
                    *e = (0, now_ms + window_ms);
                }
                e.0 += 1;
                e.0
            };
            if let Some(b) = super::ban_at_limit(subject, u64::from(count), limit, secs, now_ms) {
                self.ban(&b.subject, b.until_ms).await?;
                started.push(b);
            }
        }
        Ok(started)
    }

    async fn counts(&self, now: u64) -> Result<Counts, BackendError> {
        let s = self
            .bindings
            .stats(now)
            .await
            .map_err(|e| BackendError::Redis(e.to_string()))?;
        Ok(Counts {
            aors: s.aors as u64,
            bindings: s.bindings as u64,
            users: lock(&self.users).len() as u64,
            dialogs: {
                let now = Instant::now();
                lock(&self.dialogs)
                    .values()
                    .filter(|(d, until)| *until > now && d.ended_at_ms == 0)
                    .count() as u64
            },
        })
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    // Memory goes with the process: it cannot lose data and live on.
    async fn write_marker(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn marker_present(&self) -> Result<bool, BackendError> {
        Ok(true)
    }

    async fn events(&self) -> broadcast::Receiver<Arc<pb::BindingEvent>> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_dialog_records_leave_the_table_at_the_next_reaping() {
        let b = MemoryBackend::new(Policy::default(), sip_auth::MemoryStore::default());
        for i in 0..3 {
            let d = pb::Dialog {
                call_id: format!("c{i}"),
                from_tag: "f".into(),
                ..pb::Dialog::default()
            };
            assert!(b.put_dialog(&d, 60, false).await.unwrap().is_some());
        }
        let end = DialogEnd {
            ended_at_ms: 1,
            reason: "bye".into(),
            status: 0,
        };
        for i in 0..2 {
            let key = DialogKey {
                call_id: format!("c{i}"),
                from_tag: "f".into(),
            };
            assert!(b.end_dialog(&key, &end, 1).await.unwrap().is_some());
        }
        let now_ms = unix_now_ms();
        assert!(b.reap_dialogs(now_ms, 100, 3600).await.unwrap().is_empty());
        assert_eq!(lock(&b.dialogs).len(), 3);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(b.reap_dialogs(now_ms, 100, 3600).await.unwrap().is_empty());
        assert_eq!(
            lock(&b.dialogs).len(),
            1,
            "ended records past their time are gone, not kept until the table is full"
        );
    }
}
