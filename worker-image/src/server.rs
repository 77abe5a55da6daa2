//! Wires the pieces together: engine thread, HTTP server, graceful shutdown.

use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::cli::Args;
use crate::engine::{EngineConfig, engine};
use crate::heartbeat::HeartbeatConfig;
use crate::metrics::Metrics;
use crate::model::device_for;
use crate::{EngineStatus, WorkerError};

/// Runs the worker until SIGTERM/SIGINT: serves HTTP at once (503 while loading), loads the
/// model on the engine thread, then drains in-flight requests within the grace period.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let backend = args.backend;
    let status = EngineStatus::new(backend, args.device_label());
    let heartbeat = args.heartbeat_config()?;
    let device = match device_for(backend, args.device) {
        Ok(device) => device,
        Err(e) => return Err(cannot_start(&status, heartbeat.as_ref(), e).await),
    };
    let metrics = Metrics::new(backend.as_str(), &args.device_label());
    let config = EngineConfig { max_queue: args.max_queue, max_batch: args.max_batch as usize };
    let (handle, runner) = engine(config, status.clone(), metrics);
    let listener = TcpListener::bind(&args.bind_address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.bind_address))?;
    tracing::info!(address = %args.bind_address, "listening");
    let engine_thread = runner.spawn(args.load_options(), device)?;
    if let Some(cfg) = heartbeat {
        tokio::spawn(crate::heartbeat::run(status.clone(), cfg));
    }
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    let shutdown_handle = handle.clone();
    let app = crate::api::router(handle);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: draining in-flight requests"
        );
        shutdown_handle.shutdown(Instant::now() + grace);
    });
    // Connections still open after the grace period (and a second for the last events)
    // are dropped.
    let serve = tokio::spawn(async move { server.await });
    let drained = tokio::spawn(async move {
        while !status.is_draining() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(grace + Duration::from_secs(1)).await;
    });
    tokio::select! {
        r = serve => r??,
        _ = drained => tracing::warn!("grace period over; closing remaining connections"),
    }
    if engine_thread.is_finished() {
        let _ = engine_thread.join();
    }
    tracing::info!("stopped");
    Ok(())
}

/// A worker that cannot start (no driver, no device) reports `state: error` with the reason
/// in one last heartbeat, then exits.
async fn cannot_start(
    status: &EngineStatus,
    heartbeat: Option<&HeartbeatConfig>,
    e: WorkerError,
) -> anyhow::Error {
    tracing::error!(error = %e, "cannot start");
    status.set_load_error(e.to_string());
    if let Some(cfg) = heartbeat {
        crate::heartbeat::send_final(status, cfg, FINAL_HEARTBEAT_PATIENCE).await;
    }
    e.into()
}

/// How long a worker that cannot start tries to report that before it exits.
const FINAL_HEARTBEAT_PATIENCE: Duration = Duration::from_secs(5);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
