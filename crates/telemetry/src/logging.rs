//! Logging set-up shared by every service: the level filter and format are checked before
//! anything starts, so a typo is an error instead of a silent process.
//!
//! `tracing`'s filter syntax takes a bare word as a *target* name: `--log-level verbose`
//! parses as "everything from the module `verbose`, at TRACE", which matches nothing and
//! leaves the process mute. A bare word must therefore be a level here; a target is
//! written `target=level` (`edge=debug,info`).

use crate::ConfigError;

/// The level names a filter directive may use.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

fn is_level(s: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()))
}

/// Check a log filter (`info`, `edge=debug,info`, `warn,dispatch_core=trace`).
pub fn check_level(level: &str) -> Result<(), ConfigError> {
    let bad = |why: String| {
        ConfigError::new(
            "log.level",
            format!(
                "{level:?}: {why}; use a level (off, error, warn, info, debug, trace) or \
                 target=level pairs, comma-separated (e.g. edge=debug,info)"
            ),
        )
    };
    if level.trim().is_empty() {
        return Err(bad("empty".into()));
    }
    for d in level.split(',').map(str::trim) {
        if d.is_empty() {
            return Err(bad("an empty directive".into()));
        }
        match d.rsplit_once('=') {
            // `target=level` or `target[span{field=value}]=level`.
            Some((target, lvl)) if target.trim().is_empty() || !is_level(lvl) => {
                return Err(bad(format!("{d:?} is not target=level")));
            }
            Some(_) => {}
            None if d.contains('[') => {}
            None if !is_level(d) => return Err(bad(format!("{d:?} is not a level"))),
            None => {}
        }
    }
    tracing_subscriber::EnvFilter::try_new(normalized(level)).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// The filter without blanks around its directives (`tracing` reads `warn, edge=debug`
/// as a broken second directive).
fn normalized(level: &str) -> String {
    level
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(",")
}

/// Check a log format: `plain` or `json`.
pub fn check_format(format: &str) -> Result<(), ConfigError> {
    match format {
        "plain" | "json" => Ok(()),
        other => Err(ConfigError::new(
            "log.format",
            format!("{other:?}: plain or json"),
        )),
    }
}

/// Install the process's subscriber: `format` is `plain` or `json`, `level` a filter
/// [`check_level`] accepts. Both are checked first. With `trace` naming an OTLP
/// endpoint, spans are exported too ([`crate::trace`]): keep the guard until exit.
pub fn init(
    level: &str,
    format: &str,
    trace: &crate::trace::TraceSettings,
    service: &str,
) -> Result<Option<crate::trace::TraceGuard>, ConfigError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    check_level(level)?;
    check_format(format)?;
    let filter = tracing_subscriber::EnvFilter::try_new(normalized(level))
        .map_err(|e| ConfigError::new("log.level", e.to_string()))?;
    // Colour codes only for a terminal: in a file, `kubectl logs` or a log shipper they
    // are noise around every field.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (otel, guard) = match crate::trace::layer(trace, service)? {
        Some((l, g)) => (Some(l), Some(g)),
        None => (None, None),
    };
    // The filter applies to the log lines only: a span the log level hides (a SIP
    // transaction's, at `info`) is still exported when its trace is sampled.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_target(true);
    let fmt = if format == "json" {
        // The current span's fields on each line: its `trace_id` among them.
        tracing_subscriber::Layer::boxed(fmt.json().with_current_span(true).with_span_list(false))
    } else {
        tracing_subscriber::Layer::boxed(fmt)
    };
    let set = tracing_subscriber::registry()
        .with(tracing_subscriber::Layer::with_filter(fmt, filter))
        .with(otel)
        .try_init();
    set.map_err(|e| ConfigError::new("log", e.to_string()))?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_targets_pass_typos_fail() {
        for ok in [
            "info",
            "DEBUG",
            "edge=debug,info",
            "warn, dispatch_core=trace",
            "off",
            "edge[request{method=INVITE}]=debug",
        ] {
            assert_eq!(check_level(ok), Ok(()), "{ok}");
        }
        for bad in [
            "verbose",
            "",
            "info,",
            "edge=verbose",
            "=info",
            "edge",
            "infoo",
        ] {
            let e = check_level(bad).expect_err(bad);
            assert_eq!(e.field, "log.level", "{bad}");
        }
    }

    #[test]
    fn formats() {
        assert!(check_format("plain").is_ok() && check_format("json").is_ok());
        assert_eq!(check_format("xml").expect_err("xml").field, "log.format");
    }
}
