//! Startup, leadership terms and shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use rbee_api::names::CRD_NAME;
use tokio::sync::watch;

use crate::cli::{Args, bind_address};
use crate::context::{Context, Settings};
use crate::controller::{self, Scope};
use crate::http::{self, Probes};
use crate::leader::{Attempt, LeaseElector, LeaseTiming};
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
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "rbee-operator".into(), instance: Some(identity.clone()) },
    );
    let settings = Settings {
        pod: PodSettings {
            default_worker_image: args.default_worker_image.clone(),
            heartbeat_url: args.effective_heartbeat_url(),
        },
        report_period: SignedDuration::from_secs(
            i64::try_from(args.status_report_period_seconds).unwrap_or(i64::MAX),
        ),
    };
    let ctx = Arc::new(Context::new(client.clone(), settings, recorder));
    let probes = Arc::new(Probes { ready: false.into() });

    if let Some(addr) = metrics_addr {
        serve(addr, http::router(ctx.clone(), probes.clone()), "metrics").await?;
    }
    if let Some(addr) = heartbeat_addr {
        serve(addr, crate::heartbeat::server::router(ctx.clone()), "heartbeat").await?;
    }
    tokio::spawn(controller::forget_deleted(ctx.clone()));
    tokio::spawn(crate::memory::trim_periodically());

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
    if !args.leader_elect {
        controller::run_term(ctx.clone(), scope, Timestamp::now(), until_true(shutdown)).await;
        return Ok(());
    }
    let lease_ns = args
        .leader_election_namespace
        .clone()
        .or_else(|| args.pod_namespace.clone())
        .unwrap_or_else(|| "default".into());
    let timing = LeaseTiming {
        duration: Duration::from_secs(args.lease_duration_seconds),
        renew_every: Duration::from_secs((args.lease_duration_seconds / 3).max(1)),
        retry_every: Duration::from_secs(2),
    };
    let elector = Arc::new(LeaseElector::new(
        client.clone(),
        &lease_ns,
        &args.leader_election_id,
        &identity,
        timing,
    ));
    let own_pod = args.pod_name.clone().zip(args.pod_namespace.clone());
    lead(ctx, elector, scope, own_pod, shutdown).await;
    Ok(())
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

async fn until_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn lead(
    ctx: Arc<Context>,
    elector: Arc<LeaseElector>,
    scope: Scope,
    own_pod: Option<(String, String)>,
    shutdown: watch::Receiver<bool>,
) {
    loop {
        if !campaign(&elector, shutdown.clone()).await {
            return;
        }
        tracing::info!(identity = elector.identity(), "became leader");
        label_own_pod(&ctx.client, own_pod.as_ref(), true).await;
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let renewer = tokio::spawn(renew(elector.clone(), lost_tx));
        let stop_shutdown = shutdown.clone();
        let stop = async move {
            tokio::select! {
                _ = until_true(stop_shutdown) => {}
                _ = lost_rx => tracing::warn!("lost leadership"),
            }
        };
        controller::run_term(ctx.clone(), scope.clone(), Timestamp::now(), stop).await;
        renewer.abort();
        label_own_pod(&ctx.client, own_pod.as_ref(), false).await;
        if *shutdown.borrow() {
            if let Err(e) = elector.release().await {
                tracing::warn!(error = %e, "cannot release the leader lease");
            }
            return;
        }
    }
}

/// Tries until this process holds the lease; false on shutdown.
async fn campaign(elector: &LeaseElector, mut shutdown: watch::Receiver<bool>) -> bool {
    let mut last_holder = String::new();
    loop {
        if *shutdown.borrow() {
            return false;
        }
        match elector.try_acquire_or_renew().await {
            Ok(Attempt::Held) => return true,
            Ok(Attempt::HeldBy(holder)) if holder != last_holder => {
                tracing::info!(%holder, "waiting for leadership");
                last_holder = holder;
            }
            Ok(Attempt::HeldBy(_)) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(elector.timing.retry_every) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Renews until the lease is lost or cannot be renewed before it would expire.
async fn renew(elector: Arc<LeaseElector>, lost: tokio::sync::oneshot::Sender<()>) {
    let mut last_ok = Instant::now();
    let give_up = elector.timing.duration.saturating_sub(elector.timing.retry_every);
    loop {
        tokio::time::sleep(
            elector
                .timing
                .renew_every
                .min(elector.timing.retry_every.max(Duration::from_millis(500))),
        )
        .await;
        match elector.try_acquire_or_renew().await {
            Ok(Attempt::Held) => last_ok = Instant::now(),
            Ok(Attempt::HeldBy(holder)) => {
                tracing::warn!(%holder, "lease taken over");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader lease");
                if last_ok.elapsed() >= give_up {
                    break;
                }
            }
        }
    }
    let _ = lost.send(());
}

async fn label_own_pod(client: &Client, own_pod: Option<&(String, String)>, leader: bool) {
    let Some((name, namespace)) = own_pod else { return };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let value = if leader { serde_json::json!("true") } else { serde_json::Value::Null };
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
    if let Err(e) = pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        tracing::warn!(error = %e, pod = %name, "cannot label own pod for heartbeat routing");
    }
}
