//! `sipcluster check-config`: resolve the edge / all-in-one configuration (file,
//! `SIPCLUSTER_*` environment, flags), validate it, load its users file and read its
//! token files, and print it as TOML that `--config` reads back to the same settings
//! (token files by path; no secret is printed).

use anyhow::{Context, Result};

use crate::cmd::all_in_one::{AllInOneArgs, resolve};

/// Print the resolved configuration, or say what is wrong with it.
pub fn run(a: &AllInOneArgs) -> Result<()> {
    let cfg = resolve(a)?;
    cfg.validate()?;
    edge::load_users(&cfg)?;
    // Every token file set is read, used or not yet: a bad one should show now, not
    // when an endpoint or a relay is added.
    edge::config::read_token("location.token_file", cfg.location.token_file.as_deref())?;
    edge::config::read_token("media.token_file", cfg.media.token_file.as_deref())?;
    if let Some(f) = &cfg.all_in_one.admin_token_file {
        grpc_auth::Token::from_file(f).context("all_in_one.admin_token_file")?;
    }
    print!("{}", cfg.to_toml());
    Ok(())
}
