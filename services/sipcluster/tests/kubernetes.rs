//! Kubernetes discovery against a REAL kube-apiserver and etcd (started by
//! `scripts/test.sh`, which exports `SIPCLUSTER_TEST_KUBECONFIG`): the dispatcher watches
//! edge Pods; the test creates Pods and marks them ready / not ready by patching their
//! status (no kubelet runs, so the test plays its part), deletes them, and checks that the
//! dispatcher's target set follows within 2 s. The Pod IPs are loopback addresses where
//! real edges listen, so the targets also come up through real OPTIONS probes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::{Server, free_low_port, workdir};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const SELECTOR: &str = "app.kubernetes.io/component=sc-test-edge";

fn kubeconfig() -> String {
    std::env::var("SIPCLUSTER_TEST_KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "SIPCLUSTER_TEST_KUBECONFIG is not set: run ./scripts/test.sh, which starts a \
             private etcd + kube-apiserver for this test"
        )
    })
}

async fn client(path: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(cfg).expect("kube client")
}

fn pod(name: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "edge", "image": "sipcluster:test"}]}
    }))
    .expect("pod")
}

async fn set_ready(api: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch pod status");
}

/// A port free on 127.0.0.2 and 127.0.0.3 (UDP and TCP).
fn port_on_both() -> u16 {
    for _ in 0..200 {
        let p = free_low_port();
        let ok = ["127.0.0.2", "127.0.0.3"].iter().all(|ip| {
            let a: SocketAddr = format!("{ip}:{p}").parse().expect("addr");
            UdpSocket::bind(a).is_ok() && TcpListener::bind(a).is_ok()
        });
        if ok {
            return p;
        }
    }
    panic!("no port free on 127.0.0.2 and 127.0.0.3");
}

/// Wait until the dispatcher's targets satisfy `want`; returns how long it took.
fn until(disp: &Server, admin: SocketAddr, what: &str, want: impl Fn(&str) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sipcluster"))
            .args([
                "dispatcher-admin",
                "--admin",
                &format!("http://{admin}"),
                "--token-file",
                &disp.tokens.admin_str(),
                "targets",
            ])
            .output()
            .expect("dispatcher-admin");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if want(&text) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{what}: not within 2 s; targets:\n{text}\ndispatcher log:\n{}",
            disp.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn dispatcher_follows_edge_pods_in_a_real_api_server() {
    let kubeconfig = kubeconfig();
    let dir = workdir("kubernetes_discovery");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let ns = format!("sc-disp-{}", std::process::id());
    let client = rt.block_on(client(&kubeconfig));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_obj: Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}})).expect("namespace");
    rt.block_on(namespaces.create(&PostParams::default(), &ns_obj))
        .expect("create namespace");
    let pods: Api<Pod> = Api::namespaced(client, &ns);

    let port = port_on_both();
    let loc = Server::location(&dir, "location", &[]);
    let edge_a = Server::edge_at(
        &dir,
        "edge-a",
        format!("127.0.0.2:{port}").parse().expect("addr"),
        loc.sip,
        &[],
    );
    let edge_b = Server::edge_at(
        &dir,
        "edge-b",
        format!("127.0.0.3:{port}").parse().expect("addr"),
        loc.sip,
        &[],
    );
    let (disp, admin) = Server::dispatcher(
        &dir,
        "dispatcher",
        &[],
        &[
            "--discovery",
            "kubernetes",
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            &ns,
            "--selector",
            SELECTOR,
            "--edge-port",
            &port.to_string(),
        ],
    );
    let labels = json!({"app.kubernetes.io/component": "sc-test-edge"});

    // A Pod that is not ready (no IP, no Ready condition) is no edge.
    rt.block_on(pods.create(&PostParams::default(), &pod("edge-a", labels.clone())))
        .expect("create pod");
    // Nor is a ready Pod that the selector does not match.
    rt.block_on(pods.create(
        &PostParams::default(),
        &pod(
            "not-an-edge",
            json!({"app.kubernetes.io/component": "media"}),
        ),
    ))
    .expect("create pod");
    rt.block_on(set_ready(&pods, "not-an-edge", "127.0.0.9", true));
    std::thread::sleep(Duration::from_millis(500));
    until(&disp, admin, "nothing before readiness", |t| {
        t.trim().is_empty()
    });

    rt.block_on(set_ready(&pods, "edge-a", "127.0.0.2", true));
    let joined = until(&disp, admin, "edge-a added and probed up", |t| {
        t.lines().any(|l| {
            l.contains("edge-a") && l.contains(&format!("127.0.0.2:{port}")) && l.contains(" up")
        })
    });
    rt.block_on(pods.create(&PostParams::default(), &pod("edge-b", labels.clone())))
        .expect("create pod");
    rt.block_on(set_ready(&pods, "edge-b", "127.0.0.3", true));
    let joined_b = until(&disp, admin, "edge-b added and up", |t| {
        t.lines().filter(|l| l.contains(" up")).count() == 2
    });

    // Not ready: removed at once, without waiting for probes to fail (the edge still
    // answers them).
    rt.block_on(set_ready(&pods, "edge-a", "127.0.0.2", false));
    let removed = until(&disp, admin, "edge-a removed when not ready", |t| {
        !t.contains("edge-a") && t.contains("edge-b")
    });
    // Ready again: back.
    rt.block_on(set_ready(&pods, "edge-a", "127.0.0.2", true));
    until(&disp, admin, "edge-a back", |t| t.contains("edge-a"));
    // Deleted: gone.
    rt.block_on(pods.delete("edge-b", &DeleteParams::default()))
        .expect("delete pod");
    let deleted = until(&disp, admin, "edge-b removed when deleted", |t| {
        !t.contains("edge-b") && t.contains("edge-a")
    });
    eprintln!(
        "kubernetes discovery: ready→up {joined:?} / {joined_b:?}, not-ready→removed {removed:?}, deleted→removed {deleted:?}"
    );
    assert!(!disp.log().contains("not-an-edge"));

    rt.block_on(namespaces.delete(&ns, &DeleteParams::default()))
        .expect("delete namespace");
    drop((edge_a, edge_b, loc));
}
