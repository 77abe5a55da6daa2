use super::*;

fn worker(yaml: &str) -> RbeeWorker {
    let mut w: RbeeWorker = serde_yaml::from_str(yaml).expect("valid worker");
    w.metadata.namespace = Some("ml".into());
    w.metadata.uid = Some("uid-1".into());
    w
}

fn settings() -> PodSettings {
    PodSettings {
        default_worker_image: "img:1".into(),
        heartbeat_url: "http://op:8443/v1/heartbeat".into(),
    }
}

const CUDA: &str = "apiVersion: rbee.dev/v1alpha1\nkind: RbeeWorker\nmetadata: {name: llama}\nspec:\n  backend: cuda\n  gpus: 2\n  model: {pvc: weights, path: llama.gguf}\n  heartbeat: {intervalSeconds: 7}\n";

#[test]
fn cuda_pod_requests_gpus_as_requests_and_limits() {
    let pod = build_pod(&worker(CUDA), &settings()).expect("pod");
    let c = &pod.spec.as_ref().expect("spec").containers[0];
    let res = c.resources.as_ref().expect("resources");
    let gpu = |m: &Option<BTreeMap<String, Quantity>>| {
        m.as_ref().and_then(|m| m.get("nvidia.com/gpu")).map(|q| q.0.clone())
    };
    assert_eq!(gpu(&res.requests).as_deref(), Some("2"));
    assert_eq!(gpu(&res.limits).as_deref(), Some("2"));
}

#[test]
fn pod_is_owned_named_and_labelled() {
    let pod = build_pod(&worker(CUDA), &settings()).expect("pod");
    assert_eq!(pod.metadata.name.as_deref(), Some("llama-worker"));
    let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("RbeeWorker", "llama", Some(true))
    );
    let labels = pod.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels.get("rbee.dev/worker").map(String::as_str), Some("llama"));
    assert_eq!(labels.get("rbee.dev/model").map(String::as_str), Some("llama"));
}

#[test]
fn pod_is_restricted() {
    let pod = build_pod(&worker(CUDA), &settings()).expect("pod");
    let spec = pod.spec.as_ref().expect("spec");
    let psc = spec.security_context.as_ref().expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    let sc = spec.containers[0].security_context.as_ref().expect("container security context");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()), Some("RuntimeDefault"));
    assert_eq!(spec.automount_service_account_token, Some(false));
}

#[test]
fn pod_mounts_a_projected_token_for_the_operator_audience() {
    let pod = build_pod(&worker(CUDA), &settings()).expect("pod");
    let spec = pod.spec.as_ref().expect("spec");
    let projected = spec
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find_map(|v| v.projected.clone())
        .expect("projected volume");
    let sat = projected.sources.expect("sources")[0]
        .service_account_token
        .clone()
        .expect("token projection");
    assert_eq!(sat.audience.as_deref(), Some("rbee-operator"));
    let env = spec.containers[0].env.clone().expect("env");
    let get = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
    assert_eq!(
        get(env::HEARTBEAT_TOKEN_PATH).as_deref(),
        Some("/var/run/secrets/rbee.dev/heartbeat/token")
    );
    assert_eq!(get(env::MODEL_PATH).as_deref(), Some("/models/llama.gguf"));
    assert_eq!(get(env::HEARTBEAT_INTERVAL_SECONDS).as_deref(), Some("7"));
    assert_eq!(get(env::BACKEND).as_deref(), Some("cuda"));
    assert!(env.iter().any(|e| e.name == env::POD_UID && e.value_from.is_some()));
}

#[test]
fn startup_probe_covers_the_load_timeout() {
    let pod = build_pod(&worker(CUDA), &settings()).expect("pod");
    let probe = pod.spec.as_ref().expect("spec").containers[0]
        .startup_probe
        .clone()
        .expect("startup probe");
    let covered = probe.period_seconds.unwrap_or(0) * probe.failure_threshold.unwrap_or(0);
    assert!(covered >= 900, "startup probe covers only {covered}s");
    assert!(probe.initial_delay_seconds.is_none());
}

#[test]
fn template_hash_changes_exactly_with_the_pod() {
    let a = build_pod(&worker(CUDA), &settings()).expect("pod");
    let b = build_pod(&worker(CUDA), &settings()).expect("pod");
    assert_eq!(pod_template_hash(&a), pod_template_hash(&b));
    let mut changed = worker(CUDA);
    changed.spec.heartbeat.interval_seconds = 8;
    let c = build_pod(&changed, &settings()).expect("pod");
    assert_ne!(pod_template_hash(&a), pod_template_hash(&c));
}

#[test]
fn cpu_pod_has_no_gpu_and_model_labels_are_valid() {
    let cpu = worker(
        "apiVersion: rbee.dev/v1alpha1\nkind: RbeeWorker\nmetadata: {name: small}\nspec:\n  backend: cpu\n  model: {path: /m/SmolLM2 135M (Q4).gguf}\n",
    );
    let pod = build_pod(&cpu, &settings()).expect("pod");
    let res = pod.spec.as_ref().expect("spec").containers[0].resources.clone().unwrap_or_default();
    assert!(!res.limits.unwrap_or_default().contains_key("nvidia.com/gpu"));
    assert_eq!(model_label("SmolLM2 135M (Q4)"), "SmolLM2-135M--Q4");
    assert_eq!(model_label(&"x".repeat(100)).len(), 63);
}

#[test]
fn a_worker_without_uid_is_invalid() {
    let mut w = worker(CUDA);
    w.metadata.uid = None;
    assert!(matches!(build_pod(&w, &settings()), Err(Error::InvalidWorker(_))));
}
