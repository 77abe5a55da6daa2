//! State shared by the reconciler and the HTTP servers.

use std::sync::RwLock;

use futures::FutureExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};
use rbee_api::RbeeWorker;
use tokio::sync::mpsc;

use crate::heartbeat::auth::TokenReviewer;
use crate::heartbeat::record::HeartbeatStore;
use crate::metrics::Metrics;
use crate::pod::PodSettings;

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Inputs of the pod builder.
    pub pod: PodSettings,
    /// A status that only refreshes numbers is written at most this often.
    pub report_period: SignedDuration,
}

/// What exists only while this process leads.
#[derive(Clone)]
pub struct Term {
    /// When leadership was gained.
    pub since: Timestamp,
    /// Cache of every RbeeWorker in scope.
    pub workers: Store<RbeeWorker>,
    /// Cache of every worker pod in scope.
    pub pods: Store<Pod>,
    /// Cache of every worker Service in scope.
    pub services: Store<Service>,
    /// Cache of the EndpointSlices of worker Services.
    pub slices: Store<EndpointSlice>,
    /// Asks the controller to reconcile a worker now.
    pub trigger: mpsc::Sender<ObjectRef<RbeeWorker>>,
}

impl Term {
    /// Whether every cache has its first full list (a new term's caches fill while its first
    /// reconciles and heartbeats arrive).
    pub fn caches_ready(&self) -> bool {
        fn synced<K>(store: &Store<K>) -> bool
        where
            K: kube::runtime::reflector::Lookup + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok())
        }
        synced(&self.workers)
            && synced(&self.pods)
            && synced(&self.services)
            && synced(&self.slices)
    }
}

/// An object this operator just wrote, at the resourceVersion the API server answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// An RbeeWorker's status.
    Worker(ObjectRef<RbeeWorker>, u64),
    /// A worker pod.
    Pod(ObjectRef<Pod>, u64),
    /// A worker Service.
    Service(ObjectRef<Service>, u64),
}

/// The resourceVersion of an object as a number: etcd revisions, comparable since Kubernetes
/// 1.35 and in practice long before.
pub fn resource_version<K: Resource>(object: &K) -> Option<u64> {
    object.meta().resource_version.as_deref()?.parse().ok()
}

impl Term {
    /// Whether the caches show `write` (or something newer).
    pub fn shows(&self, write: &Written) -> bool {
        fn at_least<K: Resource>(cached: Option<std::sync::Arc<K>>, rv: u64) -> bool {
            cached.and_then(|o| resource_version(o.as_ref())).is_some_and(|seen| seen >= rv)
        }
        match write {
            Written::Worker(r, rv) => at_least(self.workers.get(r), *rv),
            Written::Pod(r, rv) => at_least(self.pods.get(r), *rv),
            Written::Service(r, rv) => at_least(self.services.get(r), *rv),
        }
    }
}

/// Shared by controller and servers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Metrics,
    /// One Event recorder for everything.
    pub recorder: Recorder,
    /// Heartbeats received while leading.
    pub heartbeats: HeartbeatStore,
    /// TokenReview cache.
    pub reviewer: TokenReviewer,
    term: RwLock<Option<Term>>,
}

impl Context {
    /// A context.
    pub fn new(client: Client, settings: Settings, recorder: Recorder) -> Self {
        Self {
            reviewer: TokenReviewer::new(client.clone()),
            client,
            settings,
            metrics: Metrics::new(),
            recorder,
            heartbeats: HeartbeatStore::default(),
            term: RwLock::new(None),
        }
    }

    /// The current term, if this process leads.
    pub fn term(&self) -> Option<Term> {
        self.term.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Starts (Some) or ends (None) a term.
    pub fn set_term(&self, term: Option<Term>) {
        let leading = term.is_some();
        *self.term.write().unwrap_or_else(std::sync::PoisonError::into_inner) = term;
        if !leading {
            self.heartbeats.clear();
        }
        self.metrics.set_leader(leading);
    }
}
