//! `sipcluster users add|remove|list`: provision subscribers through the location
//! service. Only HA1 digests leave the command, never the password.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

/// The users command's flags.
#[derive(Args, Clone)]
pub struct UsersArgs {
    #[command(flatten)]
    pub location: super::LocationApi,
    #[command(subcommand)]
    pub action: UsersAction,
}

/// What to do.
#[derive(Subcommand, Clone)]
pub enum UsersAction {
    /// Add or replace a user. The password is read from stdin (first line) unless HA1s are
    /// given; only its HA1 digests are sent.
    Add {
        /// Username.
        username: String,
        /// Realm (the SIP domain).
        #[arg(long)]
        realm: String,
        /// Precomputed MD5 HA1 (hex) instead of a password.
        #[arg(long)]
        ha1_md5: Option<String>,
        /// Precomputed SHA-256 HA1 (hex) instead of a password.
        #[arg(long)]
        ha1_sha256: Option<String>,
    },
    /// Remove a user.
    Remove {
        /// Username.
        username: String,
        /// Realm.
        #[arg(long)]
        realm: String,
    },
    /// List the users of a realm.
    List {
        /// Realm.
        #[arg(long)]
        realm: String,
    },
}

fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let p = line.trim_end_matches(['\r', '\n']).to_owned();
    if p.is_empty() {
        bail!("empty password (give it on stdin, or use --ha1-md5/--ha1-sha256)");
    }
    Ok(p)
}

/// Run one provisioning action.
pub async fn run(a: UsersArgs) -> Result<()> {
    let client = a.location.client()?;
    match a.action {
        UsersAction::Add {
            username,
            realm,
            ha1_md5,
            ha1_sha256,
        } => {
            let creds = if ha1_md5.is_some() || ha1_sha256.is_some() {
                sip_auth::Credentials::from_ha1_hex(ha1_md5.as_deref(), ha1_sha256.as_deref())?
            } else {
                sip_auth::Credentials::from_password(&username, &realm, &read_password()?)
            };
            let replaced = client.put_user(&username, &realm, &creds).await?;
            println!(
                "{} {username}@{realm}",
                if replaced { "replaced" } else { "added" }
            );
        }
        UsersAction::Remove { username, realm } => {
            if client.remove_user(&username, &realm).await? {
                println!("removed {username}@{realm}");
            } else {
                bail!("no user {username}@{realm}");
            }
        }
        UsersAction::List { realm } => {
            for u in client.list_users(&realm).await? {
                println!("{u}");
            }
        }
    }
    Ok(())
}
