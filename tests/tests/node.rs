//! The images built from our Dockerfiles run on the real node `rbee-node-0`: the worker image
//! serves SmolLM2 from a PVC on a local PersistentVolume, reached from another pod through a
//! ClusterIP Service by its DNS name; the operator image answers `--help`.
//!
//! Needs `testenv up` with its node and `tests/images/build` (tests/check runs both).

use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, PostParams};
use rbee_api::names::env;
use rbee_testkit::node::{
    MODEL_FILE, NODE, OPERATOR_IMAGE, TOOLBOX_IMAGE, WORKER_IMAGE, apply_model_volume, model_dir,
    pod_logs, require_node, wait_pod,
};
use rbee_testkit::{client, with_temp_namespace};

const MODEL_NAME: &str = "smollm2";

fn restricted_container() -> serde_json::Value {
    serde_json::json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
        "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}})
}

fn pod(value: serde_json::Value) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(value)?)
}

#[tokio::test]
async fn the_node_is_a_real_kubelet_on_containerd_with_its_own_address() -> anyhow::Result<()> {
    require_node()?;
    let nodes: Api<Node> = Api::all(client().await?);
    let node = nodes.get(NODE).await?;
    let status = node.status.context("node without status")?;
    let info = status.node_info.context("node without nodeInfo")?;
    ensure!(info.container_runtime_version.starts_with("containerd://"), "{info:?}");
    ensure!(info.kubelet_version.starts_with("v1.34."), "{info:?}");
    let ready = status.conditions.iter().flatten().find(|c| c.type_ == "Ready");
    ensure!(ready.is_some_and(|c| c.status == "True"), "{ready:?}");
    let ip = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address.clone())
        .context("no InternalIP")?;
    let parsed: std::net::IpAddr = ip.parse()?;
    ensure!(!parsed.is_loopback(), "InternalIP {ip} is a loopback address");
    Ok(())
}

#[tokio::test]
async fn the_operator_image_answers_help_as_a_pod() -> anyhow::Result<()> {
    require_node()?;
    with_temp_namespace("node-operator", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let help = pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "help"},
            "spec": {"nodeName": NODE, "restartPolicy": "Never",
                "containers": [{"name": "operator", "image": OPERATOR_IMAGE,
                    "imagePullPolicy": "Never", "args": ["--help"],
                    "securityContext": restricted_container()}]}
        }))?;
        pods.create(&PostParams::default(), &help).await?;
        wait_pod(&pods, "help", "Succeeded", Duration::from_secs(60)).await?;
        let logs = pod_logs(&ns, "help")?;
        ensure!(logs.contains("Usage: rbee-operator"), "logs:\n{logs}");
        ensure!(logs.contains("--heartbeat-bind-address"), "logs:\n{logs}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_worker_image_serves_a_completion_through_a_cluster_ip_service_by_dns_name()
-> anyhow::Result<()> {
    require_node()?;
    let dir = model_dir()?;
    with_temp_namespace("node-worker", |client, ns| async move {
        let pv = format!("{ns}-model");
        apply_model_volume(&ns, &pv, "model", &dir)?;
        let result = serve_and_ask(client.clone(), &ns).await;
        let pvs: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(client);
        let _ = pvs.delete(&pv, &DeleteParams::default()).await;
        result
    })
    .await
}

async fn serve_and_ask(client: kube::Client, ns: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client, ns);
    let worker = pod(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "smol", "labels": {"app": "smol"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "worker", "image": WORKER_IMAGE, "imagePullPolicy": "Never",
                "env": [
                    {"name": env::MODEL_PATH, "value": format!("/models/{MODEL_FILE}")},
                    {"name": env::MODEL_NAME, "value": MODEL_NAME},
                    {"name": env::BACKEND, "value": "cpu"},
                    {"name": env::THREADS, "value": "1"},
                    {"name": env::BIND_ADDRESS, "value": "0.0.0.0:8080"}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
                "volumeMounts": [{"name": "model", "mountPath": "/models", "readOnly": true}],
                "securityContext": restricted_container()}],
            "volumes": [{"name": "model", "persistentVolumeClaim": {"claimName": "model", "readOnly": true}}]
        }
    }))?;
    pods.create(&PostParams::default(), &worker).await?;
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "smol"},
        "spec": {"selector": {"app": "smol"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    }))?;
    services.create(&PostParams::default(), &service).await?;
    wait_pod(&pods, "smol", "Ready", Duration::from_secs(120)).await?;

    // From another pod, by name, through cluster DNS and kube-proxy. The Service is new, so
    // the client retries for a few seconds while CoreDNS and kube-proxy catch up.
    let body = serde_json::json!({"model": MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 8});
    let url = format!("http://smol.{ns}.svc");
    let script = format!(
        "for i in $(seq 30); do timeout 5 wget -q -O /tmp/health {url}/health && break; sleep 1; done; \
         echo HEALTH; cat /tmp/health; echo; echo COMPLETION; \
         timeout 60 wget -q -O- --header 'content-type: application/json' --post-data '{body}' {url}/v1/completions"
    );
    let ask = pod(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ask"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": NODE}, "restartPolicy": "Never",
            "containers": [{"name": "ask", "image": TOOLBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                "securityContext": restricted_container()}],
            "volumes": [{"name": "tmp", "emptyDir": {}}]}
    }))?;
    pods.create(&PostParams::default(), &ask).await?;
    let finished = wait_pod(&pods, "ask", "Succeeded", Duration::from_secs(120)).await;
    let logs = pod_logs(ns, "ask").unwrap_or_else(|e| format!("<{e:#}>"));
    finished.with_context(|| format!("client pod logs:\n{logs}"))?;
    let (health, completion) = logs
        .split_once("HEALTH\n")
        .and_then(|(_, rest)| rest.split_once("COMPLETION\n"))
        .with_context(|| format!("unexpected client output:\n{logs}"))?;
    let health: serde_json::Value = serde_json::from_str(health.trim())
        .with_context(|| format!("/health is not JSON: {health}"))?;
    ensure!(health["status"] == "ok", "/health answered {health}");
    let completion: serde_json::Value = serde_json::from_str(completion.trim())
        .with_context(|| format!("completion is not JSON: {completion}"))?;
    let text = completion["choices"][0]["text"].as_str().unwrap_or_default();
    eprintln!("completion through {url}: {text:?}");
    ensure!(!text.is_empty(), "empty completion: {completion}");
    Ok(())
}
