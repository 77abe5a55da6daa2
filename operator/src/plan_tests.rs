use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use rbee_api::heartbeat::{Health, Heartbeat, WorkerIdentity, WorkerState};
use rbee_api::{Backend, RbeeWorker, WorkerPhase};

use rbee_api::names::READINESS_GATE;

use super::*;
use crate::gate;
use crate::pod::{PodSettings, build_pod, pod_template_hash};
use crate::record::HeartbeatRecord;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap_or_default()
}

fn worker() -> RbeeWorker {
    let mut w: RbeeWorker = serde_yaml::from_str(
        "apiVersion: rbee.dev/v1alpha1\nkind: RbeeWorker\nmetadata: {name: w, namespace: ns, uid: wuid, generation: 1}\nspec:\n  backend: cpu\n  model: {path: /m.gguf}\n  heartbeat: {intervalSeconds: 1, staleAfterSeconds: 3}\n  restartPolicy: {maxRestarts: 2, backoff: {initialSeconds: 10, maxSeconds: 40, jitterPercent: 0}}\n",
    )
    .expect("worker");
    w.metadata.namespace = Some("ns".into());
    w
}

fn settings() -> PodSettings {
    PodSettings {
        default_worker_image: "img".into(),
        heartbeat_url: "http://op/v1/heartbeat".into(),
    }
}

fn desired_hash(w: &RbeeWorker) -> String {
    let pod = build_pod(w, &settings()).expect("pod");
    pod_template_hash(&pod).unwrap_or_default().to_string()
}

/// The desired pod as the API server would show it once running since `started`.
fn running_pod(w: &RbeeWorker, uid: &str, started: i64) -> Pod {
    let mut pod = build_pod(w, &settings()).expect("pod");
    pod.metadata.uid = Some(uid.into());
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some("node-a".into());
    }
    pod.status = Some(serde_json::from_value(serde_json::json!({
        "phase": "Running",
        "podIP": "10.0.0.7",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "ContainersReady", "status": "True"}, {"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "worker", "image": "img", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": t(started).to_string()}}}]
    })).expect("status"));
    pod
}

fn beat(uid: &str, state: WorkerState, at: i64, streak: u32) -> HeartbeatRecord {
    HeartbeatRecord {
        pod_uid: uid.into(),
        beat: Heartbeat {
            version: 1,
            worker: WorkerIdentity {
                namespace: "ns".into(),
                name: "w".into(),
                pod_name: "w-worker".into(),
                pod_uid: uid.into(),
            },
            sequence: 1,
            sent_at: t(at),
            health: Health::Healthy,
            health_reason: None,
            state,
            load_progress_percent: if state.model_loaded() { 100 } else { 40 },
            backend: Backend::Cpu,
            device: None,
            vram: None,
            memory_rss_bytes: 100 << 20,
            disk_free_bytes: Some(1 << 30),
            in_flight_requests: 0,
        },
        received_at: t(at),
        streak,
    }
}

fn decide(w: &RbeeWorker, pod: Option<&Pod>, hb: Option<&HeartbeatRecord>, now: i64) -> Plan {
    let hash = desired_hash(w);
    plan(&Inputs {
        worker: w,
        pod,
        desired_hash: &hash,
        heartbeat: hb,
        leader_since: t(-1000),
        now: t(now),
        jitter: 0.0,
        endpoints_serving: false,
    })
}

/// The pod with its heartbeat gate condition set, and Ready following it.
fn gated(mut pod: Pod, open: bool, reason: &str, since: i64) -> Pod {
    let status = pod.status.get_or_insert_default();
    let conditions = status.conditions.get_or_insert_default();
    conditions.retain(|c| c.type_ != "Ready" && c.type_ != "ContainersReady");
    for (type_, ok) in [("Ready", open), ("ContainersReady", true), (READINESS_GATE, open)] {
        conditions.push(
            serde_json::from_value(serde_json::json!({
                "type": type_, "status": if ok { "True" } else { "False" }, "reason": reason,
                "lastTransitionTime": t(since).to_string()
            }))
            .expect("condition"),
        );
    }
    pod
}

fn changed(w: &RbeeWorker) -> RbeeWorker {
    let mut c = w.clone();
    c.spec.heartbeat.interval_seconds = 2;
    c.metadata.generation = Some(2);
    c
}

fn in_flight(mut r: HeartbeatRecord, n: u32) -> HeartbeatRecord {
    r.beat.in_flight_requests = n;
    r
}

/// Carries a plan's status into the worker, as the API server would after the write.
fn apply(w: &mut RbeeWorker, p: &Plan) {
    w.status = Some(p.status.clone());
}

#[test]
fn no_pod_creates_one() {
    let w = worker();
    let p = decide(&w, None, None, 0);
    assert_eq!(p.action, PodAction::Create);
    assert_eq!(p.status.phase, Some(WorkerPhase::Pending));
    assert!(p.notices.iter().any(|n| n.reason == "PodCreated"));
}

#[test]
fn the_status_written_with_a_new_pod_already_describes_it() {
    let mut w = worker();
    let created = decide(&w, None, None, 0);
    apply(&mut w, &created);
    let mut pod = build_pod(&w, &settings()).expect("pod");
    pod.metadata.uid = Some("p1".into());
    pod.status =
        Some(serde_json::from_value(serde_json::json!({"phase": "Pending"})).expect("status"));
    let seen = decide(&w, Some(&pod), None, 1);
    assert_eq!(seen.action, PodAction::Keep);
    assert_eq!(seen.status.pod_name, created.status.pod_name);
    assert!(
        !crate::status::needs_write(
            w.status.as_ref(),
            &seen.status,
            SignedDuration::from_secs(120)
        ),
        "{:#?}\n{:#?}",
        created.status,
        seen.status
    );
    let progressing =
        conditions::find(&seen.status.conditions, "Progressing").expect("Progressing");
    assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("True", "PodCreated"));
    let running = decide(&w, Some(&running_pod(&w, "p1", 1)), None, 2);
    let progressing =
        conditions::find(&running.status.conditions, "Progressing").expect("Progressing");
    assert_eq!(progressing.status, "False");
}

#[test]
fn fresh_heartbeat_with_loaded_model_is_ready() {
    let w = worker();
    let pod = running_pod(&w, "p1", 0);
    let hb = beat("p1", WorkerState::Ready, 5, 3);
    let p = decide(&w, Some(&pod), Some(&hb), 6);
    assert_eq!(p.action, PodAction::Keep);
    assert_eq!(p.status.phase, Some(WorkerPhase::Ready));
    assert!(conditions::is_true(&p.status.conditions, "Ready"));
    assert_eq!(p.status.endpoint.as_deref(), Some("http://w.ns.svc:8080"));
    let gate = p.gate.expect("gate");
    assert!(gate.open, "{gate:?}");
    assert_eq!(p.status.node_name.as_deref(), Some("node-a"));
    // Looked at again when the heartbeat would go stale: last beat + 3 s.
    assert!(p.requeue_after <= std::time::Duration::from_millis(2100), "{:?}", p.requeue_after);
}

#[test]
fn running_without_heartbeat_awaits_the_first() {
    let w = worker();
    let pod = running_pod(&w, "p1", 0);
    let p = decide(&w, Some(&pod), None, 1);
    assert_eq!(p.status.phase, Some(WorkerPhase::Loading));
    assert_eq!(p.status.reason.as_deref(), Some("AwaitingFirstHeartbeat"));
}

#[test]
fn loading_reports_progress() {
    let w = worker();
    let pod = running_pod(&w, "p1", 0);
    let p = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Loading, 1, 1)), 2);
    assert_eq!(p.status.phase, Some(WorkerPhase::Loading));
    assert_eq!(p.status.model.as_ref().map(|m| m.load_progress_percent), Some(40));
}

#[test]
fn stale_heartbeat_restarts_after_recording_it() {
    let mut w = worker();
    let pod = running_pod(&w, "p1", 0);
    let hb = beat("p1", WorkerState::Ready, 5, 3);
    let ready = decide(&w, Some(&pod), Some(&hb), 6);
    apply(&mut w, &ready);
    // Stale at t=8: shown as Stale, the restart is due after the 10 s backoff.
    let stale = decide(&w, Some(&pod), Some(&hb), 8);
    assert_eq!(stale.action, PodAction::Keep);
    assert_eq!(stale.status.phase, Some(WorkerPhase::Stale));
    assert!(stale.notices.iter().any(|n| n.warning && n.reason == "HeartbeatStale"));
    assert_eq!(
        stale.status.restarts.as_ref().and_then(|r| r.next_restart_time.clone()).map(|t| t.0),
        Some(t(18))
    );
    apply(&mut w, &stale);
    assert_eq!(decide(&w, Some(&pod), Some(&hb), 12).action, PodAction::Keep, "still backing off");

    let p = decide(&w, Some(&pod), Some(&hb), 18);
    assert_eq!(
        p.action,
        PodAction::Delete { uid: "p1".into(), grace_seconds: Some(RESTART_GRACE_SECONDS) }
    );
    assert_eq!(p.restarted, Some("HeartbeatStale"));
    assert_eq!(p.status.phase, Some(WorkerPhase::BackingOff));
    let r = p.status.restarts.clone().expect("restarts");
    assert_eq!(r.count, 1);
    assert_eq!(r.history[0].pod_uid.as_deref(), Some("p1"));
    assert!(p.notices.iter().any(|n| n.warning && n.reason == "Restarting"));

    // The operator died before the delete went through: the next decision deletes the
    // condemned pod without counting again.
    apply(&mut w, &p);
    let again = decide(&w, Some(&pod), Some(&hb), 19);
    assert_eq!(
        again.action,
        PodAction::Delete { uid: "p1".into(), grace_seconds: Some(RESTART_GRACE_SECONDS) }
    );
    assert_eq!(again.restarted, None);
    assert_eq!(again.status.restarts.as_ref().map(|r| r.count), Some(1));

    // Pod gone: the replacement is created at once.
    apply(&mut w, &again);
    assert_eq!(decide(&w, None, None, 20).action, PodAction::Create);
}

#[test]
fn recovery_during_the_backoff_calls_the_restart_off() {
    let mut w = worker();
    let pod = running_pod(&w, "p1", 0);
    let ready = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 5, 3)), 6);
    apply(&mut w, &ready);
    let stale = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 5, 3)), 9);
    apply(&mut w, &stale);
    let back = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 11, 2)), 11);
    assert_eq!(back.status.phase, Some(WorkerPhase::Ready));
    assert_eq!(back.status.restarts, None);
    assert_eq!(back.action, PodAction::Keep);
}

#[test]
fn restart_limit_leaves_the_worker_degraded() {
    let mut w = worker();
    let mut status = RbeeWorkerStatus { observed_generation: Some(1), ..Default::default() };
    status.restarts = Some(rbee_api::RestartStatus { count: 2, ..Default::default() });
    w.status = Some(status);
    let pod = running_pod(&w, "p3", 0);
    let p = decide(&w, Some(&pod), None, 10);
    assert_eq!(p.action, PodAction::Keep);
    assert_eq!(p.status.phase, Some(WorkerPhase::Degraded));
    assert_eq!(p.status.reason.as_deref(), Some("RestartLimitExceeded"));
    assert!(p.notices.iter().any(|n| n.warning && n.reason == "RestartLimitExceeded"));
    apply(&mut w, &p);
    let later = decide(&w, Some(&pod), None, 100);
    assert_eq!(later.action, PodAction::Keep);
    assert!(!later.notices.iter().any(|n| n.reason == "RestartLimitExceeded"), "warned once");
}

#[test]
fn a_new_leader_waits_one_stale_period() {
    let w = worker();
    let pod = running_pod(&w, "p1", 0);
    let hash = desired_hash(&w);
    let p = plan(&Inputs {
        worker: &w,
        pod: Some(&pod),
        desired_hash: &hash,
        heartbeat: None,
        leader_since: t(100),
        now: t(102),
        jitter: 0.0,
        endpoints_serving: false,
    });
    assert_ne!(p.status.phase, Some(WorkerPhase::Stale));
    assert_eq!(p.action, PodAction::Keep);
}

#[test]
fn changed_spec_replaces_the_pod() {
    let w = worker();
    let pod = running_pod(&w, "p1", 0);
    let mut changed = w.clone();
    changed.spec.heartbeat.interval_seconds = 2;
    changed.metadata.generation = Some(2);
    let p = decide(&changed, Some(&pod), None, 1);
    assert_eq!(p.action, PodAction::Delete { uid: "p1".into(), grace_seconds: None });
    assert!(p.notices.iter().any(|n| n.reason == "PodReplaced"));
    assert_eq!(p.status.observed_generation, Some(2));
}

#[test]
fn insufficient_gpus_are_named() {
    let w = worker();
    let mut pod = build_pod(&w, &settings()).expect("pod");
    pod.metadata.uid = Some("p1".into());
    pod.status = Some(
        serde_json::from_value(serde_json::json!({
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/2 nodes are available: 1 Insufficient nvidia.com/gpu."}]
        }))
        .expect("status"),
    );
    let p = decide(&w, Some(&pod), None, 1);
    let scheduled = conditions::find(&p.status.conditions, "Scheduled").expect("Scheduled");
    assert_eq!(
        (scheduled.status.as_str(), scheduled.reason.as_str()),
        ("False", "InsufficientGPU")
    );
    assert!(p.notices.iter().any(|n| n.warning && n.reason == "InsufficientGPU"));
}

#[test]
fn one_beat_after_a_stale_spell_is_not_yet_recovery() {
    let mut w = worker();
    let pod = running_pod(&w, "p1", 0);
    let mut never = w.clone();
    never.spec.restart_policy.mode = rbee_api::RestartMode::Never;
    let stale = decide(&never, Some(&pod), Some(&beat("p1", WorkerState::Ready, 1, 5)), 10);
    assert_eq!(stale.status.phase, Some(WorkerPhase::Stale));
    w = never;
    apply(&mut w, &stale);
    let one = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 11, 1)), 11);
    assert_eq!(one.status.phase, Some(WorkerPhase::Stale));
    let two = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 12, 2)), 12);
    assert_eq!(two.status.phase, Some(WorkerPhase::Ready));
}

#[test]
fn status_writes_are_coalesced() {
    let mut w = worker();
    let pod = running_pod(&w, "p1", 0);
    let first = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 5, 3)), 5);
    assert!(crate::status::needs_write(
        w.status.as_ref(),
        &first.status,
        SignedDuration::from_secs(60)
    ));
    apply(&mut w, &first);
    let next = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 6, 4)), 6);
    assert!(
        !crate::status::needs_write(w.status.as_ref(), &next.status, SignedDuration::from_secs(60)),
        "only the heartbeat time moved"
    );
    let later = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 66, 64)), 66);
    assert!(
        crate::status::needs_write(w.status.as_ref(), &later.status, SignedDuration::from_secs(60)),
        "report period elapsed"
    );
    let busy = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Loading, 7, 5)), 7);
    assert!(
        crate::status::needs_write(w.status.as_ref(), &busy.status, SignedDuration::from_secs(60)),
        "visible change"
    );
}

#[test]
fn the_gate_closes_when_the_worker_goes_stale_or_loads() {
    let w = worker();
    let pod = gated(running_pod(&w, "p1", 0), true, "HeartbeatReceived", 1);
    let stale = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 5, 3)), 9);
    let gate = stale.gate.expect("gate");
    assert!(!gate.open && gate.reason == "HeartbeatStale", "{gate:?}");
    let loading = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Loading, 5, 3)), 6);
    let gate = loading.gate.expect("gate");
    assert!(!gate.open && gate.reason == "Loading", "{gate:?}");
    assert!(!GateCondition { open: true, ..gate.clone() }.matches(gate::of_pod(&pod).as_ref()));
    assert!(!gate.matches(gate::of_pod(&pod).as_ref()));
}

#[test]
fn a_pod_out_of_service_costs_no_gate_write_per_phase() {
    let w = worker();
    let fresh = running_pod(&w, "p1", 0);
    let loading = decide(&w, Some(&fresh), Some(&beat("p1", WorkerState::Loading, 5, 3)), 6);
    let gate = loading.gate.expect("gate");
    assert!(gate.matches(None), "a missing condition already keeps the pod out");
    let closed_stale = gated(running_pod(&w, "p1", 0), false, "HeartbeatStale", 1);
    assert!(gate.matches(gate::of_pod(&closed_stale).as_ref()));
    let open = GateCondition { open: true, reason: "HeartbeatReceived", message: String::new() };
    assert!(!open.matches(None) && !open.matches(gate::of_pod(&closed_stale).as_ref()));
}

#[test]
fn a_serving_pod_is_drained_before_a_spec_change_replaces_it() {
    let w = worker();
    let c = changed(&w);
    let hash = desired_hash(&c);
    let decide_with = |pod: &Pod, hb: Option<&HeartbeatRecord>, serving: bool, now: i64| {
        plan(&Inputs {
            worker: &c,
            pod: Some(pod),
            desired_hash: &hash,
            heartbeat: hb,
            leader_since: t(-1000),
            now: t(now),
            jitter: 0.0,
            endpoints_serving: serving,
        })
    };
    let hb = |at: i64, n: u32| in_flight(beat("p1", WorkerState::Ready, at, 9), n);

    // Serving: close the gate first.
    let open = gated(running_pod(&w, "p1", 0), true, "HeartbeatReceived", 1);
    let p = decide_with(&open, Some(&hb(9, 3)), true, 10);
    assert_eq!(p.action, PodAction::Keep);
    assert_eq!(p.status.phase, Some(WorkerPhase::Draining));
    let gate = p.gate.expect("gate");
    assert!(!gate.open && gate.reason == "Draining", "{gate:?}");
    assert!(p.notices.iter().any(|n| n.reason == "Draining"), "{:?}", p.notices);

    // Closed at 10, but an EndpointSlice still routes to it.
    let closed = gated(running_pod(&w, "p1", 0), false, "Draining", 10);
    let p = decide_with(&closed, Some(&hb(10, 3)), true, 10);
    assert_eq!(p.action, PodAction::Keep);
    assert!(
        p.status.message.as_deref().is_some_and(|m| m.contains("endpoint")),
        "{:?}",
        p.status.message
    );

    // Out of the endpoints; a heartbeat from before the gate closed says nothing.
    let p = decide_with(&closed, Some(&hb(10, 0)), false, 11);
    assert_eq!(p.action, PodAction::Keep);
    let p = decide_with(&closed, Some(&hb(11, 2)), false, 11);
    assert!(p.status.message.as_deref().is_some_and(|m| m.contains("2 requests in flight")));
    let p = decide_with(&closed, Some(&hb(12, 0)), false, 12);
    assert_eq!(p.action, PodAction::Delete { uid: "p1".into(), grace_seconds: None });

    // The drain timeout (60 s by default) ends the wait.
    let p = decide_with(&closed, Some(&hb(69, 2)), false, 69);
    assert_eq!(p.action, PodAction::Keep);
    assert!(p.requeue_after <= std::time::Duration::from_millis(1100), "{:?}", p.requeue_after);
    let p = decide_with(&closed, Some(&hb(70, 2)), false, 70);
    assert_eq!(p.action, PodAction::Delete { uid: "p1".into(), grace_seconds: None });
}

#[test]
fn a_pod_that_does_not_serve_is_replaced_at_once() {
    let w = worker();
    let c = changed(&w);
    let loading = gated(running_pod(&w, "p1", 0), false, "Loading", 1);
    let p = decide(&c, Some(&loading), Some(&beat("p1", WorkerState::Loading, 1, 1)), 2);
    assert_eq!(p.action, PodAction::Delete { uid: "p1".into(), grace_seconds: None });
    assert!(p.gate.is_none());
}

#[test]
fn a_new_leader_keeps_a_ready_worker_ready_until_it_hears_from_it() {
    let mut w = worker();
    let pod = gated(running_pod(&w, "p1", 0), true, "HeartbeatReceived", 1);
    let ready = decide(&w, Some(&pod), Some(&beat("p1", WorkerState::Ready, 5, 3)), 6);
    apply(&mut w, &ready);
    let hash = desired_hash(&w);
    let new_leader = |now: i64| {
        plan(&Inputs {
            worker: &w,
            pod: Some(&pod),
            desired_hash: &hash,
            heartbeat: None,
            leader_since: t(100),
            now: t(now),
            jitter: 0.0,
            endpoints_serving: false,
        })
    };
    let p = new_leader(101);
    assert_eq!(p.status.phase, Some(WorkerPhase::Ready));
    assert!(p.gate.is_some_and(|g| g.open));
    let heartbeating = conditions::find(&p.status.conditions, "Heartbeating").expect("condition");
    assert_eq!(
        heartbeating.last_transition_time,
        conditions::find(&ready.status.conditions, "Heartbeating").expect("c").last_transition_time
    );
    // Still nothing after a full stale period of its own: stale.
    assert_eq!(new_leader(103).status.phase, Some(WorkerPhase::Stale));
}
