//! The heartbeat sender: a background task that tells the operator, every interval (with
//! jitter), that this worker is alive, what it is doing and what it uses. It never blocks
//! serving and never ends the process: failures are logged and retried with backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rbee_api::heartbeat::{HEARTBEAT_VERSION, Health, Heartbeat, WorkerIdentity, WorkerState};

use crate::resources;
use crate::status::EngineStatus;

/// Where and how to send heartbeats.
#[derive(Clone, Debug)]
pub struct HeartbeatConfig {
    /// Operator URL, e.g. `http://rbee-operator-heartbeat.rbee-system.svc:8443/v1/heartbeat`.
    pub url: String,
    /// Period between heartbeats.
    pub interval: Duration,
    /// Projected service-account token, re-read before every heartbeat.
    pub token_path: PathBuf,
    /// Who this worker is.
    pub identity: WorkerIdentity,
    /// Directory holding the model, for the free-disk figure.
    pub model_dir: PathBuf,
}

/// Builds one heartbeat from the engine's state and the process's resource use.
pub fn heartbeat(status: &EngineStatus, cfg: &HeartbeatConfig, sequence: u64) -> Heartbeat {
    let state = status.state();
    let gpu = resources::gpu(status);
    let (health, health_reason) = match (state, status.load_error()) {
        (WorkerState::Error, Some(e)) => (Health::Degraded, Some(e)),
        _ => (Health::Healthy, None),
    };
    Heartbeat {
        version: HEARTBEAT_VERSION,
        worker: cfg.identity.clone(),
        sequence,
        sent_at: jiff::Timestamp::now(),
        health,
        health_reason,
        state,
        load_progress_percent: status.load_progress_percent(),
        backend: status.backend(),
        device: gpu.as_ref().map(|g| g.device.clone()),
        vram: gpu.map(|g| g.vram),
        memory_rss_bytes: resources::rss_bytes().unwrap_or(0),
        disk_free_bytes: resources::free_disk_bytes(&cfg.model_dir),
        in_flight_requests: status.in_flight(),
    }
}

/// Sends heartbeats until the process ends.
pub async fn run(status: Arc<EngineStatus>, cfg: HeartbeatConfig) {
    let Some(client) = client(&cfg) else { return };
    tracing::info!(url = %cfg.url, interval_s = cfg.interval.as_secs_f64(), "sending heartbeats");
    let mut sequence = 0u64;
    let mut failures = 0u32;
    loop {
        sequence += 1;
        let wait = match send(&client, &status, &cfg, sequence).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(after_failures = failures, "heartbeats accepted again");
                }
                failures = 0;
                jittered(cfg.interval)
            }
            Err(Retry { after, why }) => {
                failures += 1;
                // Log the first failures and then only now and then, never flooding.
                if failures <= 3 || failures.is_power_of_two() {
                    tracing::warn!(failures, error = %why, "heartbeat not accepted");
                }
                after.unwrap_or_else(|| backoff(cfg.interval, failures))
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Sends one heartbeat, retrying for at most `patience`: the last word of a worker that
/// cannot start (its state says `error` and why).
pub async fn send_final(status: &EngineStatus, cfg: &HeartbeatConfig, patience: Duration) {
    let Some(client) = client(cfg) else { return };
    let started = tokio::time::Instant::now();
    for failures in 1.. {
        match send(&client, status, cfg, failures.into()).await {
            Ok(()) => {
                tracing::info!(state = ?status.state(), "final heartbeat accepted");
                return;
            }
            Err(Retry { after, why }) => {
                let wait = after.unwrap_or_else(|| backoff(cfg.interval, failures));
                if started.elapsed() + wait > patience {
                    tracing::warn!(failures, error = %why, "final heartbeat not accepted");
                    return;
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn client(cfg: &HeartbeatConfig) -> Option<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(cfg.interval.clamp(Duration::from_millis(500), Duration::from_secs(5)))
        .build()
        .inspect_err(|e| {
            tracing::error!(error = %e, "cannot build the heartbeat client; no heartbeats will be sent")
        })
        .ok()
}

struct Retry {
    after: Option<Duration>,
    why: String,
}

async fn send(
    client: &reqwest::Client,
    status: &EngineStatus,
    cfg: &HeartbeatConfig,
    sequence: u64,
) -> Result<(), Retry> {
    let token = tokio::fs::read_to_string(&cfg.token_path).await.map_err(|e| Retry {
        after: None,
        why: format!("cannot read token {}: {e}", cfg.token_path.display()),
    })?;
    let beat = heartbeat(status, cfg, sequence);
    let resp = client
        .post(&cfg.url)
        .bearer_auth(token.trim())
        .json(&beat)
        .send()
        .await
        .map_err(|e| Retry { after: None, why: format!("POST {}: {e}", cfg.url) })?;
    if resp.status().is_success() {
        return Ok(());
    }
    let code = resp.status();
    let after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.text().await.unwrap_or_default();
    Err(Retry { after, why: format!("{code}: {}", body.chars().take(300).collect::<String>()) })
}

/// The interval ± 10%, so a fleet started together does not beat in lockstep.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * rand::random::<f64>())
}

/// Retry sooner than the interval at first, never slower than it.
fn backoff(interval: Duration, failures: u32) -> Duration {
    let exp = Duration::from_millis(250).saturating_mul(1u32 << failures.min(10));
    exp.min(interval).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!(d >= Duration::from_secs(9) && d <= Duration::from_secs(11), "{d:?}");
        }
    }

    #[test]
    fn retries_back_off_up_to_the_interval() {
        let i = Duration::from_secs(10);
        assert_eq!(backoff(i, 1), Duration::from_millis(500));
        assert_eq!(backoff(i, 3), Duration::from_secs(2));
        assert_eq!(backoff(i, 30), i);
    }
}
