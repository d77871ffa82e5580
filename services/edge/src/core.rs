//! The proxy core: one task that owns the transaction layer and every response context.
//!
//! Transports parse and queue messages; the core validates them, feeds the transaction
//! layer, hands new requests to decision tasks (which may wait on stores), and turns their
//! decisions and the transaction events into forwarded requests and responses. Owning all
//! protocol state in one task means no locks on the hot path and one ordering of events.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use foldhash::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::{Editor, Method, RequestBuilder, ResponseBuilder, SipMessage, error_reply};
use sip_transport::{Inbound, Transports};
use sip_txn::{ClientTxnId, Event, ServerTxnId, Target, TransactionLayer, TxnRef};
use tokio::sync::mpsc;

use crate::decide::decide;
use crate::decision::{Decision, Hop, Plan};
use crate::forking::{BranchId, Outcome, ResponseContext};
use crate::metrics::{ReasonLabel, method_index};
use crate::route::{branch_prefix, loop_hash, resolve};
use crate::shared::Shared;

struct BranchInfo {
    txn: Option<ClientTxnId>,
    request: SipMessage,
    target: Target,
    /// The hop is a registered contact of the called user.
    registered: bool,
}

struct ProxyCtx {
    original: SipMessage,
    source: Target,
    rc: ResponseContext,
    branches: Vec<BranchInfo>,
    groups: VecDeque<Vec<Hop>>,
    plan: Plan,
    loop_prefix: String,
    timer_c: Option<Instant>,
}

/// The core's state.
pub struct Core {
    sh: Arc<Shared>,
    txn: TransactionLayer,
    transports: Transports,
    decisions: mpsc::UnboundedSender<Decision>,
    /// Requests handed to a decision task, by server transaction.
    pending: HashMap<ServerTxnId, (SipMessage, Target)>,
    /// Requests cancelled while their decision was still being made.
    cancelled_pending: HashSet<ServerTxnId>,
    contexts: HashMap<ServerTxnId, ProxyCtx>,
    branch_of: HashMap<ClientTxnId, (ServerTxnId, BranchId)>,
    /// Our own CANCEL transactions: their responses end here.
    cancels: HashSet<ClientTxnId>,
    timer_c: BinaryHeap<Reverse<(Instant, ServerTxnId)>>,
    timer_c_len: Duration,
    /// When each server transaction started, its method (metrics index) and where its
    /// request came from (for the log line of its final response).
    started: HashMap<ServerTxnId, (Instant, usize, Target)>,
    branch_seq: u64,
    /// Decisions that completed on their first poll, to act on in `drain`.
    ready: VecDeque<Decision>,
    max_queue_delay: Duration,
    /// The request being handed to the transaction layer is to be shed (see `stale`).
    shed_next: bool,
}

impl Core {
    /// A core over `transports`; decisions come back on `decisions`.
    pub fn new(
        sh: Arc<Shared>,
        transports: Transports,
        decisions: mpsc::UnboundedSender<Decision>,
    ) -> Core {
        let txn = TransactionLayer::new(sh.cfg.timer_config());
        let timer_c_len = Duration::from_secs(sh.cfg.timers.timer_c_secs);
        let sh_delay = sh.cfg.limits.max_queue_delay_ms;
        Core {
            sh,
            txn,
            transports,
            decisions,
            pending: HashMap::default(),
            cancelled_pending: HashSet::default(),
            contexts: HashMap::default(),
            branch_of: HashMap::default(),
            cancels: HashSet::default(),
            timer_c: BinaryHeap::new(),
            timer_c_len,
            started: HashMap::default(),
            branch_seq: 0,
            ready: VecDeque::new(),
            max_queue_delay: Duration::from_millis(sh_delay),
            shed_next: false,
        }
    }

    /// Run until `inbound` closes or `shutdown` resolves.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut decisions: mpsc::UnboundedReceiver<Decision>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let deadline = [
                self.txn.poll_timeout(),
                self.timer_c.peek().map(|Reverse((at, _))| *at),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                d = decisions.recv() => match d {
                    Some(d) => self.on_decision(d),
                    None => break,
                },
                m = inbound.recv() => match m {
                    Some(m) => {
                        self.on_inbound(m);
                        // Take whatever else is queued before paying for timers and metrics.
                        for _ in 0..64 {
                            match inbound.try_recv() {
                                Ok(m) => self.on_inbound(m),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = sleep => {}
            }
            let now = Instant::now();
            self.txn.handle_timeout(now);
            self.fire_timer_c(now);
            self.drain();
            self.sh
                .metrics
                .set_transactions(self.txn.server_count(), self.txn.client_count());
        }
    }

    fn on_inbound(&mut self, m: Inbound) {
        let now = Instant::now();
        match m {
            Inbound::Message {
                msg,
                source,
                received_at,
            } => {
                if msg.is_request() {
                    // Scanners, banned sources and a source over its rate get nothing, not
                    // even a 400 for a malformed request.
                    if self.dropped(&msg, source, now) {
                        return;
                    }
                    if let Err(e) = msg.validate_request() {
                        tracing::debug!(src = %source.addr, error = %e, "invalid request");
                        self.sh
                            .audit
                            .refused_early(&msg, source, e.status(), e.kind().as_str());
                        self.sh
                            .metrics
                            .invalid_requests
                            .get_or_create(&ReasonLabel {
                                reason: e.kind().as_str(),
                            })
                            .inc();
                        if msg.method() != Some(Method::Ack)
                            && let Some(r) = error_reply(Some(&msg), msg.as_bytes(), &e)
                        {
                            self.count_response(e.status());
                            self.transports.send(source, r, TxnRef::Stateless);
                        }
                        return;
                    }
                    let msg = with_received(msg, source);
                    if crate::for_me::options_for_me(&self.sh, &msg) {
                        self.options_stateless(&msg, source, received_at);
                        return;
                    }
                    // A new transaction for a stale request is answered 503 when its
                    // event comes out of the layer (just below, in `drain`); a
                    // retransmission of a live one raises no event and is absorbed.
                    self.shed_next = self.stale(&msg, received_at, now);
                    if let Err(e) = self.txn.handle_request(now, msg, source) {
                        tracing::debug!(error = %e, "request not taken by the transaction layer");
                    }
                } else {
                    // A response that fails validation is dropped (§16.7 step 1, §18.1.2).
                    if msg.validate_response().is_err() {
                        return;
                    }
                    let _ = self.txn.handle_response(now, msg, source);
                }
            }
            Inbound::SendFailed { origin, .. } => self.txn.transport_error(now, origin),
            Inbound::FlowClosed { .. } => {}
        }
        self.drain();
        // A retransmission absorbed by its transaction raised no event to consume the flag.
        self.shed_next = false;
    }

    /// Requests dropped before they cost a transaction: scanners, banned sources, a
    /// source over its rate. Nothing is answered (an answer would tell a scanner a SIP
    /// server is here, and cost what the limit saves).
    fn dropped(&self, msg: &SipMessage, source: Target, now: Instant) -> bool {
        let o = crate::origin::origin(&self.sh, msg, source);
        let reason = if self.sh.deny.denies_message(msg) {
            "scanner"
        } else if o.trusted {
            return false;
        } else {
            match self.sh.guard.admit(o.addr.ip(), now) {
                crate::guard::Admit::Yes => return false,
                crate::guard::Admit::Banned => "banned",
                crate::guard::Admit::RateLimited => "rate_limited",
            }
        };
        self.sh
            .metrics
            .dropped_requests
            .get_or_create(&ReasonLabel { reason })
            .inc();
        self.sh.audit.dropped(msg, o.addr, reason);
        true
    }

    /// Answer an OPTIONS for the proxy itself without a transaction (RFC 3261 §8.2.6
    /// lets a UAS answer statelessly): a flood of keepalives then costs no memory. A
    /// retransmission is answered again the same way.
    fn options_stateless(&mut self, msg: &SipMessage, source: Target, received_at: Instant) {
        if let Some((code, bytes)) = crate::for_me::options_response(&self.sh, msg) {
            let method = method_index("OPTIONS");
            self.sh.metrics.count_request(method);
            self.sh.metrics.options_stateless.inc();
            self.count_response(code);
            self.sh
                .metrics
                .observe_duration(method, received_at.elapsed().as_secs_f64());
            self.transports.send(source, bytes, TxnRef::Stateless);
        }
    }

    /// A new dialog-creating or out-of-dialog request that sat in the queue past
    /// `max_queue_delay`: its client is about to retransmit, so serving it late only adds
    /// to the overload. In-dialog requests (To tag) are never shed: a 503 to a BYE would
    /// end the call on one side only.
    fn stale(&self, msg: &SipMessage, received_at: Instant, now: Instant) -> bool {
        now.saturating_duration_since(received_at) > self.max_queue_delay
            && !matches!(msg.method(), Some(Method::Ack | Method::Cancel) | None)
            && msg.to_tag().ok().flatten().is_none()
    }

    /// Answer a shed request 503 + Retry-After through its server transaction, so that
    /// retransmissions get the same 503 instead of being served after all.
    fn shed(&mut self, txn: ServerTxnId, msg: &SipMessage, source: Target) -> bool {
        let Some(b) = ResponseBuilder::new(msg, 503) else {
            return false;
        };
        self.sh.metrics.transport.overload_rejections.inc();
        self.sh.audit.refused_early(
            msg,
            source,
            503,
            "overload: queued past limits.max_queue_delay_ms",
        );
        let retry = self.sh.cfg.limits.overload_retry_after.to_string();
        self.respond(
            txn,
            503,
            b.header("Retry-After", retry.into_bytes()).build(),
        );
        true
    }

    fn drain(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.txn.poll_event() {
                progressed = true;
                self.on_event(ev);
            }
            while let Some(t) = self.txn.poll_transmit() {
                progressed = true;
                self.transports.send(t.target, t.bytes, t.origin);
            }
            while let Some(d) = self.ready.pop_front() {
                progressed = true;
                self.on_decision(d);
            }
            if !progressed {
                break;
            }
        }
    }

    fn count_response(&self, code: u16) {
        self.sh.metrics.count_response(code);
    }

    fn respond(&mut self, txn: ServerTxnId, code: u16, bytes: Bytes) {
        let now = Instant::now();
        // Kept for the transaction's log line, only when that line is wanted.
        let for_log = (code >= 200 && crate::audit::transactions_logged()).then(|| bytes.clone());
        match self.txn.respond(now, txn, code, bytes) {
            Ok(()) => {
                self.count_response(code);
                if code >= 200
                    && let Some((t0, method, source)) = self.started.remove(&txn)
                {
                    let elapsed = now.duration_since(t0);
                    self.sh
                        .metrics
                        .observe_duration(method, elapsed.as_secs_f64());
                    if let Some(b) = for_log {
                        self.sh.audit.transaction(b, source, elapsed);
                    }
                }
            }
            Err(e) => tracing::debug!(?txn, code, error = %e, "response not sent"),
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Request {
                txn: Some(txn),
                msg,
                source,
            } => {
                let method = method_index(msg.method().map_or("", |m| m.as_str()));
                self.sh.metrics.count_request(method);
                self.started.insert(txn, (Instant::now(), method, source));
                if std::mem::take(&mut self.shed_next) && self.shed(txn, &msg, source) {
                    return;
                }
                match msg.method() {
                    Some(Method::Cancel) => self.on_cancel(txn, &msg),
                    m => {
                        if m == Some(Method::Invite) {
                            // §16.2: a stateful proxy answers an INVITE with 100 at once.
                            if let Some(b) = ResponseBuilder::new(&msg, 100) {
                                self.respond(txn, 100, b.build());
                            }
                        }
                        self.pending.insert(txn, (msg.clone(), source));
                        let sh = self.sh.clone();
                        let mut fut = Box::pin(async move {
                            let d = decide(&sh, txn, &msg, source).await;
                            crate::anchor::anchor_request(&sh, &msg, source, d).await
                        });
                        // Most decisions never wait (in-memory stores, no DNS): poll once
                        // here and act at once, saving a task, a channel hop and a thread
                        // wake-up per request. Only one that really waits becomes a task;
                        // its first poll there registers the real waker.
                        let mut cx = Context::from_waker(Waker::noop());
                        match fut.as_mut().poll(&mut cx) {
                            Poll::Ready(d) => self.ready.push_back(d),
                            Poll::Pending => {
                                let tx = self.decisions.clone();
                                tokio::spawn(async move {
                                    let _ = tx.send(fut.await);
                                });
                            }
                        }
                    }
                }
            }
            Event::Request {
                txn: None,
                msg,
                source,
            } => {
                self.sh.metrics.count_request(method_index("ACK"));
                self.forward_ack(msg, source);
            }
            Event::Response { txn, msg } => self.on_branch_response(txn, msg),
            Event::StrayResponse { msg, .. } => self.forward_stray_response(msg),
            Event::Timeout { txn } => self.on_branch_failure(txn, 408),
            Event::TransportError { txn } => self.on_branch_failure(txn, 503),
            Event::ServerFailed { txn } => {
                self.started.remove(&txn);
            }
        }
    }

    fn on_decision(&mut self, d: Decision) {
        match d {
            Decision::Respond {
                txn,
                code,
                bytes,
                logged,
            } => {
                if let Some((req, source)) = self.pending.remove(&txn)
                    && !logged
                    && !bytes.is_empty()
                {
                    self.sh.audit.rejected(&req, source, code, &bytes);
                }
                self.cancelled_pending.remove(&txn);
                if !bytes.is_empty() {
                    self.respond(txn, code, bytes);
                }
            }
            Decision::Forward { txn, plan } => {
                let Some((original, source)) = self.pending.remove(&txn) else {
                    return;
                };
                if self.cancelled_pending.remove(&txn) {
                    if let Some(b) = ResponseBuilder::new(&original, 487) {
                        self.respond(txn, 487, b.build());
                    }
                    return;
                }
                self.start_forwarding(txn, original, source, plan);
            }
        }
        self.drain();
    }

    fn start_forwarding(
        &mut self,
        txn: ServerTxnId,
        original: SipMessage,
        source: Target,
        mut plan: Plan,
    ) {
        let mut groups: VecDeque<Vec<Hop>> = std::mem::take(&mut plan.groups).into();
        let Some(first) = groups.pop_front() else {
            if let Some(b) = ResponseBuilder::new(&original, 480) {
                self.respond(txn, 480, b.build());
            }
            return;
        };
        let invite = original.method() == Some(Method::Invite);
        let mut ctx = ProxyCtx {
            loop_prefix: branch_prefix(loop_hash(&original)),
            rc: ResponseContext::new(invite, groups.len()),
            original,
            source,
            branches: Vec::new(),
            groups,
            plan,
            timer_c: None,
        };
        if invite {
            let at = Instant::now() + self.timer_c_len;
            ctx.timer_c = Some(at);
            self.timer_c.push(Reverse((at, txn)));
        }
        let mut outcomes = Vec::new();
        for hop in first {
            outcomes.extend(self.start_branch(txn, &mut ctx, hop));
        }
        self.contexts.insert(txn, ctx);
        self.apply(txn, outcomes);
    }

    /// Build and send one forwarded copy (§16.6).
    fn start_branch(&mut self, stxn: ServerTxnId, ctx: &mut ProxyCtx, hop: Hop) -> Vec<Outcome> {
        let b = ctx.rc.add_branch();
        let registered = hop.request_uri.is_some();
        self.branch_seq += 1;
        let branch = format!("{}.{:x}", ctx.loop_prefix, self.branch_seq);
        let built = build_forward(&self.sh, ctx, &hop, &branch)
            .and_then(|bytes| SipMessage::parse(bytes).ok());
        let Some(req) = built else {
            ctx.branches.push(BranchInfo {
                txn: None,
                request: ctx.original.clone(),
                target: hop.target,
                registered,
            });
            return ctx.rc.on_branch_failure(b, 500);
        };
        match self.txn.request(Instant::now(), req.clone(), hop.target) {
            Ok(ctxn) => {
                self.branch_of.insert(ctxn, (stxn, b));
                ctx.branches.push(BranchInfo {
                    txn: Some(ctxn),
                    request: req,
                    target: hop.target,
                    registered,
                });
                Vec::new()
            }
            Err(e) => {
                tracing::debug!(error = %e, "branch not started");
                ctx.branches.push(BranchInfo {
                    txn: None,
                    request: req,
                    target: hop.target,
                    registered,
                });
                ctx.rc.on_branch_failure(b, 500)
            }
        }
    }

    fn on_branch_response(&mut self, ctxn: ClientTxnId, msg: SipMessage) {
        if self.cancels.contains(&ctxn) {
            if msg.status().is_some_and(|c| c >= 200) {
                self.cancels.remove(&ctxn);
            }
            return;
        }
        let Some(&(stxn, b)) = self.branch_of.get(&ctxn) else {
            // A late 2xx on a finished context (RFC 6026 Accepted): still relay it.
            if msg.status().is_some_and(|c| (200..300).contains(&c)) {
                self.forward_stray_response(msg);
            }
            return;
        };
        let code = msg.status().unwrap_or(500);
        if msg.via_count() < 2 {
            // §16.7 step 3: with our Via removed nothing would be left to route it by. The
            // downstream element broke the response; for the caller that is a 502.
            tracing::warn!(
                code,
                "response without the upstream Via set from a downstream element"
            );
            self.sh.metrics.bad_responses.inc();
            if code >= 200 {
                self.on_branch_failure(ctxn, 502);
            }
            return;
        }
        let Some(ctx) = self.contexts.get_mut(&stxn) else {
            return;
        };
        if (101..200).contains(&code) && ctx.timer_c.is_some() {
            // §16.6 step 11: Timer C restarts on every provisional response but 100.
            let at = Instant::now() + self.timer_c_len;
            ctx.timer_c = Some(at);
            self.timer_c.push(Reverse((at, stxn)));
        }
        let out = ctx.rc.on_response(b, msg);
        self.apply(stxn, out);
    }

    fn on_branch_failure(&mut self, ctxn: ClientTxnId, code: u16) {
        if self.cancels.remove(&ctxn) {
            return;
        }
        let Some((stxn, b)) = self.branch_of.remove(&ctxn) else {
            return;
        };
        let Some(ctx) = self.contexts.get_mut(&stxn) else {
            return;
        };
        // A registered contact that cannot be reached is the callee being unavailable, not
        // this proxy: a 503 would make the caller's side fail over away from us (RFC 3263).
        let code = if code == 503 && ctx.branches.get(b).is_some_and(|i| i.registered) {
            480
        } else {
            code
        };
        let out = ctx.rc.on_branch_failure(b, code);
        self.apply(stxn, out);
    }

    fn apply(&mut self, stxn: ServerTxnId, outcomes: Vec<Outcome>) {
        let mut queue: VecDeque<Outcome> = outcomes.into();
        while let Some(o) = queue.pop_front() {
            let Some(mut ctx) = self.contexts.remove(&stxn) else {
                return;
            };
            match o {
                Outcome::Forward(resp) => {
                    let code = resp.status().unwrap_or(500);
                    let bytes = {
                        let mut ed = Editor::new(&resp);
                        let _ = ed.remove_top_via();
                        if code == 401 || code == 407 {
                            for (name, value) in ctx.rc.extra_challenges(&resp) {
                                ed.add_header(name, value);
                            }
                        }
                        ed.finish()
                    };
                    if code >= 300 {
                        self.media_failed_call(&ctx);
                    } else if code > 100 && self.anchor_response(stxn, &ctx, code, &bytes) {
                        // Sent when the relay has answered (see `anchor_response`).
                        self.contexts.insert(stxn, ctx);
                        continue;
                    }
                    self.contexts.insert(stxn, ctx);
                    self.respond(stxn, code, bytes);
                    continue;
                }
                Outcome::Cancel(b) => self.send_cancel(&ctx, b),
                Outcome::NextGroup => {
                    if let Some(group) = ctx.groups.pop_front() {
                        for hop in group {
                            queue.extend(self.start_branch(stxn, &mut ctx, hop));
                        }
                    }
                }
                Outcome::Generate(code) => {
                    if code >= 300 {
                        self.media_failed_call(&ctx);
                    }
                    let built = ResponseBuilder::new(&ctx.original, code).map(|b| b.build());
                    if let Some(bytes) = built {
                        // 487 is the caller's own CANCEL taking effect, not a refusal.
                        if code != 487 {
                            self.sh
                                .audit
                                .rejected(&ctx.original, ctx.source, code, &bytes);
                        }
                        self.contexts.insert(stxn, ctx);
                        self.respond(stxn, code, bytes);
                        continue;
                    }
                }
            }
            self.contexts.insert(stxn, ctx);
        }
        if self.contexts.get(&stxn).is_some_and(|c| c.rc.is_finished())
            && let Some(ctx) = self.contexts.remove(&stxn)
        {
            // A late 2xx on one of these branches is still relayed, through the
            // stray-response path.
            for b in &ctx.branches {
                if let Some(t) = b.txn {
                    self.branch_of.remove(&t);
                }
            }
        }
    }

    /// An 18x/2xx with SDP for an anchored INVITE or UPDATE: ask the relay (off the core)
    /// and send the rewritten response when it answers. False when there is nothing to
    /// anchor (send it now).
    fn anchor_response(
        &mut self,
        stxn: ServerTxnId,
        ctx: &ProxyCtx,
        code: u16,
        bytes: &Bytes,
    ) -> bool {
        let (Some(relays), Some(hint)) = (self.sh.relays.clone(), ctx.plan.anchor) else {
            return false;
        };
        if !matches!(ctx.original.method(), Some(Method::Invite | Method::Update)) {
            return false;
        }
        let Ok(resp) = SipMessage::parse(bytes.clone()) else {
            return false;
        };
        if !crate::media::has_sdp(&resp) {
            return false;
        }
        let (Ok(Some(from)), Ok(Some(to))) = (resp.from_tag(), resp.to_tag()) else {
            return false;
        };
        // The request had no SDP: this response carries the offer (late offer).
        let offer = !crate::media::has_sdp(&ctx.original);
        let (from, to) = (from.to_owned(), to.to_owned());
        let tx = self.decisions.clone();
        let fallback = bytes.clone();
        tokio::spawn(async move {
            let bytes = crate::media::anchor_sdp(&relays, Some(hint), &resp, &to, &from, offer)
                .await
                .unwrap_or(fallback);
            let _ = tx.send(Decision::Respond {
                txn: stxn,
                code,
                bytes,
                logged: false,
            });
        });
        true
    }

    /// A new call that failed (a final non-2xx, a timeout): its relay session goes.
    fn media_failed_call(&mut self, ctx: &ProxyCtx) {
        if ctx.plan.anchor.is_some()
            && ctx.original.method() == Some(Method::Invite)
            && ctx.original.to_tag().ok().flatten().is_none()
        {
            self.media_delete(&ctx.original, false);
        }
    }

    /// End the relay session of `msg`'s call (by its From tag; with `both`, also its To
    /// tag) without waiting.
    fn media_delete(&self, msg: &SipMessage, both: bool) {
        let Some(relays) = self.sh.relays.clone() else {
            return;
        };
        let (Ok(call_id), Ok(Some(from))) = (msg.call_id(), msg.from_tag()) else {
            return;
        };
        let to = if both {
            msg.to_tag().ok().flatten().unwrap_or_default().to_owned()
        } else {
            String::new()
        };
        let (c, f) = (call_id.to_owned(), from.to_owned());
        tokio::spawn(async move { relays.delete(&c, &f, &to).await });
    }

    fn send_cancel(&mut self, ctx: &ProxyCtx, b: BranchId) {
        let Some(branch) = ctx.branches.get(b) else {
            return;
        };
        let Ok(bytes) = RequestBuilder::cancel(&branch.request) else {
            return;
        };
        let Ok(cancel) = SipMessage::parse(bytes) else {
            return;
        };
        if let Ok(t) = self.txn.request(Instant::now(), cancel, branch.target) {
            self.cancels.insert(t);
        }
    }

    /// CANCEL (§16.10): 200 to the CANCEL, then cancel the INVITE's pending branches.
    fn on_cancel(&mut self, txn: ServerTxnId, cancel: &SipMessage) {
        let target = self.txn.find_cancelled(cancel);
        let code = if target.is_some() { 200 } else { 481 };
        if let Some(b) = ResponseBuilder::new(cancel, code) {
            self.respond(txn, code, b.build());
        }
        let Some(inv) = target else { return };
        self.media_delete(cancel, false);
        if self.pending.contains_key(&inv) {
            self.cancelled_pending.insert(inv);
            return;
        }
        if let Some(ctx) = self.contexts.get_mut(&inv) {
            let out = ctx.rc.cancel();
            self.apply(inv, out);
        }
    }

    fn fire_timer_c(&mut self, now: Instant) {
        while let Some(Reverse((at, stxn))) = self.timer_c.peek().copied() {
            if at > now {
                break;
            }
            self.timer_c.pop();
            let Some(ctx) = self.contexts.get_mut(&stxn) else {
                continue;
            };
            if ctx.timer_c != Some(at) {
                continue;
            }
            ctx.timer_c = None;
            let out = ctx.rc.timer_c();
            self.apply(stxn, out);
        }
    }

    /// The ACK for a 2xx is end to end: route it statelessly (§16.11-style).
    fn forward_ack(&mut self, ack: SipMessage, source: Target) {
        let sh = self.sh.clone();
        let transports = self.transports.clone();
        tokio::spawn(async move {
            // Like any in-dialog request, the ACK leaves only within a dialog set up
            // through us, and only toward its parties: checked before anything is done
            // for it (the media relay is not asked about a stranger's SDP).
            let Some(trusted) = ack_allowed(&sh, &ack, source).await else {
                return;
            };
            // The answer of a late offer rides on the ACK.
            let mut ack = ack;
            if let Some(relays) = &sh.relays
                && crate::media::has_sdp(&ack)
                && let (Ok(Some(from)), Ok(Some(to))) = (ack.from_tag(), ack.to_tag())
                && let Some(bytes) =
                    crate::media::anchor_sdp(relays, None, &ack, from, to, false).await
                && let Ok(rewritten) = SipMessage::parse(bytes)
            {
                ack = rewritten;
            }
            if let Some((target, bytes)) = stateless_request(&sh, &ack, trusted).await {
                transports.send(target, bytes, TxnRef::Stateless);
            }
        });
    }

    /// A response without a client transaction: remove our Via, send to the next one.
    fn forward_stray_response(&mut self, resp: SipMessage) {
        let Ok(top) = resp.top_via() else { return };
        if !self.sh.local.is_my_via(&top) {
            return;
        }
        let mut ed = Editor::new(&resp);
        let _ = ed.remove_top_via();
        let bytes = ed.finish();
        let Ok(next) = SipMessage::parse(bytes.clone())
            .and_then(|m| Ok(Target::for_response(&m.top_via()?, None, None)))
        else {
            return;
        };
        if let Some(target) = next {
            if let Some(code) = resp.status() {
                self.count_response(code);
            }
            self.transports.send(target, bytes, TxnRef::Stateless);
        }
    }
}

/// The identity headers believed only from trusted peers (RFC 3325 §5; Remote-Party-ID
/// and P-Preferred-Identity are its relatives).
const IDENTITY_HEADERS: [&str; 3] = [
    "P-Asserted-Identity",
    "Remote-Party-ID",
    "P-Preferred-Identity",
];

/// The forwarded copy of `ctx.original` for `hop` (RFC 3261 §16.6 steps 1–8).
fn build_forward(sh: &Shared, ctx: &ProxyCtx, hop: &Hop, branch: &str) -> Option<Bytes> {
    let original = &ctx.original;
    let plan = &ctx.plan;
    let out_t = hop.target.transport;
    let in_t = ctx.source.transport;
    let our_via = sh.local.via(out_t, branch);
    // Our Record-Route carries the dialog's token, so in-dialog requests that come back
    // through it prove the dialog was set up through us (any edge checks it).
    let dialog = plan
        .record_route
        .then(|| {
            let call_id = original.call_id().ok()?;
            let tag = original.from_tag().ok().flatten()?;
            Some(
                sh.tokens
                    .dialog_token_for(call_id, tag, plan.identity.proven),
            )
        })
        .flatten();
    let rr = |t| {
        let uri = sh.local.route_uri(t);
        match &dialog {
            Some(d) => dispatch_core::relay::with_dialog_param(uri.as_bytes(), d),
            None => uri.into_bytes(),
        }
    };
    let rr_out = rr(out_t);
    let rr_in = rr(in_t);
    // The dispatcher's signed client address and dialog token are for this edge only.
    let relayed_via = original
        .top_via()
        .ok()
        .filter(dispatch_core::is_dispatcher_via)
        .and_then(|v| dispatch_core::relay::without_edge_params(v.raw));
    let mut ed = Editor::new(original);
    if let Some(v) = &relayed_via {
        ed.remove_top_via().ok()?;
        ed.prepend_via(v.as_slice());
    }
    for _ in 0..plan.pop_routes {
        ed.remove_top_route().ok()?;
    }
    if plan.strict_fix {
        let last = ed.remove_last_route().ok()?;
        ed.set_request_uri(strip_angles(last).to_vec()).ok()?;
    }
    if let Some(ruri) = &hop.request_uri {
        ed.set_request_uri(ruri.as_bytes()).ok()?;
    }
    for r in &hop.routes {
        ed.prepend_route(r.as_bytes());
    }
    // §16.6 step 6: a next hop that does not loose-route gets the Route as Request-URI.
    // The Route set left after popping ours and, after a strict route, its last value.
    let left = original
        .routes()
        .flatten()
        .count()
        .saturating_sub(plan.pop_routes + usize::from(plan.strict_fix));
    let remaining = original
        .routes()
        .flatten()
        .nth(plan.pop_routes)
        .filter(|_| left > 0);
    if hop.routes.is_empty()
        && hop.request_uri.is_none()
        && let Some(next) = remaining
        && next
            .parsed_uri()
            .ok()
            .and_then(|u| u.as_sip().map(|s| !s.lr()))
            .unwrap_or(false)
    {
        let old_ruri = format!(
            "<{}>",
            String::from_utf8_lossy(original.request_uri_raw().unwrap_or_default())
        );
        ed.set_request_uri(next.uri).ok()?;
        ed.remove_top_route().ok()?;
        ed.add_header("Route", old_ruri.into_bytes());
    }
    ed.decrement_max_forwards().ok()?;
    if let Some(body) = &plan.body {
        ed.set_body(body.as_ref());
    }
    if plan.record_route {
        ed.add_record_route(rr_out.as_slice());
        if in_t != out_t {
            // Double Record-Route when the transport changes: each side gets a URI it can use.
            ed.add_record_route(rr_in.as_slice());
        }
    }
    if plan.identity.strip {
        for h in IDENTITY_HEADERS {
            ed.remove_header_named(h);
        }
    }
    if let Some(pai) = &plan.identity.assert {
        ed.add_header("P-Asserted-Identity", pai.as_bytes());
    }
    ed.prepend_via(our_via.as_bytes());
    Some(ed.finish())
}

fn strip_angles(v: &[u8]) -> &[u8] {
    (sip_core::NameAddr::parse(v, "Route")
        .map(|a| a.uri)
        .unwrap_or(v)) as _
}

/// §18.2.1 and RFC 3581 §4: the server transport records the source in the top Via of
/// every request it receives, so that every response, generated here or relayed back from
/// downstream, tells the client where it was seen from and routes back through its NAT.
fn with_received(msg: SipMessage, source: Target) -> SipMessage {
    let Some(via) = nat_via(&msg, source) else {
        return msg;
    };
    let mut ed = Editor::new(&msg);
    if ed.remove_top_via().is_err() {
        return msg;
    }
    ed.prepend_via(via.as_bytes());
    SipMessage::parse(ed.finish()).unwrap_or(msg)
}

/// The client's top Via with `received` and `rport` recording where the request really
/// came from; see [`SipMessage::top_via_seen_from`].
pub fn nat_via(msg: &SipMessage, source: Target) -> Option<String> {
    msg.top_via_seen_from(source.addr)
}

/// Route a request statelessly (the ACK for a 2xx): pop our Routes, send to the next
/// Route or the Request-URI, with our Via.
/// May this ACK go on? `Some(trusted sender)` when it may.
async fn ack_allowed(sh: &Shared, ack: &SipMessage, source: Target) -> Option<bool> {
    let routes: Vec<_> = ack.routes().flatten().collect();
    let pop = routes
        .iter()
        .take_while(|r| {
            r.parsed_uri()
                .ok()
                .and_then(|u| u.as_sip().map(|s| sh.local.is_me(s)))
                .unwrap_or(false)
        })
        .count();
    let next = routes.get(pop).and_then(|r| match r.parsed_uri() {
        Ok(sip_core::Uri::Sip(u)) => Some(u),
        _ => None,
    });
    let o = crate::origin::origin(sh, ack, source);
    let verdict =
        crate::in_dialog::in_dialog_verdict(sh, ack, &routes[..pop], &o, next.as_ref()).await;
    (verdict == crate::in_dialog::InDialog::Allowed).then_some(o.trusted)
}

async fn stateless_request(
    sh: &Shared,
    msg: &SipMessage,
    trusted: bool,
) -> Option<(Target, Bytes)> {
    let routes: Vec<_> = msg.routes().flatten().collect();
    let mine = |a: &sip_core::NameAddr<'_>| {
        a.parsed_uri()
            .ok()
            .and_then(|u| u.as_sip().map(|s| sh.local.is_me(s)))
            .unwrap_or(false)
    };
    let pop = routes.iter().take_while(|r| mine(r)).count();
    let next_uri = match routes.get(pop) {
        Some(r) => r.parsed_uri().ok()?,
        None => msg.request_uri().ok()?,
    };
    let sip = *next_uri.as_sip()?;
    if routes.get(pop).is_none() && (sh.local.is_me(&sip) || sh.local.local_domain(&sip).is_some())
    {
        // Every dialog we proxy is record-routed, so a genuine 2xx ACK carries our Route.
        // Without one this is the ACK of a response we generated ourselves whose branch did
        // not match (a pre-3261 or sloppy client): absorb it rather than send a stray ACK
        // to the user's phones.
        return None;
    }
    let target = resolve(&sip).await?;
    let branch = format!("{}.ack", branch_prefix(loop_hash(msg)));
    let via = sh.local.via(target.transport, &branch);
    let relayed_via = msg
        .top_via()
        .ok()
        .filter(dispatch_core::is_dispatcher_via)
        .and_then(|v| dispatch_core::relay::without_edge_params(v.raw));
    let mut ed = Editor::new(msg);
    if let Some(v) = &relayed_via {
        ed.remove_top_via().ok()?;
        ed.prepend_via(v.as_slice());
    }
    for _ in 0..pop {
        ed.remove_top_route().ok()?;
    }
    if !trusted {
        for h in IDENTITY_HEADERS {
            ed.remove_header_named(h);
        }
    }
    ed.decrement_max_forwards().ok()?;
    ed.prepend_via(via.as_bytes());
    Some((target, ed.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(via: &str) -> SipMessage {
        let text = format!(
            "OPTIONS sip:x@example.com SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKlower\r\n\
             From: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.into_bytes()).expect("parses")
    }

    fn from(addr: &str) -> Target {
        Target {
            transport: sip_txn::Transport::Udp,
            addr: addr.parse().expect("address"),
            flow: None,
        }
    }

    #[test]
    fn received_and_rport_only_when_needed() {
        // Sent-by matches the source and no rport asked: the Via stays untouched.
        assert_eq!(
            nat_via(
                &msg("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1"),
                from("10.0.0.1:5060")
            ),
            None
        );
        // rport asked: filled in even when everything matches (RFC 3581 §4).
        assert_eq!(
            nat_via(
                &msg("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bK1"),
                from("10.0.0.1:5060")
            )
            .as_deref(),
            Some("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport=5060")
        );
        // Behind a NAT: received and rport, other parameters kept in order.
        assert_eq!(
            nat_via(
                &msg("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;x=\"q\""),
                from("203.0.113.5:40000")
            )
            .as_deref(),
            Some("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;x=\"q\";received=203.0.113.5;rport=40000")
        );
    }

    #[test]
    fn with_received_rewrites_only_the_top_via_and_is_idempotent() {
        let m = with_received(
            msg("SIP/2.0/UDP 10.0.0.1;rport;branch=z9hG4bK1"),
            from("203.0.113.5:40000"),
        );
        let vias: Vec<String> = m
            .via()
            .flatten()
            .map(|v| String::from_utf8_lossy(v.raw).into_owned())
            .collect();
        assert_eq!(
            vias,
            [
                "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;received=203.0.113.5;rport=40000",
                "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKlower"
            ]
        );
        // Already recorded: nothing more to do (a spiral through this edge or a retransmission).
        assert_eq!(nat_via(&m, from("203.0.113.5:40000")), None);
        assert_eq!(
            m.top_via().expect("via").branch,
            Some("z9hG4bK1"),
            "matching still works"
        );
    }
}
