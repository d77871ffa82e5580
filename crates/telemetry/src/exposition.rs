//! The `/metrics` body: OpenMetrics for Prometheus (which asks for it), the classic text
//! format (version 0.0.4) for everything else (`curl`, `promtool check metrics`, older
//! scrapers), and in both one family per name.
//!
//! One family per name: a role that registers the same metrics twice under different
//! constant labels (the dispatcher's public and internal transports, `side="public"` /
//! `side="internal"`) gets two HELP/TYPE blocks of one name from the registry's encoder,
//! which the exposition formats forbid (promtool: "second HELP line for metric name").
//! The blocks are merged here, at the one place every service's body passes.

/// One metric family as encoded: its descriptor lines and its samples.
#[derive(Debug, Default)]
struct Family<'a> {
    name: &'a str,
    help: Option<&'a str>,
    kind: Option<&'a str>,
    unit: Option<&'a str>,
    samples: Vec<&'a str>,
}

/// The families of an OpenMetrics body, in order of first appearance, blocks of one
/// name merged.
fn families(text: &str) -> Vec<Family<'_>> {
    fn find_or_add<'a>(out: &mut Vec<Family<'a>>, name: &'a str) -> usize {
        out.iter().position(|f| f.name == name).unwrap_or_else(|| {
            out.push(Family {
                name,
                ..Family::default()
            });
            out.len() - 1
        })
    }
    let mut out: Vec<Family<'_>> = Vec::new();
    let mut current: Option<usize> = None;
    for line in text.lines() {
        if line == "# EOF" || line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(what), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value = parts.next().unwrap_or("");
            let i = find_or_add(&mut out, name);
            current = Some(i);
            let f = &mut out[i];
            match what {
                "HELP" => f.help = f.help.or(Some(value)),
                "TYPE" => f.kind = f.kind.or(Some(value)),
                "UNIT" => f.unit = f.unit.or(Some(value)),
                _ => {}
            }
        } else if let Some(i) = current {
            out[i].samples.push(line);
        }
    }
    out
}

/// The body as OpenMetrics, one family per name.
#[must_use]
pub fn openmetrics(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for f in families(text) {
        if let Some(h) = f.help {
            s.push_str(&format!("# HELP {} {h}\n", f.name));
        }
        if let Some(k) = f.kind {
            s.push_str(&format!("# TYPE {} {k}\n", f.name));
        }
        if let Some(u) = f.unit {
            s.push_str(&format!("# UNIT {} {u}\n", f.name));
        }
        for l in f.samples {
            s.push_str(l);
            s.push('\n');
        }
    }
    s.push_str("# EOF\n");
    s
}

/// The body in the classic text format: a counter's family is named after its `_total`
/// samples, an info metric is a gauge `_info`, units and exemplars are left out.
#[must_use]
pub fn classic(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for f in families(text) {
        let (name, kind) = match f.kind {
            Some("counter") => (format!("{}_total", f.name), "counter"),
            Some("info") => (format!("{}_info", f.name), "gauge"),
            Some("stateset") | Some("gaugehistogram") | Some("unknown") | None => {
                (f.name.to_owned(), "untyped")
            }
            Some(k) => (f.name.to_owned(), k),
        };
        if let Some(h) = f.help {
            s.push_str(&format!("# HELP {name} {h}\n"));
        }
        s.push_str(&format!("# TYPE {name} {kind}\n"));
        for l in f.samples {
            // A counter's creation time is OpenMetrics only.
            if kind == "counter" && l.starts_with(&format!("{}_created", f.name)) {
                continue;
            }
            // Exemplars (` # {trace_id="..."} v`) are OpenMetrics only.
            let sample = l.split(" # ").next().unwrap_or(l);
            s.push_str(sample);
            s.push('\n');
        }
    }
    s
}

/// Whether a scraper's `Accept` header asks for OpenMetrics.
#[must_use]
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SIDES: &str = "# HELP x_messages Messages.\n# TYPE x_messages counter\nx_messages_total{side=\"public\",transport=\"udp\"} 3\n# HELP x_open Open.\n# TYPE x_open gauge\nx_open{side=\"public\"} 1\n# HELP x_messages Messages.\n# TYPE x_messages counter\nx_messages_total{side=\"internal\",transport=\"udp\"} 4 # {trace_id=\"ab\"} 1.0\n# HELP x_open Open.\n# TYPE x_open gauge\nx_open{side=\"internal\"} 2\n# HELP d_seconds Delay.\n# TYPE d_seconds histogram\n# UNIT d_seconds seconds\nd_seconds_bucket{le=\"+Inf\"} 1\nd_seconds_sum 0.5\nd_seconds_count 1\n# EOF\n";

    #[test]
    fn blocks_of_one_name_become_one_family() {
        let om = openmetrics(TWO_SIDES);
        assert_eq!(om.matches("# HELP x_messages ").count(), 1, "{om}");
        assert_eq!(om.matches("# TYPE x_open gauge").count(), 1, "{om}");
        assert!(om.contains("x_messages_total{side=\"public\",transport=\"udp\"} 3\nx_messages_total{side=\"internal\""));
        assert!(om.contains("# UNIT d_seconds seconds\n"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn the_classic_format_names_counters_after_their_samples() {
        let c = classic(TWO_SIDES);
        assert!(
            c.contains("# HELP x_messages_total Messages.\n# TYPE x_messages_total counter\n"),
            "{c}"
        );
        assert!(
            c.contains("x_messages_total{side=\"internal\",transport=\"udp\"} 4\n"),
            "exemplar cut: {c}"
        );
        assert!(!c.contains("# EOF") && !c.contains("# UNIT"), "{c}");
        assert!(
            c.contains("# TYPE d_seconds histogram\nd_seconds_bucket"),
            "{c}"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")) && !wants_openmetrics(None));
    }
}
