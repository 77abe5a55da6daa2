//! The reconciler: for each leadership term a controller over that term's caches, and each
//! reconcile a short driver over observe (the caches) → plan (pure) → apply (the API).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use rbee_api::RbeeWorker;
use rbee_api::names::{LABEL_WORKER, MANAGED_BY};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::apply::{self, publish};
use crate::context::{Context, Shared};
use crate::error::{Call, Error, Result};
use crate::leader::{Leadership, Term};
use crate::metrics::WorkerLabels;
use crate::plan::{self, Inputs, Notice};
use crate::pod::{build_pod, pod_name, pod_template_hash};
use crate::record::{HeartbeatRecord, HeartbeatStore, worker_key};
use crate::service::routes_to;
use crate::term::TermState;

/// Scope of the controller.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Only this namespace, or all.
    pub namespace: Option<String>,
    /// Reconciliations running at once.
    pub concurrency: u16,
}

fn api<K>(shared: &Shared, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match &scope.namespace {
        Some(ns) => Api::namespaced(shared.client.clone(), ns),
        None => Api::all(shared.client.clone()),
    }
}

/// Runs a controller for every term `leadership` publishes, publishing each term's state on
/// `current`, until no more terms come.
pub async fn run(
    shared: Shared,
    scope: Scope,
    mut leadership: Leadership,
    current: watch::Sender<Option<Arc<TermState>>>,
) {
    while let Some(term) = leadership.next_term().await {
        run_term(&shared, &scope, leadership.clone(), term, &current).await;
    }
}

/// Runs the controller of one term until the term ends and its reconciles have finished.
async fn run_term(
    shared: &Shared,
    scope: &Scope,
    leadership: Leadership,
    term: Term,
    current: &watch::Sender<Option<Arc<TermState>>>,
) {
    let (trigger, triggered) = mpsc::channel(4096);
    let mut ended = leadership.clone();
    let (controller, caches) = controller(shared, scope, triggered);
    let controller = controller.graceful_shutdown_on(async move { ended.ended(&term).await });
    let state = Arc::new(TermState {
        term,
        workers: controller.store(),
        pods: caches.pods,
        services: caches.services,
        slices: caches.slices,
        trigger,
        heartbeats: HeartbeatStore::default(),
    });
    current.send_replace(Some(state.clone()));
    let ctx = Arc::new(Context { shared: shared.clone(), leadership, term: state });
    let namespace = scope.namespace.as_deref().unwrap_or("<all>");
    tracing::info!(namespace, term = term.number, "reconciling RbeeWorkers");
    let reconciles =
        controller.run(reconcile, error_policy, ctx.clone()).for_each(|result| async {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile loop");
            }
        });
    tokio::select! {
        () = reconciles => {}
        () = forget_deleted(&ctx) => {}
    }
    current.send_replace(None);
}

/// The caches a controller fills besides its RbeeWorkers.
struct Caches {
    pods: reflector::Store<Pod>,
    services: reflector::Store<Service>,
    slices: reflector::Store<EndpointSlice>,
}

/// A controller of RbeeWorkers that owns their pods and Services, watches their
/// EndpointSlices, and reconciles a worker whenever `triggered` names it.
fn controller(
    shared: &Shared,
    scope: &Scope,
    triggered: mpsc::Receiver<ObjectRef<RbeeWorker>>,
) -> (Controller<RbeeWorker>, Caches) {
    let (workers, worker_writer) = reflector::store();
    // Status changes (most of them this operator's own writes) need no reconcile: heartbeats
    // trigger theirs through `trigger`, and every other wait comes back as a requeue.
    let worker_changes = reflector::reflector(
        worker_writer,
        watcher(api::<RbeeWorker>(shared, scope), watcher::Config::default())
            .modify(|w| w.meta_mut().managed_fields = None),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::generation, Default::default());
    let (pods, pod_stream) = cached(api(shared, scope), prune_pod);
    let (services, service_stream) = cached(api(shared, scope), |_: &mut Service| {});
    let (slices, slice_stream) = cached(api(shared, scope), |_: &mut EndpointSlice| {});
    let controller = Controller::for_stream(worker_changes, workers)
        .with_config(kube::runtime::controller::Config::default().concurrency(scope.concurrency))
        .owns_stream(pod_stream)
        .owns_stream(service_stream)
        .watches_stream(slice_stream, |slice| {
            let worker = slice.labels().get(LABEL_WORKER)?;
            Some(ObjectRef::new(worker).within(&slice.namespace()?))
        })
        .reconcile_on(ReceiverStream::new(triggered));
    (controller, Caches { pods, services, slices })
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

/// What a reconcile reads from its term's caches.
struct Look {
    pod: Option<Arc<Pod>>,
    desired: Pod,
    desired_hash: String,
    heartbeat: Option<HeartbeatRecord>,
    endpoints_serving: bool,
}

impl Look {
    fn at(term: &TermState, worker: &RbeeWorker, desired: Pod, namespace: &str) -> Self {
        let pod = term.pods.get(&ObjectRef::new(&pod_name(worker)).within(namespace));
        let desired_hash = pod_template_hash(&desired).unwrap_or_default().to_string();
        // Only a pod about to be replaced needs its endpoints looked up.
        let replaced_uid = pod
            .as_ref()
            .filter(|p| pod_template_hash(p) != Some(desired_hash.as_str()))
            .and_then(|p| p.metadata.uid.clone());
        let endpoints_serving =
            replaced_uid.is_some_and(|uid| routes_to(&term.slices.state(), worker, &uid));
        let heartbeat = term.heartbeats.get(&worker_key(namespace, &worker.name_any()));
        Self { pod, desired, desired_hash, heartbeat, endpoints_serving }
    }

    fn inputs<'a>(&'a self, worker: &'a RbeeWorker, leader_since: Timestamp) -> Inputs<'a> {
        Inputs {
            worker,
            pod: self.pod.as_deref(),
            desired_hash: &self.desired_hash,
            heartbeat: self.heartbeat.as_ref(),
            leader_since,
            now: Timestamp::now(),
            jitter: rand::random::<f64>(),
            endpoints_serving: self.endpoints_serving,
        }
    }
}

#[tracing::instrument(skip_all, fields(namespace = worker.namespace(), worker = worker.name_any()))]
async fn reconcile(worker: Arc<RbeeWorker>, ctx: Arc<Context>) -> Result<Action> {
    let metrics = &ctx.shared.metrics;
    let _timer = metrics.reconcile_timer();
    if worker.meta().deletion_timestamp.is_some() || !ctx.leads() {
        return Ok(Action::await_change());
    }
    let namespace =
        worker.namespace().ok_or_else(|| Error::InvalidWorker("no namespace".into()))?;
    // A new term's caches fill while the first reconciles run: deciding from an empty pod
    // cache would see every pod as missing.
    if !ctx.term.caches_ready() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let desired = build_pod(&worker, &ctx.shared.settings.pod)?;
    let look = Look::at(&ctx.term, &worker, desired, &namespace);
    let plan = plan::plan(&look.inputs(&worker, ctx.term.term.since));
    if !apply::apply(&ctx, &worker, look.pod.as_deref(), &look.desired, &plan).await? {
        return Ok(Action::await_change());
    }
    let labels = WorkerLabels { namespace, worker: worker.name_any() };
    let term = &ctx.term.term;
    if let Some(reason) = plan.restarted {
        metrics.workers.restarted(term, &labels, reason);
    }
    metrics.workers.observe(term, &labels, &plan.status);
    if !plan.notices.is_empty() {
        // Events are best effort: they never hold up the next reconcile.
        tokio::spawn(publish(ctx.shared.recorder.clone(), worker.clone(), plan.notices));
    }
    Ok(Action::requeue(plan.requeue_after))
}

fn error_policy(worker: Arc<RbeeWorker>, error: &Error, ctx: Arc<Context>) -> Action {
    let call = error.call().map_or("none", Call::as_str);
    ctx.shared.metrics.reconcile_failed(error.category(), call);
    tracing::warn!(
        namespace = worker.namespace(),
        worker = worker.name_any(),
        call,
        category = error.category(),
        error = %error,
        "reconcile failed"
    );
    let notice = Notice::warning(error.event_reason(), error.to_string());
    tokio::spawn(publish(ctx.shared.recorder.clone(), worker, vec![notice]));
    if error.is_transient() {
        let jitter = Duration::from_millis(u64::from(rand::random::<u16>() % 2000));
        Action::requeue(Duration::from_secs(2) + jitter)
    } else {
        Action::await_change()
    }
}

/// Drops the metrics and heartbeat records of workers that no longer exist, every 15 s.
async fn forget_deleted(ctx: &Context) {
    let metrics = &ctx.shared.metrics.workers;
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tick.tick().await;
        for labels in metrics.known() {
            let key = ObjectRef::new(&labels.worker).within(&labels.namespace);
            if ctx.term.workers.get(&key).is_none() {
                metrics.forget(&labels);
                ctx.term.heartbeats.forget(&worker_key(&labels.namespace, &labels.worker));
            }
        }
    }
}
