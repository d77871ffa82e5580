//! Where subscribers' credentials come from.

use crate::credentials::Credentials;
use crate::error::Error;
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

/// The error a [`SubscriberStore`] returns: the crate's [`Error`], in practice
/// [`Error::Unavailable`].
pub type StoreError = Error;

/// Looks up a subscriber's [`Credentials`].
///
/// `Ok(None)` means "no such user in this realm" (the edge answers 403/404, or
/// re-challenges); `Err` means the store could not answer (the edge answers 503 with
/// Retry-After, because refusing a real user over an outage would make phones drop their
/// registration). Implementations: [`FileStore`] and [`MemoryStore`] here, a gRPC client
/// of the location service in the edge.
#[async_trait]
pub trait SubscriberStore: Send + Sync {
    /// Credentials of `username` in `realm`, compared exactly (usernames and realms are
    /// case-sensitive).
    async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<Credentials>, StoreError>;
}

#[async_trait]
impl<T: SubscriberStore + ?Sized> SubscriberStore for Arc<T> {
    async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<Credentials>, StoreError> {
        (**self).credentials(username, realm).await
    }
}

/// Subscribers in memory, keyed by realm then username. For tests, and the storage behind
/// [`FileStore`]. Its `Debug` shows usernames and realms, never secrets.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    realms: HashMap<String, HashMap<String, Credentials>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Add or replace a subscriber; returns the credentials it replaced.
    pub fn insert(
        &mut self,
        username: impl Into<String>,
        realm: impl Into<String>,
        credentials: Credentials,
    ) -> Option<Credentials> {
        self.realms
            .entry(realm.into())
            .or_default()
            .insert(username.into(), credentials)
    }

    /// Add or replace a subscriber by password (only the HA1s are kept).
    pub fn insert_password(
        &mut self,
        username: &str,
        realm: &str,
        password: &str,
    ) -> Option<Credentials> {
        self.insert(
            username,
            realm,
            Credentials::from_password(username, realm, password),
        )
    }

    /// The credentials of `username` in `realm`, synchronously.
    pub fn get(&self, username: &str, realm: &str) -> Option<&Credentials> {
        self.realms.get(realm)?.get(username)
    }

    /// Number of subscribers.
    pub fn len(&self) -> usize {
        self.realms.values().map(HashMap::len).sum()
    }

    /// Remove a subscriber; returns its credentials if it existed.
    pub fn remove(&mut self, username: &str, realm: &str) -> Option<Credentials> {
        let users = self.realms.get_mut(realm)?;
        let gone = users.remove(username);
        if users.is_empty() {
            self.realms.remove(realm);
        }
        gone
    }

    /// The usernames of `realm`, sorted.
    pub fn usernames(&self, realm: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .realms
            .get(realm)
            .map(|u| u.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Every subscriber as `(username, realm, credentials)`, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &Credentials)> {
        self.realms.iter().flat_map(|(realm, users)| {
            users
                .iter()
                .map(move |(user, c)| (user.as_str(), realm.as_str(), c))
        })
    }

    /// True when there are no subscribers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The realms (= domains) with at least one subscriber, sorted.
    pub fn realms(&self) -> BTreeSet<&str> {
        self.realms
            .iter()
            .filter(|(_, users)| !users.is_empty())
            .map(|(realm, _)| realm.as_str())
            .collect()
    }
}

#[async_trait]
impl SubscriberStore for MemoryStore {
    async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<Credentials>, StoreError> {
        Ok(self.get(username, realm).cloned())
    }
}

/// Subscribers from a TOML file, for the all-in-one deployment:
///
/// ```toml
/// [[user]]
/// username = "alice"
/// realm = "example.com"        # also the domain the user registers in
/// password = "alice-secret"    # or ha1_md5 = "<hex>" and/or ha1_sha256 = "<hex>"
/// ```
///
/// HA1s are computed at load and passwords dropped. The file is read once; reloading means
/// loading a new `FileStore` and swapping it in.
#[derive(Debug, Clone, Default)]
pub struct FileStore {
    users: MemoryStore,
}

/// Deliberately not `Debug`: it holds the password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    user: Vec<UserEntry>,
}

/// Deliberately not `Debug`: it holds the password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    username: String,
    realm: String,
    password: Option<String>,
    ha1_md5: Option<String>,
    ha1_sha256: Option<String>,
}

impl UserEntry {
    fn credentials(&self) -> Result<Credentials, Error> {
        for (field, value) in [("username", &self.username), ("realm", &self.realm)] {
            if value.trim().is_empty() {
                return Err(Error::EmptyField(field));
            }
            if value.trim() != value {
                return Err(Error::Untrimmed(field));
            }
        }
        let has_ha1 = self.ha1_md5.is_some() || self.ha1_sha256.is_some();
        match &self.password {
            Some(_) if has_ha1 => Err(Error::ConflictingSecrets),
            Some(p) if p.is_empty() => Err(Error::EmptyField("password")),
            Some(p) => Ok(Credentials::from_password(&self.username, &self.realm, p)),
            None => Credentials::from_ha1_hex(self.ha1_md5.as_deref(), self.ha1_sha256.as_deref()),
        }
    }
}

impl FileStore {
    /// Load from TOML text.
    pub fn from_toml_str(text: &str) -> Result<FileStore, Error> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let mut users = MemoryStore::new();
        for (i, entry) in doc.user.iter().enumerate() {
            let context = |problem| Error::Entry {
                index: i + 1,
                user: format!("{}@{}", entry.username, entry.realm),
                problem: Box::new(problem),
            };
            let creds = entry.credentials().map_err(context)?;
            if users.get(&entry.username, &entry.realm).is_some() {
                return Err(context(Error::DuplicateUser));
            }
            users.insert(entry.username.as_str(), entry.realm.as_str(), creds);
        }
        Ok(FileStore { users })
    }

    /// Load from a file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<FileStore, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        FileStore::from_toml_str(&text)
    }

    /// The credentials of `username` in `realm`, synchronously.
    pub fn get(&self, username: &str, realm: &str) -> Option<&Credentials> {
        self.users.get(username, realm)
    }

    /// Number of subscribers.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file has no subscribers.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The realms (= domains this deployment serves), sorted.
    pub fn realms(&self) -> BTreeSet<&str> {
        self.users.realms()
    }

    /// The subscribers, to seed another store (the location service) from the file.
    pub fn into_inner(self) -> MemoryStore {
        self.users
    }
}

#[async_trait]
impl SubscriberStore for FileStore {
    async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<Credentials>, StoreError> {
        Ok(self.get(username, realm).cloned())
    }
}

/// Keys whose values are secrets; a parser message about one of their lines is redacted.
const SECRET_KEYS: [&str; 3] = ["password", "ha1_md5", "ha1_sha256"];

/// Position and message of a TOML error, without the source line `Display` would quote.
fn toml_error(text: &str, e: &toml::de::Error) -> Error {
    let offset = e.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    let line_text = text
        .get(line_start..)
        .and_then(|s| s.lines().next())
        .unwrap_or("");
    // serde quotes the offending value: strings in "…" (`user = "<password>"` must not
    // echo it), other scalars in `…`, which also names fields and so is only dropped on a
    // line that holds a secret.
    let secret_line = SECRET_KEYS.iter().any(|k| line_text.contains(k));
    let message = redact_quoted(e.message().trim(), secret_line);
    Error::Toml {
        line,
        column,
        message,
    }
}

/// Replace every "…" fragment, and every `…` one too if `backticks`, with `<redacted>`.
fn redact_quoted(message: &str, backticks: bool) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                out.push_str("<redacted>");
                open = None;
            }
            Some(_) => {}
            None if c == '"' || (backticks && c == '`') => open = Some(c),
            None => out.push(c),
        }
    }
    if open.is_some() {
        out.push_str("<redacted>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact_quoted("invalid type: string \"hunter2\", expected x", false),
            "invalid type: string <redacted>, expected x"
        );
        assert_eq!(
            redact_quoted("unknown field `pasword`", false),
            "unknown field `pasword`"
        );
        assert_eq!(
            redact_quoted("bad `a` and `b", true),
            "bad <redacted> and <redacted>"
        );
    }

    #[test]
    fn memory_store_basics() {
        let mut m = MemoryStore::new();
        assert!(m.is_empty());
        assert!(m.insert_password("alice", "a.com", "x").is_none());
        assert!(m.insert_password("alice", "a.com", "y").is_some());
        m.insert_password("bob", "b.com", "z");
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.realms().into_iter().collect::<Vec<_>>(),
            ["a.com", "b.com"]
        );
        assert!(m.get("alice", "b.com").is_none());
        assert!(m.get("Alice", "a.com").is_none());
        let want = Credentials::from_password("alice", "a.com", "y");
        assert_eq!(
            m.get("alice", "a.com").unwrap().ha1(crate::Algorithm::Md5),
            want.ha1(crate::Algorithm::Md5)
        );
    }
}
