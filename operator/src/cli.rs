//! Command-line flags (controller-runtime names where operators share them) and env vars.

use clap::{Parser, ValueEnum};
use rbee_api::names::operator_env as env;

/// Twelve heartbeats at the default 10 s interval: refreshed numbers cost under 0.1 status
/// writes per heartbeat, like kubelet, whose node status is refreshed far less often than
/// its Lease.
pub const DEFAULT_STATUS_REPORT_PERIOD_SECONDS: u64 = 120;

/// Kubernetes operator for fleets of LLM inference workers: reconciles RbeeWorkers into
/// worker pods, accepts worker heartbeats, restarts dead or hung workers, exports metrics.
#[derive(Parser, Debug, Clone)]
#[command(name = "rbee-operator", version, about, long_about = None)]
pub struct Args {
    /// Address of /metrics, /healthz and /readyz (`:8080` means all interfaces; `0` disables).
    #[arg(long, env = env::METRICS_BIND_ADDRESS, default_value = ":8080")]
    pub metrics_bind_address: String,

    /// Address of the heartbeat endpoint POST /v1/heartbeat, kept apart from /metrics so it
    /// can be exposed to workers only.
    #[arg(long, env = env::HEARTBEAT_BIND_ADDRESS, default_value = ":8443")]
    pub heartbeat_bind_address: String,

    /// Elect a leader through a Lease so several replicas can run; only the leader reconciles
    /// and accepts heartbeats.
    #[arg(long, env = env::LEADER_ELECT, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// Namespace of the leader Lease (default: the operator pod's namespace, else `default`).
    #[arg(long, env = env::LEADER_ELECTION_NAMESPACE)]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(long, env = env::LEADER_ELECTION_ID, default_value = "rbee-operator-leader")]
    pub leader_election_id: String,

    /// Seconds a leader's lease holds without renewal. The leader renews every quarter of it
    /// (at most every 2 s) and stops leading after two thirds of it without a renewal; the
    /// others take over once the lease has not changed for this long on their own clock.
    #[arg(long, env = env::LEASE_DURATION_SECONDS, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_seconds: u64,

    /// Only watch RbeeWorkers and pods in this namespace (empty: all namespaces).
    #[arg(long, env = env::WATCH_NAMESPACE, default_value = "")]
    pub watch_namespace: String,

    /// Worker image for RbeeWorkers that do not set spec.image.
    #[arg(long, env = env::DEFAULT_WORKER_IMAGE, default_value = concat!("ghcr.io/rbee-dev/llm-worker-rbee:", env!("CARGO_PKG_VERSION")))]
    pub default_worker_image: String,

    /// URL workers send heartbeats to (default: the chart's heartbeat Service in the
    /// operator's namespace, else this process on 127.0.0.1).
    #[arg(long, env = env::HEARTBEAT_URL)]
    pub heartbeat_url: Option<String>,

    /// RbeeWorkers reconciled at once.
    #[arg(long, env = env::CONCURRENCY, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// A status whose only changes are refreshed numbers (heartbeat time, bytes) is written
    /// at most this often; visible changes are written at once.
    #[arg(long, env = env::STATUS_REPORT_PERIOD_SECONDS, default_value_t = DEFAULT_STATUS_REPORT_PERIOD_SECONDS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub status_report_period_seconds: u64,

    /// Log format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Name of the operator's own pod (downward API); the leader labels it
    /// `rbee.dev/leader=true` so the heartbeat Service routes to it.
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,

    /// Namespace of the operator's own pod (downward API).
    #[arg(long, env = env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses `:8080`, `0.0.0.0:8080` or `[::1]:8080`; `0` disables the listener.
pub fn bind_address(flag: &str, value: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if value == "0" {
        return Ok(None);
    }
    let full = if value.starts_with(':') { format!("0.0.0.0{value}") } else { value.to_string() };
    full.parse().map(Some).map_err(|_| {
        anyhow::anyhow!("--{flag}={value} is not HOST:PORT or :PORT (use 0 to disable)")
    })
}

impl Args {
    /// URL workers send heartbeats to.
    pub fn effective_heartbeat_url(&self) -> String {
        if let Some(url) = &self.heartbeat_url {
            return url.clone();
        }
        let port = self.heartbeat_bind_address.rsplit(':').next().unwrap_or("8443");
        match &self.pod_namespace {
            Some(ns) => format!(
                "http://rbee-operator-heartbeat.{ns}.svc:{port}{}",
                rbee_api::names::HEARTBEAT_PATH
            ),
            None => format!("http://127.0.0.1:{port}{}", rbee_api::names::HEARTBEAT_PATH),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses() {
        assert_eq!(bind_address("x", ":8080").ok().flatten(), "0.0.0.0:8080".parse().ok());
        assert_eq!(bind_address("x", "127.0.0.1:9").ok().flatten(), "127.0.0.1:9".parse().ok());
        assert!(bind_address("x", "0").is_ok_and(|a| a.is_none()));
        let err = bind_address("metrics-bind-address", "nope")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--metrics-bind-address=nope"), "{err}");
    }

    #[test]
    fn defaults_follow_controller_runtime() {
        let a = Args::parse_from(["rbee-operator"]);
        assert_eq!(a.metrics_bind_address, ":8080");
        assert_eq!(a.heartbeat_bind_address, ":8443");
        assert!(a.leader_elect);
        assert!(!Args::parse_from(["rbee-operator", "--leader-elect=false"]).leader_elect);
    }
}
