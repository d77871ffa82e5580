//! Why a REGISTER fails, and the response the edge sends for it.

/// Why a REGISTER cannot be applied.
///
/// Every variant maps to one SIP response ([`status`](Self::status),
/// [`reason_phrase`](Self::reason_phrase), [`min_expires`](Self::min_expires)), so the edge
/// answers without matching on strings. A request that fails changes no binding: the rules
/// run as one pure function and either every contact applies or none does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The REGISTER is malformed (missing/bad To, Call-ID, CSeq, Contact, Expires, Path).
    /// The sip-core error names the defect.
    #[error(transparent)]
    Message(#[from] sip_core::Error),
    /// The request is not a REGISTER, or its CSeq method is not REGISTER.
    #[error("not a REGISTER request")]
    NotRegister,
    /// The To URI is neither `sip:`, `sips:` nor `tel:`; the scheme is carried.
    #[error("unsupported address-of-record scheme {0:?}")]
    UnsupportedScheme(String),
    /// The To URI has a supported scheme but cannot name an address-of-record (for
    /// example a local `tel:` number without `phone-context`).
    #[error("invalid address-of-record: {0}")]
    InvalidAor(&'static str),
    /// A Contact value cannot be stored (URI does not parse, is not UTF-8, bad instance).
    #[error("invalid Contact: {0}")]
    InvalidContact(&'static str),
    /// `Contact: *` together with other Contact values, or without `Expires: 0`
    /// (RFC 3261 §10.3 step 6).
    #[error("Contact: * must be alone, with Expires: 0")]
    InvalidWildcard,
    /// A non-zero expiry below the registrar's minimum (RFC 3261 §10.3 step 7): the edge
    /// answers 423 with `Min-Expires`.
    #[error("interval too brief (minimum {min_expires} s)")]
    IntervalTooBrief {
        /// The value for the `Min-Expires` header.
        min_expires: u32,
    },
    /// A binding with the request's Call-ID holds a CSeq at least as high as the request's
    /// (RFC 3261 §10.3 steps 6 and 7): a retransmission or a reordered REGISTER.
    #[error("out-of-order REGISTER (CSeq {received} not above stored {stored})")]
    OutOfOrder {
        /// CSeq stored with the binding.
        stored: u32,
        /// CSeq of the request.
        received: u32,
    },
    /// Applying the request would grow the address-of-record beyond its contact limit.
    #[error("too many contacts (limit {limit})")]
    TooManyContacts {
        /// The per-AOR limit in force.
        limit: usize,
    },
}

impl RegisterError {
    /// The final response status for this error.
    ///
    /// * 400 for malformed requests, misuse of `*`, unusable contacts or AORs;
    /// * 416 for an AOR scheme other than sip/sips/tel (RFC 3261 §8.2.2.1 reasoning, applied
    ///   to the To URI that names the AOR);
    /// * 423 for [`IntervalTooBrief`](Self::IntervalTooBrief), with
    ///   [`min_expires`](Self::min_expires) as the `Min-Expires` header;
    /// * 500 for [`OutOfOrder`](Self::OutOfOrder): RFC 3261 §10.3 says only that "the request
    ///   fails"; a 5xx says the request itself was well-formed, and the client's next
    ///   REGISTER (with a higher CSeq) succeeds;
    /// * 403 for [`TooManyContacts`](Self::TooManyContacts): the condition does not clear by
    ///   retrying on another node (every node shares the store), so a 503, which invites
    ///   retries and DNS fail-over (RFC 3263), would only multiply the load.
    pub fn status(&self) -> u16 {
        match self {
            RegisterError::Message(e) => e.status(),
            RegisterError::UnsupportedScheme(_) => 416,
            RegisterError::IntervalTooBrief { .. } => 423,
            RegisterError::OutOfOrder { .. } => 500,
            RegisterError::TooManyContacts { .. } => 403,
            RegisterError::NotRegister
            | RegisterError::InvalidAor(_)
            | RegisterError::InvalidContact(_)
            | RegisterError::InvalidWildcard => 400,
        }
    }

    /// The reason phrase: the standard phrase for 416/423/500, a phrase naming the defect
    /// otherwise (so the sender can see what to fix).
    pub fn reason_phrase(&self) -> String {
        match self {
            RegisterError::Message(e) => e.reason_phrase().into_owned(),
            RegisterError::UnsupportedScheme(_) => "Unsupported URI Scheme".to_owned(),
            RegisterError::IntervalTooBrief { .. } => "Interval Too Brief".to_owned(),
            RegisterError::OutOfOrder { .. } => "Out of Order REGISTER".to_owned(),
            RegisterError::TooManyContacts { .. } => "Too Many Contacts".to_owned(),
            other => other.to_string(),
        }
    }

    /// The `Min-Expires` value a 423 must carry (RFC 3261 §10.3 step 7, §20.23).
    pub fn min_expires(&self) -> Option<u32> {
        match self {
            RegisterError::IntervalTooBrief { min_expires } => Some(*min_expires),
            _ => None,
        }
    }
}

/// Why a [`LocationStore`](crate::LocationStore) call failed.
///
/// The edge needs to tell the client's fault (answer per [`RegisterError::status`]) from
/// the backend's (answer 503 with `Retry-After`, so the client comes back instead of
/// deleting its registration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The registrar rules refused the request; nothing was changed.
    #[error(transparent)]
    Rule(#[from] RegisterError),
    /// The backend could not be reached or did not answer in time; the request may or may
    /// not have been applied (the client's retransmission with the same CSeq is then
    /// answered 500, and its next refresh succeeds).
    #[error("location store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// The final response status: the rule's status, or 503 when the backend failed.
    pub fn status(&self) -> u16 {
        match self {
            StoreError::Rule(e) => e.status(),
            StoreError::Unavailable(_) => 503,
        }
    }

    /// True when the edge should answer 503 with `Retry-After` (a transient backend fault).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
