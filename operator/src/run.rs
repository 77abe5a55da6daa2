//! Startup, leadership terms and shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use jiff::SignedDuration;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use rbee_api::names::CRD_NAME;
use tokio::sync::watch;

use crate::cli::{Args, bind_address};
use crate::context::{Settings, Shared};
use crate::controller::{self, Scope};
use crate::heartbeat::auth::TokenReviewer;
use crate::heartbeat::server::HeartbeatState;
use crate::http::{self, Probes};
use crate::leader::{self, Leadership, LeaseElector, LeaseTiming};
use crate::metrics::Metrics;
use crate::pod::PodSettings;

const LEADER_LABEL: &str = "rbee.dev/leader";

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let metrics_addr = bind_address("metrics-bind-address", &args.metrics_bind_address)?;
    let heartbeat_addr = bind_address("heartbeat-bind-address", &args.heartbeat_bind_address)?;
    let client = Client::try_default()
        .await
        .context("cannot connect to Kubernetes: run in a cluster or set KUBECONFIG")?;
    check_crd(&client).await?;

    let identity = args.pod_name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let (publisher, leadership) = Leadership::channel();
    let shared = Shared {
        client: client.clone(),
        settings: settings(&args),
        metrics: Arc::new(Metrics::new(leadership.clone())),
        recorder: Recorder::new(
            client.clone(),
            Reporter { controller: "rbee-operator".into(), instance: Some(identity.clone()) },
        ),
    };
    let probes = Arc::new(Probes { ready: false.into() });
    let (terms, current_term) = watch::channel(None);

    if let Some(addr) = metrics_addr {
        serve(addr, http::router(shared.metrics.clone(), probes.clone()), "metrics").await?;
    }
    if let Some(addr) = heartbeat_addr {
        let state = HeartbeatState {
            leadership: leadership.clone(),
            term: current_term,
            reviewer: TokenReviewer::new(client.clone()),
            metrics: shared.metrics.clone(),
        };
        serve(addr, crate::heartbeat::server::router(Arc::new(state)), "heartbeat").await?;
    }
    tokio::spawn(crate::memory::trim_periodically());
    let metrics = shared.metrics.clone();
    tokio::spawn(async move { metrics.follow_leadership().await });
    let own_pod = args.pod_name.clone().zip(args.pod_namespace.clone());
    let own_pod = own_pod.filter(|_| args.leader_elect);
    let labeller = tokio::spawn(label_own_pod(client.clone(), own_pod, leadership.clone()));

    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });
    probes.ready.store(true, Ordering::Relaxed);

    let scope = Scope {
        namespace: Some(args.watch_namespace.clone()).filter(|ns| !ns.is_empty()),
        concurrency: args.concurrency,
    };
    let reconciler = tokio::spawn(controller::run(shared, scope, leadership, terms));
    if !args.leader_elect {
        leader::lead_alone(publisher, shutdown).await;
        let _ = reconciler.await;
        return Ok(());
    }
    let mut elector = elector(&args, client, &identity);
    leader::campaign_and_lead(&mut elector, publisher, shutdown).await;
    // The lease is handed on only once this process has stopped acting as leader.
    let _ = reconciler.await;
    let _ = labeller.await;
    if let Err(e) = elector.release().await {
        tracing::warn!(error = %e, "cannot release the leader lease");
    }
    Ok(())
}

fn settings(args: &Args) -> Settings {
    Settings {
        pod: PodSettings {
            default_worker_image: args.default_worker_image.clone(),
            heartbeat_url: args.effective_heartbeat_url(),
        },
        report_period: SignedDuration::from_secs(
            i64::try_from(args.status_report_period_seconds).unwrap_or(i64::MAX),
        ),
    }
}

fn elector(args: &Args, client: Client, identity: &str) -> LeaseElector {
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| args.pod_namespace.clone())
        .unwrap_or_else(|| "default".into());
    let timing = LeaseTiming::for_duration(Duration::from_secs(args.lease_duration_seconds));
    LeaseElector::new(client, &namespace, &args.leader_election_id, identity, timing)
}

async fn serve(
    addr: std::net::SocketAddr,
    router: axum::Router,
    what: &'static str,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))?;
    tracing::info!(%addr, what, "listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, what, "server stopped");
        }
    });
    Ok(())
}

async fn check_crd(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(CRD_NAME).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => anyhow::bail!(
            "CRD {CRD_NAME} is not installed: run kubectl apply -f crds/ (or helm install the chart with crds.enabled=true)"
        ),
        Err(e) => Err(anyhow::anyhow!(e))
            .with_context(|| format!("cannot check that CRD {CRD_NAME} is installed")),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Labels the operator's own pod `rbee.dev/leader=true` while it leads, so the heartbeat
/// Service routes to it.
async fn label_own_pod(
    client: Client,
    own_pod: Option<(String, String)>,
    mut leadership: Leadership,
) {
    let Some((name, namespace)) = own_pod else { return };
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let mut labelled = false;
    loop {
        let leading = leadership.current().is_some();
        if leading != labelled {
            let value = if leading { serde_json::json!("true") } else { serde_json::Value::Null };
            let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
            match pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => labelled = leading,
                Err(e) => {
                    tracing::warn!(error = %e, pod = %name, "cannot label own pod for heartbeat routing");
                }
            }
        }
        if !leadership.changed().await {
            return;
        }
    }
}
