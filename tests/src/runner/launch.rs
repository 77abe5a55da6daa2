//! What to run for a pod, worked out purely from the pod spec: program, arguments, env with
//! container paths rewritten to local ones, the directories that stand in for volumes, the
//! projected token to mint and the readiness probe to poll.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The container command the runner knows how to run locally.
pub const WORKER_COMMAND: &str = "llm-worker-rbee";
const WORKER_BIND_ADDRESS: &str = "0.0.0.0:8080";

/// Everything needed to start the pod's one container as a local process.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchPlan {
    /// Local program.
    pub program: PathBuf,
    /// Its arguments (`command[1..]` then `args`).
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// Directories to create before the start (emptyDir and projected volumes).
    pub dirs: Vec<PathBuf>,
    /// The projected service-account tokens to keep fresh.
    pub tokens: Vec<TokenPlan>,
    /// The readiness probe, if the container has an httpGet one.
    pub readiness: Option<ReadinessProbe>,
    /// terminationMessagePolicy FallbackToLogsOnError: a failed run's log tail is its message.
    pub fallback_to_logs: bool,
}

/// A projected service-account token: where it goes and how it is minted.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenPlan {
    /// Local file the token is written to.
    pub file: PathBuf,
    /// Audience to request.
    pub audience: String,
    /// Lifetime to request.
    pub expiration_seconds: i64,
    /// ServiceAccount the token is for.
    pub service_account: String,
}

/// An httpGet readiness probe against the pod IP.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessProbe {
    /// `http://<podIP>:<port><path>`.
    pub url: String,
    /// Seconds between probes.
    pub period_seconds: u64,
    /// Seconds before one probe times out.
    pub timeout_seconds: u64,
    /// Consecutive failures that make the container not ready.
    pub failure_threshold: u32,
}

/// Works out the launch of `pod`'s first container. `pod_dir` is the pod's local root;
/// `volumes` maps PVC claim names to local directories. Errors say what cannot be mapped.
pub fn plan_launch(
    pod: &Pod,
    pod_ip: Ipv4Addr,
    pod_dir: &Path,
    worker_bin: &Path,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<LaunchPlan, String> {
    let spec = pod.spec.as_ref().ok_or("pod has no spec")?;
    let container = spec.containers.first().ok_or("pod has no containers")?;
    let mut dirs = Vec::new();
    let mut tokens = Vec::new();
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| format!("volumeMount {} names no volume", mount.name))?;
        let local_root = pod_dir.join(mount.mount_path.trim_start_matches('/'));
        let local = if let Some(claim) = &volume.persistent_volume_claim {
            let dir = volumes.get(&claim.claim_name).ok_or_else(|| {
                format!(
                    "volume {}: PVC claim {} is not mapped to a local directory (pass --volume {}=DIR)",
                    volume.name, claim.claim_name, claim.claim_name
                )
            })?;
            dir.clone()
        } else if volume.empty_dir.is_some() {
            dirs.push(local_root.clone());
            local_root
        } else if let Some(projected) = &volume.projected {
            dirs.push(local_root.clone());
            // Only service-account tokens are provided; the CA bundle and downward-API
            // files of an automounted kube-api-access volume are left out.
            for sa in
                projected.sources.iter().flatten().filter_map(|s| s.service_account_token.as_ref())
            {
                tokens.push(TokenPlan {
                    file: local_root.join(&sa.path),
                    audience: sa.audience.clone().unwrap_or_default(),
                    expiration_seconds: sa.expiration_seconds.unwrap_or(3600),
                    service_account: spec
                        .service_account_name
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                });
            }
            local_root
        } else {
            return Err(format!("volume {}: unsupported volume type", volume.name));
        };
        let local = match &mount.sub_path {
            Some(sub) if !sub.is_empty() => local.join(sub),
            _ => local,
        };
        mounts.push((mount.mount_path.trim_end_matches('/').to_string(), local));
    }
    // Longest mount path first, so /a/b wins over /a.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    let (program, args) = command(container, worker_bin)?;
    Ok(LaunchPlan {
        program,
        args,
        env: environment(pod, container, pod_ip, &mounts)?,
        dirs,
        tokens,
        readiness: readiness(container, pod_ip),
        fallback_to_logs: container.termination_message_policy.as_deref()
            == Some("FallbackToLogsOnError"),
    })
}

fn command(container: &Container, worker_bin: &Path) -> Result<(PathBuf, Vec<String>), String> {
    let command = container.command.clone().unwrap_or_default();
    let (first, rest) = command.split_first().ok_or("container has no command")?;
    if first != WORKER_COMMAND {
        return Err(format!(
            "container command {first} cannot run locally (only {WORKER_COMMAND})"
        ));
    }
    let mut args = rest.to_vec();
    args.extend(container.args.clone().unwrap_or_default());
    Ok((worker_bin.to_path_buf(), args))
}

fn environment(
    pod: &Pod,
    container: &Container,
    pod_ip: Ipv4Addr,
    mounts: &[(String, PathBuf)],
) -> Result<Vec<(String, String)>, String> {
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let field = from.field_ref.as_ref().ok_or_else(|| {
                    format!("env {}: only fieldRef sources are supported", var.name)
                })?;
                field_value(pod, &field.field_path, pod_ip).ok_or_else(|| {
                    format!("env {}: unsupported fieldRef {}", var.name, field.field_path)
                })?
            }
            (Some(value), None) => value.clone(),
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), local_value(&var.name, &value, pod_ip, mounts)));
    }
    Ok(env)
}

fn field_value(pod: &Pod, path: &str, pod_ip: Ipv4Addr) -> Option<String> {
    let meta = &pod.metadata;
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "status.podIP" => Some(pod_ip.to_string()),
        "status.hostIP" => Some("127.0.0.1".into()),
        "spec.nodeName" => pod.spec.as_ref()?.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone(),
        _ => None,
    }
}

fn local_value(name: &str, value: &str, pod_ip: Ipv4Addr, mounts: &[(String, PathBuf)]) -> String {
    if name == "RBEE_BIND_ADDRESS" && value == WORKER_BIND_ADDRESS {
        return format!("{pod_ip}:8080");
    }
    for (container_path, local) in mounts {
        if let Some(rest) = value.strip_prefix(container_path.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("{}{rest}", local.display());
        }
    }
    value.to_string()
}

fn readiness(container: &Container, pod_ip: Ipv4Addr) -> Option<ReadinessProbe> {
    let probe: &Probe = container.readiness_probe.as_ref()?;
    let get = probe.http_get.as_ref()?;
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))?
                .container_port
        }
    };
    let path = get.path.clone().unwrap_or_else(|| "/".into());
    Some(ReadinessProbe {
        url: format!("http://{pod_ip}:{port}{path}"),
        period_seconds: u64::try_from(probe.period_seconds.unwrap_or(10)).unwrap_or(10).max(1),
        timeout_seconds: u64::try_from(probe.timeout_seconds.unwrap_or(1)).unwrap_or(1).max(1),
        failure_threshold: u32::try_from(probe.failure_threshold.unwrap_or(3)).unwrap_or(3).max(1),
    })
}

#[cfg(test)]
#[path = "launch_tests.rs"]
mod tests;
