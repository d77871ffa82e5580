//! otlp-sink: an OTLP/gRPC trace collector for `loadtest/run.sh`'s tracing section. It
//! takes export requests as a collector does (the wire protocol of `opentelemetry-proto`),
//! counts spans, and prints the count when it is stopped (SIGTERM or Ctrl-C) or every
//! `--report-secs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Parser, Debug)]
#[command(about = "Counts the spans it is sent over OTLP/gRPC")]
struct Args {
    /// Where to listen (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: std::net::SocketAddr,
    /// Print the count this often, s (0: only at the end).
    #[arg(long, default_value_t = 0)]
    report_secs: u64,
}

#[derive(Default, Clone)]
struct Count(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Count {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = Args::parse();
    let count = Count::default();
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listening on {}", a.listen))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let served = count.clone();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(served))
        .serve_with_incoming_shutdown(incoming, async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        });
    if a.report_secs > 0 {
        let c = count.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(a.report_secs)).await;
                println!("spans={}", c.0.load(Ordering::Relaxed));
            }
        });
    }
    server.await.context("serving")?;
    println!("spans={}", count.0.load(Ordering::Relaxed));
    Ok(())
}
