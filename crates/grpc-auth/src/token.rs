//! Tokens: read from files (Kubernetes Secret mounts), generated for the all-in-one, and
//! the set a server accepts with the role each one grants.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::AuthError;

/// Fewest characters a token may have (after trimming): short enough for any generated
/// secret, long enough that a placeholder like `changeme` is refused.
pub const MIN_TOKEN_LEN: usize = 16;

/// Bytes of a token file beyond which it cannot be a token (a path given by mistake to a
/// large file is refused rather than read whole).
const MAX_FILE_LEN: u64 = 4096;

/// Who a caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A service identity: the edges calling the location service and the media relays.
    Edge,
    /// An operator's command (`sipcluster users`, `registrations`, `dispatcher-admin`).
    Admin,
}

impl Role {
    /// The role's name in logs and messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Admin => "admin",
        }
    }
}

/// A bearer token. Its value is never printed: `Debug` shows only its length.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<{} characters, redacted>)", self.0.len())
    }
}

impl Token {
    /// A token from its text (surrounding white space and the final newline of a file
    /// trimmed). It must have at least [`MIN_TOKEN_LEN`] characters, all visible ASCII:
    /// it travels in an HTTP header after `Bearer `.
    pub fn new(text: &str) -> Result<Token, AuthError> {
        let t = text.trim();
        if t.len() < MIN_TOKEN_LEN {
            return Err(AuthError::TooShort { len: t.len() });
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::BadCharacters);
        }
        Ok(Token(t.to_owned()))
    }

    /// Read a token file (a Kubernetes Secret mount, or what the all-in-one wrote).
    pub fn from_file(path: &Path) -> Result<Token, AuthError> {
        let read = |source| AuthError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_FILE_LEN {
            return Err(AuthError::File {
                path: path.to_owned(),
                problem: Box::new(AuthError::TooLong { len }),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Token::new(&text).map_err(|e| AuthError::File {
            path: path.to_owned(),
            problem: Box::new(e),
        })
    }

    /// A fresh random token: 32 bytes from the operating system, in hex.
    pub fn generate() -> Result<Token, AuthError> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(Token(b.iter().map(|x| format!("{x:02x}")).collect()))
    }

    /// The secret itself, for the header and for writing the all-in-one's token file.
    /// Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Equal to `presented`, in time that does not depend on where they differ.
    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

/// The tokens a server accepts: at most one per role.
#[derive(Debug, Clone)]
pub struct Tokens {
    edge: Option<Token>,
    admin: Option<Token>,
}

impl Tokens {
    /// The accepted tokens. At least one is needed (an API without any would be open to
    /// anyone), and the two must differ (one token may not grant both roles).
    pub fn new(edge: Option<Token>, admin: Option<Token>) -> Result<Tokens, AuthError> {
        if edge.is_none() && admin.is_none() {
            return Err(AuthError::NoToken);
        }
        if let (Some(e), Some(a)) = (&edge, &admin)
            && e.matches(a.0.as_bytes())
        {
            return Err(AuthError::SameToken);
        }
        Ok(Tokens { edge, admin })
    }

    /// Only an admin token (the dispatcher's admin API, the all-in-one's APIs).
    #[must_use]
    pub fn admin(token: Token) -> Tokens {
        Tokens {
            edge: None,
            admin: Some(token),
        }
    }

    /// Which role `presented` grants, if any. Every configured token is compared, so the
    /// time taken does not say which one came close.
    #[must_use]
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let edge = self.edge.as_ref().is_some_and(|t| t.matches(presented));
        let admin = self.admin.as_ref().is_some_and(|t| t.matches(presented));
        match (edge, admin) {
            (true, _) => Some(Role::Edge),
            (_, true) => Some(Role::Admin),
            _ => None,
        }
    }

    /// The roles that have a token.
    #[must_use]
    pub fn roles(&self) -> Vec<Role> {
        let mut r = Vec::new();
        if self.edge.is_some() {
            r.push(Role::Edge);
        }
        if self.admin.is_some() {
            r.push(Role::Admin);
        }
        r
    }
}

/// The `[api]` section of a server that both edges and operators call (the location
/// service, the media relay): where its accepted tokens are mounted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenFiles {
    /// The edges' token (`SIPCLUSTER_EDGE_TOKEN_FILE`).
    pub edge_token_file: Option<PathBuf>,
    /// The operators' token (`SIPCLUSTER_ADMIN_TOKEN_FILE`).
    pub admin_token_file: Option<PathBuf>,
}

impl TokenFiles {
    /// Read every configured file; refused when none is configured. A file's error names
    /// its setting (`api.edge_token_file`), which is what the operator looks up.
    pub fn load(&self) -> Result<Tokens, AuthError> {
        let read = |setting: &'static str, p: &Option<PathBuf>| {
            p.as_deref()
                .map(Token::from_file)
                .transpose()
                .map_err(|e| AuthError::Setting {
                    setting,
                    problem: Box::new(e),
                })
        };
        Tokens::new(
            read("api.edge_token_file", &self.edge_token_file)?,
            read("api.admin_token_file", &self.admin_token_file)?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_trimmed_long_enough_and_printable() {
        let t = Token::new("  0123456789abcdef\n").unwrap();
        assert_eq!(t.expose(), "0123456789abcdef");
        assert!(matches!(
            Token::new("short\n"),
            Err(AuthError::TooShort { len: 5 })
        ));
        assert!(matches!(
            Token::new(""),
            Err(AuthError::TooShort { len: 0 })
        ));
        assert!(matches!(
            Token::new("0123456789 abcdef"),
            Err(AuthError::BadCharacters)
        ));
        assert!(!format!("{t:?}").contains("0123"), "{t:?}");
        let g = Token::generate().unwrap();
        assert_eq!(g.expose().len(), 64);
        assert_ne!(g, Token::generate().unwrap());
    }

    #[test]
    fn files_are_read_and_their_problems_named() {
        let dir = std::env::temp_dir().join(format!("grpc-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "edge-token-0123456789\n").unwrap();
        assert_eq!(
            Token::from_file(&good).unwrap().expose(),
            "edge-token-0123456789"
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = Token::from_file(&empty).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("at least 16"), "{e}");
        let e = Token::from_file(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 5000]).unwrap();
        assert!(Token::from_file(&big).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn each_token_grants_its_role_and_nothing_else() {
        let edge = Token::new("edge-token-0123456789").unwrap();
        let admin = Token::new("admin-token-0123456789").unwrap();
        let t = Tokens::new(Some(edge.clone()), Some(admin.clone())).unwrap();
        assert_eq!(t.role_of(b"edge-token-0123456789"), Some(Role::Edge));
        assert_eq!(t.role_of(b"admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(t.role_of(b"edge-token-012345678"), None);
        assert_eq!(t.role_of(b""), None);
        assert_eq!(t.roles(), [Role::Edge, Role::Admin]);
        let a = Tokens::admin(admin.clone());
        assert_eq!(a.role_of(b"edge-token-0123456789"), None);
        assert!(matches!(Tokens::new(None, None), Err(AuthError::NoToken)));
        assert!(matches!(
            Tokens::new(Some(admin.clone()), Some(admin)),
            Err(AuthError::SameToken)
        ));
        assert!(matches!(
            TokenFiles::default().load(),
            Err(AuthError::NoToken)
        ));
    }

    #[test]
    fn the_api_section_reads_from_toml() {
        let f: TokenFiles =
            toml::from_str("edge_token_file = \"/var/run/secrets/sipcluster/edge-token\"\n")
                .unwrap();
        assert_eq!(
            f.edge_token_file.as_deref(),
            Some(Path::new("/var/run/secrets/sipcluster/edge-token"))
        );
        assert!(toml::from_str::<TokenFiles>("token = \"x\"\n").is_err());
    }
}
