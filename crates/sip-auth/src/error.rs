//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong outside the request path: loading a subscriber file,
/// building credentials or a nonce key, and a subscriber store that cannot answer.
///
/// A request that fails authentication is not an error: it is an
/// [`Outcome::Failed`](crate::Outcome::Failed). No variant ever holds a password or an HA1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The subscriber store could not answer (backend down, timeout, ...). The edge answers
    /// 503 rather than 401/403/404, because nothing is known about the user.
    #[error("subscriber store unavailable: {0}")]
    Unavailable(String),

    /// A subscriber file could not be read.
    #[error("cannot read subscriber file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// A subscriber file is not valid TOML or does not have the expected shape. Only the
    /// position and the parser's message are kept, never the offending line, so a typo on a
    /// `password` line cannot put the password into a log.
    #[error("invalid subscriber file at line {line}, column {column}: {message}")]
    Toml {
        /// 1-based line.
        line: usize,
        /// 1-based column (in characters).
        column: usize,
        /// What the parser expected.
        message: String,
    },

    /// One `[[user]]` entry of a subscriber file is invalid.
    #[error("user entry #{index} ({user}): {problem}")]
    Entry {
        /// 1-based position of the entry in the file.
        index: usize,
        /// `username@realm` as far as known (never a secret).
        user: String,
        /// What is wrong with it.
        problem: Box<Error>,
    },

    /// A required text field is empty.
    #[error("empty {0}")]
    EmptyField(&'static str),

    /// A name starts or ends with white space: it would be hashed into HA1 as written and
    /// never match what a phone sends.
    #[error("{0} has leading or trailing white space")]
    Untrimmed(&'static str),

    /// The same username appears twice in one realm.
    #[error("duplicate user in this realm")]
    DuplicateUser,

    /// Neither a password nor any HA1 was given.
    #[error("needs a password, ha1_md5 or ha1_sha256")]
    MissingSecret,

    /// Both a password and an HA1 were given; they could disagree, so one must go.
    #[error("password and ha1_md5/ha1_sha256 are mutually exclusive")]
    ConflictingSecrets,

    /// An HA1 is not the expected number of hex digits.
    #[error("{field} must be {expected_len} hex digits")]
    BadHa1 {
        /// `ha1_md5` or `ha1_sha256`.
        field: &'static str,
        /// 32 for MD5, 64 for SHA-256.
        expected_len: usize,
    },

    /// The nonce secret is too short to resist guessing.
    #[error("nonce secret must be at least {min} bytes")]
    WeakNonceSecret {
        /// Minimum length in bytes.
        min: usize,
    },
}
