//! The chart's RBAC grants nothing the operator does not use: drive the operator through
//! everything it does (under the chart's ServiceAccount), read the API server's audit log, and
//! compare the calls it made with the rules the chart grants.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rbee_api::RbeeWorker;
use rbee_testkit::operator::{OperatorProcess, operator_service_account};
use rbee_testkit::{TempNamespace, client, wait_for};

/// (apiGroup, resource[/subresource], verb)
type Call = (String, String, String);

fn granted(namespace: &str) -> anyhow::Result<BTreeSet<Call>> {
    let env = rbee_testkit::testenv()?;
    let chart = rbee_testkit::repo_root().join("charts/rbee-operator");
    let out = std::process::Command::new(env.bin_dir.join("helm"))
        .args(["template", namespace, &chart.to_string_lossy(), "--namespace", namespace])
        .args([
            "--set",
            "scope.namespaced=true",
            "--set",
            &format!("scope.watchNamespace={namespace}"),
        ])
        .args(["--show-only", "templates/rbac.yaml"])
        .output()?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut calls = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout)) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc)?;
        for rule in v["rules"].as_sequence().cloned().unwrap_or_default() {
            let strings = |k: &str| -> Vec<String> {
                rule[k]
                    .as_sequence()
                    .map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                    .unwrap_or_default()
            };
            for g in strings("apiGroups") {
                for r in strings("resources") {
                    for verb in strings("verbs") {
                        calls.insert((g.clone(), r.clone(), verb));
                    }
                }
            }
        }
    }
    Ok(calls)
}

fn used_by(user: &str) -> anyhow::Result<BTreeSet<Call>> {
    let state =
        std::env::var("RBEE_TESTENV_STATE").map(std::path::PathBuf::from).unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".local/state/rbee-testenv")
        });
    let log = std::fs::read_to_string(state.join("logs/audit.log"))?;
    let mut calls = BTreeSet::new();
    for line in log.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if e["user"]["username"] != user || e["objectRef"].is_null() {
            continue;
        }
        let r = &e["objectRef"];
        let resource = match r["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or_default()),
            None => r["resource"].as_str().unwrap_or_default().to_string(),
        };
        let group = r["apiGroup"].as_str().unwrap_or_default().to_string();
        let verb = e["verb"].as_str().unwrap_or_default().to_string();
        // A server-side apply that creates the object is authorised as create (and answers 201).
        if verb == "patch" && e["responseStatus"]["code"] == 201 {
            calls.insert((group.clone(), resource.clone(), "create".to_string()));
        }
        calls.insert((group, resource, verb));
    }
    Ok(calls)
}

/// Granted calls that a run of this length may legitimately not make, and why.
const MAY_BE_UNUSED: &[(&str, &str, &str, &str)] = &[
    (
        "events.k8s.io",
        "events",
        "patch",
        "only when the same Event repeats within the recorder's 6-minute window",
    ),
    (
        "coordination.k8s.io",
        "leases",
        "create",
        "only when no Lease exists yet; a later term updates it",
    ),
];

#[tokio::test]
async fn the_chart_grants_exactly_what_the_operator_uses() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(
        &client,
        "rbac",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await?;
    // The operator's own pod, so the leader labels it as in a cluster.
    let mut own: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "operator-0"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": "rbee-gpu-0"},
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "image": "none", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}
    }))?;
    own.metadata.namespace = Some(ns.name.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    pods.create(&PostParams::default(), &own).await?;

    let mut op = OperatorProcess::start(
        &ns.name,
        &["--pod-name=operator-0", &format!("--pod-namespace={}", ns.name)],
    )?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    let w: RbeeWorker = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbee.dev/v1alpha1", "kind": "RbeeWorker", "metadata": {"name": "a"},
        "spec": {"backend": "cpu", "model": {"path": "/m.gguf"}, "nodeSelector": {"kubernetes.io/hostname": "rbee-gpu-0"},
            "heartbeat": {"intervalSeconds": 1, "staleAfterSeconds": 2},
            "restartPolicy": {"maxRestarts": 1, "backoff": {"initialSeconds": 1, "maxSeconds": 1}}}
    }))?;
    workers.create(&PostParams::default(), &w).await?;
    let pod = wait_for(&pods, "a-worker", Duration::from_secs(60), "Running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await?;

    // One heartbeat with a bound token (TokenReview), then silence: stale → restart (delete).
    let token = rbee_testkit::bound_token(&client, &ns.name, &pod).await?;
    let beat = serde_json::json!({"version": 1, "worker": {"namespace": ns.name, "name": "a", "podName": "a-worker", "podUid": pod.metadata.uid},
        "sequence": 1, "sentAt": jiff::Timestamp::now().to_string(), "health": "healthy", "state": "ready", "loadProgressPercent": 100,
        "backend": "cpu", "memoryRssBytes": 1, "inFlightRequests": 0});
    let resp = reqwest::Client::new()
        .post(op.heartbeat_url())
        .bearer_auth(token)
        .json(&beat)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    let old_uid = pod.metadata.uid.clone();
    wait_for(&pods, "a-worker", Duration::from_secs(30), "restarted", |p| {
        p.metadata.uid != old_uid
    })
    .await?;

    // A spec change replaces the pod; a graceful stop releases the lease.
    let patch = serde_json::json!({"spec": {"threads": 1}});
    workers.patch("a", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    wait_for(&workers, "a", Duration::from_secs(30), "at generation 2", |w| {
        w.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await?;
    op.terminate()?;

    let user = format!("system:serviceaccount:{}:{}", ns.name, operator_service_account(&ns.name));
    let used = used_by(&user)?;
    let granted = granted(&ns.name)?;
    let denied: Vec<_> = used.difference(&granted).collect();
    let unused: Vec<_> = granted
        .difference(&used)
        .filter(|(g, r, v)| {
            !MAY_BE_UNUSED.iter().any(|(mg, mr, mv, _)| mg == g && mr == r && mv == v)
        })
        .collect();
    assert!(denied.is_empty(), "the operator made calls the chart does not grant: {denied:?}");
    assert!(
        unused.is_empty(),
        "the chart grants calls the operator never made: {unused:?}\nused: {used:?}"
    );
    ns.delete().await
}
