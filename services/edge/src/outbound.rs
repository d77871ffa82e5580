//! Choose a target outside the cluster (outbound rules): a local user's call to a number
//! or domain served by a destination set goes to the dispatcher, which picks the gateway;
//! a request for a foreign domain goes there. Either only for a sender who proved who it
//! is or a trusted peer: a From header naming a local user proves nothing.

use sip_core::{SipUri, Uri};

use crate::decision::{Decision, Hop, Plan};
use crate::in_dialog::prove;
use crate::origin::Sender;
use crate::route::{Routing, resolve};
use crate::shared::Shared;

/// May this request leave the cluster without a challenge?
fn may_leave(sender: &Sender<'_>) -> bool {
    sender.origin.trusted || sender.user.is_some()
}

/// Challenge a sender who may not leave yet (a local From), refuse anyone else 403.
async fn proved(sh: &Shared, r: &Routing<'_>, sender: &mut Sender<'_>) -> Result<(), Decision> {
    if may_leave(sender) {
        return Ok(());
    }
    prove(sh, r, sender, 403).await
}

/// A local user's new request for a target a destination set serves: to the dispatcher
/// with a `sip:set-NAME@dispatcher;lr` Route. `None`: no set serves it.
pub(crate) async fn to_destination_set(
    sh: &Shared,
    r: &Routing<'_>,
    sender: &mut Sender<'_>,
    target: &SipUri<'_>,
) -> Option<Decision> {
    if !r.initial || r.from_domain.is_none() || !r.challengeable {
        return None;
    }
    let set = sh
        .cfg
        .outbound
        .set_for(target.user, &target.host.to_string())?;
    if let Err(d) = proved(sh, r, sender).await {
        return Some(d);
    }
    let route = sh.cfg.outbound.dispatcher.as_deref().and_then(|d| {
        let Ok(Uri::Sip(u)) = Uri::parse(d.as_bytes()) else {
            return None;
        };
        let hostport = match u.port {
            Some(p) => format!("{}:{p}", u.host),
            None => u.host.to_string(),
        };
        Some((
            u,
            format!(
                "<sip:{}{set}@{hostport};lr>",
                dispatch_core::relay::SET_PREFIX
            ),
        ))
    });
    let Some((disp, route)) = route else {
        return Some(r.respond(500));
    };
    Some(match resolve(&sh.tokens, &disp).await {
        Some(target) => Decision::Forward {
            txn: r.txn,
            plan: Plan {
                groups: vec![vec![Hop {
                    request_uri: None,
                    routes: vec![route],
                    target,
                }]],
                destination: Some(set.to_string()),
                limited: false,
                ..r.plan(Vec::new())
            },
        },
        None => r.respond(503),
    })
}

/// A new request for a foreign domain: only for a user who authenticated (with
/// `auth.invite` off, challenged now) or a trusted peer.
pub(crate) async fn to_foreign_domain(
    sh: &Shared,
    r: &Routing<'_>,
    sender: &mut Sender<'_>,
    target: &SipUri<'_>,
) -> Decision {
    if let Err(d) = proved(sh, r, sender).await {
        return d;
    }
    r.to_uri(sh, target).await
}
