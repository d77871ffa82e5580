//! The gRPC API tokens as the command line sees them: the servers' and the edge's token
//! file flags, the operator commands' `--token-file`, and the per-user file where the
//! all-in-one leaves the admin token it generated (and where those commands look by
//! default).
//!
//! The environment variables are the same for every subcommand, so one Secret mount and
//! one variable serve a pod whatever it runs: `SIPCLUSTER_EDGE_TOKEN_FILE` is the token
//! an edge presents and the one a location service or media relay accepts from edges;
//! `SIPCLUSTER_ADMIN_TOKEN_FILE` the one operators present and servers accept from them.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use grpc_auth::Token;

/// The edge token's file flag.
#[derive(clap::Args, Clone, Debug)]
pub struct EdgeTokenArg {
    /// File holding the edge token (the edges' service identity, e.g. a Kubernetes Secret
    /// mount): presented by edges to the location service and the media relays, accepted
    /// by them.
    #[arg(long, env = "SIPCLUSTER_EDGE_TOKEN_FILE")]
    pub edge_token_file: Option<PathBuf>,
}

/// The admin token's file flag of the servers.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminTokenArg {
    /// File holding the admin token (the operators' commands: users, registrations,
    /// dispatcher-admin) this API accepts. The all-in-one without it generates one at each
    /// start and writes it where those commands look by default.
    #[arg(long, env = "SIPCLUSTER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl AdminTokenArg {
    /// Put the flag, when given, over the configuration file's setting.
    pub fn apply(&self, setting: &mut Option<PathBuf>) {
        if self.admin_token_file.is_some() {
            setting.clone_from(&self.admin_token_file);
        }
    }
}

impl EdgeTokenArg {
    /// Put the flag, when given, over the configuration file's setting.
    pub fn apply(&self, setting: &mut Option<PathBuf>) {
        if self.edge_token_file.is_some() {
            setting.clone_from(&self.edge_token_file);
        }
    }
}

/// The operator commands' token.
#[derive(clap::Args, Clone, Debug)]
pub struct CliToken {
    /// File holding the admin token. Default: the file a running all-in-one writes
    /// (`$XDG_STATE_HOME/sipcluster/admin-token`, else
    /// `$HOME/.local/state/sipcluster/admin-token`).
    #[arg(
        long = "token-file",
        env = "SIPCLUSTER_ADMIN_TOKEN_FILE",
        global = true
    )]
    pub file: Option<PathBuf>,
}

impl CliToken {
    /// The token to present: from `--token-file`, else from the all-in-one's file.
    pub fn load(&self) -> Result<Token> {
        if let Some(f) = &self.file {
            return Token::from_file(f).context("the admin token (--token-file)");
        }
        let default = default_admin_token_path()?;
        if !default.exists() {
            bail!(
                "no admin token: give --token-file FILE (or SIPCLUSTER_ADMIN_TOKEN_FILE); a \
                 running all-in-one writes its own to {}, which does not exist",
                default.display()
            );
        }
        Token::from_file(&default).with_context(|| {
            format!(
                "the all-in-one's admin token ({}; or give --token-file)",
                default.display()
            )
        })
    }
}

/// Where the all-in-one writes the admin token it generates, and where the operator
/// commands look without `--token-file`: `$XDG_STATE_HOME/sipcluster/admin-token`, else
/// `$HOME/.local/state/sipcluster/admin-token` (the XDG base directory rule for state
/// files: per user, private to that user).
pub fn default_admin_token_path() -> Result<PathBuf> {
    Ok(state_dir()?.join("admin-token"))
}

/// The all-in-one's per-user state: `$XDG_STATE_HOME/sipcluster`, else
/// `$HOME/.local/state/sipcluster` (admin token, CDR file, accounting spool).
pub fn state_dir() -> Result<PathBuf> {
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let state = match absolute(std::env::var_os("XDG_STATE_HOME")) {
        Some(s) => s,
        None => match absolute(std::env::var_os("HOME")) {
            Some(h) => h.join(".local/state"),
            None => bail!(
                "neither XDG_STATE_HOME nor HOME is set, so there is no per-user place for \
                 the admin token and the CDR spool: set XDG_STATE_HOME, or give the token's \
                 file with --admin-token-file / --token-file (SIPCLUSTER_ADMIN_TOKEN_FILE) \
                 and accounting.spool_dir"
            ),
        },
    };
    Ok(state.join("sipcluster"))
}

/// Create `dir` (and its parents) for this user only (0700): the admin token, the CDRs
/// (phone numbers) and their spool live there.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Write `token` to `path` readable by this user only (0600; directories created 0700),
/// replacing the file atomically so a command never reads half a token.
pub fn write_private(path: &Path, token: &Token) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    create_private_dir(dir)?;
    let tmp = dir.join(format!(".admin-token.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| -> std::io::Result<()> {
        let mut f = options.open(&tmp)?;
        // The mode above applies only to a file it creates: a leftover one keeps its own.
        #[cfg(unix)]
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(token.expose().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing the admin token to {}", path.display()));
    }
    Ok(())
}
