//! The gRPC admin API (`sipcluster.dispatcher.v1.DispatcherAdmin`): list targets and
//! sets, set weights, drain and undrain. Every call is a message to the relay task, so
//! admin changes are ordered with the traffic they affect.

use std::net::SocketAddr;

use dispatch_core::{State, TargetInfo};
use grpc_auth::{ADMIN, AuthLayer, Policy};
use proto::dispatcher::v1 as pb;
use proto::dispatcher::v1::dispatcher_admin_server::{DispatcherAdmin, DispatcherAdminServer};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use crate::{Command, DispatcherError, transport_name};

/// Who may call each method: operators (the admin token) only. Every method steers or
/// shows the traffic of the whole cluster; edges never call this API.
pub static POLICY: Policy = Policy {
    api: "dispatcher admin",
    methods: &[
        (
            "/sipcluster.dispatcher.v1.DispatcherAdmin/ListTargets",
            ADMIN,
        ),
        ("/sipcluster.dispatcher.v1.DispatcherAdmin/SetWeight", ADMIN),
        ("/sipcluster.dispatcher.v1.DispatcherAdmin/Drain", ADMIN),
        ("/sipcluster.dispatcher.v1.DispatcherAdmin/Undrain", ADMIN),
        ("/sipcluster.dispatcher.v1.DispatcherAdmin/ListSets", ADMIN),
    ],
};

/// The admin service.
#[derive(Debug, Clone)]
pub struct Admin {
    commands: mpsc::Sender<Command>,
}

fn to_pb(t: TargetInfo) -> pb::Target {
    pb::Target {
        pool: t.pool,
        id: t.id,
        address: t.addr.to_string(),
        transport: transport_name(t.transport).into(),
        weight: t.weight,
        priority: t.priority,
        health: match t.state {
            State::Joining => pb::Health::Joining,
            State::Up => pb::Health::Up,
            State::Down => pb::Health::Down,
        } as i32,
        draining: t.draining,
        requests: t.requests,
    }
}

fn pool_or_edge(p: String) -> String {
    if p.is_empty() {
        dispatch_core::relay::EDGE_POOL.into()
    } else {
        p
    }
}

impl Admin {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Status::unavailable("dispatcher is stopping"))?;
        rx.await
            .map_err(|_| Status::unavailable("dispatcher is stopping"))
    }

    async fn set_drain(
        &self,
        r: pb::DrainRequest,
        draining: bool,
    ) -> Result<Response<pb::TargetResponse>, Status> {
        let pool = pool_or_edge(r.pool);
        let (p, id) = (pool.clone(), r.id.clone());
        let t = self
            .ask(|reply| Command::Drain {
                pool: p,
                id,
                draining,
                reply,
            })
            .await?;
        Self::found(t, &pool, &r.id)
    }

    fn found(
        t: Option<TargetInfo>,
        pool: &str,
        id: &str,
    ) -> Result<Response<pb::TargetResponse>, Status> {
        match t {
            Some(t) => Ok(Response::new(pb::TargetResponse {
                target: Some(to_pb(t)),
            })),
            None => Err(Status::not_found(format!(
                "no target {id:?} in pool {pool:?}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl DispatcherAdmin for Admin {
    async fn list_targets(
        &self,
        req: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsResponse>, Status> {
        let pool = req.into_inner().pool;
        let all = self.ask(Command::Targets).await?;
        let targets = all
            .into_iter()
            .filter(|t| pool.is_empty() || t.pool == pool)
            .map(to_pb)
            .collect();
        Ok(Response::new(pb::ListTargetsResponse { targets }))
    }

    async fn set_weight(
        &self,
        req: Request<pb::SetWeightRequest>,
    ) -> Result<Response<pb::TargetResponse>, Status> {
        let r = req.into_inner();
        let pool = pool_or_edge(r.pool);
        let (p, id) = (pool.clone(), r.id.clone());
        let t = self
            .ask(|reply| Command::SetWeight {
                pool: p,
                id,
                weight: r.weight,
                reply,
            })
            .await?;
        Self::found(t, &pool, &r.id)
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::TargetResponse>, Status> {
        self.set_drain(req.into_inner(), true).await
    }

    async fn undrain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::TargetResponse>, Status> {
        self.set_drain(req.into_inner(), false).await
    }

    async fn list_sets(
        &self,
        _req: Request<pb::ListSetsRequest>,
    ) -> Result<Response<pb::ListSetsResponse>, Status> {
        let all = self.ask(Command::Targets).await?;
        let mut sets: Vec<pb::Set> = vec![pb::Set {
            name: dispatch_core::relay::EDGE_POOL.into(),
            algorithm: "hash".into(),
            targets: 0,
            up: 0,
        }];
        for t in all {
            let i = match sets.iter().position(|s| s.name == t.pool) {
                Some(i) => i,
                None => {
                    sets.push(pb::Set {
                        name: t.pool.clone(),
                        algorithm: t.algorithm.as_str().into(),
                        targets: 0,
                        up: 0,
                    });
                    sets.len() - 1
                }
            };
            sets[i].targets += 1;
            if t.state == State::Up && !t.draining {
                sets[i].up += 1;
            }
        }
        Ok(Response::new(pb::ListSetsResponse { sets }))
    }
}

/// Serve the admin API on `addr`, behind `auth` (built on [`POLICY`]).
pub async fn serve(
    addr: SocketAddr,
    commands: mpsc::Sender<Command>,
    auth: AuthLayer,
) -> Result<(SocketAddr, JoinHandle<()>), DispatcherError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DispatcherError::Bind {
            what: "admin",
            addr,
            source,
        })?;
    let bound = l.local_addr().map_err(|source| DispatcherError::Bind {
        what: "admin",
        addr,
        source,
    })?;
    tracing::info!(addr = %bound, "serving the dispatcher admin API (gRPC)");
    let svc = DispatcherAdminServer::new(Admin { commands });
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
        if let Err(e) = tonic::transport::Server::builder()
            .layer(auth)
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_proto_is_for_operators() {
        let proto = include_str!("../../../proto/sipcluster/dispatcher/v1/admin.proto");
        assert_eq!(POLICY.unlisted(proto), Vec::<String>::new());
        assert!(POLICY.methods.iter().all(|(_, a)| *a == ADMIN));
    }
}
