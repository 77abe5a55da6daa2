//! The headless Service of a worker, purely: its stable DNS name resolves to the pod's IP
//! while the pod is Ready, that is while its heartbeat readiness gate is open.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use rbee_api::RbeeWorker;
use rbee_api::names::{self, WORKER_HTTP_PORT};

use crate::error::{Error, Result};
use crate::pod::worker_labels;

/// The Service is named after the worker (the CRD admits only names valid for both).
pub fn service_name(worker: &RbeeWorker) -> String {
    worker.name_any()
}

/// `http://<worker>.<namespace>.svc:8080`, the worker's stable address in the cluster.
pub fn endpoint(worker: &RbeeWorker) -> Option<String> {
    let namespace = worker.namespace()?;
    Some(format!("http://{}.{namespace}.svc:{WORKER_HTTP_PORT}", service_name(worker)))
}

/// The desired Service.
pub fn build_service(worker: &RbeeWorker) -> Result<Service> {
    let owner = worker
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidWorker("RbeeWorker has no uid yet".into()))?;
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(service_name(worker)),
            namespace: worker.namespace(),
            labels: Some(worker_labels(worker)),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([(names::LABEL_WORKER.into(), worker.name_any())])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(WORKER_HTTP_PORT),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// Whether a live Service already has what the desired one sets.
pub fn up_to_date(live: &Service, desired: &Service) -> bool {
    let labels_kept = desired.labels().iter().all(|(k, v)| live.labels().get(k) == Some(v));
    let (Some(l), Some(d)) = (&live.spec, &desired.spec) else { return false };
    labels_kept
        && l.selector == d.selector
        && l.cluster_ip == d.cluster_ip
        && port_keys(l) == port_keys(d)
}

fn port_keys(spec: &ServiceSpec) -> Vec<(Option<&str>, i32, Option<&IntOrString>)> {
    spec.ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.port, p.target_port.as_ref()))
        .collect()
}

/// Whether an EndpointSlice of the worker's Service lists the pod `pod_uid` as ready.
pub fn routes_to(slices: &[Arc<EndpointSlice>], worker: &RbeeWorker, pod_uid: &str) -> bool {
    let of_worker = |s: &&Arc<EndpointSlice>| {
        s.namespace() == worker.namespace()
            && s.labels().get(names::LABEL_WORKER) == Some(&worker.name_any())
    };
    slices.iter().filter(of_worker).flat_map(|s| &s.endpoints).any(|e| {
        e.target_ref.as_ref().and_then(|r| r.uid.as_deref()) == Some(pod_uid)
            && e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)
    })
}
