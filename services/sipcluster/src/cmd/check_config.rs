//! `sipcluster check-config`: resolve the edge / all-in-one configuration (file,
//! `SIPCLUSTER_*` environment, flags), validate it, load its users file, and print it as
//! TOML that `--config` reads back to the same settings.

use anyhow::Result;

use crate::cmd::all_in_one::{AllInOneArgs, resolve};

/// Print the resolved configuration, or say what is wrong with it.
pub fn run(a: &AllInOneArgs) -> Result<()> {
    let cfg = resolve(a)?;
    cfg.validate()?;
    edge::load_users(&cfg)?;
    print!("{}", cfg.to_toml());
    Ok(())
}
