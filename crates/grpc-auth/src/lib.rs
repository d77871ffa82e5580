//! # grpc-auth: bearer tokens on sipcluster's gRPC APIs
//!
//! Every gRPC API of the cluster (the location service, the media relays' control, the
//! dispatcher's admin API) takes calls only with `authorization: Bearer <token>`. A
//! server accepts at most two tokens, one per [`Role`]: **edge** (the service identity
//! of the edges) and **admin** (operators' commands), read at start from files
//! (Kubernetes Secret mounts) by [`TokenFiles`] / [`Token::from_file`], and compared in
//! constant time.
//!
//! * Server: [`AuthLayer`], a tower layer in front of the tonic routes. Each service
//!   states its [`Policy`], the table of method path → roles; a method missing from the
//!   table is refused. No or unknown token: UNAUTHENTICATED; a role the table does not
//!   list: PERMISSION_DENIED. Each refusal is counted
//!   (`sipcluster_grpc_auth_rejected_total{reason}`, [`AuthMetrics`]) and logged,
//!   rate-limited, with the method and the peer (never the token).
//! * Client: [`Bearer`], the interceptor that adds the header; [`AuthChannel`] is the
//!   channel type every sipcluster client uses.

mod client;
mod server;
mod token;

pub use client::{AuthChannel, Bearer};
pub use server::{
    ADMIN, Access, AuthLayer, AuthMetrics, AuthService, EDGE, EDGE_OR_ADMIN, HEALTH_CHECK,
    HEALTH_WATCH, Policy, Rejection,
};
pub use token::{MIN_TOKEN_LEN, Role, Token, TokenFiles, Tokens};

use std::path::PathBuf;

/// Why a token could not be read or a set of tokens built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token file could not be read.
    #[error("token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A token setting's file is unusable.
    #[error("{setting}: {problem}")]
    Setting {
        /// The setting, as `section.key` (`api.edge_token_file`).
        setting: &'static str,
        /// What is wrong with its file.
        problem: Box<AuthError>,
    },
    /// The token file's content is not a usable token.
    #[error("token file {path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        problem: Box<AuthError>,
    },
    /// Too short after trimming (an empty file, a placeholder).
    #[error(
        "the token has {len} characters (empty or a placeholder?); it needs at least {MIN_TOKEN_LEN}"
    )]
    TooShort {
        /// Characters found.
        len: usize,
    },
    /// A token file too large to be a token.
    #[error("{len} bytes is no token (a wrong path?)")]
    TooLong {
        /// The file's size.
        len: u64,
    },
    /// Spaces or control characters inside the token.
    #[error("the token must be visible ASCII characters only (no spaces inside)")]
    BadCharacters,
    /// No token at all: the API would be open to anyone.
    #[error(
        "no API token configured: every gRPC API refuses anonymous calls, so set the edge \
         and/or admin token file (SIPCLUSTER_EDGE_TOKEN_FILE, SIPCLUSTER_ADMIN_TOKEN_FILE, \
         --edge-token-file, --admin-token-file, or [api] in the configuration file)"
    )]
    NoToken,
    /// The edge and admin tokens are equal: one token would grant both roles.
    #[error("the edge and admin tokens are the same; give each role its own token")]
    SameToken,
    /// No randomness for a generated token.
    #[error("no randomness for a token: {0}")]
    Random(String),
}
