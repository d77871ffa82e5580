//! Where the edges come from. A [`Discovery`] source publishes the complete current set
//! of ready edges as a snapshot on a watch channel; the relay adds what is new (it joins
//! after its first answered probe) and removes what is missing at once.
//!
//! * [`Static`]: a fixed list from the configuration.
//! * [`Dns`]: the A/AAAA records of a name (a headless Service), polled.
//! * [`Kubernetes`]: a watch on the edge Pods (label selector); a Pod is an edge while it
//!   has an IP, its `Ready` condition is `True` and it is not being deleted. Why Pods and
//!   not EndpointSlices: see ARCHITECTURE.md ("Edge discovery").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dispatch_core::TargetSpec;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use sip_txn::Transport;
use tokio::sync::watch;

use crate::DispatcherError;

/// A source of edge snapshots.
#[async_trait::async_trait]
pub trait Discovery: Send + 'static {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// Publish snapshots into `tx` for as long as the dispatcher runs. Returns only on a
    /// fatal error (bad configuration, no credentials).
    async fn run(
        self: Box<Self>,
        tx: watch::Sender<Vec<TargetSpec>>,
    ) -> Result<(), DispatcherError>;
}

fn spec(id: String, addr: SocketAddr, transport: Transport) -> TargetSpec {
    TargetSpec {
        id,
        addr,
        transport,
        weight: 1,
        priority: 0,
    }
}

/// Send `set` unless it is what the receivers already have (no wake-up for nothing).
fn publish(tx: &watch::Sender<Vec<TargetSpec>>, set: Vec<TargetSpec>) {
    tx.send_if_modified(|cur| {
        let changed = *cur != set;
        if changed {
            *cur = set;
        }
        changed
    });
}

/// A fixed list.
#[derive(Debug, Clone)]
pub struct Static {
    /// The edges.
    pub edges: Vec<SocketAddr>,
    /// How they are reached.
    pub transport: Transport,
}

#[async_trait::async_trait]
impl Discovery for Static {
    fn name(&self) -> &'static str {
        "static"
    }

    async fn run(
        self: Box<Self>,
        tx: watch::Sender<Vec<TargetSpec>>,
    ) -> Result<(), DispatcherError> {
        let set = self
            .edges
            .iter()
            .map(|a| spec(a.to_string(), *a, self.transport))
            .collect();
        tx.send_replace(set);
        tx.closed().await;
        Ok(())
    }
}

/// The addresses a name resolves to.
#[derive(Debug, Clone)]
pub struct Dns {
    /// The name (a headless Service lists its ready pods).
    pub name: String,
    /// The edges' port.
    pub port: u16,
    /// Between lookups.
    pub interval: Duration,
    /// How edges are reached.
    pub transport: Transport,
}

#[async_trait::async_trait]
impl Discovery for Dns {
    fn name(&self) -> &'static str {
        "dns"
    }

    async fn run(
        self: Box<Self>,
        tx: watch::Sender<Vec<TargetSpec>>,
    ) -> Result<(), DispatcherError> {
        loop {
            match tokio::net::lookup_host((self.name.as_str(), self.port)).await {
                Ok(addrs) => {
                    let mut v: Vec<SocketAddr> = addrs.collect();
                    v.sort();
                    v.dedup();
                    let set: Vec<TargetSpec> = v
                        .into_iter()
                        .map(|a| spec(a.to_string(), a, self.transport))
                        .collect();
                    publish(&tx, set);
                }
                // A failed lookup keeps the last set: a DNS hiccup must not empty the pool.
                Err(e) => {
                    tracing::warn!(name = %self.name, error = %e, "edge DNS lookup failed; keeping the previous set")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = tx.closed() => return Ok(()),
            }
        }
    }
}

/// Edge Pods watched through the Kubernetes API.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    /// Namespace; `None`: the client's default.
    pub namespace: Option<String>,
    /// Label selector of the edge Pods.
    pub label_selector: String,
    /// The edges' SIP port.
    pub port: u16,
    /// Kubeconfig file; `None`: in-cluster, then `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// How edges are reached.
    pub transport: Transport,
}

/// The edge a Pod is, if it is one now.
pub fn pod_edge(pod: &Pod, port: u16, transport: Transport) -> Option<TargetSpec> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let ip = status.pod_ip.as_deref()?.parse().ok()?;
    let name = pod.metadata.name.clone()?;
    Some(spec(name, SocketAddr::new(ip, port), transport))
}

impl Kubernetes {
    async fn client(&self) -> Result<kube::Client, DispatcherError> {
        let cfg = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    DispatcherError::Discovery(format!("kubeconfig {}: {e}", path.display()))
                })?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| DispatcherError::Discovery(format!("kubeconfig: {e}")))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| DispatcherError::Discovery(format!("Kubernetes config: {e}")))?,
        };
        kube::Client::try_from(cfg)
            .map_err(|e| DispatcherError::Discovery(format!("Kubernetes client: {e}")))
    }
}

#[async_trait::async_trait]
impl Discovery for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn run(
        self: Box<Self>,
        tx: watch::Sender<Vec<TargetSpec>>,
    ) -> Result<(), DispatcherError> {
        let client = self.client().await?;
        let api: kube::Api<Pod> = match &self.namespace {
            Some(ns) => kube::Api::namespaced(client, ns),
            None => kube::Api::default_namespaced(client),
        };
        let cfg = watcher::Config::default().labels(&self.label_selector);
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        // Pod name → edge (only ready pods are kept).
        let mut pods: BTreeMap<String, TargetSpec> = BTreeMap::new();
        let mut init: Option<BTreeMap<String, TargetSpec>> = None;
        let publish = |pods: &BTreeMap<String, TargetSpec>| {
            publish(&tx, pods.values().cloned().collect());
        };
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = tx.closed() => return Ok(()),
            };
            let Some(ev) = ev else {
                return Err(DispatcherError::Discovery("Pod watch ended".into()));
            };
            match ev {
                Ok(Event::Init) => init = Some(BTreeMap::new()),
                Ok(Event::InitApply(pod)) => {
                    if let (Some(buf), Some(e)) =
                        (init.as_mut(), pod_edge(&pod, self.port, self.transport))
                    {
                        buf.insert(e.id.clone(), e);
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(buf) = init.take() {
                        pods = buf;
                    }
                    publish(&pods);
                }
                Ok(Event::Apply(pod)) => {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    match pod_edge(&pod, self.port, self.transport) {
                        Some(e) => pods.insert(name, e),
                        None => pods.remove(&name),
                    };
                    publish(&pods);
                }
                Ok(Event::Delete(pod)) => {
                    pods.remove(&pod.metadata.name.clone().unwrap_or_default());
                    publish(&pods);
                }
                // The watcher retries with backoff; the last set stays meanwhile.
                Err(e) => tracing::warn!(error = %e, "Kubernetes Pod watch failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(ready: &str, ip: Option<&str>, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("edge-0".into()),
                deletion_timestamp: deleting.then(|| Time(Default::default())),
                ..Default::default()
            },
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_owned),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: ready.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn dns_publishes_the_addresses_of_a_name() {
        let (tx, mut rx) = watch::channel(Vec::new());
        let d = Box::new(Dns {
            name: "localhost".into(),
            port: 5071,
            interval: Duration::from_millis(50),
            transport: Transport::Udp,
        });
        let task = tokio::spawn(d.run(tx));
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a snapshot within 5 s")
            .expect("sender alive");
        let set = rx.borrow().clone();
        assert!(
            set.iter()
                .any(|e| e.addr == "127.0.0.1:5071".parse().unwrap() && e.id == "127.0.0.1:5071"),
            "{set:?}"
        );
        drop(rx);
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("stops when the receiver goes")
            .expect("task")
            .expect("no error");
    }

    #[tokio::test]
    async fn static_publishes_its_list_once() {
        let (tx, rx) = watch::channel(Vec::new());
        let d = Box::new(Static {
            edges: vec![
                "10.0.0.5:5060".parse().unwrap(),
                "10.0.0.6:5060".parse().unwrap(),
            ],
            transport: Transport::Tcp,
        });
        let task = tokio::spawn(d.run(tx));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let set = rx.borrow().clone();
        assert_eq!(set.len(), 2);
        assert!(
            set.iter()
                .all(|e| e.transport == Transport::Tcp && e.weight == 1)
        );
        drop(rx);
        task.await.expect("task").expect("no error");
    }

    #[test]
    fn only_ready_pods_with_an_ip_that_are_not_terminating_are_edges() {
        let e = pod_edge(&pod("True", Some("10.1.2.3"), false), 5060, Transport::Udp).unwrap();
        assert_eq!(e.id, "edge-0");
        assert_eq!(e.addr, "10.1.2.3:5060".parse().unwrap());
        assert!(pod_edge(&pod("False", Some("10.1.2.3"), false), 5060, Transport::Udp).is_none());
        assert!(pod_edge(&pod("True", None, false), 5060, Transport::Udp).is_none());
        assert!(pod_edge(&pod("True", Some("10.1.2.3"), true), 5060, Transport::Udp).is_none());
        assert!(pod_edge(&pod("True", Some("not-an-ip"), false), 5060, Transport::Udp).is_none());
    }
}
