//! Carries a plan out against the API server: the pod action, the readiness gate, the
//! Service, the status, and the Events. Every failure names its call.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use rbee_api::names::FIELD_MANAGER;
use rbee_api::{RbeeWorker, RbeeWorkerStatus};

use crate::context::Context;
use crate::error::{Call, Error, Result};
use crate::plan::{GateCondition, Notice, Plan, PodAction};
use crate::pod::pod_name;
use crate::service::{build_service, service_name, up_to_date as service_up_to_date};
use crate::status::needs_write;
use crate::term::{TermState, Written};

/// How long a reconcile waits for the caches to show its own writes.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Applies `plan`. A restart is recorded before its pod is deleted, so a crash in between
/// finds the condemned pod's UID in status and finishes the job instead of counting twice;
/// everything else is independent and goes out at once. Nothing is written once the term
/// has ended: false when the plan was dropped for that.
pub async fn apply(
    ctx: &Context,
    worker: &RbeeWorker,
    pod: Option<&Pod>,
    desired: &Pod,
    plan: &Plan,
) -> Result<bool> {
    if !ctx.leads() {
        return Ok(false);
    }
    let restart_written = match plan.restarted {
        Some(_) => write_status(ctx, worker, &plan.status, true).await?,
        None => None,
    };
    if !ctx.leads() {
        return Ok(false);
    }
    let pods: Api<Pod> =
        Api::namespaced(ctx.shared.client.clone(), &worker.namespace().unwrap_or_default());
    let status_change = async {
        match plan.restarted {
            Some(_) => Ok(restart_written),
            None => write_status(ctx, worker, &plan.status, false).await,
        }
    };
    let gate_change = async {
        match (&plan.gate, pod) {
            (Some(gate), Some(pod)) => set_gate(&pods, pod, gate).await,
            _ => Ok(None),
        }
    };
    let (service, pod, gate, status) = tokio::try_join!(
        ensure_service(ctx, worker),
        change_pod(&pods, worker, desired, &plan.action),
        gate_change,
        status_change
    )?;
    settle(&ctx.term, [service, pod, gate, status].into_iter().flatten()).await;
    Ok(true)
}

/// Waits until the caches show this reconcile's writes (or a short timeout), so the
/// reconcile that the next event triggers decides from them instead of writing them again.
async fn settle(term: &TermState, writes: impl Iterator<Item = Written>) {
    let writes: Vec<Written> = writes.collect();
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    while !writes.iter().all(|w| term.shows(w)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn change_pod(
    pods: &Api<Pod>,
    worker: &RbeeWorker,
    desired: &Pod,
    action: &PodAction,
) -> Result<Option<Written>> {
    let name = pod_name(worker);
    match action {
        PodAction::Keep => Ok(None),
        PodAction::Create => {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let created = pods
                .patch(&name, &params, &Patch::Apply(desired))
                .await
                .map_err(Error::api(Call::CreatePod))?;
            Ok(Written::pod(&created))
        }
        PodAction::Delete { uid, grace_seconds } => {
            delete_pod(pods, &name, uid, *grace_seconds).await
        }
    }
}

async fn delete_pod(
    pods: &Api<Pod>,
    name: &str,
    uid: &str,
    grace_seconds: Option<i64>,
) -> Result<Option<Written>> {
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.into()), resource_version: None }),
        grace_period_seconds: grace_seconds.and_then(|g| u32::try_from(g).ok()),
        ..DeleteParams::background()
    };
    match pods.delete(name, &params).await {
        // A pod with a grace period stays, marked for deletion, until it is gone.
        Ok(deleted) => Ok(deleted.left().as_ref().and_then(Written::pod)),
        // Already gone, or a newer pod took the name: nothing left to delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(None),
        Err(e) => Err(Error::api(Call::DeletePod)(e)),
    }
}

/// Sets the pod's heartbeat readiness gate condition when its status or reason changes.
async fn set_gate(pods: &Api<Pod>, pod: &Pod, gate: &GateCondition) -> Result<Option<Written>> {
    let Some(patch) = gate.patch(pod, Timestamp::now()) else { return Ok(None) };
    let name = pod.name_any();
    match pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
        Ok(patched) => Ok(Written::pod(&patched)),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(None),
        Err(e) => Err(Error::api(Call::SetGate)(e)),
    }
}

/// Creates or repairs the worker's Service; unchanged ones cost nothing.
async fn ensure_service(ctx: &Context, worker: &RbeeWorker) -> Result<Option<Written>> {
    let desired = build_service(worker)?;
    let (name, namespace) = (service_name(worker), worker.namespace().unwrap_or_default());
    let live = ctx.term.services.get(&ObjectRef::new(&name).within(&namespace));
    if live.is_some_and(|l| service_up_to_date(&l, &desired)) {
        return Ok(None);
    }
    let applied = Api::<Service>::namespaced(ctx.shared.client.clone(), &namespace)
        .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired))
        .await
        .map_err(Error::api(Call::ApplyService))?;
    Ok(Written::service(&applied))
}

async fn write_status(
    ctx: &Context,
    worker: &RbeeWorker,
    status: &RbeeWorkerStatus,
    force: bool,
) -> Result<Option<Written>> {
    if !force && !needs_write(worker.status.as_ref(), status, ctx.shared.settings.report_period) {
        return Ok(None);
    }
    let api: Api<RbeeWorker> =
        Api::namespaced(ctx.shared.client.clone(), &worker.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": RbeeWorker::api_version(&()),
        "kind": RbeeWorker::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let written = api
        .patch_status(&worker.name_any(), &params, &Patch::Apply(&patch))
        .await
        .map_err(Error::api(Call::WriteStatus))?;
    ctx.shared.metrics.status_written();
    Ok(Written::worker(&written))
}

/// Publishes Events on the worker, best effort.
pub async fn publish(recorder: Recorder, worker: Arc<RbeeWorker>, notices: Vec<Notice>) {
    let reference = worker.object_ref(&());
    for n in notices {
        let event = Event {
            type_: if n.warning { EventType::Warning } else { EventType::Normal },
            reason: n.reason.into(),
            note: Some(n.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(worker = %worker.name_any(), error = %e, "cannot publish event");
        }
    }
}
