//! The proxy core, sans-IO: it owns the transaction layer and every response context,
//! and does no I/O and no waiting of its own.
//!
//! Inputs: messages from the transports ([`Core::handle_inbound`]), the passing of time
//! ([`Core::handle_timeout`], due at [`Core::poll_timeout`]) and the answers to what it
//! asked for ([`Core::handle_answer`]). Outputs, taken with [`Core::poll_action`]: datagrams
//! and stream writes to send, and [`Ask`]s — decide a new request (the stages, which may
//! wait on the stores), anchor a response's SDP, route an ACK, end a media session. The
//! driver ([`crate::driver`]) executes them; a test executes them by hand on a virtual
//! clock (`tests/core.rs`). Owning all protocol state in one place means no locks on the
//! hot path and one ordering of events.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use foldhash::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::{Editor, Method, RequestBuilder, ResponseBuilder, SipMessage, error_reply};
use sip_transport::Inbound;
use sip_txn::{ClientTxnId, Event, ServerTxnId, Target, TransactionLayer, TxnRef};

use crate::account::{CallTrack, EndCall, Record, WallClock};
use crate::decision::{Decision, Hop, Plan};
use crate::forking::{BranchId, Outcome, ResponseContext};
use crate::forward::build_forward;
use crate::metrics::{ReasonLabel, method_index};
use crate::nat::with_received;
use crate::route::{branch_prefix, loop_hash};
use crate::shared::Shared;

/// Every `reason` of `sip_dropped_requests` (see `Core::dropped`): a denied User-Agent,
/// a source banned for failed logins, a source over its request rate.
pub const DROP_REASONS: [&str; 3] = ["scanner", "banned", "rate_limited"];

/// What the core wants done.
#[derive(Debug)]
pub enum Action {
    /// Send bytes (a request or response; `origin` says whose, for a send failure).
    Send {
        /// Where.
        target: Target,
        /// What.
        bytes: Bytes,
        /// The same message parsed (a forwarded request's first send), for a receiver in
        /// the same process. Boxed: a parsed message is ~700 bytes, a send is most actions.
        message: Option<Box<SipMessage>>,
        /// The transaction they belong to.
        origin: TxnRef,
    },
    /// Find something out or have something done; most come back as an [`Answer`].
    Ask(Box<Ask>),
}

/// Work the core hands out because it may wait (stores, DNS, a media relay).
#[derive(Debug)]
pub enum Ask {
    /// Run the request stages ([`crate::decide`]) and the anchoring of the request
    /// ([`crate::anchor`]) for a new server transaction: answered by
    /// [`Answer::Decided`].
    Decide {
        /// The transaction.
        txn: ServerTxnId,
        /// The request.
        msg: SipMessage,
        /// Where it came from.
        source: Target,
    },
    /// An 18x/2xx with SDP for an anchored call: the relay's answer goes into its SDP.
    /// Answered by [`Answer::Decided`] with [`Decision::Respond`] carrying the rewritten
    /// response (or `fallback`, the response as it was, when the relay cannot say).
    AnchorResponse {
        /// The server transaction it answers.
        txn: ServerTxnId,
        /// Its status code.
        code: u16,
        /// The response (our Via already removed).
        resp: SipMessage,
        /// The relay holding the call's session.
        relay: usize,
        /// The response carries the offer (the request had no SDP: a late offer).
        offer: bool,
    },
    /// Route an ACK for a 2xx ([`crate::ack`]): answered by [`Answer::Ack`].
    RouteAck {
        /// The ACK.
        ack: SipMessage,
        /// Where it came from.
        source: Target,
    },
    /// Record call events, write or end a dialog record ([`crate::account`]; no answer).
    Account(Record),
    /// Give back or extend a call's call-limit slots ([`crate::limit`]; no answer).
    Limit(crate::limit::Op),
    /// End a call's media session (no answer).
    EndMedia {
        /// Call-ID.
        call_id: String,
        /// From tag.
        from_tag: String,
        /// To tag, or empty for every session of the From tag.
        to_tag: String,
    },
}

/// What came back for an [`Ask`].
#[derive(Debug)]
pub enum Answer {
    /// A decision for a request, or an anchored response to send.
    Decided(Decision),
    /// An ACK's next hop and bytes.
    Ack(Target, Bytes),
}

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
    /// The call being accounted (an initial INVITE, with accounting on).
    call: Option<Box<CallTrack>>,
    /// The call's KPIs (an initial INVITE, accounting on or off).
    kpi: Option<CallKpi>,
}

/// What the per-destination call metrics need of an initial INVITE: an attempt when
/// forwarded, then its first ringing, its answer or its failure, each once.
struct CallKpi {
    /// The destination set's name, or `local` (see [`crate::metrics::DestinationLabel`]).
    destination: String,
    /// When the INVITE arrived.
    started: Instant,
    ringing: bool,
    /// Answered or failed: later responses (a fork's second 2xx) are not the call's.
    done: bool,
}

/// The core's state.
pub struct Core {
    sh: Arc<Shared>,
    txn: TransactionLayer,
    /// What the driver is to do, in order.
    actions: VecDeque<Action>,
    /// The time of the input being handled.
    now: Instant,
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
    max_queue_delay: Duration,
    /// The request being handed to the transaction layer is to be shed (see `stale`).
    shed_next: bool,
    /// Unix time of the core's instants, for call events.
    clock: WallClock,
    /// Call events and CDRs are wanted.
    accounting: bool,
}

impl Core {
    /// A core starting at `now`.
    pub fn new(sh: Arc<Shared>, now: Instant) -> Core {
        let txn = TransactionLayer::new(sh.cfg.timer_config());
        let timer_c_len = Duration::from_secs(sh.cfg.timers.timer_c_secs);
        let sh_delay = sh.cfg.limits.max_queue_delay_ms;
        let accounting = sh.accounting.is_some();
        Core {
            sh,
            txn,
            actions: VecDeque::new(),
            now,
            pending: HashMap::default(),
            cancelled_pending: HashSet::default(),
            contexts: HashMap::default(),
            branch_of: HashMap::default(),
            cancels: HashSet::default(),
            timer_c: BinaryHeap::new(),
            timer_c_len,
            started: HashMap::default(),
            branch_seq: 0,
            max_queue_delay: Duration::from_millis(sh_delay),
            shed_next: false,
            clock: WallClock::new(now),
            accounting,
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Core::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.txn.poll_timeout(),
            self.timer_c.peek().map(|Reverse((at, _))| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time passed: transaction timers, Timer C.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.txn.handle_timeout(now);
        self.fire_timer_c(now);
        self.drain();
    }

    /// The answer to an [`Ask`].
    pub fn handle_answer(&mut self, now: Instant, a: Answer) {
        self.now = now;
        match a {
            Answer::Decided(d) => self.on_decision(d),
            Answer::Ack(target, bytes) => self.send(target, bytes, TxnRef::Stateless),
        }
        // Whatever the decision made the transaction layer send goes out now, also when
        // it ended early (a request cancelled while it was being decided).
        self.drain();
    }

    /// Server and client transactions held (for the gauges).
    #[must_use]
    pub fn transactions(&self) -> (usize, usize) {
        (self.txn.server_count(), self.txn.client_count())
    }

    /// Server transactions waiting for their decision (tests: nothing is left behind).
    #[must_use]
    pub fn pending_decisions(&self) -> usize {
        self.pending.len()
    }

    fn send(&mut self, target: Target, bytes: Bytes, origin: TxnRef) {
        self.actions.push_back(Action::Send {
            target,
            bytes,
            message: None,
            origin,
        });
    }

    fn ask(&mut self, a: Ask) {
        self.actions.push_back(Action::Ask(Box::new(a)));
    }

    /// Accounting work for the driver, unless there is none (CDRs only: no call events).
    fn account(&mut self, r: Record) {
        if !r.is_empty() {
            self.ask(Ask::Account(r));
        }
    }

    /// A message from the transports.
    pub fn handle_inbound(&mut self, now: Instant, m: Inbound) {
        self.now = now;
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
                            self.send(source, r, TxnRef::Stateless);
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
        let [scanner, banned, rate_limited] = DROP_REASONS;
        let reason = if self.sh.deny.denies_message(msg) {
            scanner
        } else if o.trusted || self.sh.guard.allowed(o.addr.ip()) {
            return false;
        } else {
            match self.sh.guard.admit(o.addr.ip(), now) {
                crate::guard::Admit::Yes => return false,
                crate::guard::Admit::Banned => banned,
                crate::guard::Admit::RateLimited => rate_limited,
                crate::guard::Admit::FloodBanned => {
                    let l = self.sh.guard.flood_lockout(o.addr.ip());
                    self.sh
                        .metrics
                        .lockouts
                        .get_or_create(&ReasonLabel { reason: l.label() })
                        .inc();
                    self.sh.audit.lockout(&l);
                    // Every other edge is told: the flooder is dropped everywhere.
                    crate::bans::publish(&self.sh, &l);
                    rate_limited
                }
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
                .observe_duration(method, self.since(received_at));
            self.send(source, bytes, TxnRef::Stateless);
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
                self.actions.push_back(Action::Send {
                    target: t.target,
                    bytes: t.bytes,
                    message: t.message.map(Box::new),
                    origin: t.origin,
                });
            }
            if !progressed {
                break;
            }
        }
    }

    fn count_response(&self, code: u16) {
        self.sh.metrics.count_response(code);
    }

    /// When server transaction `txn` received its request (now if unknown): call setup
    /// times count from the INVITE's arrival, decision time included.
    fn started_at(&self, txn: ServerTxnId) -> Instant {
        self.started.get(&txn).map_or(self.now, |s| s.0)
    }

    /// Seconds from `t0` to now (for the duration histograms).
    fn since(&self, t0: Instant) -> f64 {
        self.now.saturating_duration_since(t0).as_secs_f64()
    }

    fn respond(&mut self, txn: ServerTxnId, code: u16, bytes: Bytes) {
        let now = self.now;
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
                self.started.insert(txn, (self.now, method, source));
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
                        self.ask(Ask::Decide { txn, msg, source });
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
                if let Some((req, source)) = self.pending.remove(&txn) {
                    if !logged && !bytes.is_empty() {
                        self.sh.audit.rejected(&req, source, code, &bytes);
                    }
                    self.account_refused(&req, source, code, false);
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
                    self.account_refused(&original, source, 487, true);
                    if plan.limited {
                        self.limit_release(&original, false);
                    }
                    return;
                }
                self.start_forwarding(txn, original, source, plan);
            }
        }
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
            self.account_refused(&original, source, 480, false);
            return;
        };
        let invite = original.method() == Some(Method::Invite);
        let initial = original.to_tag().ok().flatten().is_none();
        if original.method() == Some(Method::Bye) && self.sh.limits.is_some() {
            // Whichever edge sees the BYE gives the call's slots back.
            self.limit_release(&original, true);
        }
        if self.accounting && original.method() == Some(Method::Bye) {
            // The BYE's edge ends the call's record and writes its CDR (with the relay
            // session's statistics: it ends that session too).
            self.account_bye(&original, plan.end_media);
        } else if plan.end_media {
            self.end_media(&original, true);
        }
        let call = (self.accounting && invite && initial)
            .then(|| {
                let at = self.clock.ms(self.now);
                CallTrack::start(
                    &self.sh,
                    &original,
                    source,
                    Some((&plan, first.first())),
                    at,
                )
            })
            .flatten()
            .map(Box::new);
        if let Some(c) = &call {
            let r = c.attempt(&self.sh);
            self.account(r);
        }
        let kpi = (invite && initial).then(|| {
            let destination = plan.destination.as_deref().unwrap_or("local").to_owned();
            self.sh.metrics.call_attempt(&destination);
            CallKpi {
                destination,
                started: self.started_at(txn),
                ringing: false,
                done: false,
            }
        });
        let mut ctx = ProxyCtx {
            loop_prefix: branch_prefix(loop_hash(&original)),
            rc: ResponseContext::new(invite, groups.len()),
            original,
            source,
            branches: Vec::new(),
            groups,
            plan,
            timer_c: None,
            call,
            kpi,
        };
        if invite {
            let at = self.now + self.timer_c_len;
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
        let built = build_forward(
            &self.sh,
            &ctx.original,
            ctx.source,
            &ctx.plan,
            &hop,
            &branch,
        );
        let Some(req) = built else {
            ctx.branches.push(BranchInfo {
                txn: None,
                request: ctx.original.clone(),
                target: hop.target,
                registered,
            });
            return ctx.rc.on_branch_failure(b, 500);
        };
        match self.txn.request(self.now, req.clone(), hop.target) {
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
            let at = self.now + self.timer_c_len;
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
                    self.kpi_response(&mut ctx, code);
                    self.account_response(&mut ctx, code, &resp);
                    self.limit_response(&mut ctx, code, Some(&resp));
                    if (200..300).contains(&code) {
                        self.account_refresh(&ctx, &resp);
                        self.limit_refresh(&ctx, &resp);
                    }
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
                        self.kpi_response(&mut ctx, code);
                        self.account_failure(&mut ctx, code, "");
                        self.limit_response(&mut ctx, code, None);
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

    /// An 18x/2xx with SDP for an anchored INVITE or UPDATE: ask the relay, and send the
    /// rewritten response when it answers. False when there is nothing to anchor (send it
    /// now).
    fn anchor_response(
        &mut self,
        stxn: ServerTxnId,
        ctx: &ProxyCtx,
        code: u16,
        bytes: &Bytes,
    ) -> bool {
        let Some(relay) = ctx.plan.anchor else {
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
        if !matches!((resp.from_tag(), resp.to_tag()), (Ok(Some(_)), Ok(Some(_)))) {
            return false;
        }
        // The request had no SDP: this response carries the offer (late offer).
        let offer = !crate::media::has_sdp(&ctx.original);
        self.ask(Ask::AnchorResponse {
            txn: stxn,
            code,
            resp,
            relay,
            offer,
        });
        true
    }

    /// A response forwarded for a call being accounted: ringing, answer or failure.
    fn account_response(&mut self, ctx: &mut ProxyCtx, code: u16, resp: &SipMessage) {
        let Some(c) = &mut ctx.call else { return };
        let at = self.clock.ms(self.now);
        let r = match code {
            101..=199 => c.provisional(&self.sh, code, at),
            200..=299 => c.answered(&self.sh, resp, at),
            _ => {
                let reason = String::from_utf8_lossy(resp.reason().unwrap_or_default());
                c.failed(&self.sh, code, &reason, false, at)
            }
        };
        if let Some(r) = r {
            self.account(r);
        }
    }

    /// A response for an initial INVITE (forwarded or generated): its call's first
    /// ringing, answer or failure.
    fn kpi_response(&self, ctx: &mut ProxyCtx, code: u16) {
        let Some(k) = &mut ctx.kpi else { return };
        if k.done {
            return;
        }
        let m = &self.sh.metrics;
        let secs = self.since(k.started);
        match code {
            180..=199 if !k.ringing => {
                k.ringing = true;
                m.call_ringing(&k.destination, secs);
            }
            200..=299 => {
                k.done = true;
                m.call_answered(&k.destination, secs);
            }
            300.. => {
                k.done = true;
                m.call_failed(&k.destination, code);
            }
            _ => {}
        }
    }

    /// A new call refused before it was forwarded: an attempt that failed, to no
    /// destination set. Challenges (401/407) and 422 are steps: the phone asks again.
    fn kpi_refused(&self, req: &SipMessage, code: u16) {
        if code < 300
            || matches!(code, 401 | 407 | 422)
            || req.method() != Some(Method::Invite)
            || req.to_tag().ok().flatten().is_some()
        {
            return;
        }
        self.sh.metrics.call_attempt("unrouted");
        self.sh.metrics.call_failed("unrouted", code);
    }

    /// A final failure this edge generated for a call being accounted (Timer C, every
    /// branch failing, a CANCEL's 487).
    fn account_failure(&mut self, ctx: &mut ProxyCtx, code: u16, reason: &str) {
        let Some(c) = &mut ctx.call else { return };
        let at = self.clock.ms(self.now);
        if let Some(r) = c.failed(&self.sh, code, reason, true, at) {
            self.account(r);
        }
    }

    /// A new call refused before it was forwarded (no such user, offline, forbidden, a
    /// dependency down, cancelled while deciding): its attempt and failure. A challenge
    /// (401/407) or a 422 (session interval too small) is a step of the call, not its
    /// end: the phone asks again.
    fn account_refused(&mut self, req: &SipMessage, source: Target, code: u16, cancelled: bool) {
        self.kpi_refused(req, code);
        if !self.accounting
            || code < 300
            || matches!(code, 401 | 407 | 422)
            || req.method() != Some(Method::Invite)
            || req.to_tag().ok().flatten().is_some()
        {
            return;
        }
        let at = self.clock.ms(self.now);
        let Some(mut c) = CallTrack::start(&self.sh, req, source, None, at) else {
            return;
        };
        c.cancelled = cancelled;
        let attempt = c.attempt(&self.sh);
        self.account(attempt);
        if let Some(r) = c.failed(&self.sh, code, "", true, at) {
            self.account(r);
        }
    }

    /// A 2xx forwarded for a re-INVITE or UPDATE: a session refresh (RFC 4028), the
    /// call's record lives on.
    fn account_refresh(&mut self, ctx: &ProxyCtx, resp: &SipMessage) {
        let o = &ctx.original;
        if !self.accounting || !matches!(o.method(), Some(Method::Invite | Method::Update)) {
            return;
        }
        let (Ok(call_id), Ok(Some(from)), Ok(Some(to))) = (o.call_id(), o.from_tag(), o.to_tag())
        else {
            return;
        };
        self.account(Record::Refreshed {
            call_id: call_id.to_owned(),
            tags: [from.to_owned(), to.to_owned()],
            session_expires: crate::session_timer::interval(resp).unwrap_or(0),
        });
    }

    /// The final response of a call holding call-limit slots: a failure gives them back,
    /// the answer makes them live as long as the dialog ([`crate::limit`]). Once.
    fn limit_response(&mut self, ctx: &mut ProxyCtx, code: u16, resp: Option<&SipMessage>) {
        if !ctx.plan.limited || code < 200 {
            return;
        }
        ctx.plan.limited = false;
        if code >= 300 {
            self.limit_release(&ctx.original, false);
            return;
        }
        let session = resp.and_then(crate::session_timer::interval).unwrap_or(0);
        let o = &ctx.original;
        if let (Ok(call_id), Ok(Some(from))) = (o.call_id(), o.from_tag()) {
            self.ask(Ask::Limit(crate::limit::Op::Refresh {
                call_id: call_id.to_owned(),
                tags: vec![from.to_owned()],
                ttl: crate::account::record_ttl(&self.sh, session),
            }));
        }
    }

    /// A 2xx to a re-INVITE or UPDATE: a session refresh keeps the call's slots.
    fn limit_refresh(&mut self, ctx: &ProxyCtx, resp: &SipMessage) {
        let o = &ctx.original;
        if self.sh.limits.is_none() || !matches!(o.method(), Some(Method::Invite | Method::Update))
        {
            return;
        }
        let (Ok(call_id), Ok(Some(from)), Ok(Some(to))) = (o.call_id(), o.from_tag(), o.to_tag())
        else {
            return;
        };
        let session = crate::session_timer::interval(resp).unwrap_or(0);
        self.ask(Ask::Limit(crate::limit::Op::Refresh {
            call_id: call_id.to_owned(),
            tags: vec![from.to_owned(), to.to_owned()],
            ttl: crate::account::record_ttl(&self.sh, session),
        }));
    }

    /// Give a call's slots back: named by the From tag (its INVITE), or by either tag
    /// (`both`: a BYE, sent by either side).
    fn limit_release(&mut self, msg: &SipMessage, both: bool) {
        let (Ok(call_id), Ok(Some(from))) = (msg.call_id(), msg.from_tag()) else {
            return;
        };
        let mut tags = vec![from.to_owned()];
        if both && let Ok(Some(to)) = msg.to_tag() {
            tags.push(to.to_owned());
        }
        self.ask(Ask::Limit(crate::limit::Op::Release {
            call_id: call_id.to_owned(),
            tags,
        }));
    }

    /// A BYE being forwarded: the call ends (see [`crate::account`]).
    fn account_bye(&mut self, bye: &SipMessage, end_media: bool) {
        let (Ok(call_id), Ok(Some(from_tag))) = (bye.call_id(), bye.from_tag()) else {
            return;
        };
        let end = EndCall {
            call_id: call_id.to_owned(),
            from_tag: from_tag.to_owned(),
            to_tag: bye.to_tag().ok().flatten().unwrap_or_default().to_owned(),
            at_ms: self.clock.ms(self.now),
            end_media: end_media && self.sh.relays.is_some(),
        };
        self.account(Record::Ended(end));
    }

    /// A new call that failed (a final non-2xx, a timeout): its relay session goes.
    fn media_failed_call(&mut self, ctx: &ProxyCtx) {
        if ctx.plan.anchor.is_some()
            && ctx.original.method() == Some(Method::Invite)
            && ctx.original.to_tag().ok().flatten().is_none()
        {
            self.end_media(&ctx.original, false);
        }
    }

    /// End the relay session of `msg`'s call (by its From tag; with `both`, also its To
    /// tag) without waiting. Only when media is anchored here at all.
    fn end_media(&mut self, msg: &SipMessage, both: bool) {
        if self.sh.relays.is_none() {
            return;
        }
        let (Ok(call_id), Ok(Some(from))) = (msg.call_id(), msg.from_tag()) else {
            return;
        };
        let to_tag = if both {
            msg.to_tag().ok().flatten().unwrap_or_default().to_owned()
        } else {
            String::new()
        };
        self.ask(Ask::EndMedia {
            call_id: call_id.to_owned(),
            from_tag: from.to_owned(),
            to_tag,
        });
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
        if let Ok(t) = self.txn.request(self.now, cancel, branch.target) {
            self.cancels.insert(t);
        }
        if let Some(invite) = branch.txn {
            self.txn.cancelled(self.now, invite);
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
        self.end_media(cancel, false);
        if self.pending.contains_key(&inv) {
            self.cancelled_pending.insert(inv);
            return;
        }
        if let Some(ctx) = self.contexts.get_mut(&inv) {
            if let Some(c) = &mut ctx.call {
                c.cancelled = true;
            }
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

    /// The ACK for a 2xx is end to end: routed statelessly, once the stages say it may
    /// go on ([`crate::ack`]).
    fn forward_ack(&mut self, ack: SipMessage, source: Target) {
        self.ask(Ask::RouteAck { ack, source });
    }

    /// A response without a client transaction: remove our Via, send to the next one.
    fn forward_stray_response(&mut self, resp: SipMessage) {
        let Ok(top) = resp.top_via() else { return };
        if !self.sh.local.is_my_via(&top) {
            return;
        }
        let mut ed = Editor::new(&resp);
        let _ = ed.remove_top_via();
        let Ok(next) = ed.finish_message() else {
            return;
        };
        if let Ok(Some(target)) = next.top_via().map(|v| Target::for_response(&v, None, None)) {
            if let Some(code) = resp.status() {
                self.count_response(code);
            }
            self.send(target, next.into_bytes(), TxnRef::Stateless);
        }
    }
}
