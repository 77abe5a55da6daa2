//! Heartbeats with real bound tokens against the real operator: status updates, every bad
//! input refused without touching status, staleness and restarts.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use rbee_api::RbeeWorker;
use rbee_testkit::operator::OperatorProcess;
use rbee_testkit::{TempNamespace, bound_token, client, holds_for, kubectl, wait_for};

fn worker(name: &str, heartbeat: serde_json::Value, restart: serde_json::Value) -> RbeeWorker {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "rbee.dev/v1alpha1", "kind": "RbeeWorker",
        "metadata": {"name": name},
        "spec": {
            "backend": "cuda", "gpus": 1, "model": {"path": "/models/m.gguf"},
            "nodeSelector": {"kubernetes.io/hostname": "rbee-gpu-0"},
            "heartbeat": heartbeat, "restartPolicy": restart,
            "limits": {"vramBytes": 21474836480_i64}
        }
    }))
    .expect("valid worker")
}

async fn running_pod(client: &Client, ns: &str, name: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for(&pods, name, Duration::from_secs(60), "Running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await
}

fn payload(ns: &str, worker: &str, pod: &Pod, seq: u64, state: &str) -> serde_json::Value {
    serde_json::json!({
        "version": 1,
        "worker": {"namespace": ns, "name": worker, "podName": pod.metadata.name, "podUid": pod.metadata.uid},
        "sequence": seq,
        "sentAt": jiff::Timestamp::now().to_string(),
        "health": "healthy",
        "state": state,
        "loadProgressPercent": 100,
        "backend": "cuda",
        "device": {"index": 0, "uuid": "GPU-test", "name": "NVIDIA H100 80GB HBM3"},
        "vram": {"usedBytes": 8160437862_u64, "totalBytes": 24159191040_u64},
        "memoryRssBytes": 734003200,
        "diskFreeBytes": 53687091200_u64,
        "inFlightRequests": 0
    })
}

async fn post(
    url: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut req =
        reqwest::Client::new().post(url).header("content-type", "application/json").body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let code = resp.status().as_u16();
    let json = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok((code, json))
}

async fn status_json(api: &Api<RbeeWorker>, name: &str) -> anyhow::Result<String> {
    Ok(serde_json::to_string(&api.get(name).await?.status)?)
}

#[tokio::test]
async fn a_heartbeat_updates_status_and_bad_ones_change_nothing() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "hb", &[]).await?;
    let op = OperatorProcess::start(&ns.name, &[])?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    let never = serde_json::json!({"mode": "Never"});
    workers
        .create(
            &PostParams::default(),
            &worker(
                "a",
                serde_json::json!({"intervalSeconds": 1, "staleAfterSeconds": 3600}),
                never.clone(),
            ),
        )
        .await?;
    workers
        .create(
            &PostParams::default(),
            &worker(
                "b",
                serde_json::json!({"intervalSeconds": 1, "staleAfterSeconds": 3600}),
                never,
            ),
        )
        .await?;
    let pod_a = running_pod(&client, &ns.name, "a-worker").await?;
    let pod_b = running_pod(&client, &ns.name, "b-worker").await?;
    let token_a = bound_token(&client, &ns.name, &pod_a).await?;
    let token_b = bound_token(&client, &ns.name, &pod_b).await?;
    let url = op.heartbeat_url();

    let (code, body) =
        post(&url, Some(&token_a), payload(&ns.name, "a", &pod_a, 1, "ready").to_string()).await?;
    assert_eq!(code, 200, "{body}");
    let w = wait_for(&workers, "a", Duration::from_secs(10), "Ready with VRAM", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.phase == Some(rbee_api::WorkerPhase::Ready)
                && s.vram.as_ref().and_then(|v| v.summary.as_deref()) == Some("7.6Gi/22.5Gi")
        })
    })
    .await?;
    let s = w.status.clone().unwrap_or_default();
    assert!(s.heartbeat.and_then(|h| h.last_heartbeat_time).is_some());
    assert_eq!(s.device.as_deref(), Some("cuda:0 NVIDIA H100 80GB HBM3"));
    assert_eq!(s.memory.and_then(|m| m.rss_bytes), Some(734003200));
    let table =
        String::from_utf8_lossy(&kubectl(&["get", "rbeeworkers", "a", "-n", &ns.name])?.stdout)
            .to_string();
    assert!(
        table.contains("7.6Gi/22.5Gi") && table.contains("Ready") && table.contains("True"),
        "{table}"
    );

    // One heartbeat interval (1 s) passes, as for a real worker, so the good heartbeat sent
    // after the bad ones is not throttled; every bad one must leave status byte-for-byte unchanged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = status_json(&workers, "a").await?;
    let good = |seq| payload(&ns.name, "a", &pod_a, seq, "ready");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good(2);
        f(&mut v);
        v.to_string()
    };
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        ("malformed JSON", Some(&token_a), "{not json".into(), 400, "invalid"),
        (
            "negative bytes",
            Some(&token_a),
            with(&|v| v["memoryRssBytes"] = (-1).into()),
            400,
            "invalid",
        ),
        (
            "used above total",
            Some(&token_a),
            with(&|v| v["vram"]["usedBytes"] = 30_000_000_000_u64.into()),
            400,
            "invalid",
        ),
        (
            "progress above 100",
            Some(&token_a),
            with(&|v| v["loadProgressPercent"] = 101.into()),
            400,
            "invalid",
        ),
        ("unknown state", Some(&token_a), with(&|v| v["state"] = "dancing".into()), 400, "invalid"),
        ("unknown field", Some(&token_a), with(&|v| v["extra"] = 1.into()), 400, "invalid"),
        ("no token", None, good(2).to_string(), 401, "unauthenticated"),
        ("garbage token", Some("not-a-token"), good(2).to_string(), 401, "unauthenticated"),
        ("token of another pod", Some(&token_b), good(2).to_string(), 403, "forbidden"),
        (
            "unknown worker",
            Some(&token_a),
            with(&|v| v["worker"]["name"] = "nope".into()),
            404,
            "unknown",
        ),
        (
            "too large",
            Some(&token_a),
            format!("{{\"pad\":\"{}\"}}", "x".repeat(64 * 1024)),
            413,
            "invalid",
        ),
    ];
    let mut wrong = Vec::new();
    for (case, token, body, want, kind) in cases {
        let (code, json) = post(&url, token, body).await?;
        let message = json["error"]["message"].as_str().unwrap_or_default();
        // The envelope both servers answer with: `code` a string, finer than `type`.
        let finer = json["error"]["code"].as_str().unwrap_or_default();
        if code != want || json["error"]["type"] != kind || message.is_empty() || finer.is_empty() {
            wrong.push(format!("{case}: got {code} {json}, want {want} {kind}"));
        }
    }
    // A second good beat right after the first is too frequent for a 1 s interval.
    let (ok, _) = post(&url, Some(&token_a), good(3).to_string()).await?;
    let (throttled, json) = post(&url, Some(&token_a), good(4).to_string()).await?;
    assert_eq!(ok, 200);
    assert_eq!((throttled, json["error"]["type"].as_str()), (429, Some("throttled")), "{json}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Only the accepted beat may move the status; none of the refused ones did.
    let after = serde_json::from_str::<serde_json::Value>(&status_json(&workers, "a").await?)?;
    let before = serde_json::from_str::<serde_json::Value>(&before)?;
    assert_eq!(after, before, "status changed after refused heartbeats");
    let refused = op.metric("rbee_operator_heartbeats_total{result=\"forbidden\"} ").await;
    assert_eq!(refused, Some(1.0));
    ns.delete().await
}

#[tokio::test]
async fn silence_makes_a_worker_stale_then_restarts_it_until_the_limit() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "stale", &[]).await?;
    let op = OperatorProcess::start(&ns.name, &[])?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    let restart = serde_json::json!({"mode": "Always", "maxRestarts": 1, "backoff": {"initialSeconds": 2, "maxSeconds": 4, "jitterPercent": 0}});
    workers
        .create(
            &PostParams::default(),
            &worker(
                "s",
                serde_json::json!({"intervalSeconds": 1, "staleAfterSeconds": 3}),
                restart,
            ),
        )
        .await?;
    let pod = running_pod(&client, &ns.name, "s-worker").await?;
    let token = bound_token(&client, &ns.name, &pod).await?;
    let url = op.heartbeat_url();
    let mut last_ok = Instant::now();
    for seq in 1..=3 {
        let (code, body) =
            post(&url, Some(&token), payload(&ns.name, "s", &pod, seq, "ready").to_string())
                .await?;
        assert_eq!(code, 200, "{body}");
        last_ok = Instant::now();
        // The worker's own cadence (intervalSeconds 1), not a wait for the cluster.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let stale = wait_for(&workers, "s", Duration::from_secs(10), "Stale", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == "Heartbeating" && c.reason == "HeartbeatStale")
        })
    })
    .await?;
    let detected = last_ok.elapsed();
    eprintln!("stale detected {detected:?} after the last heartbeat (staleAfter 3s)");
    assert!(detected < Duration::from_secs(4) + Duration::from_millis(500), "took {detected:?}");
    assert_eq!(stale.status.as_ref().and_then(|s| s.phase), Some(rbee_api::WorkerPhase::Stale));

    // After the 2 s backoff the operator replaces the pod and records why.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let old_uid = pod.metadata.uid.clone();
    let new_pod = wait_for(&pods, "s-worker", Duration::from_secs(20), "replaced", |p| {
        p.metadata.uid != old_uid
    })
    .await?;
    let w = wait_for(&workers, "s", Duration::from_secs(10), "restart recorded", |w| {
        w.status.as_ref().and_then(|s| s.restarts.as_ref()).is_some_and(|r| r.count == 1)
    })
    .await?;
    let r = w.status.and_then(|s| s.restarts).unwrap_or_default();
    assert_eq!(r.last_restart_reason.as_deref(), Some("HeartbeatStale"));
    assert_eq!(r.history[0].pod_uid, old_uid);

    // The new pod never heartbeats: stale again, and with maxRestarts 1 reached it is left
    // alone, Degraded.
    let w = wait_for(&workers, "s", Duration::from_secs(30), "Degraded", |w| {
        w.status.as_ref().is_some_and(|s| s.phase == Some(rbee_api::WorkerPhase::Degraded))
    })
    .await?;
    assert_eq!(w.status.as_ref().and_then(|s| s.reason.as_deref()), Some("RestartLimitExceeded"));
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for want in ["HeartbeatStale", "Restarting", "RestartLimitExceeded"] {
        assert!(reasons.iter().any(|r| r == want), "no {want} event in {reasons:?}");
    }
    // No further pods: for two more stale periods and backoffs the one pod is the second one.
    holds_for(Duration::from_secs(8), "exactly the second pod", || {
        let pods = pods.clone();
        let uid = new_pod.metadata.uid.clone();
        async move {
            let items = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
            if items.len() == 1 && items[0].metadata.uid == uid {
                Ok(())
            } else {
                Err(format!("{} pods", items.len()))
            }
        }
    })
    .await?;
    ns.delete().await
}
