//! Subscriber stores: file loading, validation, lookups, and secrets kept out of `Debug`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use async_trait::async_trait;
use sip_auth::{
    Algorithm, Credentials, Error, FileStore, MemoryStore, StoreError, SubscriberStore, ha1,
};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// The stores here answer at once, so one poll suffices; no runtime needed.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

const ALICE_PW: &str = "alice-very-secret-pw";

fn good_file() -> String {
    format!(
        r#"
# the all-in-one's subscribers
[[user]]
username = "alice"
realm = "example.com"
password = "{ALICE_PW}"

[[user]]
username = "bob"
realm = "example.com"
ha1_md5 = "{md5}"

[[user]]
username = "alice"
realm = "example.org"
ha1_md5 = "{md5b}"
ha1_sha256 = "{sha}"
"#,
        md5 = ha1(Algorithm::Md5, "bob", "example.com", "bob-pw").to_uppercase(),
        md5b = ha1(Algorithm::Md5, "alice", "example.org", "other-pw"),
        sha = ha1(Algorithm::Sha256, "alice", "example.org", "other-pw"),
    )
}

#[test]
fn loads_a_good_file() {
    let s = FileStore::from_toml_str(&good_file()).unwrap();
    assert_eq!(s.len(), 3);
    assert!(!s.is_empty());
    assert_eq!(
        s.realms().into_iter().collect::<Vec<_>>(),
        ["example.com", "example.org"]
    );

    let alice = s.get("alice", "example.com").unwrap();
    assert_eq!(
        alice.ha1(Algorithm::Md5),
        Some(ha1(Algorithm::Md5, "alice", "example.com", ALICE_PW).as_str())
    );
    assert_eq!(
        alice.ha1(Algorithm::Sha256),
        Some(ha1(Algorithm::Sha256, "alice", "example.com", ALICE_PW).as_str())
    );

    // Hex is stored lower-case whatever the file used; bob has MD5 only.
    let bob = s.get("bob", "example.com").unwrap();
    assert_eq!(
        bob.ha1(Algorithm::Md5),
        Some(ha1(Algorithm::Md5, "bob", "example.com", "bob-pw").as_str())
    );
    assert!(!bob.supports(Algorithm::Sha256));

    let alice_org = s.get("alice", "example.org").unwrap();
    assert!(alice_org.supports(Algorithm::Md5) && alice_org.supports(Algorithm::Sha256));

    assert!(s.get("bob", "example.org").is_none());
    assert!(s.get("ALICE", "example.com").is_none());
}

#[test]
fn empty_file_is_an_empty_store() {
    let s = FileStore::from_toml_str("").unwrap();
    assert!(s.is_empty());
    assert!(s.realms().is_empty());
}

#[test]
fn loads_from_a_path() {
    let path = std::env::temp_dir().join(format!("sip-auth-store-{}.toml", std::process::id()));
    std::fs::write(&path, good_file()).unwrap();
    let loaded = FileStore::from_path(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.unwrap().len(), 3);

    let missing = std::env::temp_dir().join("sip-auth-no-such-file.toml");
    match FileStore::from_path(&missing) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
}

fn entry_error(toml: &str) -> (usize, String, Error) {
    match FileStore::from_toml_str(toml) {
        Err(Error::Entry {
            index,
            user,
            problem,
        }) => (index, user, *problem),
        other => panic!("expected an entry error, got {other:?}"),
    }
}

#[test]
fn validation_errors() {
    let user = |body: &str| format!("[[user]]\n{body}\n");

    // Duplicate user in one realm, reported at the second occurrence.
    let dup = format!(
        "{}{}",
        user("username = \"a\"\nrealm = \"r\"\npassword = \"p1\""),
        user("username = \"a\"\nrealm = \"r\"\npassword = \"p2\"")
    );
    let (index, who, problem) = entry_error(&dup);
    assert_eq!((index, who.as_str()), (2, "a@r"));
    assert!(matches!(problem, Error::DuplicateUser));
    let msg = FileStore::from_toml_str(&dup).unwrap_err().to_string();
    assert_eq!(msg, "user entry #2 (a@r): duplicate user in this realm");

    type IsExpected = fn(&Error) -> bool;
    let cases: &[(&str, IsExpected, &str)] = &[
        (
            "username = \"a\"\nrealm = \"r\"",
            |e| matches!(e, Error::MissingSecret),
            "needs a password, ha1_md5 or ha1_sha256",
        ),
        (
            "username = \"a\"\nrealm = \"r\"\npassword = \"p\"\nha1_md5 = \"00000000000000000000000000000000\"",
            |e| matches!(e, Error::ConflictingSecrets),
            "password and ha1_md5/ha1_sha256 are mutually exclusive",
        ),
        (
            "username = \"a\"\nrealm = \"r\"\nha1_md5 = \"xyz\"",
            |e| {
                matches!(
                    e,
                    Error::BadHa1 {
                        field: "ha1_md5",
                        expected_len: 32
                    }
                )
            },
            "ha1_md5 must be 32 hex digits",
        ),
        (
            "username = \"a\"\nrealm = \"r\"\nha1_sha256 = \"00000000000000000000000000000000\"",
            |e| {
                matches!(
                    e,
                    Error::BadHa1 {
                        field: "ha1_sha256",
                        expected_len: 64
                    }
                )
            },
            "ha1_sha256 must be 64 hex digits",
        ),
        (
            "username = \"\"\nrealm = \"r\"\npassword = \"p\"",
            |e| matches!(e, Error::EmptyField("username")),
            "empty username",
        ),
        (
            "username = \"a\"\nrealm = \"  \"\npassword = \"p\"",
            |e| matches!(e, Error::EmptyField("realm")),
            "empty realm",
        ),
        (
            "username = \"alice \"\nrealm = \"r\"\npassword = \"p\"",
            |e| matches!(e, Error::Untrimmed("username")),
            "username has leading or trailing white space",
        ),
        (
            "username = \"a\"\nrealm = \"\\texample.com\"\npassword = \"p\"",
            |e| matches!(e, Error::Untrimmed("realm")),
            "realm has leading or trailing white space",
        ),
        (
            "username = \"a\"\nrealm = \"r\"\npassword = \"\"",
            |e| matches!(e, Error::EmptyField("password")),
            "empty password",
        ),
    ];
    for (body, is, text) in cases {
        let (index, _, problem) = entry_error(&user(body));
        assert_eq!(index, 1, "{body}");
        assert!(is(&problem), "{body}: {problem:?}");
        assert_eq!(problem.to_string(), *text);
    }
}

#[test]
fn toml_shape_errors_have_positions() {
    let cases: &[(&str, usize)] = &[
        // Typo in a key: unknown fields are refused rather than silently ignored.
        (
            "[[user]]\nusername = \"a\"\nrealm = \"r\"\npasword = \"p\"\n",
            4,
        ),
        ("[[user]]\nrealm = \"r\"\npassword = \"p\"\n", 1),
        (
            "[[user]]\nusername = \"a\"\nrealm = 5\npassword = \"p\"\n",
            3,
        ),
        ("[[user]\nusername = \"a\"\n", 1),
        ("[server]\nport = 5060\n", 1),
    ];
    for (text, want_line) in cases {
        match FileStore::from_toml_str(text) {
            Err(Error::Toml {
                line,
                column,
                message,
            }) => {
                assert_eq!(line, *want_line, "{text:?}: {message}");
                assert!(column >= 1);
                assert!(!message.is_empty());
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn passwords_never_appear_in_debug_or_errors() {
    const PW: &str = "Tr0ub4dor&3-unique-marker";
    let md5 = ha1(Algorithm::Md5, "eve", "example.com", PW);
    let sha = ha1(Algorithm::Sha256, "eve", "example.com", PW);
    let good =
        format!("[[user]]\nusername = \"eve\"\nrealm = \"example.com\"\npassword = \"{PW}\"\n");
    let store = FileStore::from_toml_str(&good).unwrap();
    let creds = store.get("eve", "example.com").unwrap().clone();
    let mut mem = MemoryStore::new();
    mem.insert_password("eve", "example.com", PW);

    let mut rendered = vec![
        format!("{store:?}"),
        format!("{store:#?}"),
        format!("{creds:?}"),
        format!("{mem:?}"),
        format!("{:?}", block_on(store.credentials("eve", "example.com"))),
        format!("{:?}", block_on(mem.credentials("eve", "example.com"))),
    ];
    // Broken files whose only fault is near the password.
    for bad in [
        format!(
            "[[user]]\nusername = \"eve\"\nrealm = \"example.com\"\npassword = \"{PW}\nx = 1\n"
        ),
        format!(
            "[[user]]\nusername = \"eve\"\nrealm = \"example.com\"\npassword = \"{PW}\" junk\n"
        ),
        format!("[[user]]\nusername = \"eve\"\nrealm = \"example.com\"\npassword = [\"{PW}\"]\n"),
        format!(
            "[[user]]\nusername = \"eve\"\nrealm = \"example.com\"\npassword = \"{PW}\"\nha1_md5 = \"{md5}\"\n"
        ),
        format!(
            "[[user]]\nusername = \"eve\"\nrealm = \"example.com\"\npassword = \"{PW}\"\n[[user]]\nusername = \"eve\"\nrealm = \"example.com\"\npassword = \"{PW}\"\n"
        ),
        format!("user = \"{PW}\"\n"),
    ] {
        let err = FileStore::from_toml_str(&bad).unwrap_err();
        rendered.push(format!("{err:?}"));
        rendered.push(err.to_string());
    }
    for r in &rendered {
        assert!(!r.contains(PW), "password leaked: {r}");
        assert!(!r.contains(&md5), "HA1 leaked: {r}");
        assert!(!r.contains(&sha), "HA1 leaked: {r}");
    }
    assert!(rendered[2].contains("<redacted>"));
}

struct DownStore;

#[async_trait]
impl SubscriberStore for DownStore {
    async fn credentials(&self, _: &str, _: &str) -> Result<Option<Credentials>, StoreError> {
        Err(Error::Unavailable("location service timed out".into()))
    }
}

#[test]
fn store_errors_are_distinct_from_unknown_users() {
    let file: Arc<dyn SubscriberStore> = Arc::new(FileStore::from_toml_str(&good_file()).unwrap());
    let down: Arc<dyn SubscriberStore> = Arc::new(DownStore);

    assert!(matches!(
        block_on(file.credentials("alice", "example.com")),
        Ok(Some(c)) if c.supports(Algorithm::Sha256)
    ));
    assert!(matches!(
        block_on(file.credentials("mallory", "example.com")),
        Ok(None)
    ));
    match block_on(down.credentials("alice", "example.com")) {
        Err(e @ Error::Unavailable(_)) => assert_eq!(
            e.to_string(),
            "subscriber store unavailable: location service timed out"
        ),
        other => panic!("{other:?}"),
    }
    // Arc<T> is a store too, so an Arc can be shared and still passed by value.
    let shared = Arc::new(MemoryStore::new());
    assert!(matches!(
        block_on(SubscriberStore::credentials(&shared, "a", "b")),
        Ok(None)
    ));
}
