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

/// An ask under way, with the span of the request it serves (none when traces are off):
/// its answer is handled, and what that answer asks for runs, in the same span.
type Pending = Pin<Box<dyn Future<Output = (Option<Answer>, tracing::Span)> + Send>>;

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
        Ask::Limit(op) => {
            crate::limit::execute(&sh, op).await;
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
    let mut take = |core: &mut Core, m: Inbound, asks: &mut FuturesUnordered<Pending>| {
        let now = Instant::now();
        if let (Some(a), Inbound::Message { received_at, .. }) = (&mut admission, &m) {
            a.observe(now, *received_at);
        }
        let span = match &m {
            Inbound::Message { msg, .. } if msg.is_request() && telemetry::trace::enabled() => {
                request_span(msg)
            }
            _ => tracing::Span::none(),
        };
        if span.is_disabled() {
            core.handle_inbound(now, m);
            return;
        }
        let _in = span.enter();
        core.handle_inbound(now, m);
        // What this request asks for (a lookup, a relay offer) runs in its span, so its
        // gRPC calls carry the trace on.
        act(core, &transports, asks, &sh, &span);
    };
    loop {
        // Act on everything the core wants, and take every answer that is ready at once
        // (most asks complete on their first poll), until the core has nothing more.
        loop {
            act(
                &mut core,
                &transports,
                &mut asks,
                &sh,
                &tracing::Span::none(),
            );
            if asks.is_empty() || !ready_answers(&mut asks, &mut core, &transports, &sh).await {
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
                take_answer(&mut core, &transports, &mut asks, &sh, answer);
            }
            m = inbound.recv() => match m {
                Some(m) => {
                    take(&mut core, m, &mut asks);
                    // Take whatever else is queued before paying for timers and metrics.
                    for _ in 0..64 {
                        match inbound.try_recv() {
                            Ok(m) => take(&mut core, m, &mut asks),
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

/// Do what the core wants: send, and start its asks (in `span`, when there is one).
fn act(
    core: &mut Core,
    transports: &Transports,
    asks: &mut FuturesUnordered<Pending>,
    sh: &Arc<Shared>,
    span: &tracing::Span,
) {
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
            Action::Ask(ask) if span.is_disabled() => {
                let run = execute(sh.clone(), *ask);
                asks.push(Box::pin(async move { (run.await, tracing::Span::none()) }));
            }
            Action::Ask(ask) => {
                let run = tracing::Instrument::instrument(execute(sh.clone(), *ask), span.clone());
                let span = span.clone();
                asks.push(Box::pin(async move { (run.await, span) }));
            }
        }
    }
}

/// Hand the core an ask's answer, in the span of the request it serves; what it asks
/// for next runs in that span too.
fn take_answer(
    core: &mut Core,
    transports: &Transports,
    asks: &mut FuturesUnordered<Pending>,
    sh: &Arc<Shared>,
    (answer, span): (Option<Answer>, tracing::Span),
) {
    let Some(a) = answer else { return };
    if span.is_disabled() {
        core.handle_answer(Instant::now(), a);
        return;
    }
    let _in = span.enter();
    core.handle_answer(Instant::now(), a);
    act(core, transports, asks, sh, &span);
}

/// The span of a request (its server transaction's work here): a child of the
/// dispatcher's when the request carries its context, none when the dispatcher did not
/// trace it, else (an edge reached directly) drawn here.
fn request_span(msg: &sip_core::SipMessage) -> tracing::Span {
    let parent = msg
        .headers_named(dispatch_core::TRACE_HEADER)
        .next()
        .and_then(|h| std::str::from_utf8(h.value).ok());
    let traced = match parent {
        Some(p) => telemetry::trace::is_sampled(p),
        None => telemetry::trace::sample(),
    };
    if !traced {
        return tracing::Span::none();
    }
    let method = msg.method().map_or("?", |m| m.as_str());
    let span = tracing::info_span!(
        "sip.request",
        otel.name = %format_args!("{method}"),
        otel.kind = "server",
        sip.method = method,
        sip.call_id = msg.call_id().unwrap_or_default(),
        trace_id = tracing::field::Empty,
    );
    if let Some(p) = parent {
        telemetry::trace::set_parent(&span, p);
    }
    telemetry::trace::record_trace_id(&span);
    span
}

/// Hand the core every answer that is ready now; whether there was any. Polled with
/// this task's own context, so an ask still waiting wakes the task when it completes.
async fn ready_answers(
    asks: &mut FuturesUnordered<Pending>,
    core: &mut Core,
    transports: &Transports,
    sh: &Arc<Shared>,
) -> bool {
    std::future::poll_fn(|cx| {
        let mut any = false;
        while let Poll::Ready(Some(answer)) = asks.poll_next_unpin(cx) {
            any = true;
            take_answer(core, transports, asks, sh, answer);
        }
        Poll::Ready(any)
    })
    .await
}
