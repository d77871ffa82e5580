//! # location-client: how edges and tools talk to the location service
//!
//! * [`convert`]: the mapping between the registrar's types ([`sip_registrar::Binding`],
//!   [`sip_registrar::RegisterRequest`], [`sip_registrar::RegisterError`]) and the
//!   `sipcluster.location.v1` protobuf messages. The location service uses the same
//!   functions, so both sides agree on every field by construction.
//! * [`LocationClient`]: a tonic client that implements [`sip_registrar::LocationStore`]
//!   and [`sip_auth::SubscriberStore`], so the edge runs unchanged against the cluster's
//!   location service. Every call has a deadline; calls whose replay is harmless
//!   (lookups, credentials, provisioning) are retried a bounded number of times on
//!   UNAVAILABLE, REGISTER never (its replay would be refused as out of order); a failure
//!   becomes `StoreError::Unavailable`, which the edge answers with 503 + Retry-After
//!   rather than a wrong 404/480. REGISTERs are coalesced into `RegisterBatch` calls
//!   while earlier ones are in flight. Every call carries the caller's bearer token
//!   ([`ClientConfig::token`]: the edge token for edges, the admin token for the
//!   operator's commands).
//! * [`bans`]: the cluster's bans read back on this process's clock.

pub mod bans;
mod client;
pub mod convert;
pub mod limits;

pub use client::{ClientConfig, ClientError, LocationClient};
pub use convert::{TERMINATED, merge_dialog, reaped_reason};
pub use proto::location::v1 as pb;
