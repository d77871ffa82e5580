//! x509: the one field of a certificate the transports read themselves, when it expires
//! (its `notAfter`), for the expiry gauge SREs alert on. rustls verifies certificates;
//! it does not say when ours runs out, and a whole X.509 parser for one date is not
//! worth its weight: this walks the DER to the validity and reads the time (RFC 5280
//! §4.1.2.5: UTCTime through 2049, GeneralizedTime after).

/// The Unix time (seconds) at which the DER certificate `cert` expires; `None` when it
/// is not a certificate this walk understands.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let (0x30, cert, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    // version [0] EXPLICIT (absent in v1 certificates).
    let mut rest = tbs;
    if let (0xa0, _, after) = tlv(rest)? {
        rest = after;
    }
    // serialNumber INTEGER, signature AlgorithmIdentifier, issuer Name.
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, after) = tlv(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (0x30, validity, _) = tlv(rest)? else {
        return None;
    };
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, time, _) = tlv(after_not_before)?;
    time_of(tag, time)
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`0x17`, `YYMMDDHHMMSSZ`) or GeneralizedTime (`0x18`, `YYYYMMDDHHMMSSZ`)
/// as Unix seconds.
fn time_of(tag: u8, t: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(t).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 || !rest.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let two = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, hour, min, sec) = (two(0)?, two(2)?, two(4)?, two(6)?, two(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A skeleton certificate: the fields the walk passes over, then `validity`.
    fn cert(version: bool, not_before: &[u8], not_after: &[u8]) -> Vec<u8> {
        fn el(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag];
            if body.len() < 0x80 {
                v.push(body.len() as u8);
            } else {
                v.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
            }
            v.extend_from_slice(body);
            v
        }
        let mut tbs = Vec::new();
        if version {
            tbs.extend(el(0xa0, &el(0x02, &[2])));
        }
        tbs.extend(el(0x02, &[0x01, 0x23]));
        tbs.extend(el(0x30, &el(0x06, &[0x2a, 0x86, 0x48])));
        tbs.extend(el(0x30, &[0u8; 200])); // a long issuer: a two-byte length
        let mut validity = Vec::new();
        validity.extend_from_slice(not_before);
        validity.extend_from_slice(not_after);
        tbs.extend(el(0x30, &validity));
        tbs.extend(el(0x30, b"subject"));
        let mut body = el(0x30, &tbs);
        body.extend(el(0x30, b"sigalg"));
        el(0x30, &body)
    }

    fn utc(s: &str) -> Vec<u8> {
        [&[0x17, s.len() as u8][..], s.as_bytes()].concat()
    }

    fn generalized(s: &str) -> Vec<u8> {
        [&[0x18, s.len() as u8][..], s.as_bytes()].concat()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        let c = cert(true, &utc("261207000000Z"), &utc("261210120000Z"));
        // date -u -d 2026-12-10T12:00:00Z +%s
        assert_eq!(not_after(&c), Some(1_796_904_000));
        let c = cert(
            false,
            &utc("261207000000Z"),
            &generalized("20500101000000Z"),
        );
        assert_eq!(not_after(&c), Some(2_524_608_000));
        let c = cert(true, &utc("700101000000Z"), &utc("700101000001Z"));
        assert_eq!(not_after(&c), Some(1));
        let c = cert(true, &utc("000229000000Z"), &utc("000301000000Z"));
        assert_eq!(
            not_after(&c),
            Some(951_868_800),
            "2000-03-01, after a leap day"
        );
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x81]), None);
        assert_eq!(
            not_after(&[0x30, 0x05, 0x30, 0x03, 0x02]),
            None,
            "truncated"
        );
        let c = cert(true, &utc("261207000000Z"), &utc("261332000000Z"));
        assert_eq!(not_after(&c), None, "month 13");
        let c = cert(true, &utc("261207000000Z"), &utc("2612070000Z"));
        assert_eq!(not_after(&c), None, "no seconds");
        let c = cert(true, &utc("261207000000Z"), &[0x04, 0x01, 0x00]);
        assert_eq!(not_after(&c), None, "not a time");
        // Every truncation of a good one fails cleanly.
        let good = cert(true, &utc("261207000000Z"), &utc("261210120000Z"));
        for n in 0..good.len() {
            let _ = not_after(&good[..n]);
        }
    }
}
