//! `sipcluster registrations list|show|remove`: what is registered, as Kamailio's
//! `kamcmd ul.dump` / `ul.lookup` / `ul.rm` show it, over the location API (the
//! all-in-one serves it on 127.0.0.1:50051 by default).

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use sip_registrar::{Aor, Binding};

/// The registrations command's flags.
#[derive(Args, Clone)]
pub struct RegistrationsArgs {
    #[command(flatten)]
    pub location: super::LocationApi,
    #[command(subcommand)]
    pub action: RegistrationsAction,
}

/// What to do.
#[derive(Subcommand, Clone)]
pub enum RegistrationsAction {
    /// Every registered AOR and its contacts, one line per contact.
    List,
    /// One AOR's contacts in detail (source, edge, path, instance, User-Agent...).
    Show {
        /// The address-of-record: sip:alice@example.com or alice@example.com.
        aor: String,
    },
    /// Remove an AOR's bindings (all, or one contact): the phone must register again.
    Remove {
        /// The address-of-record: sip:alice@example.com or alice@example.com.
        aor: String,
        /// Remove only this contact URI.
        #[arg(long)]
        contact: Option<String>,
    },
}

fn parse_aor(text: &str) -> Result<Aor> {
    let t = text.trim();
    let uri = if t.starts_with("sip:") || t.starts_with("sips:") {
        t.to_owned()
    } else {
        format!("sip:{t}")
    };
    if !uri.contains('@') {
        bail!("{text:?}: give the AOR as user@domain (e.g. alice@sipcluster.local)");
    }
    Aor::parse(&uri).map_err(|e| anyhow::anyhow!("{text:?}: {e}"))
}

/// Where the phone was seen: the transport and address its REGISTER came from.
fn seen_from(b: &Binding) -> String {
    b.source.as_ref().map_or_else(
        || "-".to_owned(),
        |s| format!("{} {}", s.transport, s.remote),
    )
}

fn q(b: &Binding) -> String {
    format!("{}.{:03}", b.q / 1000, b.q % 1000)
}

fn show(b: &Binding, now: u64) {
    println!("  contact     {}", b.contact);
    println!(
        "    expires   in {} s (q={}, registered {} s ago)",
        b.remaining(now),
        q(b),
        now.saturating_sub(b.registered_at)
    );
    if let Some(s) = &b.source {
        println!("    received  {} {}", s.transport, s.remote);
        if let Some(e) = &s.edge_id {
            println!("    edge      {e}");
        }
        if s.flow_token.is_some() {
            println!("    flow      held (requests go over the phone's own connection)");
        }
    }
    for p in &b.path {
        println!("    path      {p}");
    }
    if let Some(i) = &b.instance {
        println!(
            "    instance  {i}{}",
            b.reg_id.map(|r| format!(" reg-id {r}")).unwrap_or_default()
        );
    }
    if let Some(ua) = &b.user_agent {
        println!("    agent     {ua}");
    }
    println!("    call-id   {} cseq {}", b.call_id, b.cseq);
}

/// Run one action and print its result.
pub async fn run(a: RegistrationsArgs) -> Result<()> {
    let client = a.location.client()?;
    match a.action {
        RegistrationsAction::List => {
            let (mut token, mut aors, mut contacts) = (String::new(), 0usize, 0usize);
            println!(
                "{:<36} {:<48} {:>8} {:>5}  {:<26} AGENT",
                "AOR", "CONTACT", "EXPIRES", "Q", "RECEIVED"
            );
            loop {
                let (page, next, now) = client.list_bindings(&token, 500).await?;
                for (aor, bindings) in page {
                    aors += 1;
                    for b in &bindings {
                        contacts += 1;
                        println!(
                            "{:<36} {:<48} {:>7}s {:>5}  {:<26} {}",
                            aor.as_str(),
                            b.contact,
                            b.remaining(now),
                            q(b),
                            seen_from(b),
                            b.user_agent.as_deref().unwrap_or("-")
                        );
                    }
                }
                if next.is_empty() {
                    break;
                }
                token = next;
            }
            println!("{aors} AORs, {contacts} contacts");
        }
        RegistrationsAction::Show { aor } => {
            let aor = parse_aor(&aor)?;
            let bindings = client.lookup_aor(&aor).await?;
            if bindings.is_empty() {
                bail!("{}: not registered", aor.as_str());
            }
            let now = sip_registrar::unix_now();
            println!("{} ({} contacts)", aor.as_str(), bindings.len());
            for b in &bindings {
                show(b, now);
            }
        }
        RegistrationsAction::Remove { aor, contact } => {
            let aor = parse_aor(&aor)?;
            let n = client.remove_bindings(&aor, contact.as_deref()).await?;
            if n == 0 {
                bail!(
                    "{}: nothing removed (no such {})",
                    aor.as_str(),
                    if contact.is_some() {
                        "contact"
                    } else {
                        "registration"
                    }
                );
            }
            println!("{}: removed {n} binding(s)", aor.as_str());
        }
    }
    Ok(())
}
