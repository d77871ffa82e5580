//! Every gRPC API takes calls only with a bearer token of a role its table allows, end to
//! end against real processes:
//!
//! * the location service: anonymous calls and unknown tokens get UNAUTHENTICATED and
//!   change nothing; an admin token cannot read credentials, an edge token cannot
//!   provision users (PERMISSION_DENIED); each refusal is counted
//!   (`sipcluster_grpc_auth_rejected_total{reason}`) and logged without the token;
//! * a server with no token, or an unusable token file, does not start;
//! * the operator commands present the admin token from `--token-file` or the
//!   environment, and say clearly when they have none.

mod common;

use common::{ADMIN_TOKEN, EDGE_TOKEN, Server, run_cli, run_cli_env, workdir};
use location_client::{ClientError, LocationClient, pb};
use tonic::Code;

const DOMAIN: &str = "sipcluster.local";
/// A token no server of these tests accepts.
const WRONG_TOKEN: &str = "wrong-token-0123456789abcdef";

fn location_client(addr: std::net::SocketAddr, token: Option<&str>) -> LocationClient {
    common::location_client(&format!("http://{addr}"), token)
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(ClientError::Call(s)) => s.code(),
        other => panic!("expected a refused call, got {other:?}"),
    }
}

fn credentials() -> sip_auth::Credentials {
    sip_auth::Credentials::from_password("mallory", DOMAIN, "mallory-secret")
}

#[test]
fn location_api_refuses_anonymous_and_wrong_tokens_and_keeps_credentials_to_edges() {
    let dir = workdir("auth_location");
    let loc = Server::location(&dir, "location", &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_runtime = rt.enter();

    // Without the right token nothing is read or written, whatever the call.
    for token in [None, Some(WRONG_TOKEN)] {
        let c = location_client(loc.sip, token);
        let what = format!("{token:?}");
        assert_eq!(
            code(rt.block_on(c.list_users(DOMAIN))),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code(rt.block_on(c.fetch_credentials("alice", DOMAIN))),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code(rt.block_on(c.put_user("mallory", DOMAIN, &credentials()))),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code(rt.block_on(c.remove_user("alice", DOMAIN))),
            Code::Unauthenticated,
            "{what}"
        );
        assert_eq!(
            code(rt.block_on(c.list_bindings("", 10))),
            Code::Unauthenticated,
            "{what}"
        );
        let injected = rt.block_on(c.grpc().register(pb::RegisterRequest::default()));
        assert_eq!(
            injected.expect_err("anonymous Register").code(),
            Code::Unauthenticated,
            "{what}"
        );
    }

    // The admin token provisions users and lists them, but reads no HA1.
    let admin = location_client(loc.sip, Some(ADMIN_TOKEN));
    let users = rt
        .block_on(admin.list_users(DOMAIN))
        .expect("admin lists users");
    assert!(users.contains(&"alice".to_owned()), "{users:?}");
    assert!(!users.contains(&"mallory".to_owned()), "{users:?}");
    assert_eq!(
        code(rt.block_on(admin.fetch_credentials("alice", DOMAIN))),
        Code::PermissionDenied
    );
    let bind = rt.block_on(admin.grpc().register(pb::RegisterRequest::default()));
    assert_eq!(
        bind.expect_err("admin Register").code(),
        Code::PermissionDenied
    );

    // The edge token reads credentials and takes REGISTERs, but provisions nobody.
    let edge = location_client(loc.sip, Some(EDGE_TOKEN));
    assert!(
        rt.block_on(edge.fetch_credentials("alice", DOMAIN))
            .expect("edge reads credentials")
            .is_some()
    );
    assert_eq!(
        code(rt.block_on(edge.put_user("mallory", DOMAIN, &credentials()))),
        Code::PermissionDenied
    );
    assert_eq!(
        code(rt.block_on(edge.remove_user("alice", DOMAIN))),
        Code::PermissionDenied
    );
    assert_eq!(
        code(rt.block_on(edge.list_users(DOMAIN))),
        Code::PermissionDenied
    );
    // Past authentication: the empty request is judged on its content.
    let past = rt.block_on(edge.grpc().register(pb::RegisterRequest::default()));
    assert_eq!(
        past.expect_err("empty Register").code(),
        Code::InvalidArgument
    );
    // Nothing of the refused calls happened.
    let users = rt
        .block_on(admin.list_users(DOMAIN))
        .expect("admin lists users");
    assert!(
        users.contains(&"alice".to_owned()) && !users.contains(&"mallory".to_owned()),
        "{users:?}"
    );

    // Each refusal is counted by reason, and logged without any token.
    let m = |reason: &str| {
        loc.metric(&format!(
            "sipcluster_grpc_auth_rejected_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(m("missing_token"), 6.0);
    assert_eq!(m("unknown_token"), 6.0);
    assert_eq!(m("wrong_role"), 5.0);
    let log = loc.log();
    assert!(
        log.contains("gRPC call refused")
            && log.contains("/sipcluster.location.v1.Location/GetCredentials")
            && log.contains("wrong_role"),
        "{log}"
    );
    for secret in [WRONG_TOKEN, EDGE_TOKEN, ADMIN_TOKEN] {
        assert!(!log.contains(secret), "a token in the log:\n{log}");
    }
}

#[test]
fn a_server_without_a_usable_token_does_not_start() {
    let dir = workdir("auth_no_token");
    let short = dir.join("short-token");
    std::fs::write(&short, "changeme\n").expect("write");
    let empty = dir.join("empty-token");
    std::fs::write(&empty, "").expect("write");
    let base = ["location", "--listen", "127.0.0.1:0", "--metrics", "off"];
    let none = run_cli(&base);
    assert_ne!(none.code, Some(0), "{none:?}");
    assert!(
        none.stderr.contains("no API token configured")
            && none.stderr.contains("SIPCLUSTER_EDGE_TOKEN_FILE"),
        "{}",
        none.stderr
    );
    for (file, problem) in [(&short, "8 characters"), (&empty, "0 characters")] {
        let mut args = base.to_vec();
        let f = file.display().to_string();
        args.extend(["--edge-token-file", &f]);
        let o = run_cli(&args);
        assert_ne!(o.code, Some(0), "{o:?}");
        assert!(
            o.stderr.contains(&f) && o.stderr.contains(problem) && o.stderr.contains("16"),
            "{}",
            o.stderr
        );
    }
    let mut args = base.to_vec();
    args.extend(["--admin-token-file", "/nonexistent/admin-token"]);
    let o = run_cli(&args);
    assert!(o.stderr.contains("/nonexistent/admin-token"), "{o:?}");
    // The edge, likewise, does not start without its token for the location service.
    let o = run_cli(&[
        "edge",
        "--location",
        "http://127.0.0.1:1",
        "--nonce-secret",
        "0123456789abcdef0123",
        "--metrics",
        "off",
    ]);
    assert!(o.stderr.contains("location.token_file"), "{o:?}");
}

#[test]
fn operator_commands_present_the_admin_token() {
    let dir = workdir("auth_cli");
    let loc = Server::location(&dir, "location", &[]);
    let url = format!("http://{}", loc.sip);
    let tokens = &loc.tokens;
    let list = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["users", "--location", &url];
        args.extend(extra);
        args.extend(["list", "--realm", DOMAIN]);
        run_cli_env(&args, env)
    };
    let flag = list(&["--token-file", &tokens.admin_str()], &[]);
    assert_eq!(flag.code, Some(0), "{flag:?}");
    assert!(flag.stdout.lines().any(|l| l == "alice"), "{flag:?}");
    let env = list(&[], &[("SIPCLUSTER_ADMIN_TOKEN_FILE", &tokens.admin_str())]);
    assert_eq!(env.code, Some(0), "{env:?}");
    // The edge's token is not an operator's.
    let edge = list(&["--token-file", &tokens.edge_str()], &[]);
    assert_ne!(edge.code, Some(0), "{edge:?}");
    assert!(
        edge.stderr.contains("role may not call this method"),
        "{}",
        edge.stderr
    );
    // No token anywhere: the command says where it looked and what to give.
    let state = dir.join("empty-state").display().to_string();
    let none = list(&[], &[("XDG_STATE_HOME", &state)]);
    assert_ne!(none.code, Some(0), "{none:?}");
    assert!(
        none.stderr.contains("no admin token")
            && none.stderr.contains("--token-file")
            && none
                .stderr
                .contains(&format!("{state}/sipcluster/admin-token")),
        "{}",
        none.stderr
    );
    let reg = run_cli(&[
        "registrations",
        "--location",
        &url,
        "--token-file",
        &tokens.admin_str(),
        "list",
    ]);
    assert_eq!(reg.code, Some(0), "{reg:?}");
    assert!(reg.stdout.contains("0 AORs, 0 contacts"), "{reg:?}");
}
