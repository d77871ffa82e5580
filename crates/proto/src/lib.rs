//! # proto: the wire contracts between sipcluster services
//!
//! Every message and service of `proto/` is compiled here once (prost messages, tonic
//! clients and servers), so that services share one definition and no crate runs its own
//! code generation. Packages map to modules: `sipcluster.location.v1` is
//! [`location::v1`], `sipcluster.dispatcher.v1` is [`dispatcher::v1`], `sipcluster.media.v1` is
//! [`media::v1`], `sipcluster.cdr.v1` is [`cdr::v1`].

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

/// `sipcluster.cdr.*`
pub mod cdr {
    /// `sipcluster.cdr.v1`: call events and CDRs on the accounting topics (and their
    /// proto3 JSON mapping, for the all-in-one's JSON lines).
    pub mod v1 {
        tonic::include_proto!("sipcluster.cdr.v1");
        include!(concat!(env!("OUT_DIR"), "/sipcluster.cdr.v1.serde.rs"));
    }
}

/// `sipcluster.media.*`
pub mod media {
    /// `sipcluster.media.v1`: the media relay's control API (offer, answer, delete,
    /// statistics, drain, load).
    pub mod v1 {
        tonic::include_proto!("sipcluster.media.v1");

        impl Media {
            /// An audio section received at `at` (RTCP on the next port, 8 kHz clock,
            /// plain RTP): what a G.711 phone offers.
            #[must_use]
            pub fn audio(at: std::net::SocketAddr) -> Media {
                Media {
                    address: at.ip().to_string(),
                    port: u32::from(at.port()),
                    rtcp_port: None,
                    rtcp_mux: false,
                    clock_rate: 8000,
                    secure: false,
                }
            }
        }

        impl UpdateRequest {
            /// Party `sender` of `call_id` receives one [`Media::audio`] section at `at`;
            /// `peer` is the other party's tag, empty when not known yet.
            #[must_use]
            pub fn audio(
                call_id: &str,
                sender: &str,
                peer: &str,
                at: std::net::SocketAddr,
            ) -> UpdateRequest {
                UpdateRequest {
                    call_id: call_id.into(),
                    sender_tag: sender.into(),
                    peer_tag: peer.into(),
                    media: vec![Media::audio(at)],
                    strict: false,
                    reply_family: Family::Same as i32,
                }
            }
        }
    }
}
