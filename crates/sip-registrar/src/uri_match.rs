//! URI equivalence (RFC 3261 §19.1.4), which decides whether a Contact in a REGISTER names
//! a binding the registrar already holds (§10.3 step 7).

use sip_core::{SipUri, TelUri, Uri, UriParams, unescape_percent};

use crate::aor::tel_digits;

/// URI parameters that make two SIP URIs differ when only one of them carries it
/// (RFC 3261 §19.1.4: `user`, `ttl`, `method`, `maddr`; `transport` too, as the section's
/// own example `sip:bob@biloxi.com` / `sip:bob@biloxi.com;transport=udp` requires).
const SIGNIFICANT_PARAMS: [&[u8]; 5] = [b"user", b"ttl", b"method", b"maddr", b"transport"];

/// True when `a` and `b` are equivalent URIs.
///
/// For `sip:`/`sips:` this is RFC 3261 §19.1.4:
///
/// * `sip` never equals `sips`;
/// * user and password are compared case-sensitively, after decoding `%HH` escapes; a URI
///   with a user part never equals one without;
/// * hosts are compared case-insensitively (addresses by value); a name never equals an
///   address, even one it resolves to;
/// * ports must be equal, and an absent port is not 5060;
/// * parameters (names and values case-insensitive, escapes decoded): one present in both
///   URIs must have the same value there; `user`, `ttl`, `method`, `maddr` and `transport`
///   present in only one URI make them differ; any other parameter present in only one is
///   ignored (so equivalence is not transitive, as the RFC notes);
/// * `?headers` are never ignored: both URIs carry the same set of headers, in any order
///   (names case-insensitive, values compared exactly after decoding escapes).
///
/// For `tel:` (RFC 3966 §4): the numbers are equal once visual separators are removed
/// (hex digits case-insensitive), and both carry the same parameters with the same values
/// (case-insensitive, any order). For any other scheme: same scheme (case-insensitive)
/// and byte-identical remainder. URIs of different schemes never match.
pub fn uris_equivalent(a: &Uri<'_>, b: &Uri<'_>) -> bool {
    match (a, b) {
        (Uri::Sip(a), Uri::Sip(b)) => sip_equivalent(a, b),
        (Uri::Tel(a), Uri::Tel(b)) => tel_equivalent(a, b),
        (
            Uri::Other {
                scheme: sa,
                opaque: oa,
            },
            Uri::Other {
                scheme: sb,
                opaque: ob,
            },
        ) => sa.eq_ignore_ascii_case(sb) && oa == ob,
        _ => false,
    }
}

fn decoded(s: Option<&str>) -> Option<Vec<u8>> {
    s.map(|s| unescape_percent(s.as_bytes()).into_owned())
}

fn folded(s: &str) -> Vec<u8> {
    unescape_percent(s.as_bytes()).to_ascii_lowercase()
}

/// A parameter name and value, escapes decoded and case folded.
type NormParam = (Vec<u8>, Option<Vec<u8>>);

/// Parameters normalised for comparison; a repeated name keeps its first value, as
/// `UriParams::get` does.
fn norm_params(params: &UriParams<'_>) -> Vec<NormParam> {
    let mut out: Vec<NormParam> = Vec::new();
    for p in params.iter() {
        let name = folded(p.name);
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        out.push((name, p.value.map(folded)));
    }
    out
}

fn lookup<'p>(params: &'p [NormParam], name: &[u8]) -> Option<&'p Option<Vec<u8>>> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

fn sip_params_equivalent(a: &UriParams<'_>, b: &UriParams<'_>) -> bool {
    let (pa, pb) = (norm_params(a), norm_params(b));
    let significant = |n: &[u8]| SIGNIFICANT_PARAMS.contains(&n);
    let a_ok = pa.iter().all(|(n, v)| match lookup(&pb, n) {
        Some(w) => v == w,
        None => !significant(n),
    });
    // What `b` has and `a` lacks only matters for the significant names.
    a_ok && pb
        .iter()
        .all(|(n, _)| lookup(&pa, n).is_some() || !significant(n))
}

fn sip_headers(u: &SipUri<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h: Vec<_> = u
        .header_pairs()
        .map(|(n, v)| (folded(n), unescape_percent(v.as_bytes()).into_owned()))
        .collect();
    h.sort();
    h
}

fn sip_equivalent(a: &SipUri<'_>, b: &SipUri<'_>) -> bool {
    a.secure == b.secure
        && decoded(a.user) == decoded(b.user)
        && decoded(a.password) == decoded(b.password)
        && a.host.same_as(&b.host)
        && a.port == b.port
        && sip_params_equivalent(&a.params, &b.params)
        && sip_headers(a) == sip_headers(b)
}

fn tel_equivalent(a: &TelUri<'_>, b: &TelUri<'_>) -> bool {
    let sorted = |p: &UriParams<'_>| {
        let mut v = norm_params(p);
        v.sort();
        v
    };
    tel_digits(a.number) == tel_digits(b.number) && sorted(&a.params) == sorted(&b.params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(a: &str, b: &str) -> bool {
        let ua = Uri::parse(a.as_bytes()).unwrap_or_else(|e| panic!("{a}: {e}"));
        let ub = Uri::parse(b.as_bytes()).unwrap_or_else(|e| panic!("{b}: {e}"));
        let r = uris_equivalent(&ua, &ub);
        // Equivalence is symmetric whatever else it is.
        assert_eq!(r, uris_equivalent(&ub, &ua), "{a} / {b}");
        r
    }

    /// RFC 3261 §19.1.4, "The URIs within each of the following sets are equivalent".
    #[test]
    fn rfc3261_equivalent_sets() {
        assert!(eq(
            "sip:%61lice@atlanta.com;transport=TCP",
            "sip:alice@AtLanTa.CoM;Transport=tcp"
        ));
        for (a, b) in [
            ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
            (
                "sip:carol@chicago.com;newparam=5",
                "sip:carol@chicago.com;security=on",
            ),
        ] {
            assert!(eq(a, b), "{a} / {b}");
        }
        assert!(eq(
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"
        ));
        assert!(eq(
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x"
        ));
    }

    /// RFC 3261 §19.1.4, "The URIs within each of the following sets are not equivalent".
    #[test]
    fn rfc3261_non_equivalent_pairs() {
        for (a, b) in [
            // different usernames
            (
                "SIP:ALICE@AtLanTa.CoM;Transport=udp",
                "sip:alice@AtLanTa.CoM;Transport=UDP",
            ),
            // can resolve to different ports
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
            // can resolve to different port and transports
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
            // different port and transport
            (
                "sip:bob@biloxi.com",
                "sip:bob@biloxi.com:6000;transport=tcp",
            ),
            // different header component
            (
                "sip:carol@chicago.com",
                "sip:carol@chicago.com?Subject=next%20meeting",
            ),
            // even though that's what phone21.boxesbybob.com resolves to
            ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
            // equality is not transitive: on and off differ
            (
                "sip:carol@chicago.com;security=on",
                "sip:carol@chicago.com;security=off",
            ),
        ] {
            assert!(!eq(a, b), "{a} / {b}");
        }
    }

    #[test]
    fn significant_parameters_in_one_uri_only() {
        for p in [
            "user=phone",
            "ttl=1",
            "method=INVITE",
            "maddr=239.255.255.1",
        ] {
            assert!(!eq("sip:a@h", &format!("sip:a@h;{p}")), "{p}");
            assert!(eq(&format!("sip:a@h;{p}"), &format!("sip:a@h;{p}")), "{p}");
        }
        assert!(!eq("sip:a@h;user=ip", "sip:a@h;user=phone"));
        assert!(eq("sip:a@h;lr;ob", "sip:a@h"));
        assert!(eq("sip:a@h;%6C%72", "sip:a@h;LR"));
        assert!(!eq("sip:a@h;lr", "sip:a@h;lr=on"));
        assert!(eq("sip:a@h;maddr=X.example", "sip:a@h;MADDR=x.example"));
    }

    #[test]
    fn userinfo_host_port_scheme() {
        assert!(!eq("sip:a@h", "sips:a@h"));
        assert!(!eq("sip:a@h", "sip:h"));
        assert!(!eq("sip:a:pw@h", "sip:a:PW@h"));
        assert!(eq("sip:a:p%77@h", "sip:a:pw@h"));
        assert!(!eq("sip:a:pw@h", "sip:a@h"));
        assert!(eq("sip:a@[2001:db8::1]", "sip:a@[2001:DB8:0::1]"));
        assert!(eq("sip:a@192.0.2.1:5070", "sip:a@192.0.2.1:5070"));
        assert!(!eq("sip:a@192.0.2.1:5070", "sip:a@192.0.2.1:5071"));
        assert!(!eq("sip:a@h?x=1", "sip:a@h?x=2"));
        assert!(eq("sip:a@h?X=1", "sip:a@h?x=%31"));
    }

    #[test]
    fn tel_and_other_schemes() {
        assert!(eq("tel:+1-201-555-0123", "tel:+1.201.555.0123"));
        assert!(eq(
            "tel:7042;phone-context=EXAMPLE.com",
            "tel:7042;phone-context=example.com"
        ));
        assert!(!eq(
            "tel:7042;phone-context=a.example",
            "tel:7042;phone-context=b.example"
        ));
        assert!(!eq("tel:+12015550123", "tel:+12015550123;ext=1"));
        assert!(!eq("tel:+12015550123", "sip:+12015550123@h;user=phone"));
        assert!(eq("URN:x", "urn:x"));
        assert!(!eq("urn:x", "urn:X"));
    }
}
