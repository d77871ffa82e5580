//! The CDR schema on the wire and in its proto3 JSON mapping: what billing consumers and
//! the all-in-one's JSON lines rely on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use proto::cdr::v1::{self as cdr, envelope::Body};

fn sample() -> cdr::Envelope {
    cdr::Envelope {
        event_id: "0b6f3c1e-8d2a-4c55-9a57-3f0c2a9e7d11".into(),
        produced_at_ms: 1_764_950_400_123,
        producer: "edge-0".into(),
        body: Some(Body::Cdr(cdr::Cdr {
            call: Some(cdr::CallId {
                call_id: "a84b4c76e66710@pc33".into(),
                from_tag: "1928301774".into(),
                to_tag: "a6c85cf".into(),
            }),
            caller: Some(cdr::Party {
                user: "alice".into(),
                uri: "sip:alice@example.com".into(),
                display_name: "Alice".into(),
                authenticated_as: "alice@example.com".into(),
            }),
            sip_code: 200,
            sip_reason: "OK".into(),
            end_cause: cdr::EndCause::Bye as i32,
            hung_up_by: cdr::HungUpBy::Callee as i32,
            billable_ms: 61_250,
            media: vec![cdr::MediaLeg {
                tag: "1928301774".into(),
                packets: 3062,
                jitter_ms: 0.5,
                ..Default::default()
            }],
            ..Default::default()
        })),
    }
}

#[test]
fn an_envelope_round_trips_in_protobuf() {
    let e = sample();
    let bytes = prost::Message::encode_to_vec(&e);
    let back: cdr::Envelope = prost::Message::decode(bytes.as_slice()).unwrap();
    assert_eq!(back, e);
}

#[test]
fn the_json_mapping_is_proto3s() {
    let e = sample();
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["eventId"], "0b6f3c1e-8d2a-4c55-9a57-3f0c2a9e7d11");
    // 64-bit integers are strings in the proto3 JSON mapping; enums are by name.
    assert_eq!(json["producedAtMs"], "1764950400123");
    assert_eq!(json["cdr"]["endCause"], "END_CAUSE_BYE");
    assert_eq!(json["cdr"]["hungUpBy"], "HUNG_UP_BY_CALLEE");
    assert_eq!(json["cdr"]["billableMs"], "61250");
    assert_eq!(json["cdr"]["caller"]["displayName"], "Alice");
    let back: cdr::Envelope = serde_json::from_value(json).unwrap();
    assert_eq!(back, e);
}
