//! `sipcluster dispatcher-admin`: list a dispatcher's targets and sets, drain, undrain
//! and re-weight targets, over its admin API. Each change says what it did.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

/// The admin command's flags.
#[derive(Args, Clone)]
pub struct AdminArgs {
    /// The dispatcher's admin API.
    #[arg(
        long,
        env = "SIPCLUSTER_DISPATCHER_ADMIN_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    pub admin: String,
    #[command(flatten)]
    pub token: crate::tokens::CliToken,
    #[command(subcommand)]
    pub action: AdminAction,
}

/// What to do.
#[derive(Subcommand, Clone)]
pub enum AdminAction {
    /// List targets (edges and destination-set members) with their health.
    Targets {
        /// Only this pool (`edge` or a set name).
        #[arg(long)]
        pool: Option<String>,
    },
    /// List the destination sets and the edge pool.
    Sets,
    /// Set a target's weight.
    Weight {
        /// Target id (as `targets` shows it).
        id: String,
        /// New weight (0: no new dialogs).
        weight: u32,
        /// Pool (default: edge).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Stop giving a target new dialogs.
    Drain {
        /// Target id.
        id: String,
        /// Pool (default: edge).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Undo `drain`.
    Undrain {
        /// Target id.
        id: String,
        /// Pool (default: edge).
        #[arg(long)]
        pool: Option<String>,
    },
}

/// The API's refusal as the operator should read it ("no target ... in pool ...").
fn refused(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

/// Run one admin action and print its result.
pub async fn run(a: AdminArgs) -> Result<()> {
    use proto::dispatcher::v1 as pb;
    let token = a.token.load()?;
    let channel = tonic::transport::Endpoint::from_shared(a.admin.clone())
        .with_context(|| format!("--admin {}", a.admin))?
        .connect()
        .await
        .with_context(|| {
            format!(
                "connecting to the dispatcher admin API at {} (--admin or SIPCLUSTER_DISPATCHER_ADMIN_URL)",
                a.admin
            )
        })?;
    let mut client = pb::dispatcher_admin_client::DispatcherAdminClient::new(
        grpc_auth::Bearer::new(Some(&token)).channel(channel),
    );
    let health = |h: i32| match pb::Health::try_from(h) {
        Ok(pb::Health::Up) => "up",
        Ok(pb::Health::Down) => "down",
        Ok(pb::Health::Joining) => "joining",
        _ => "?",
    };
    let print = |t: &pb::Target| {
        println!(
            "{:<10} {:<28} {:<24} {:<4} weight={:<4} prio={:<3} {:<8}{} requests={}",
            t.pool,
            t.id,
            t.address,
            t.transport,
            t.weight,
            t.priority,
            health(t.health),
            if t.draining { " draining" } else { "" },
            t.requests
        )
    };
    let drain = matches!(a.action, AdminAction::Drain { .. });
    match a.action {
        AdminAction::Targets { pool } => {
            let r = client
                .list_targets(pb::ListTargetsRequest {
                    pool: pool.unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            for t in &r.targets {
                print(t);
            }
        }
        AdminAction::Sets => {
            for s in client
                .list_sets(pb::ListSetsRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .sets
            {
                println!(
                    "{:<16} {:<12} targets={} up={}",
                    s.name, s.algorithm, s.targets, s.up
                );
            }
        }
        AdminAction::Weight { id, weight, pool } => {
            let pool = pool.unwrap_or_default();
            // The weight before, to say what changed (best effort: the list may fail).
            let before = client
                .list_targets(pb::ListTargetsRequest { pool: pool.clone() })
                .await
                .ok()
                .and_then(|r| {
                    r.into_inner()
                        .targets
                        .into_iter()
                        .find(|t| t.id == id)
                        .map(|t| t.weight)
                });
            let r = client
                .set_weight(pb::SetWeightRequest {
                    pool,
                    id: id.clone(),
                    weight,
                })
                .await
                .map_err(refused)?
                .into_inner();
            if let Some(t) = &r.target {
                let from = before.map_or_else(|| "?".to_owned(), |w| w.to_string());
                let note = if weight == 0 {
                    " (0: no new dialogs; dialogs in progress go on)"
                } else {
                    ""
                };
                println!(
                    "{} target {}: weight {from} -> {}{note}",
                    t.pool, t.id, t.weight
                );
                print(t);
            }
        }
        AdminAction::Drain { id, pool } | AdminAction::Undrain { id, pool } => {
            let req = pb::DrainRequest {
                pool: pool.unwrap_or_default(),
                id,
            };
            let r = if drain {
                client.drain(req).await
            } else {
                client.undrain(req).await
            }
            .map_err(refused)?
            .into_inner();
            if let Some(t) = &r.target {
                if drain {
                    println!(
                        "{} target {}: draining: gets no new dialogs; dialogs in progress go on \
                         (undo with `undrain {}`)",
                        t.pool, t.id, t.id
                    );
                } else {
                    println!("{} target {}: takes new dialogs again", t.pool, t.id);
                }
                print(t);
            }
        }
    }
    Ok(())
}
