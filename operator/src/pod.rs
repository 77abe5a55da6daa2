//! Builds the worker pod from an `RbeeWorker`, purely: no client, no clock.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaimVolumeSource, Pod, PodReadinessGate,
    PodSecurityContext, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use rbee_api::names::{self, env};
use rbee_api::{Backend, RbeeWorker, RestartMode};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Operator-wide inputs of the pod builder.
#[derive(Clone, Debug)]
pub struct PodSettings {
    /// Image used when the worker does not name one.
    pub default_worker_image: String,
    /// Where workers send heartbeats.
    pub heartbeat_url: String,
}

const GPU_RESOURCE: &str = "nvidia.com/gpu";
const NON_ROOT_UID: i64 = 65532;
const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
const PROBE_PERIOD_SECONDS: i32 = 5;

/// The one pod of a worker. Deterministic, so a crash between steps can never produce two
/// pods: the API server refuses a second object of the same name.
pub fn pod_name(worker: &RbeeWorker) -> String {
    format!("{}-worker", worker.name_any())
}

/// GPUs the pod requests: `spec.gpus`, else 1 for cuda and 0 for cpu.
pub fn gpu_count(worker: &RbeeWorker) -> i32 {
    worker.spec.gpus.unwrap_or(match worker.spec.backend {
        Backend::Cuda => 1,
        Backend::Cpu => 0,
    })
}

/// A label value (≤ 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends) naming
/// the model, so pool Services can select all workers serving it.
pub fn model_label(served_name: &str) -> String {
    let cleaned: String = served_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(63)
        .collect();
    cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// Labels of everything the operator creates for a worker (its pod and its Service; the
/// EndpointSlice controller copies the Service's onto its slices).
pub fn worker_labels(worker: &RbeeWorker) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), names::APP_NAME_WORKER.into()),
        ("app.kubernetes.io/instance".into(), worker.name_any()),
        ("app.kubernetes.io/managed-by".into(), names::MANAGED_BY.into()),
        (names::LABEL_WORKER.into(), worker.name_any()),
    ])
}

/// Labels every worker pod carries: the worker's, and the model it serves.
pub fn pod_labels(worker: &RbeeWorker) -> BTreeMap<String, String> {
    let mut labels = worker_labels(worker);
    labels.insert(names::LABEL_MODEL.into(), model_label(&worker.spec.model.served_name()));
    labels
}

/// Builds the desired pod, with a template hash annotation that changes exactly when the
/// pod would differ.
pub fn build_pod(worker: &RbeeWorker, settings: &PodSettings) -> Result<Pod> {
    let owner = worker
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidWorker("RbeeWorker has no uid yet".into()))?;
    let namespace = worker
        .namespace()
        .ok_or_else(|| Error::InvalidWorker("RbeeWorker has no namespace".into()))?;
    let mut pod = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(worker)),
            namespace: Some(namespace),
            labels: Some(pod_labels(worker)),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec(worker, settings)),
        status: None,
    };
    let hash = template_hash(&pod)?;
    pod.metadata.annotations =
        Some(BTreeMap::from([(names::ANNOTATION_POD_TEMPLATE_HASH.into(), hash)]));
    Ok(pod)
}

/// Hash of everything the operator sets on the pod.
pub fn template_hash(pod: &Pod) -> Result<String> {
    let bytes = serde_json::to_vec(pod)
        .map_err(|source| Error::Serialization { what: "pod template", source })?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The template hash a live pod was built with.
pub fn pod_template_hash(pod: &Pod) -> Option<&str> {
    pod.meta().annotations.as_ref()?.get(names::ANNOTATION_POD_TEMPLATE_HASH).map(String::as_str)
}

fn pod_spec(worker: &RbeeWorker, settings: &PodSettings) -> PodSpec {
    let spec = &worker.spec;
    let mut volumes = vec![
        token_volume(),
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let Some(claim) = &spec.model.pvc {
        volumes.push(Volume {
            name: "model".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
    }
    PodSpec {
        containers: vec![worker_container(worker, settings)],
        volumes: Some(volumes),
        restart_policy: Some(pod_restart_policy(spec.restart_policy.mode).into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(30),
        readiness_gates: Some(vec![PodReadinessGate {
            condition_type: names::READINESS_GATE.into(),
        }]),
        node_selector: spec.node_selector.clone(),
        tolerations: spec.tolerations.clone(),
        affinity: spec.affinity.clone(),
        priority_class_name: spec.priority_class_name.clone(),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NON_ROOT_UID),
            run_as_group: Some(NON_ROOT_UID),
            fs_group: Some(NON_ROOT_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    }
}

/// Kubelet restarts crashed containers in place; the operator handles what kubelet cannot see.
fn pod_restart_policy(mode: RestartMode) -> &'static str {
    match mode {
        RestartMode::Never => "Never",
        RestartMode::OnFailure => "OnFailure",
        RestartMode::Always => "Always",
    }
}

/// Model path inside the container.
pub fn model_path_in_container(worker: &RbeeWorker) -> String {
    let model = &worker.spec.model;
    match &model.pvc {
        Some(_) => format!("{}/{}", names::MODEL_MOUNT_DIR, model.path.trim_start_matches('/')),
        None => model.path.clone(),
    }
}

fn worker_container(worker: &RbeeWorker, settings: &PodSettings) -> Container {
    let spec = &worker.spec;
    let mut mounts = vec![
        VolumeMount {
            name: "heartbeat-token".into(),
            mount_path: names::TOKEN_MOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount { name: "tmp".into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
    ];
    if spec.model.pvc.is_some() {
        mounts.push(VolumeMount {
            name: "model".into(),
            mount_path: names::MODEL_MOUNT_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    Container {
        name: names::WORKER_CONTAINER.into(),
        image: Some(spec.image.clone().unwrap_or_else(|| settings.default_worker_image.clone())),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![names::APP_NAME_WORKER.into()]),
        env: Some(worker_env(worker, settings)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(names::WORKER_HTTP_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(resources(worker)),
        startup_probe: Some(health_probe(startup_failure_threshold(worker))),
        readiness_probe: Some(health_probe(3)),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The startup probe covers model loading, so a slow load is never killed by a fixed delay.
fn startup_failure_threshold(worker: &RbeeWorker) -> i32 {
    let timeout = worker.spec.restart_policy.load_timeout_seconds.max(PROBE_PERIOD_SECONDS);
    (timeout + PROBE_PERIOD_SECONDS - 1) / PROBE_PERIOD_SECONDS
}

fn health_probe(failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/health".into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(PROBE_PERIOD_SECONDS),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn resources(worker: &RbeeWorker) -> ResourceRequirements {
    let mut res = worker.spec.resources.clone().unwrap_or_default();
    let gpus = gpu_count(worker);
    if gpus > 0 {
        let q = Quantity(gpus.to_string());
        res.requests.get_or_insert_with(BTreeMap::new).insert(GPU_RESOURCE.into(), q.clone());
        res.limits.get_or_insert_with(BTreeMap::new).insert(GPU_RESOURCE.into(), q);
    }
    res
}

fn token_volume() -> Volume {
    Volume {
        name: "heartbeat-token".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(names::TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: names::TOKEN_FILE.into(),
                }),
                ..VolumeProjection::default()
            }]),
            default_mode: Some(0o440),
        }),
        ..Volume::default()
    }
}

fn worker_env(worker: &RbeeWorker, settings: &PodSettings) -> Vec<EnvVar> {
    let spec = &worker.spec;
    let value =
        |name: &str, v: String| EnvVar { name: name.into(), value: Some(v), value_from: None };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), api_version: None }),
            ..EnvVarSource::default()
        }),
    };
    let mut vars = vec![
        value(env::MODEL_PATH, model_path_in_container(worker)),
        value(env::MODEL_NAME, spec.model.served_name()),
        value(env::BACKEND, spec.backend.as_str().into()),
        value(env::DEVICE, "0".into()),
        value(env::BIND_ADDRESS, format!("0.0.0.0:{}", names::WORKER_HTTP_PORT)),
        value(env::HEARTBEAT_URL, settings.heartbeat_url.clone()),
        value(env::HEARTBEAT_INTERVAL_SECONDS, spec.heartbeat.interval_seconds.to_string()),
        value(
            env::HEARTBEAT_TOKEN_PATH,
            format!("{}/{}", names::TOKEN_MOUNT_DIR, names::TOKEN_FILE),
        ),
        value(env::WORKER_NAMESPACE, worker.namespace().unwrap_or_default()),
        value(env::WORKER_NAME, worker.name_any()),
        field(env::POD_NAME, "metadata.name"),
        field(env::POD_UID, "metadata.uid"),
    ];
    if let Some(sha) = &spec.model.sha256 {
        vars.push(value(env::MODEL_SHA256, sha.clone()));
    }
    if let Some(tok) = &spec.model.tokenizer {
        let path = match &spec.model.pvc {
            Some(_) if !tok.starts_with('/') => format!("{}/{tok}", names::MODEL_MOUNT_DIR),
            _ => tok.clone(),
        };
        vars.push(value(env::TOKENIZER_PATH, path));
    }
    if let Some(ctx) = spec.model.context_length {
        vars.push(value(env::CONTEXT_LENGTH, ctx.to_string()));
    }
    if let Some(threads) = spec.threads {
        vars.push(value(env::THREADS, threads.to_string()));
    }
    vars
}

#[cfg(test)]
#[path = "pod_tests.rs"]
mod tests;
