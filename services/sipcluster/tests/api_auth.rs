//! Every gRPC API takes calls only with a bearer token of a role its table allows, end to
//! end against real processes:
//!
//! * the location service: anonymous calls and unknown tokens get UNAUTHENTICATED and
//!   change nothing; an admin token cannot read credentials, an edge token cannot
//!   provision users (PERMISSION_DENIED); each refusal is counted
//!   (`sipcluster_grpc_auth_rejected_total{reason}`) and logged without the token;
//! * the media relay's control: anonymous and wrong-token calls get UNAUTHENTICATED, and
//!   twenty anonymous Offers open no session and hold no port; the admin token may look
//!   and drain but not open sessions;
//! * the dispatcher's admin API: anonymous, wrong-token and edge-token calls get
//!   UNAUTHENTICATED and steer nothing; the admin token works;
//! * the all-in-one generates its admin token into a file only its user can read, the
//!   commands use it with no flag, and its APIs refuse any other caller;
//! * a server with no token, or an unusable token file, does not start;
//! * the operator commands present the admin token from `--token-file` or the
//!   environment, and say clearly when they have none.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

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

/// What each role's refusals count on a server's `/metrics`.
fn rejected(srv: &Server, reason: &str) -> f64 {
    srv.metric(&format!(
        "sipcluster_grpc_auth_rejected_total{{reason=\"{reason}\"}}"
    ))
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
    let m = |reason: &str| rejected(&loc, reason);
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
fn media_relay_control_refuses_anonymous_calls_and_they_hold_no_port() {
    use proto::media::v1 as pb;
    let dir = workdir("auth_media");
    let relay = Server::media_relay(&dir, "relay", "44100-44199", &[]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let offer = common::new_session_offer;
    rt.block_on(async {
        // The probe's attack: Offer after Offer until every port is held. Refused, and
        // not one port pair is taken.
        let mut anon = common::media_client(relay.sip, None).await;
        for i in 0..20 {
            let r = anon.offer(offer(&format!("anon-{i}"))).await;
            assert_eq!(
                r.expect_err("anonymous Offer").code(),
                Code::Unauthenticated
            );
        }
        let r = anon.load(pb::LoadRequest {}).await;
        assert_eq!(r.expect_err("anonymous Load").code(), Code::Unauthenticated);
        let mut wrong = common::media_client(relay.sip, Some(WRONG_TOKEN)).await;
        let r = wrong.offer(offer("wrong")).await;
        assert_eq!(
            r.expect_err("wrong-token Offer").code(),
            Code::Unauthenticated
        );
        let r = wrong.list_sessions(pb::ListSessionsRequest {}).await;
        assert_eq!(
            r.expect_err("wrong-token list").code(),
            Code::Unauthenticated
        );

        // An operator looks (and could drain) but opens no session.
        let mut admin = common::media_client(relay.sip, Some(ADMIN_TOKEN)).await;
        let r = admin.offer(offer("admin")).await;
        assert_eq!(r.expect_err("admin Offer").code(), Code::PermissionDenied);
        let load = admin.load(pb::LoadRequest {}).await.expect("admin Load");
        let load = load.into_inner();
        assert_eq!((load.sessions, load.pairs_in_use), (0, 0), "{load:?}");
        assert!(
            admin
                .list_sessions(pb::ListSessionsRequest {})
                .await
                .expect("admin ListSessions")
                .into_inner()
                .sessions
                .is_empty()
        );

        // The edge token opens sessions: the refusals above were the token, not the
        // request.
        let mut edge = common::media_client(relay.sip, Some(EDGE_TOKEN)).await;
        edge.offer(offer("edge")).await.expect("edge Offer");
        let load = admin.load(pb::LoadRequest {}).await.expect("admin Load");
        let load = load.into_inner();
        assert_eq!((load.sessions, load.pairs_in_use), (1, 1), "{load:?}");
    });
    assert_eq!(relay.metric("sipcluster_media_sessions_started_total"), 1.0);
    assert_eq!(rejected(&relay, "missing_token"), 21.0);
    assert_eq!(rejected(&relay, "unknown_token"), 2.0);
    assert_eq!(rejected(&relay, "wrong_role"), 1.0);
    let log = relay.log();
    assert!(
        log.contains("/sipcluster.media.v1.MediaRelay/Offer"),
        "{log}"
    );
    assert!(
        !log.contains(WRONG_TOKEN) && !log.contains(ADMIN_TOKEN),
        "{log}"
    );
}

#[test]
fn dispatcher_admin_api_refuses_anonymous_and_wrong_tokens() {
    use proto::dispatcher::v1 as pb;
    use proto::dispatcher::v1::dispatcher_admin_client::DispatcherAdminClient;
    let dir = workdir("auth_dispatcher");
    let edge = common::free_addr();
    let (disp, admin) = Server::dispatcher(&dir, "dispatcher", &[edge], &[]);
    let url = format!("http://{admin}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = |token: Option<&str>| {
        let channel = rt
            .block_on(
                tonic::transport::Endpoint::from_shared(url.clone())
                    .expect("endpoint")
                    .connect(),
            )
            .expect("admin API");
        let token = token.map(|t| grpc_auth::Token::new(t).expect("token"));
        DispatcherAdminClient::new(grpc_auth::Bearer::new(token.as_ref()).channel(channel))
    };
    let drain = || pb::DrainRequest {
        pool: String::new(),
        id: edge.to_string(),
    };
    // Anonymous callers, unknown tokens, and the edges' token (no role here) steer nothing.
    for token in [None, Some(WRONG_TOKEN), Some(EDGE_TOKEN)] {
        let mut c = client(token);
        let r = rt.block_on(c.drain(drain()));
        assert_eq!(
            r.expect_err("drain").code(),
            Code::Unauthenticated,
            "{token:?}"
        );
        let r = rt.block_on(c.list_targets(pb::ListTargetsRequest::default()));
        assert_eq!(
            r.expect_err("list").code(),
            Code::Unauthenticated,
            "{token:?}"
        );
    }
    let mut c = client(Some(ADMIN_TOKEN));
    let targets = rt
        .block_on(c.list_targets(pb::ListTargetsRequest::default()))
        .expect("admin lists targets")
        .into_inner()
        .targets;
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert!(!targets[0].draining, "an anonymous drain took effect");
    assert_eq!(rejected(&disp, "missing_token"), 2.0);
    assert_eq!(rejected(&disp, "unknown_token"), 4.0);

    // The command: the admin token works, the edge token is not one, and without any the
    // command says what to give.
    let tokens = &disp.tokens;
    let targets = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["dispatcher-admin", "--admin", &url];
        args.extend(extra);
        args.push("targets");
        run_cli_env(&args, env)
    };
    let ok = targets(&["--token-file", &tokens.admin_str()], &[]);
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(ok.stdout.contains(&edge.to_string()), "{ok:?}");
    let refused = targets(&["--token-file", &tokens.edge_str()], &[]);
    assert_ne!(refused.code, Some(0), "{refused:?}");
    assert!(refused.stderr.contains("unknown token"), "{refused:?}");
    let state = dir.join("empty-state").display().to_string();
    let none = targets(&[], &[("XDG_STATE_HOME", &state)]);
    assert_ne!(none.code, Some(0), "{none:?}");
    assert!(none.stderr.contains("no admin token"), "{none:?}");
}

#[test]
fn the_all_in_one_generates_a_private_admin_token_and_refuses_other_callers() {
    use std::os::unix::fs::PermissionsExt;
    let dir = workdir("auth_all_in_one");
    let srv = Server::start_generating_admin_token(&dir, &[]);
    let file = common::state_home(&dir).join("sipcluster/admin-token");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    assert_eq!(mode(file.parent().expect("dir")), 0o700);
    let token = std::fs::read_to_string(&file).expect("token");
    let token = token.trim();
    assert_eq!(token.len(), 64, "32 random bytes in hex");
    assert!(!srv.log().contains(token), "the token in the log");
    assert!(
        srv.log().contains(&file.display().to_string()),
        "where it is"
    );

    let loc = format!("http://{}", srv.location_api.expect("location API"));
    let admin = format!("http://{}", srv.admin_api.expect("admin API"));
    let state = common::state_home(&dir).display().to_string();
    let own = [("XDG_STATE_HOME", state.as_str())];
    let users = run_cli_env(
        &["users", "--location", &loc, "list", "--realm", DOMAIN],
        &own,
    );
    assert_eq!(users.code, Some(0), "{users:?}");
    let targets = run_cli_env(&["dispatcher-admin", "--admin", &admin, "targets"], &own);
    assert_eq!(targets.code, Some(0), "{targets:?}");
    // Another token (here the harness's admin token, which this instance never saw) is
    // refused by both APIs.
    let other = srv.tokens.admin_str();
    let users = run_cli(&[
        "users",
        "--location",
        &loc,
        "--token-file",
        &other,
        "list",
        "--realm",
        DOMAIN,
    ]);
    assert!(users.stderr.contains("unknown token"), "{users:?}");
    let targets = run_cli(&[
        "dispatcher-admin",
        "--admin",
        &admin,
        "--token-file",
        &other,
        "targets",
    ]);
    assert!(targets.stderr.contains("unknown token"), "{targets:?}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_runtime = rt.enter();
    let anonymous = common::location_client(&loc, None);
    assert_eq!(
        code(rt.block_on(anonymous.list_users(DOMAIN))),
        Code::Unauthenticated
    );
    // One counter for both APIs on the all-in-one's /metrics.
    assert_eq!(rejected(&srv, "unknown_token"), 2.0);
    assert_eq!(rejected(&srv, "missing_token"), 1.0);
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
    // The media relay and a dispatcher serving its admin API, likewise.
    for (args, says) in [
        (
            &["media-relay", "--control", "127.0.0.1:0"][..],
            &["no API token configured"][..],
        ),
        (
            &[
                "dispatcher",
                "--secret",
                "0123456789abcdef0123",
                "--listen",
                "127.0.0.1:0",
                "--internal",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
            ],
            &["api.admin_token_file", "--admin off"],
        ),
    ] {
        let mut a = args.to_vec();
        a.extend(["--metrics", "off"]);
        let o = run_cli(&a);
        assert_ne!(o.code, Some(0), "{o:?}");
        assert!(says.iter().all(|s| o.stderr.contains(s)), "{}", o.stderr);
    }
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
    // Nor with media relays and no token for them.
    let o = run_cli(&[
        "all-in-one",
        "--media-relay",
        "http://127.0.0.1:1",
        "--metrics",
        "off",
    ]);
    assert!(o.stderr.contains("media.token_file"), "{o:?}");
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
