//! Leader election between real operator processes against the real API server: one leader,
//! failover, release on shutdown, leases judged by the candidate's own clock, and per-worker
//! metrics from the leader only.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use rbee_api::RbeeWorker;
use rbee_testkit::operator::OperatorProcess;
use rbee_testkit::{TempNamespace, client, eventually, holds_for, kwok_worker as worker, wait_for};

const RESTRICTED: &[(&str, &str)] = &[("pod-security.kubernetes.io/enforce", "restricted")];

#[tokio::test]
async fn two_operators_elect_one_leader_and_fail_over() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "op-leader", RESTRICTED).await?;
    let mut a = OperatorProcess::start(&ns.name, &[])?;
    let mut b = OperatorProcess::start(&ns.name, &[])?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder =
        |l: &Lease| l.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    let lease = wait_for(&leases, "rbee-operator-leader", Duration::from_secs(30), "held", |l| {
        !holder(l).is_empty()
    })
    .await?;
    let first = holder(&lease);
    let pid_of = |p: &OperatorProcess| p.pid().map(|p| p.to_string()).unwrap_or_default();
    let (leader, follower) = if first.ends_with(&format!("-{}", pid_of(&a))) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    eventually(Duration::from_secs(10), "leader gauges", || async {
        match (
            leader.metric("rbee_operator_leader ").await,
            follower.metric("rbee_operator_leader ").await,
        ) {
            (Some(l), Some(f)) if l == 1.0 && f == 0.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    workers.create(&PostParams::default(), &worker("one", serde_json::json!({}))).await?;
    wait_for(&workers, "one", Duration::from_secs(30), "reconciled", |w| w.status.is_some())
        .await?;
    let follower_reconciles =
        follower.metric("rbee_operator_reconcile_duration_seconds_count ").await.unwrap_or(0.0);
    assert_eq!(follower_reconciles, 0.0, "the follower reconciled");
    // Per-worker series come from the leader only, so `max by (namespace, worker)` over the
    // replicas is the leader's value.
    let ready_series = format!("rbee_worker_ready{{namespace=\"{}\",worker=\"one\"}} ", ns.name);
    eventually(Duration::from_secs(10), "the leader's per-worker series", || async {
        leader.metric(&ready_series).await.map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await?;
    let scrape = follower.metrics().await?;
    assert_eq!(
        worker_samples(&scrape),
        Vec::<&str>::new(),
        "the follower exports per-worker series"
    );
    // Only the leader accepts heartbeats; a follower says so with a retry hint.
    let resp = reqwest::Client::new().post(follower.heartbeat_url()).body("{}").send().await?;
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("2"));
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["error"]["type"], "not_leader", "{body}");
    assert_eq!(body["error"]["code"], "not_leader", "{body}");

    let killed_at = Instant::now();
    leader.kill();
    let lease =
        wait_for(&leases, "rbee-operator-leader", Duration::from_secs(20), "taken over", |l| {
            let h = holder(l);
            !h.is_empty() && h != first
        })
        .await?;
    let failover = killed_at.elapsed();
    assert!(holder(&lease).ends_with(&format!("-{}", pid_of(follower))));
    workers.create(&PostParams::default(), &worker("two", serde_json::json!({}))).await?;
    wait_for(&workers, "two", Duration::from_secs(30), "reconciled by the new leader", |w| {
        w.status.is_some()
    })
    .await?;
    eprintln!("leader failover took {failover:?} (lease duration 4s)");
    assert!(failover < Duration::from_secs(10), "failover took {failover:?}");

    // A graceful stop releases the lease at once.
    let status = follower.terminate()?;
    assert!(status.success(), "{status}");
    let released = leases.get("rbee-operator-leader").await?;
    assert_eq!(holder(&released), "");
    ns.delete().await
}

/// The per-worker samples of a scrape.
fn worker_samples(scrape: &str) -> Vec<&str> {
    scrape.lines().filter(|l| l.starts_with("rbee_worker_")).collect()
}

/// Writes the leader Lease as a live holder whose clock runs an hour behind this one would:
/// renewed every second, each renewTime an hour in the past.
async fn hold_lease_with_a_skewed_clock(leases: Api<Lease>, holder: &'static str) {
    loop {
        if let Ok(mut lease) = leases.get("rbee-operator-leader").await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let an_hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
            if spec.holder_identity.as_deref() != Some(holder) {
                spec.holder_identity = Some(holder.into());
                spec.acquire_time = Some(MicroTime(an_hour_ago));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.renew_time = Some(MicroTime(an_hour_ago));
            spec.lease_duration_seconds = Some(4);
            let _ = leases.replace("rbee-operator-leader", &PostParams::default(), &lease).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_live_lease_renewed_by_a_skewed_clock_is_not_taken_and_a_deposed_leader_drops_its_series()
-> anyhow::Result<()> {
    let client = client().await?;
    let ns = TempNamespace::create(&client, "op-skew", RESTRICTED).await?;
    let op = OperatorProcess::start(&ns.name, &[])?;
    let workers: Api<RbeeWorker> = Api::namespaced(client.clone(), &ns.name);
    workers.create(&PostParams::default(), &worker("w", serde_json::json!({}))).await?;
    let ready_series = format!("rbee_worker_ready{{namespace=\"{}\",worker=\"w\"}} ", ns.name);
    eventually(Duration::from_secs(30), "the leader's per-worker series", || async {
        op.metric(&ready_series).await.map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await?;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let skewed = tokio::spawn(hold_lease_with_a_skewed_clock(leases.clone(), "skewed-holder"));
    let result = async {
        eventually(Duration::from_secs(10), "the operator to step down", || async {
            match op.metric("rbee_operator_leader ").await {
                Some(0.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await?;
        // Three lease durations: each renewTime looks an hour expired, yet each renewal is news.
        holds_for(Duration::from_secs(12), "the skewed holder keeps its lease", || async {
            let lease = leases.get("rbee-operator-leader").await.map_err(|e| e.to_string())?;
            let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
            let scrape = op.metrics().await.map_err(|e| e.to_string())?;
            let samples = worker_samples(&scrape);
            match (holder.as_str(), samples.is_empty()) {
                ("skewed-holder", true) => Ok(()),
                _ => Err(format!("holder {holder:?}, per-worker samples {samples:?}")),
            }
        })
        .await
    }
    .await;
    skewed.abort();
    result?;
    let stopped = Instant::now();
    eventually(Duration::from_secs(20), "the operator to lead again", || async {
        match op.metric("rbee_operator_leader ").await {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    eprintln!(
        "took the lease back {:?} after the skewed holder stopped (lease 4s)",
        stopped.elapsed()
    );
    eventually(Duration::from_secs(30), "per-worker series of the new term", || async {
        op.metric(&ready_series).await.map(|_| ()).ok_or_else(|| "absent".to_string())
    })
    .await?;
    ns.delete().await
}
