//! A service's resolved configuration printed as the TOML file its `--config` reads back
//! (`sipcluster check-config`): one shape for every service, secrets left out.

use serde::Serialize;

/// `settings` as TOML under a header saying where they came from. Each of `notes` says
/// one setting that is not in the text and how to give it again: a secret that is set
/// (its field `#[serde(skip_serializing)]` or `#[serde(skip)]`: a printed file gets
/// copied, pasted and committed, so no secret is ever in it), or one the file format
/// has no key for.
pub fn to_toml(service: &str, settings: &impl Serialize, notes: &[impl AsRef<str>]) -> String {
    let mut out = format!(
        "# sipcluster {service} configuration, as check-config resolved it\n\
         # (file + SIPCLUSTER_* environment + flags). Reusable with --config.\n"
    );
    for n in notes {
        out.push_str("# ");
        out.push_str(n.as_ref());
        out.push('\n');
    }
    out.push('\n');
    // Serializing plain data (strings, numbers, addresses, paths) cannot fail.
    out.push_str(&toml::to_string_pretty(settings).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize)]
    struct C {
        a: u32,
        #[serde(skip_serializing)]
        secret: Option<String>,
    }

    #[test]
    fn the_header_names_the_service_and_what_is_left_out() {
        let c = C {
            a: 1,
            secret: Some("hunter2-hunter2".into()),
        };
        let t = super::to_toml("demo", &c, &["secret is set but not printed"]);
        assert!(c.secret.is_some());
        assert_eq!(
            t,
            "# sipcluster demo configuration, as check-config resolved it\n\
             # (file + SIPCLUSTER_* environment + flags). Reusable with --config.\n\
             # secret is set but not printed\n\na = 1\n"
        );
    }
}
