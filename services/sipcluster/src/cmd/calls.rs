//! `sipcluster calls list|show|end`: the calls in progress across the cluster, as
//! Kamailio's `kamcmd dlg.list` / `dlg.dlg_list` / `dlg.end_dlg` show them on one node,
//! read from the dialog records over the location API (the all-in-one serves it on
//! 127.0.0.1:50051 by default).
//!
//! `end` asks the cluster to end a call: its record is marked and due now, and the next
//! edge reaping records (every `accounting.reap_interval_secs`) writes its CDR (end
//! cause ADMINISTRATIVE, billed to the moment of the request) and deletes its relay
//! session, which cuts the media. No BYE is sent to the phones.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use location_client::{LocationClient, pb};
use prost::Message;
use proto::cdr::v1::Cdr;

/// The calls command's flags.
#[derive(Args, Clone)]
pub struct CallsArgs {
    #[command(flatten)]
    pub location: super::LocationApi,
    #[command(subcommand)]
    pub action: CallsAction,
}

/// What to do.
#[derive(Subcommand, Clone)]
pub enum CallsAction {
    /// Every call in progress, one line each.
    List,
    /// One call in detail (parties, request URI, source, edge, relay, times).
    Show {
        /// The call's Call-ID.
        call_id: String,
    },
    /// End a call in progress: the cluster writes its CDR and deletes its relay session.
    End {
        /// The call's Call-ID.
        call_id: String,
        /// The caller's tag, when the Call-ID has more than one call.
        #[arg(long)]
        from_tag: Option<String>,
        /// How long to wait for an edge to end it (0: do not wait).
        #[arg(long, default_value_t = 30)]
        wait_secs: u64,
    },
}

/// The accounting view of a record (the CDR so far), empty when it holds none.
fn call_of(d: &pb::Dialog) -> Cdr {
    Cdr::decode(d.call.as_slice()).unwrap_or_default()
}

fn party(p: Option<&proto::cdr::v1::Party>, fallback: &str) -> String {
    match p {
        Some(p) if !p.uri.is_empty() => p.uri.clone(),
        _ if fallback.is_empty() => "-".to_owned(),
        _ => fallback.to_owned(),
    }
}

/// A duration to read at a glance: `4.250s` under a minute, `1h02m07s` beyond.
fn secs(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}.{:03}s", ms % 1000),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Every record of `call_id` (or of every call), all pages.
async fn all(client: &LocationClient, call_id: &str) -> Result<(Vec<pb::Dialog>, u64)> {
    let (mut token, mut out) = (String::new(), Vec::new());
    loop {
        let (page, next, now) = client.list_dialogs(call_id, &token, 500).await?;
        out.extend(page);
        if next.is_empty() {
            return Ok((out, now));
        }
        token = next;
    }
}

fn show(d: &pb::Dialog, now_ms: u64) {
    let c = call_of(d);
    println!("call-id       {}", d.call_id);
    println!("from-tag      {}", d.from_tag);
    println!("to-tag        {}", or_dash(&d.to_tag));
    println!("caller        {}", party(c.caller.as_ref(), &d.caller));
    println!("callee        {}", party(c.callee.as_ref(), &d.callee));
    println!("request-uri   {}", or_dash(&c.request_uri));
    println!("source        {}", or_dash(&c.source));
    println!("edge          {}", or_dash(&d.edge_id));
    println!("dispatcher    {}", or_dash(&c.dispatcher));
    println!("media-relay   {}", or_dash(&d.media_relay));
    println!("destination   {}", or_dash(&c.destination));
    let answered = if c.answered_at_ms != 0 {
        c.answered_at_ms
    } else {
        d.answered_at_ms
    };
    println!(
        "answered      {} ago (INVITE {} ago)",
        secs(now_ms.saturating_sub(answered)),
        secs(now_ms.saturating_sub(if c.invite_at_ms != 0 {
            c.invite_at_ms
        } else {
            d.started_at_ms
        }))
    );
    if d.session_expires_secs > 0 {
        println!("session-timer {} s", d.session_expires_secs);
    }
    if d.end_reason == location_client::TERMINATED {
        println!("state         ending (an operator asked; the next reaping edge ends it)");
    } else {
        println!(
            "reaped        in {} unless refreshed or ended",
            secs(d.expires_at_ms.saturating_sub(now_ms))
        );
    }
}

/// Run one action and print its result.
pub async fn run(a: CallsArgs) -> Result<()> {
    let client = a.location.client()?;
    match a.action {
        CallsAction::List => {
            let (calls, now) = all(&client, "").await?;
            println!(
                "{:<40} {:<32} {:<32} {:>10} {:<22} RELAY",
                "CALL-ID", "CALLER", "CALLEE", "DURATION", "EDGE"
            );
            for d in &calls {
                let c = call_of(d);
                println!(
                    "{:<40} {:<32} {:<32} {:>10} {:<22} {}",
                    d.call_id,
                    party(c.caller.as_ref(), &d.caller),
                    party(c.callee.as_ref(), &d.callee),
                    secs(now.saturating_sub(d.answered_at_ms.max(c.answered_at_ms))),
                    or_dash(&d.edge_id),
                    or_dash(&d.media_relay),
                );
            }
            println!("{} calls in progress", calls.len());
        }
        CallsAction::Show { call_id } => {
            let (calls, now) = all(&client, &call_id).await?;
            if calls.is_empty() {
                bail!(
                    "{call_id}: no call in progress with this Call-ID (an ended call has its CDR)"
                );
            }
            for (i, d) in calls.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                show(d, now);
            }
        }
        CallsAction::End {
            call_id,
            from_tag,
            wait_secs,
        } => {
            let tags: Vec<String> = match from_tag {
                Some(t) => vec![t],
                None => {
                    let (calls, _) = all(&client, &call_id).await?;
                    calls.into_iter().map(|d| d.from_tag).collect()
                }
            };
            if tags.len() > 1 {
                bail!(
                    "{call_id}: {} calls have this Call-ID; pick one with --from-tag ({})",
                    tags.len(),
                    tags.join(", ")
                );
            }
            let Some(tag) = tags.first() else {
                bail!("{call_id}: no call in progress with this Call-ID");
            };
            match client.terminate_dialog(&call_id, tag).await? {
                None => bail!("{call_id}: no call in progress with this Call-ID and tag"),
                Some(d) if d.ended_at_ms != 0 => {
                    bail!("{call_id}: the call has ended already ({})", d.end_reason)
                }
                Some(_) => {}
            }
            if wait_secs == 0 {
                println!("{call_id}: asked the cluster to end the call");
                return Ok(());
            }
            let deadline = Instant::now() + Duration::from_secs(wait_secs);
            loop {
                let (left, _) = all(&client, &call_id).await?;
                if !left.iter().any(|d| d.from_tag == *tag) {
                    println!("{call_id}: ended (its CDR says END_CAUSE_ADMINISTRATIVE)");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{call_id}: marked for ending, but no edge ended it within {wait_secs} s \
                         (edges end such calls every accounting.reap_interval_secs when accounting is on)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(super::secs(4_250), "4.250s");
        assert_eq!(super::secs(59_999), "59.999s");
        assert_eq!(super::secs(127_000), "2m07s");
        assert_eq!(super::secs(43_198_587), "11h59m58s");
    }
}
