//! What the session table refuses, and why.

/// Why an offer, answer or delete was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The relay is draining: existing sessions go on, new ones go elsewhere.
    #[error("draining: no new sessions")]
    Draining,
    /// Every port pair of the range is in use or in quarantine.
    #[error("port range exhausted")]
    NoPorts,
    /// An answer or delete for a call this relay does not know.
    #[error("no such session")]
    NotFound,
    /// The session table is full (the configured bound).
    #[error("session limit reached")]
    TooManySessions,
    /// An offer or answer without a usable media section.
    #[error("invalid media description: {0}")]
    Invalid(&'static str),
}
