//! What exists only while this process leads: the caches of one term, its heartbeat records
//! and the trigger that asks the controller for a reconcile.

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use rbee_api::RbeeWorker;
use tokio::sync::{mpsc, watch};

use crate::leader::Term;
use crate::record::HeartbeatStore;

/// The state of one leadership term.
pub struct TermState {
    /// The term.
    pub term: Term,
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
    /// Heartbeats accepted in this term (a new leader starts with none).
    pub heartbeats: HeartbeatStore,
}

/// The state of the running term, published by the controller for the heartbeat endpoint.
pub type CurrentTerm = watch::Receiver<Option<std::sync::Arc<TermState>>>;

impl TermState {
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

impl Written {
    /// A written pod.
    pub fn pod(pod: &Pod) -> Option<Self> {
        resource_version(pod).map(|rv| Self::Pod(ObjectRef::from_obj(pod), rv))
    }

    /// A written Service.
    pub fn service(service: &Service) -> Option<Self> {
        resource_version(service).map(|rv| Self::Service(ObjectRef::from_obj(service), rv))
    }

    /// A written RbeeWorker status.
    pub fn worker(worker: &RbeeWorker) -> Option<Self> {
        resource_version(worker).map(|rv| Self::Worker(ObjectRef::from_obj(worker), rv))
    }
}

/// The resourceVersion of an object as a number: etcd revisions, comparable since Kubernetes
/// 1.35 and in practice long before.
pub fn resource_version<K: Resource>(object: &K) -> Option<u64> {
    object.meta().resource_version.as_deref()?.parse().ok()
}
