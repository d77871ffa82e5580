//! Errors of the transaction layer API (misuse by the transaction user, or messages that
//! cannot be keyed); protocol events are [`Event`](crate::Event)s, not errors.

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// The message has no usable transaction key (no Via, no CSeq...): validate first.
    #[error("message cannot be matched to a transaction: {0}")]
    NoKey(sip_core::Error),
    /// A response was handed in as a request.
    #[error("not a request")]
    NotARequest,
    /// A request was handed in as a response.
    #[error("not a response")]
    NotAResponse,
    /// The transaction does not exist (any more).
    #[error("unknown transaction")]
    UnknownTransaction,
    /// A client transaction with this branch and method already exists.
    #[error("duplicate branch")]
    DuplicateBranch,
    /// The state machine does not allow this now.
    #[error("invalid in this state: {0}")]
    InvalidState(String),
}
