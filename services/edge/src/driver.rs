//! The driver: runs the sans-IO [`Core`] on the runtime. It feeds the core what the
//! transports read and the time, sends what the core says to send, and executes the
//! core's [`Ask`]s, feeding their answers back.
//!
//! The asks run as futures on this same task (a `FuturesUnordered`), not as spawned
//! tasks: most complete on their first poll (in-memory stores, no DNS), and those that
//! wait (gRPC to the location service, a media relay, DNS) are woken by the runtime like
//! any future. No thread hop, no channel, no task per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sip_transport::{Inbound, Transports};
use tokio::sync::mpsc;

use crate::core::{Action, Answer, Ask, Core};
use crate::decision::Decision;
use crate::shared::Shared;

type Pending = Pin<Box<dyn Future<Output = Option<Answer>> + Send>>;

/// How long asks still running at shutdown may finish (a media session's Delete).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Do what `ask` asks, with the stores, DNS and the media relays `sh` holds. `None` for
/// an ask without an answer (or an ACK that goes nowhere).
pub async fn execute(sh: Arc<Shared>, ask: Ask) -> Option<Answer> {
    match ask {
        Ask::Decide { txn, msg, source } => {
            let d = crate::decide::decide(&sh, txn, &msg, source).await;
            Some(Answer::Decided(
                crate::anchor::anchor_request(&sh, &msg, source, d).await,
            ))
        }
        Ask::AnchorResponse {
            txn,
            code,
            resp,
            relay,
            offer,
        } => {
            let anchored = match (&sh.relays, resp.from_tag(), resp.to_tag()) {
                (Some(relays), Ok(Some(from)), Ok(Some(to))) => {
                    crate::media::anchor_sdp(relays, Some(relay), &resp, to, from, offer).await
                }
                _ => None,
            };
            Some(Answer::Decided(Decision::Respond {
                txn,
                code,
                // The relay could not say: the response goes on as it was.
                bytes: anchored
                    .map_or_else(|| resp.bytes().clone(), sip_core::SipMessage::into_bytes),
                logged: false,
            }))
        }
        Ask::RouteAck { ack, source } => crate::ack::route_ack(&sh, ack, source)
            .await
            .map(|(target, bytes)| Answer::Ack(target, bytes)),
        Ask::Account(r) => {
            crate::account::execute(&sh, r).await;
            None
        }
        Ask::EndMedia {
            call_id,
            from_tag,
            to_tag,
        } => {
            if let Some(relays) = &sh.relays {
                let _ = relays.delete(&call_id, &from_tag, &to_tag).await;
            }
            None
        }
    }
}

/// Run `core` until `inbound` closes or `shutdown` resolves.
pub async fn run(
    mut core: Core,
    sh: Arc<Shared>,
    transports: Transports,
    mut inbound: mpsc::Receiver<Inbound>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut asks: FuturesUnordered<Pending> = FuturesUnordered::new();
    // One timer, moved when the core's next deadline moves: a new `Sleep` per turn of the
    // loop would register with (and leave) the runtime's timer wheel every time.
    let idle = || tokio::time::Instant::now() + Duration::from_secs(3600);
    let sleep = tokio::time::sleep_until(idle());
    tokio::pin!(sleep);
    let mut armed = None;
    // Every message's wait in the queue tells the readers how much new work to admit.
    let mut admission =
        transports.admission_control(Duration::from_millis(sh.cfg.limits.queue_target_ms));
    let mut take = |core: &mut Core, m: Inbound| {
        let now = Instant::now();
        if let (Some(a), Inbound::Message { received_at, .. }) = (&mut admission, &m) {
            a.observe(now, *received_at);
        }
        core.handle_inbound(now, m);
    };
    loop {
        // Act on everything the core wants, and take every answer that is ready at once
        // (most asks complete on their first poll), until the core has nothing more.
        loop {
            while let Some(a) = core.poll_action() {
                match a {
                    Action::Send {
                        target,
                        bytes,
                        message,
                        origin,
                    } => match message {
                        Some(msg) => transports.send_message(target, *msg, origin),
                        None => transports.send(target, bytes, origin),
                    },
                    Action::Ask(ask) => asks.push(Box::pin(execute(sh.clone(), *ask))),
                }
            }
            if asks.is_empty() || !ready_answers(&mut asks, &mut core).await {
                break;
            }
        }
        let (server, client) = core.transactions();
        sh.metrics.set_transactions(server, client);
        let deadline = core.poll_timeout();
        if deadline != armed {
            armed = deadline;
            sleep
                .as_mut()
                .reset(deadline.map_or_else(idle, tokio::time::Instant::from_std));
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(answer) = asks.next(), if !asks.is_empty() => {
                if let Some(a) = answer {
                    core.handle_answer(Instant::now(), a);
                }
            }
            m = inbound.recv() => match m {
                Some(m) => {
                    take(&mut core, m);
                    // Take whatever else is queued before paying for timers and metrics.
                    for _ in 0..64 {
                        match inbound.try_recv() {
                            Ok(m) => take(&mut core, m),
                            Err(_) => break,
                        }
                    }
                }
                None => break,
            },
            _ = &mut sleep => {
                // Spent: moved away below, and to the next deadline on the next turn.
                armed = None;
            }
        }
        if armed.is_none() && sleep.is_elapsed() {
            sleep.as_mut().reset(idle());
        }
        // Timers are due whatever woke us: under a steady load the sleep branch, last in
        // the biased order, might never be the one taken.
        let now = Instant::now();
        if core.poll_timeout().is_some_and(|d| d <= now) {
            core.handle_timeout(now);
        }
    }
    // What is still running (a media session's Delete) may finish; its answers have
    // nowhere to go.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while asks.next().await.is_some() {}
    })
    .await;
}

/// Hand the core every answer that is ready now; whether there was any. Polled with
/// this task's own context, so an ask still waiting wakes the task when it completes.
async fn ready_answers(asks: &mut FuturesUnordered<Pending>, core: &mut Core) -> bool {
    std::future::poll_fn(|cx| {
        let mut any = false;
        while let Poll::Ready(Some(answer)) = asks.poll_next_unpin(cx) {
            any = true;
            if let Some(a) = answer {
                core.handle_answer(Instant::now(), a);
            }
        }
        Poll::Ready(any)
    })
    .await
}
