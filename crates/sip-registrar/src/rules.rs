//! The registrar rules of RFC 3261 §10.3 (steps 6–8), as one pure function.
//!
//! Every store (the in-memory one here, the Redis-backed location service) runs
//! [`apply_register`] on the bindings it holds for the AOR and writes back
//! [`RegisterOutcome::bindings`] atomically. Because the function only reads its
//! arguments, a failed request changes nothing by construction, and two stores cannot
//! disagree about what a REGISTER means.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::fmt;

use sip_core::{QValue, Uri};

use crate::binding::{Binding, DEFAULT_Q};
use crate::error::RegisterError;
use crate::request::{ContactSpec, RegisterRequest, RequestContact};
use crate::uri_match::uris_equivalent;

/// Registrar policy: expiry bounds and the contact limit.
///
/// Expected `min_expires <= default_expires <= max_expires`; if not, the rules still hold
/// (no panic): the maximum is raised to the minimum and the default is clamped into range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Expiry given to a contact when neither its `expires` parameter nor the Expires
    /// header says one (seconds).
    pub default_expires: u32,
    /// Shortest non-zero expiry accepted; shorter ones fail with 423 (seconds).
    pub min_expires: u32,
    /// Longest expiry granted; longer requests are shortened to it (seconds), as RFC 3261
    /// §10.3 step 7 allows.
    pub max_expires: u32,
    /// Most bindings one AOR may hold.
    pub max_contacts: usize,
}

impl Default for Policy {
    /// 3600 s default, 60 s minimum (RFC 3261 §10.2.8 suggests at least one minute),
    /// 7200 s maximum, 10 contacts per AOR.
    fn default() -> Policy {
        Policy {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_contacts: 10,
        }
    }
}

impl Policy {
    /// The longest expiry granted, never below the minimum nor zero.
    fn cap(&self) -> u32 {
        self.max_expires.max(self.min_expires).max(1)
    }

    /// The expiry granted to one contact: `None` removes it.
    fn expiry(
        &self,
        spec: &ContactSpec,
        req: &RegisterRequest,
    ) -> Result<Option<u32>, RegisterError> {
        // RFC 3261 §10.3 step 7: the contact's own parameter wins over the header, the
        // registrar's default applies when neither is present.
        match spec.expires.or(req.expires) {
            Some(0) => Ok(None),
            Some(s) if s < self.min_expires => Err(RegisterError::IntervalTooBrief {
                min_expires: self.min_expires,
            }),
            Some(s) => Ok(Some(s.min(self.cap()))),
            // Never zero: a binding that lapses as it is written would be stored dead.
            None => Ok(Some(
                self.default_expires
                    .max(self.min_expires)
                    .max(1)
                    .min(self.cap()),
            )),
        }
    }
}

/// One Contact value of the 200 OK: a current binding with its remaining lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseContact {
    /// The contact URI as registered.
    pub uri: String,
    /// Seconds left.
    pub expires: u64,
    /// q in thousandths.
    pub q: u16,
}

impl fmt::Display for ResponseContact {
    /// `<uri>;expires=N`, plus `;q=` when the q-value is not the default 1.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>;expires={}", self.uri, self.expires)?;
        if self.q != DEFAULT_Q {
            write!(f, ";q={}", QValue(self.q))?;
        }
        Ok(())
    }
}

/// The result of a REGISTER that the rules accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterOutcome {
    /// The complete new binding set of the AOR, to be stored in place of the old one: live
    /// bindings only, in lookup order ([`sort_bindings`]). Empty means "delete the AOR".
    pub bindings: Vec<Binding>,
    /// What the 200 OK lists: every current binding, in the same order, with its remaining
    /// expiry (RFC 3261 §10.3 step 8).
    pub contacts: Vec<ResponseContact>,
    /// Contacts this request bound for the first time.
    pub added: usize,
    /// Existing bindings this request refreshed or rewrote.
    pub updated: usize,
    /// Existing live bindings this request removed (expires 0 or `*`).
    pub removed: usize,
    /// Bindings that had lapsed before the request and were dropped from the set.
    pub expired: usize,
}

impl RegisterOutcome {
    /// True when the stored set must be rewritten (anything added, updated, removed or
    /// lapsed); false for a query of a set with nothing lapsed.
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed + self.expired > 0
    }

    /// The Contact header values of the 200 OK, one per binding (see [`ResponseContact`]).
    pub fn contact_values(&self) -> Vec<String> {
        self.contacts.iter().map(ToString::to_string).collect()
    }

    /// The 200 OK's Contact header value (values joined with `, `), or `None` when the
    /// AOR has no binding left and the response carries no Contact.
    pub fn contact_header(&self) -> Option<String> {
        (!self.contacts.is_empty()).then(|| self.contact_values().join(", "))
    }
}

/// Sort bindings into lookup order: q descending, then most recently registered first.
/// The sort is stable, so bindings equal on both keep their relative order.
pub fn sort_bindings(bindings: &mut [Binding]) {
    bindings.sort_by_key(|b| (Reverse(b.q), Reverse(b.registered_at)));
}

/// The live bindings of a stored set, in lookup order: what a lookup returns.
pub fn live_bindings(stored: &[Binding], now: u64) -> Vec<Binding> {
    let mut live: Vec<Binding> = stored.iter().filter(|b| b.is_live(now)).cloned().collect();
    sort_bindings(&mut live);
    live
}

/// A binding in the set being built, with its URI parsed once.
struct Slot<'a> {
    /// Borrowed until it survives the request: a re-registration replaces the stored
    /// binding, and copying it first was the registrar's biggest cost.
    binding: Cow<'a, Binding>,
    /// `None` when a stored contact no longer parses (stored by an older version, say):
    /// it then matches only a byte-identical contact.
    uri: Option<Uri<'a>>,
    /// Written by this request (so exempt from this request's CSeq check).
    fresh: bool,
    /// Written by this request in place of a binding that existed before it.
    replaces: bool,
}

/// RFC 5626 §6 when both sides are outbound registrations, RFC 3261 §10.3 step 7 (URI
/// equivalence) otherwise.
fn same_contact(slot: &Slot<'_>, spec: &ContactSpec, uri: &Uri<'_>) -> bool {
    let b = &slot.binding;
    if let (Some(bi), Some(br), Some(ci), Some(cr)) =
        (&b.instance, b.reg_id, &spec.instance, spec.reg_id)
    {
        // Instance ids are URNs (mostly `urn:uuid:`), whose comparison is case-insensitive
        // (RFC 8141 for the NID, RFC 4122 for the hex digits).
        return br == cr && bi.eq_ignore_ascii_case(ci);
    }
    match &slot.uri {
        Some(u) => uris_equivalent(u, uri),
        None => b.contact == spec.uri,
    }
}

/// RFC 3261 §10.3 steps 6 and 7: the same Call-ID with a CSeq not above the stored one is
/// an old or repeated request.
fn check_order(b: &Binding, req: &RegisterRequest) -> Result<(), RegisterError> {
    if b.call_id == req.call_id && req.cseq <= b.cseq {
        return Err(RegisterError::OutOfOrder {
            stored: b.cseq,
            received: req.cseq,
        });
    }
    Ok(())
}

fn new_binding(req: &RegisterRequest, spec: &ContactSpec, secs: u32, now: u64) -> Binding {
    Binding {
        aor: req.aor.clone(),
        contact: spec.uri.clone(),
        expires_at: now.saturating_add(u64::from(secs)),
        // A refresh that omits q goes back to the default: the binding is what the latest
        // REGISTER says, not a merge with older ones.
        q: spec.q.unwrap_or(DEFAULT_Q).min(DEFAULT_Q),
        call_id: req.call_id.clone(),
        cseq: req.cseq,
        path: req.path.clone(),
        instance: spec.instance.clone(),
        reg_id: spec.reg_id,
        source: req.source.clone(),
        user_agent: req.user_agent.clone(),
        registered_at: now,
    }
}

fn outcome(bindings: Vec<Binding>, now: u64, counts: [usize; 4]) -> RegisterOutcome {
    RegisterOutcome::new(bindings, now, counts)
}

impl RegisterOutcome {
    /// An outcome from a binding set (sorted into lookup order here) and the counts
    /// `[added, updated, removed, expired]`, with the 200 OK's contacts as of `now`: how a
    /// store that received the set from elsewhere (the location service) rebuilds it.
    pub fn new(mut bindings: Vec<Binding>, now: u64, counts: [usize; 4]) -> RegisterOutcome {
        sort_bindings(&mut bindings);
        let contacts = bindings
            .iter()
            .map(|b| ResponseContact {
                uri: b.contact.clone(),
                expires: b.remaining(now),
                q: b.q,
            })
            .collect();
        let [added, updated, removed, expired] = counts;
        RegisterOutcome {
            bindings,
            contacts,
            added,
            updated,
            removed,
            expired,
        }
    }
}

/// Apply a REGISTER to the bindings an AOR holds (RFC 3261 §10.3 steps 6–8, RFC 3327,
/// RFC 5626 §6).
///
/// `existing` is the stored set of `req.aor` (bindings of other AORs in it are ignored and
/// left out of the result); `now` is Unix seconds. In order:
///
/// 1. Bindings with `expires_at <= now` are dropped: expiry is a property of the data,
///    so no janitor is needed for correctness.
/// 2. No Contact: a query; the live set is returned unchanged.
/// 3. `Contact: *` must be the only Contact and come with `Expires: 0`, else
///    [`InvalidWildcard`](RegisterError::InvalidWildcard) (400). It removes every binding,
///    but a binding with the request's Call-ID and a CSeq not below the request's fails
///    the whole request ([`OutOfOrder`](RegisterError::OutOfOrder), 500).
/// 4. A request with more Contact values than the limit plus the live bindings cannot end
///    within the limit without redundancy; it is refused as
///    [`TooManyContacts`](RegisterError::TooManyContacts) before any work, which bounds
///    the matching cost under the store's lock.
/// 5. Each contact's expiry is its `expires` parameter, else the Expires header, else the
///    policy default: 0 removes; a non-zero value below the minimum fails the request with
///    [`IntervalTooBrief`](RegisterError::IntervalTooBrief) (423); values above the
///    maximum are capped. Every contact is judged before any is applied.
/// 6. Contacts are applied in order. A contact matches a binding when both carry
///    `+sip.instance` and `reg-id` and those are equal, or otherwise when their URIs are
///    equivalent ([`uris_equivalent`]). A matched binding with the same Call-ID needs a
///    higher CSeq, else the request fails ([`OutOfOrder`](RegisterError::OutOfOrder)); a
///    matched binding is then replaced by the new one (request's Call-ID, CSeq, Path,
///    source, User-Agent) or removed when the expiry is 0. Unmatched contacts are added
///    (or ignored when the expiry is 0). A contact repeated in one request: the last one
///    wins.
/// 7. If the result has more bindings than the limit and more than before, the request
///    fails with [`TooManyContacts`](RegisterError::TooManyContacts) (a request that does
///    not grow an over-full set, e.g. after the limit was lowered, still succeeds, so UAs
///    can always refresh or unregister).
///
/// Any error means the whole request failed and nothing changes.
pub fn apply_register(
    existing: &[Binding],
    req: &RegisterRequest,
    policy: &Policy,
    now: u64,
) -> Result<RegisterOutcome, RegisterError> {
    let mine = existing.iter().filter(|b| b.aor == req.aor);
    let (live, lapsed): (Vec<&Binding>, Vec<&Binding>) = mine.partition(|b| b.is_live(now));
    let expired = lapsed.len();

    let mut stars = 0usize;
    let mut specs = Vec::with_capacity(req.contacts.len());
    for c in &req.contacts {
        match c {
            RequestContact::Star => stars += 1,
            RequestContact::Addr(spec) => specs.push(spec),
        }
    }

    if stars > 0 {
        if stars > 1 || !specs.is_empty() || req.expires != Some(0) {
            return Err(RegisterError::InvalidWildcard);
        }
        for b in &live {
            check_order(b, req)?;
        }
        return Ok(outcome(Vec::new(), now, [0, 0, live.len(), expired]));
    }

    if specs.is_empty() {
        let current = live.into_iter().cloned().collect();
        return Ok(outcome(current, now, [0, 0, 0, expired]));
    }

    if specs.len() > policy.max_contacts.saturating_add(live.len()) {
        return Err(RegisterError::TooManyContacts {
            limit: policy.max_contacts,
        });
    }

    let mut plan = Vec::with_capacity(specs.len());
    for spec in specs {
        let uri = Uri::parse(spec.uri.as_bytes())?;
        plan.push((spec, uri, policy.expiry(spec, req)?));
    }

    let mut set: Vec<Slot<'_>> = live
        .iter()
        .map(|b| Slot {
            binding: Cow::Borrowed(*b),
            uri: Uri::parse(b.contact.as_bytes()).ok(),
            fresh: false,
            replaces: false,
        })
        .collect();
    for (spec, uri, secs) in plan {
        let mut replaces = false;
        let mut i = 0;
        while i < set.len() {
            if same_contact(&set[i], spec, &uri) {
                if !set[i].fresh {
                    check_order(&set[i].binding, req)?;
                }
                replaces |= !set[i].fresh || set[i].replaces;
                set.remove(i);
            } else {
                i += 1;
            }
        }
        if let Some(secs) = secs {
            set.push(Slot {
                binding: Cow::Owned(new_binding(req, spec, secs, now)),
                uri: Some(uri),
                fresh: true,
                replaces,
            });
        }
    }

    if set.len() > policy.max_contacts && set.len() > live.len() {
        return Err(RegisterError::TooManyContacts {
            limit: policy.max_contacts,
        });
    }

    let added = set.iter().filter(|s| s.fresh && !s.replaces).count();
    let updated = set.iter().filter(|s| s.fresh && s.replaces).count();
    let kept = set.len() - added - updated;
    // Each surviving rewrite consumed at least one old binding, so this cannot go below
    // zero; saturating keeps it panic-free regardless.
    let removed = live.len().saturating_sub(kept + updated);
    // This request's bindings first (in request order), then the untouched ones: the
    // stable sort then puts the newest first among equal q and equal second.
    let (fresh, old): (Vec<Slot<'_>>, Vec<Slot<'_>>) = set.into_iter().partition(|s| s.fresh);
    let bindings = fresh
        .into_iter()
        .chain(old)
        .map(|s| s.binding.into_owned())
        .collect();
    Ok(outcome(bindings, now, [added, updated, removed, expired]))
}
