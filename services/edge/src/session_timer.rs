//! session timer (RFC 4028) at the proxy: a call whose phones stop refreshing is ended
//! by the cluster, with a CDR that says so, instead of being billed for ever.
//!
//! * An initial INVITE without `Session-Expires` gets one (`timers.session_expires_secs`,
//!   at least the request's `Min-SE`) and our `Min-SE` (§8.1): the phones then refresh
//!   (re-INVITE or UPDATE) within the interval, or one of them ends the call.
//! * An INVITE asking for less than `timers.min_se_secs` is refused 422 with our `Min-SE`
//!   (§8.1, §6); the phone retries with a larger one.
//! * The interval the 2xx settles (its `Session-Expires`) becomes the dialog record's
//!   time-to-live, refreshed by every 2xx to a re-INVITE or UPDATE of the dialog, on any
//!   edge. A record not refreshed is reaped ([`crate::account`]): session expired.

use sip_core::{Editor, Method, SipMessage};

use crate::shared::Shared;

/// The delta-seconds of the first `Session-Expires` (`x`) header, without parameters.
pub fn interval(msg: &SipMessage) -> Option<u32> {
    let v = msg
        .headers_named("Session-Expires")
        .chain(msg.headers_named("x"))
        .next()?
        .value;
    let delta = v.split(|b| *b == b';').next()?;
    std::str::from_utf8(delta).ok()?.trim().parse().ok()
}

/// The request's `Min-SE`, if any.
fn min_se(msg: &SipMessage) -> Option<u32> {
    let v = msg.headers_named("Min-SE").next()?.value;
    let delta = v.split(|b| *b == b';').next()?;
    std::str::from_utf8(delta).ok()?.trim().parse().ok()
}

/// An initial INVITE asking for a session interval below ours: the `Min-SE` to answer
/// 422 with.
pub fn too_small(sh: &Shared, msg: &SipMessage) -> Option<u32> {
    let ours = sh.cfg.timers.min_se_secs;
    (ours > 0 && msg.method() == Some(Method::Invite))
        .then(|| interval(msg))
        .flatten()
        .filter(|asked| *asked < ours)
        .map(|_| ours)
}

/// Our `Session-Expires` and `Min-SE` on a forwarded initial INVITE that has none.
pub fn insert(sh: &Shared, original: &SipMessage, ed: &mut Editor<'_, '_>) {
    let ours = sh.cfg.timers.session_expires_secs;
    if ours == 0
        || original.method() != Some(Method::Invite)
        || original.to_tag().ok().flatten().is_some()
        || interval(original).is_some()
    {
        return;
    }
    let min = min_se(original).unwrap_or(0).max(sh.cfg.timers.min_se_secs);
    ed.add_header("Session-Expires", ours.max(min).to_string().into_bytes());
    if min_se(original).is_none() && sh.cfg.timers.min_se_secs > 0 {
        ed.add_header("Min-SE", sh.cfg.timers.min_se_secs.to_string().into_bytes());
    }
}
