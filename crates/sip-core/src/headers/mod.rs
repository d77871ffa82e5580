//! Typed, lazily parsed header values.
//!
//! Nothing here runs while a message is indexed: each accessor on [`SipMessage`](crate::SipMessage)
//! parses the indexed bytes when called and returns values borrowing from the message.

pub mod auth;
pub mod lists;
pub mod name_addr;
pub mod simple;
pub mod via;
