//! The response context of a forwarded request (RFC 3261 §16.7): its branches, the
//! sequential q-groups still to try, best-response selection, CANCEL (§16.10) and Timer C.
//!
//! Sans-IO: it is told what happened on each branch and answers with [`Outcome`]s that
//! the proxy core carries out (forward a response, send a CANCEL, start the next group,
//! generate a final response).

use sip_core::{HeaderName, SipMessage};

/// Index of a branch within its context.
pub type BranchId = usize;

/// Where a branch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchState {
    /// Sent, nothing back yet (a CANCEL may not be sent yet, §9.1).
    Pending,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived, or the branch failed.
    Done,
}

#[derive(Debug, Clone)]
struct Branch {
    state: BranchState,
    /// Cancel as soon as a provisional response makes it possible.
    cancel_on_provisional: bool,
    /// A CANCEL was already sent.
    cancel_sent: bool,
}

/// The best final response so far.
#[derive(Debug, Clone)]
// Responses are the common case here; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Candidate {
    Response(SipMessage),
    /// A failure with no response: 408 (timeout) or 503 (transport error, §8.1.3.1).
    Local(u16),
}

impl Candidate {
    fn code(&self) -> u16 {
        match self {
            Candidate::Response(m) => m.status().unwrap_or(500),
            Candidate::Local(c) => *c,
        }
    }
}

/// What the core must do.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // As for Candidate: a response per forwarded reply.
pub enum Outcome {
    /// Forward this response upstream on the server transaction.
    Forward(SipMessage),
    /// Send a CANCEL for this branch.
    Cancel(BranchId),
    /// Every branch of the current q-group failed: start the next group.
    NextGroup,
    /// Answer upstream with a response generated from the original request.
    Generate(u16),
}

/// The state of one forwarded request.
#[derive(Debug, Clone)]
pub struct ResponseContext {
    invite: bool,
    branches: Vec<Branch>,
    /// Sequential q-groups the core still holds after the current one.
    groups_left: usize,
    final_sent: bool,
    cancelled: bool,
    saw_6xx: bool,
    best: Option<Candidate>,
    /// 401/407 responses, whose challenges a forwarded 401/407 must carry (§16.7 step 7).
    challenges: Vec<SipMessage>,
}

/// Lower is better (§16.7 step 6): any 6xx, else the lowest class; first come among equals.
/// Within 4xx (where §16.7 leaves the choice open) the more useful answer wins, as
/// Kamailio's tm does: a challenge the caller can answer, then a request it can fix, then
/// a definite answer such as 486, and the vague 480, the 487 of a cancelled branch and a
/// timeout last.
fn rank(code: u16) -> u16 {
    match code {
        600..=699 => 0,
        300..=399 => 10,
        401 | 407 => 20,
        415 | 420 | 484 => 21,
        480 => 24,
        487 => 25,
        408 => 26,
        400..=499 => 22,
        _ => 30,
    }
}

impl ResponseContext {
    /// A context for an INVITE or not, with `groups_left` more q-groups to try after the
    /// first.
    pub fn new(invite: bool, groups_left: usize) -> Self {
        ResponseContext {
            invite,
            branches: Vec::new(),
            groups_left,
            final_sent: false,
            cancelled: false,
            saw_6xx: false,
            best: None,
            challenges: Vec::new(),
        }
    }

    /// A new branch in the current group.
    pub fn add_branch(&mut self) -> BranchId {
        self.branches.push(Branch {
            state: BranchState::Pending,
            cancel_on_provisional: false,
            cancel_sent: false,
        });
        self.branches.len() - 1
    }

    /// State of a branch.
    pub fn branch_state(&self, b: BranchId) -> Option<BranchState> {
        self.branches.get(b).map(|x| x.state)
    }

    /// A final response went upstream.
    pub fn final_sent(&self) -> bool {
        self.final_sent
    }

    /// Final response sent and every branch done: nothing more can happen.
    pub fn is_finished(&self) -> bool {
        self.final_sent && self.branches.iter().all(|b| b.state == BranchState::Done)
    }

    /// Whether the request was cancelled (CANCEL received or Timer C).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// Challenges to add to a forwarded 401/407 `chosen` (from the other 401/407s).
    pub fn extra_challenges<'a>(
        &'a self,
        chosen: &'a SipMessage,
    ) -> impl Iterator<Item = (&'static str, &'a [u8])> + 'a {
        self.challenges
            .iter()
            .filter(move |m| !std::ptr::eq(*m, chosen) && m.as_bytes() != chosen.as_bytes())
            .flat_map(|m| {
                m.headers_of(HeaderName::WwwAuthenticate)
                    .map(|h| ("WWW-Authenticate", h.value))
                    .chain(
                        m.headers_of(HeaderName::ProxyAuthenticate)
                            .map(|h| ("Proxy-Authenticate", h.value)),
                    )
            })
    }

    fn cancel_others(&mut self, except: Option<BranchId>, out: &mut Vec<Outcome>) {
        for (i, b) in self.branches.iter_mut().enumerate() {
            if Some(i) == except || b.state == BranchState::Done || b.cancel_sent {
                continue;
            }
            match b.state {
                BranchState::Proceeding => {
                    b.cancel_sent = true;
                    out.push(Outcome::Cancel(i));
                }
                // §9.1: no CANCEL before a provisional response; send it when one comes.
                BranchState::Pending => b.cancel_on_provisional = true,
                BranchState::Done => {}
            }
        }
    }

    fn consider(&mut self, c: Candidate) {
        let better = match &self.best {
            None => true,
            Some(b) => rank(c.code()) < rank(b.code()),
        };
        if better {
            self.best = Some(c);
        }
    }

    /// A response arrived on branch `b`.
    pub fn on_response(&mut self, b: BranchId, msg: SipMessage) -> Vec<Outcome> {
        let mut out = Vec::new();
        let Some(code) = msg.status() else { return out };
        let Some(branch) = self.branches.get_mut(b) else {
            return out;
        };
        match code {
            100..=199 => {
                if branch.state == BranchState::Pending {
                    branch.state = BranchState::Proceeding;
                }
                if branch.cancel_on_provisional && !branch.cancel_sent {
                    branch.cancel_sent = true;
                    out.push(Outcome::Cancel(b));
                }
                // 100 Trying is hop-by-hop (§16.7 step 5).
                if code > 100 && !self.final_sent {
                    out.push(Outcome::Forward(msg));
                }
                return out;
            }
            200..=299 => {
                branch.state = BranchState::Done;
                // Every 2xx of an INVITE goes upstream (forked answers create dialogs).
                if !self.final_sent || self.invite {
                    out.push(Outcome::Forward(msg));
                }
                self.final_sent = true;
                self.groups_left = 0;
                if self.invite {
                    self.cancel_others(Some(b), &mut out);
                }
                return out;
            }
            _ => {
                if branch.state == BranchState::Done {
                    return out;
                }
                branch.state = BranchState::Done;
                if code >= 600 && self.invite {
                    // §16.7 step 5: a 6xx ends the search: cancel the rest, no new branches.
                    self.saw_6xx = true;
                    self.groups_left = 0;
                    self.cancel_others(Some(b), &mut out);
                }
                if code == 401 || code == 407 {
                    self.challenges.push(msg.clone());
                }
                self.consider(Candidate::Response(msg));
            }
        }
        self.check_complete(&mut out);
        out
    }

    /// Branch `b` ended without a response: timeout (408) or transport failure (503).
    pub fn on_branch_failure(&mut self, b: BranchId, code: u16) -> Vec<Outcome> {
        let mut out = Vec::new();
        if let Some(branch) = self.branches.get_mut(b)
            && branch.state != BranchState::Done
        {
            branch.state = BranchState::Done;
            self.consider(Candidate::Local(code));
        }
        self.check_complete(&mut out);
        out
    }

    /// A CANCEL for the request arrived (§16.10): cancel every pending branch, start no
    /// new ones.
    pub fn cancel(&mut self) -> Vec<Outcome> {
        let mut out = Vec::new();
        self.cancelled = true;
        self.groups_left = 0;
        self.cancel_others(None, &mut out);
        self.check_complete(&mut out);
        out
    }

    /// Timer C fired (§16.6 step 11): ringing branches are cancelled, silent ones count as
    /// timed out.
    pub fn timer_c(&mut self) -> Vec<Outcome> {
        let mut out = Vec::new();
        self.groups_left = 0;
        for i in 0..self.branches.len() {
            if self.branches[i].state == BranchState::Pending {
                self.branches[i].state = BranchState::Done;
                self.consider(Candidate::Local(408));
            }
        }
        self.cancel_others(None, &mut out);
        self.check_complete(&mut out);
        out
    }

    fn check_complete(&mut self, out: &mut Vec<Outcome>) {
        if self.final_sent || self.branches.iter().any(|b| b.state != BranchState::Done) {
            return;
        }
        if self.groups_left > 0 && !self.saw_6xx && !self.cancelled {
            self.groups_left -= 1;
            out.push(Outcome::NextGroup);
            return;
        }
        self.final_sent = true;
        match self.best.take() {
            // §16.7 step 6: a 503 from downstream must not be taken as about this proxy.
            Some(Candidate::Response(m)) if m.status() == Some(503) => {
                out.push(Outcome::Generate(500))
            }
            Some(Candidate::Response(m)) => out.push(Outcome::Forward(m)),
            Some(Candidate::Local(408)) if self.cancelled => out.push(Outcome::Generate(487)),
            Some(Candidate::Local(503)) => out.push(Outcome::Generate(503)),
            Some(Candidate::Local(c)) => out.push(Outcome::Generate(c)),
            None => out.push(Outcome::Generate(if self.cancelled { 487 } else { 408 })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(code: u16) -> SipMessage {
        let extra = match code {
            401 => "WWW-Authenticate: Digest realm=\"a\", nonce=\"1\"\r\n",
            407 => "Proxy-Authenticate: Digest realm=\"b\", nonce=\"2\"\r\n",
            _ => "",
        };
        SipMessage::parse(
            format!("SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag={code}\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{extra}l: 0\r\n\r\n")
                .into_bytes(),
        )
        .unwrap()
    }

    fn codes(out: &[Outcome]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Outcome::Forward(m) => format!("fwd {}", m.status().unwrap()),
                Outcome::Cancel(b) => format!("cancel {b}"),
                Outcome::NextGroup => "next".into(),
                Outcome::Generate(c) => format!("gen {c}"),
            })
            .collect()
    }

    #[test]
    fn provisional_forwarded_but_not_100() {
        let mut c = ResponseContext::new(true, 0);
        let b = c.add_branch();
        assert!(codes(&c.on_response(b, resp(100))).is_empty());
        assert_eq!(codes(&c.on_response(b, resp(180))), ["fwd 180"]);
        assert_eq!(codes(&c.on_response(b, resp(200))), ["fwd 200"]);
        assert!(c.is_finished());
    }

    #[test]
    fn parallel_fork_2xx_cancels_the_rest() {
        let mut c = ResponseContext::new(true, 0);
        let (a, b, d) = (c.add_branch(), c.add_branch(), c.add_branch());
        c.on_response(b, resp(180));
        assert_eq!(codes(&c.on_response(a, resp(200))), ["fwd 200", "cancel 1"]);
        // Branch d had no provisional: its CANCEL waits for one (§9.1).
        assert_eq!(codes(&c.on_response(d, resp(100))), ["cancel 2"]);
        // A second 2xx (another fork answered too) still goes upstream.
        assert_eq!(codes(&c.on_response(b, resp(200))), ["fwd 200"]);
        assert!(codes(&c.on_response(d, resp(487))).is_empty());
        assert!(c.is_finished());
    }

    #[test]
    fn best_response_selection() {
        let mut c = ResponseContext::new(true, 0);
        let (a, b, d) = (c.add_branch(), c.add_branch(), c.add_branch());
        assert!(c.on_response(a, resp(486)).is_empty());
        assert!(c.on_response(b, resp(302)).is_empty());
        assert_eq!(
            codes(&c.on_response(d, resp(503))),
            ["fwd 302"],
            "lowest class wins"
        );

        let mut c = ResponseContext::new(true, 0);
        let (a, b) = (c.add_branch(), c.add_branch());
        assert!(c.on_response(a, resp(503)).is_empty());
        assert_eq!(
            codes(&c.on_response(b, resp(504))),
            ["gen 500"],
            "5xx first-come; a 503 becomes 500"
        );
    }

    #[test]
    fn six_xx_ends_the_search() {
        let mut c = ResponseContext::new(true, 2);
        let (a, b) = (c.add_branch(), c.add_branch());
        c.on_response(b, resp(183));
        assert_eq!(codes(&c.on_response(a, resp(603))), ["cancel 1"]);
        assert_eq!(
            codes(&c.on_response(b, resp(487))),
            ["fwd 603"],
            "no next group after a 6xx"
        );
    }

    #[test]
    fn sequential_groups() {
        let mut c = ResponseContext::new(true, 1);
        let a = c.add_branch();
        assert_eq!(codes(&c.on_response(a, resp(480))), ["next"]);
        let b = c.add_branch();
        assert_eq!(codes(&c.on_response(b, resp(486))), ["fwd 486"]);
    }

    #[test]
    fn failures_and_cancel() {
        let mut c = ResponseContext::new(true, 0);
        let a = c.add_branch();
        assert_eq!(codes(&c.on_branch_failure(a, 408)), ["gen 408"]);

        let mut c = ResponseContext::new(true, 0);
        let (a, b) = (c.add_branch(), c.add_branch());
        c.on_response(a, resp(180));
        assert_eq!(codes(&c.cancel()), ["cancel 0"], "b has no provisional yet");
        assert_eq!(codes(&c.on_response(b, resp(180))), ["cancel 1", "fwd 180"]);
        c.on_response(a, resp(487));
        assert_eq!(codes(&c.on_branch_failure(b, 408)), ["fwd 487"]);

        let mut c = ResponseContext::new(true, 3);
        let a = c.add_branch();
        c.cancel();
        assert_eq!(
            codes(&c.on_branch_failure(a, 408)),
            ["gen 487"],
            "cancelled: no next group, 487"
        );
    }

    #[test]
    fn timer_c() {
        let mut c = ResponseContext::new(true, 1);
        let (a, b) = (c.add_branch(), c.add_branch());
        c.on_response(a, resp(180));
        assert_eq!(codes(&c.timer_c()), ["cancel 0"]);
        assert_eq!(c.branch_state(b), Some(BranchState::Done));
        assert_eq!(codes(&c.on_response(a, resp(487))), ["fwd 487"]);
    }

    #[test]
    fn challenges_are_aggregated() {
        let mut c = ResponseContext::new(false, 0);
        let (a, b) = (c.add_branch(), c.add_branch());
        c.on_response(a, resp(401));
        let out = c.on_response(b, resp(407));
        let Outcome::Forward(chosen) = &out[0] else {
            panic!()
        };
        assert_eq!(chosen.status(), Some(401));
        let extra: Vec<_> = c.extra_challenges(chosen).collect();
        assert_eq!(
            extra,
            [(
                "Proxy-Authenticate",
                &b"Digest realm=\"b\", nonce=\"2\""[..]
            )]
        );
    }

    #[test]
    fn non_invite_single_final() {
        let mut c = ResponseContext::new(false, 0);
        let (a, b) = (c.add_branch(), c.add_branch());
        assert_eq!(codes(&c.on_response(a, resp(200))), ["fwd 200"]);
        assert!(
            codes(&c.on_response(b, resp(200))).is_empty(),
            "non-INVITE: one final only"
        );
    }
}
