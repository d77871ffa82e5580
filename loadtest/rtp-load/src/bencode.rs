//! Bencode, as rtpengine's ng control protocol speaks it: byte strings, integers, lists
//! and dictionaries. A dictionary's keys are kept in a `BTreeMap` so the encoding comes
//! out sorted, which the format requires.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

/// One bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `i<n>e`
    Int(i64),
    /// `<len>:<bytes>`
    Bytes(Vec<u8>),
    /// `l...e`
    List(Vec<Value>),
    /// `d...e`
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    /// A byte string from text.
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
        Value::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// The value under `key`, if this is a dictionary holding it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// The bytes of a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The text of a byte string (lossy: rtpengine's strings are ASCII).
    pub fn as_text(&self) -> Option<String> {
        self.as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Append the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(n) => out.extend_from_slice(format!("i{n}e").as_bytes()),
            Value::Bytes(b) => encode_bytes(b, out),
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// The encoding.
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decode exactly one value filling `input`.
    pub fn decode(input: &[u8]) -> Result<Value> {
        let (v, rest) = decode_one(input, 0)?;
        if !rest.is_empty() {
            bail!("{} bytes after the value", rest.len());
        }
        Ok(v)
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Replies nest a few levels (call, tags, medias, streams, endpoint); this bounds the
/// recursion on a hostile datagram.
const MAX_DEPTH: usize = 32;

/// The first value in `input` and what follows it.
fn decode_one(input: &[u8], depth: usize) -> Result<(Value, &[u8])> {
    if depth > MAX_DEPTH {
        bail!("nested deeper than {MAX_DEPTH}");
    }
    match input.first() {
        None => bail!("truncated"),
        Some(b'i') => {
            let end = input
                .iter()
                .position(|&c| c == b'e')
                .context("unterminated int")?;
            let n = std::str::from_utf8(&input[1..end])?
                .parse::<i64>()
                .context("bad int")?;
            Ok((Value::Int(n), &input[end + 1..]))
        }
        Some(b'l') => {
            let mut rest = &input[1..];
            let mut l = Vec::new();
            while rest.first() != Some(&b'e') {
                let (v, r) = decode_one(rest, depth + 1)?;
                l.push(v);
                rest = r;
            }
            Ok((Value::List(l), &rest[1..]))
        }
        Some(b'd') => {
            let mut rest = &input[1..];
            let mut d = BTreeMap::new();
            while rest.first() != Some(&b'e') {
                let (k, r) = decode_one(rest, depth + 1)?;
                let Value::Bytes(k) = k else {
                    bail!("dictionary key is not a string");
                };
                let (v, r) = decode_one(r, depth + 1)?;
                d.insert(k, v);
                rest = r;
            }
            Ok((Value::Dict(d), &rest[1..]))
        }
        Some(c) if c.is_ascii_digit() => {
            let colon = input.iter().position(|&c| c == b':').context("no ':'")?;
            let len = std::str::from_utf8(&input[..colon])?
                .parse::<usize>()
                .context("bad length")?;
            let body = &input[colon + 1..];
            if body.len() < len {
                bail!("string of {len} bytes truncated at {}", body.len());
            }
            Ok((Value::Bytes(body[..len].to_vec()), &body[len..]))
        }
        Some(c) => bail!("unexpected byte {c:#04x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = Value::dict([
            ("command", Value::str("offer")),
            ("call-id", Value::str("a:b c")),
            ("n", Value::Int(-42)),
            ("empty", Value::str("")),
            (
                "flags",
                Value::List(vec![Value::str("trust-address"), Value::Int(0)]),
            ),
            ("nested", Value::dict([("x", Value::List(vec![]))])),
        ]);
        let enc = v.encode();
        assert_eq!(Value::decode(&enc).unwrap(), v);
    }

    #[test]
    fn keys_come_out_sorted() {
        let v = Value::dict([("sdp", Value::str("v=0")), ("command", Value::str("ping"))]);
        assert_eq!(v.encode(), b"d7:command4:ping3:sdp3:v=0e");
    }

    #[test]
    fn rtpengine_offer_reply() {
        // rtpengine 10.5's reply to an offer, after the cookie.
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\na=rtcp:40001\r\n";
        let wire = format!("d3:sdp{}:{sdp}6:result2:oke", sdp.len());
        let v = Value::decode(wire.as_bytes()).unwrap();
        assert_eq!(
            v.get("result").and_then(Value::as_text).as_deref(),
            Some("ok")
        );
        assert_eq!(v.get("sdp").and_then(Value::as_text).as_deref(), Some(sdp));
    }

    #[test]
    fn rtpengine_delete_reply() {
        // The shape of a delete reply: per-tag statistics nested five levels down.
        let wire = b"d7:createdi1796483364e4:SSRCde4:tagsd1:xd3:tag1:x6:mediasld5:indexi1e\
                     7:streamsld10:local porti40018e8:endpointd6:family4:IPv47:address9:127.0.0.1\
                     4:porti30000ee5:flagsl3:RTP6:fillede5:statsd7:packetsi0e5:bytesi0e6:errorsi0e\
                     eeeeeee6:totalsd3:RTPd7:packetsi0eee6:result2:oke";
        let v = Value::decode(wire).unwrap();
        assert_eq!(
            v.get("result").and_then(Value::as_text).as_deref(),
            Some("ok")
        );
        let port = v
            .get("tags")
            .and_then(|t| t.get("x"))
            .and_then(|x| x.get("medias"))
            .and_then(|m| match m {
                Value::List(l) => l.first(),
                _ => None,
            })
            .and_then(|m| m.get("streams"))
            .and_then(|s| match s {
                Value::List(l) => l.first(),
                _ => None,
            })
            .and_then(|s| s.get("local port"));
        assert_eq!(port, Some(&Value::Int(40018)));
        assert_eq!(Value::decode(&v.encode()).unwrap(), v);
    }

    #[test]
    fn rtpengine_error_reply() {
        let v =
            Value::decode(b"d12:error-reason22:Unknown call-id or tag6:result5:errore").unwrap();
        assert_eq!(
            v.get("result").and_then(Value::as_text).as_deref(),
            Some("error")
        );
        assert_eq!(
            v.get("error-reason").and_then(Value::as_text).as_deref(),
            Some("Unknown call-id or tag")
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b""[..],
            b"d3:sdp",
            b"5:abc",
            b"i12",
            b"ixe",
            b"di1e1:ae",
            b"l",
            b"d1:ai1ee-",
            b"x",
        ] {
            assert!(
                Value::decode(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{}{}", "l".repeat(100), "e".repeat(100));
        assert!(Value::decode(deep.as_bytes()).is_err());
    }
}
