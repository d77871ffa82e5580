//! # sipcluster-proto: the wire contracts between sipcluster services
//!
//! Every message and service of `proto/` is compiled here once (prost messages, tonic
//! clients and servers), so that services share one definition and no crate runs its own
//! code generation. Packages map to modules: `sipcluster.location.v1` is
//! [`location::v1`], `sipcluster.dispatcher.v1` is [`dispatcher::v1`], `sipcluster.media.v1` is
//! [`media::v1`].

#![allow(
    missing_docs,
    clippy::doc_lazy_continuation,
    clippy::large_enum_variant
)]

/// `sipcluster.location.*`
pub mod location {
    /// `sipcluster.location.v1`: the location service (registrations, credentials,
    /// dialog records).
    pub mod v1 {
        tonic::include_proto!("sipcluster.location.v1");
    }
}

/// `sipcluster.dispatcher.*`
pub mod dispatcher {
    /// `sipcluster.dispatcher.v1`: the dispatcher's admin API (targets, weights, drain,
    /// destination sets).
    pub mod v1 {
        tonic::include_proto!("sipcluster.dispatcher.v1");
    }
}

/// `sipcluster.media.*`
pub mod media {
    /// `sipcluster.media.v1`: the media relay's control API (offer, answer, delete,
    /// statistics, drain, load).
    pub mod v1 {
        tonic::include_proto!("sipcluster.media.v1");
    }
}
