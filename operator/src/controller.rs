//! The reconciler: a short driver over observe → decide → apply → update status.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use rbee_api::RbeeWorker;
use rbee_api::names::{FIELD_MANAGER, LABEL_WORKER, MANAGED_BY, READINESS_GATE};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::context::{Context, Term, Written, resource_version};
use crate::error::{Error, Result};
use crate::heartbeat::record::worker_key;
use crate::metrics::WorkerLabels;
use crate::observe::gate as gate_of_pod;
use crate::plan::{self, GateCondition, Inputs, Notice, PodAction};
use crate::pod::{build_pod, pod_name};
use crate::service::{build_service, routes_to, service_name, up_to_date as service_up_to_date};
use crate::status_fields::needs_write;

/// Scope of the controller.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Only this namespace, or all.
    pub namespace: Option<String>,
    /// Reconciliations running at once.
    pub concurrency: u16,
}

fn api<K>(ctx: &Context, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match &scope.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// Runs the controller for one leadership term, until `stop` resolves.
pub async fn run_term(
    ctx: Arc<Context>,
    scope: Scope,
    since: Timestamp,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (workers, worker_writer) = reflector::store();
    // Status changes (most of them this operator's own writes) need no reconcile: heartbeats
    // trigger theirs through `trigger`, and every other wait comes back as a requeue.
    let worker_changes = reflector::reflector(
        worker_writer,
        watcher(api::<RbeeWorker>(&ctx, &scope), watcher::Config::default())
            .modify(|w| w.meta_mut().managed_fields = None),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::generation, Default::default());
    let (pods, pod_stream) = cached(api(&ctx, &scope), prune_pod);
    let (services, service_stream) = cached(api(&ctx, &scope), |_: &mut Service| {});
    let (slices, slice_stream) = cached(api(&ctx, &scope), |_: &mut EndpointSlice| {});
    let (trigger, triggered) = mpsc::channel(4096);
    let controller = Controller::for_stream(worker_changes, workers)
        .with_config(kube::runtime::controller::Config::default().concurrency(scope.concurrency))
        .owns_stream(pod_stream)
        .owns_stream(service_stream)
        .watches_stream(slice_stream, |slice| {
            let worker = slice.labels().get(LABEL_WORKER)?;
            Some(ObjectRef::new(worker).within(&slice.namespace()?))
        })
        .reconcile_on(ReceiverStream::new(triggered))
        .graceful_shutdown_on(stop);
    ctx.set_term(Some(Term {
        since,
        workers: controller.store(),
        pods,
        services,
        slices,
        trigger,
    }));
    tracing::info!(
        namespace = scope.namespace.as_deref().unwrap_or("<all>"),
        "reconciling RbeeWorkers"
    );
    controller
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
        })
        .await;
    ctx.set_term(None);
}

/// A cache of the operator's objects of one kind, without what is never read (managed fields
/// and whatever `prune` drops), and the stream of their changes.
fn cached<K>(
    api: Api<K>,
    prune: fn(&mut K),
) -> (reflector::Store<K>, impl futures::Stream<Item = Result<K, watcher::Error>> + Send)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let config =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let stream = reflector::reflector(
        writer,
        watcher(api, config).modify(move |o| {
            o.meta_mut().managed_fields = None;
            prune(o);
        }),
    )
    .default_backoff()
    .touched_objects();
    (reader, stream)
}

/// Of a pod's spec only the node is read; the containers, volumes and the rest are the bulk
/// of every cached pod.
fn prune_pod(pod: &mut Pod) {
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec { node_name: spec.node_name.take(), ..PodSpec::default() };
    }
}

async fn reconcile(worker: Arc<RbeeWorker>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    let Some(term) = ctx.term() else { return Ok(Action::await_change()) };
    let namespace =
        worker.namespace().ok_or_else(|| Error::InvalidWorker("no namespace".into()))?;
    let name = worker.name_any();
    let labels = WorkerLabels { namespace: namespace.clone(), worker: name.clone() };
    if worker.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // A new term's caches fill while the first reconciles run: deciding from an empty pod
    // cache would see every pod as missing.
    if !term.caches_ready() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }

    // observe
    let pod = term.pods.get(&ObjectRef::new(&pod_name(&worker)).within(&namespace));
    let key = worker_key(&namespace, &name);
    let heartbeat = ctx.heartbeats.get(&key);
    let desired = build_pod(&worker, &ctx.settings.pod)?;
    let desired_hash = crate::pod::pod_template_hash(&desired).unwrap_or_default().to_string();
    // Only a pod about to be replaced needs its endpoints looked up.
    let replaced_uid = pod
        .as_ref()
        .filter(|p| crate::pod::pod_template_hash(p) != Some(desired_hash.as_str()))
        .and_then(|p| p.metadata.uid.as_deref());
    let endpoints_serving =
        replaced_uid.is_some_and(|uid| routes_to(&term.slices.state(), &worker, uid));

    // decide
    let decision = plan::plan(&Inputs {
        worker: &worker,
        pod: pod.as_deref(),
        desired_hash: &desired_hash,
        heartbeat: heartbeat.as_ref(),
        leader_since: term.since,
        now: Timestamp::now(),
        jitter: rand::random::<f64>(),
        endpoints_serving,
    });

    // apply: a restart is recorded before its pod is deleted, so a crash in between
    // finds the condemned pod's UID in status and finishes the job instead of counting twice.
    // Everything else is independent and goes out at once.
    let mut restart_written = None;
    if decision.restarted.is_some() {
        restart_written = write_status(&ctx, &worker, &decision.status, true).await?;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod_change = async {
        match &decision.action {
            PodAction::Keep => Ok(None),
            PodAction::Create => {
                let created = pods
                    .patch(
                        &pod_name(&worker),
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&desired),
                    )
                    .await?;
                Ok(written_pod(&created))
            }
            PodAction::Delete { uid, grace_seconds } => {
                delete_pod(&pods, &pod_name(&worker), uid, *grace_seconds).await
            }
        }
    };
    let gate_change = async {
        match (&decision.gate, &pod) {
            (Some(gate), Some(pod)) => set_gate(&pods, pod, gate).await,
            _ => Ok(None),
        }
    };
    let status_change = async {
        match decision.restarted {
            Some(_) => Ok(restart_written),
            None => write_status(&ctx, &worker, &decision.status, false).await,
        }
    };
    let (service, pod, gate, status) = tokio::try_join!(
        ensure_service(&ctx, &term, &worker, &namespace),
        pod_change,
        gate_change,
        status_change
    )?;
    settle(&term, [service, pod, gate, status].into_iter().flatten()).await;
    if let Some(reason) = decision.restarted {
        ctx.metrics.restarted(&labels, reason);
    }
    ctx.metrics.observe_worker(&labels, &decision.status);
    if !decision.notices.is_empty() {
        // Events are best effort: they never hold up the next reconcile.
        tokio::spawn(publish(ctx.clone(), worker.clone(), decision.notices));
    }
    Ok(Action::requeue(decision.requeue_after))
}

/// How long a reconcile waits for the caches to show its own writes.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the caches show this reconcile's writes (or a short timeout), so the
/// reconcile that the next event triggers decides from them instead of writing them again.
async fn settle(term: &Term, writes: impl Iterator<Item = Written>) {
    let writes: Vec<Written> = writes.collect();
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    while !writes.iter().all(|w| term.shows(w)) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn written_pod(pod: &Pod) -> Option<Written> {
    resource_version(pod).map(|rv| Written::Pod(ObjectRef::from_obj(pod), rv))
}

/// Creates or repairs the worker's Service; unchanged ones cost nothing.
async fn ensure_service(
    ctx: &Context,
    term: &Term,
    worker: &RbeeWorker,
    namespace: &str,
) -> Result<Option<Written>> {
    let desired = build_service(worker)?;
    let name = service_name(worker);
    let live = term.services.get(&ObjectRef::new(&name).within(namespace));
    if live.is_some_and(|l| service_up_to_date(&l, &desired)) {
        return Ok(None);
    }
    let applied = Api::<Service>::namespaced(ctx.client.clone(), namespace)
        .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired))
        .await?;
    Ok(resource_version(&applied).map(|rv| Written::Service(ObjectRef::from_obj(&applied), rv)))
}

/// Sets the pod's heartbeat readiness gate condition when its status or reason changes.
async fn set_gate(pods: &Api<Pod>, pod: &Pod, gate: &GateCondition) -> Result<Option<Written>> {
    let current = gate_of_pod(pod);
    if gate.matches(current.as_ref()) {
        return Ok(None);
    }
    let since = match &current {
        Some(c) if c.open == gate.open => c.since,
        _ => Timestamp::now(),
    };
    let patch = serde_json::json!({
        // The UID makes the patch fail on a newer pod of the same name.
        "metadata": {"uid": pod.metadata.uid},
        "status": {"conditions": [{
            "type": READINESS_GATE,
            "status": if gate.open { "True" } else { "False" },
            "reason": gate.reason,
            "message": gate.message,
            "lastTransitionTime": Time(since),
        }]},
    });
    let name = pod.name_any();
    match pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
        Ok(patched) => Ok(written_pod(&patched)),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
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
        Ok(deleted) => Ok(deleted.left().as_ref().and_then(written_pod)),
        // Already gone, or a newer pod took the name: nothing left to delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn write_status(
    ctx: &Context,
    worker: &RbeeWorker,
    status: &rbee_api::RbeeWorkerStatus,
    force: bool,
) -> Result<Option<Written>> {
    if !force && !needs_write(worker.status.as_ref(), status, ctx.settings.report_period) {
        return Ok(None);
    }
    let api: Api<RbeeWorker> =
        Api::namespaced(ctx.client.clone(), &worker.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": RbeeWorker::api_version(&()),
        "kind": RbeeWorker::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            &worker.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.metrics.status_written();
    Ok(resource_version(&written).map(|rv| Written::Worker(ObjectRef::from_obj(&written), rv)))
}

async fn publish(ctx: Arc<Context>, worker: Arc<RbeeWorker>, notices: Vec<Notice>) {
    let reference = worker.object_ref(&());
    for n in notices {
        let event = Event {
            type_: if n.warning { EventType::Warning } else { EventType::Normal },
            reason: n.reason.into(),
            note: Some(n.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(worker = %worker.name_any(), error = %e, "cannot publish event");
        }
    }
}

fn error_policy(worker: Arc<RbeeWorker>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.category());
    tracing::warn!(worker = %worker.name_any(), namespace = worker.namespace().unwrap_or_default(), error = %error, "reconcile failed");
    if error.is_transient() {
        let jitter = Duration::from_millis(u64::from(rand::random::<u16>() % 2000));
        Action::requeue(Duration::from_secs(2) + jitter)
    } else {
        Action::await_change()
    }
}

/// Drops metrics and heartbeat records of workers that no longer exist.
pub async fn forget_deleted(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        let Some(term) = ctx.term() else { continue };
        for labels in ctx.metrics.known_workers() {
            let present = term
                .workers
                .get(&ObjectRef::new(&labels.worker).within(&labels.namespace))
                .is_some();
            if !present {
                ctx.metrics.forget_worker(&labels);
                ctx.heartbeats.forget(&worker_key(&labels.namespace, &labels.worker));
            }
        }
    }
}
