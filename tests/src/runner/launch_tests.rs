use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use rbee_api::RbeeWorker;
use rbee_operator::pod::{PodSettings, build_pod};

use super::*;
use crate::runner::status::readiness_gates_pass;

const IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);

/// The pod the real operator builds, bound and given a uid as the API server would.
fn operator_pod() -> Pod {
    let mut w: RbeeWorker = serde_yaml::from_str(
        "apiVersion: rbee.dev/v1alpha1\nkind: RbeeWorker\nmetadata: {name: smol, namespace: ml, uid: w-1}\n\
         spec:\n  backend: cpu\n  model: {pvc: weights, path: sub/m.gguf}\n  heartbeat: {intervalSeconds: 1}\n",
    )
    .expect("valid worker");
    w.metadata.namespace = Some("ml".into());
    let settings = PodSettings {
        default_worker_image: "img:1".into(),
        heartbeat_url: "http://127.0.0.1:9/v1/heartbeat".into(),
    };
    let mut pod = build_pod(&w, &settings).expect("pod");
    pod.metadata.uid = Some("pod-uid-1".into());
    pod
}

fn plan(pod: &Pod) -> Result<LaunchPlan, String> {
    let volumes = BTreeMap::from([("weights".to_string(), PathBuf::from("/data/models"))]);
    plan_launch(pod, IP, Path::new("/state/p"), Path::new("/bin/worker"), &volumes)
}

fn env_of<'a>(plan: &'a LaunchPlan, name: &str) -> Option<&'a str> {
    plan.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn operator_pod_maps_to_local_paths_ip_and_binary() {
    let plan = plan(&operator_pod()).expect("plan");
    assert_eq!(plan.program, PathBuf::from("/bin/worker"));
    assert_eq!(env_of(&plan, "RBEE_BIND_ADDRESS"), Some("127.0.0.7:8080"));
    assert_eq!(env_of(&plan, "RBEE_MODEL_PATH"), Some("/data/models/sub/m.gguf"));
    assert_eq!(
        env_of(&plan, "RBEE_HEARTBEAT_TOKEN_PATH"),
        Some("/state/p/var/run/secrets/rbee.dev/heartbeat/token")
    );
    assert_eq!(env_of(&plan, "RBEE_POD_NAME"), Some("smol-worker"));
    assert_eq!(env_of(&plan, "RBEE_POD_UID"), Some("pod-uid-1"));
    let token = plan.tokens.first().expect("token plan");
    assert_eq!(token.file, PathBuf::from("/state/p/var/run/secrets/rbee.dev/heartbeat/token"));
    assert_eq!((token.audience.as_str(), token.expiration_seconds), ("rbee-operator", 3600));
    assert!(plan.dirs.contains(&PathBuf::from("/state/p/tmp")));
    let probe = plan.readiness.expect("readiness probe");
    assert_eq!(probe.url, "http://127.0.0.7:8080/health");
}

#[test]
fn unmapped_claim_is_an_error_naming_the_claim_and_flag() {
    let pod = operator_pod();
    let err = plan_launch(&pod, IP, Path::new("/s"), Path::new("/w"), &BTreeMap::new())
        .expect_err("unmapped claim");
    assert!(err.contains("weights") && err.contains("--volume"), "{err}");
}

#[test]
fn foreign_command_is_refused() {
    let mut pod = operator_pod();
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].command = Some(vec!["/bin/sh".into()]);
    }
    assert!(plan(&pod).expect_err("refused").contains("/bin/sh"));
}

#[test]
fn readiness_gates_need_every_condition_true() {
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "spec": {"containers": [], "readinessGates": [{"conditionType": "rbee.dev/heartbeat"}]},
        "status": {"conditions": [{"type": "rbee.dev/heartbeat", "status": "False"}]}
    }))
    .expect("pod");
    assert!(!readiness_gates_pass(&pod));
    if let Some(c) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        c[0].status = "True".into();
    }
    assert!(readiness_gates_pass(&pod));
}
