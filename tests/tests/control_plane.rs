//! The local control plane is a real Kubernetes: version, scheduling onto the fake GPU node,
//! garbage collection, and bound service-account tokens with TokenReview.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{
    BoundObjectReference, TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams};
use rbee_testkit::{kubectl, wait_for, with_temp_namespace};

fn pod(name: &str, gpus: Option<&str>) -> Pod {
    let resources = gpus.map(|n| serde_json::json!({"limits": {"nvidia.com/gpu": n}}));
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "c", "image": "registry.invalid/none:1", "resources": resources.unwrap_or_default()}],
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "nodeSelector": {"nvidia.com/gpu.present": "true"}
        }
    }))
    .expect("valid pod")
}

#[tokio::test]
async fn kubectl_reports_a_1_34_server() -> anyhow::Result<()> {
    let out = kubectl(&["version", "-o", "json"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["serverVersion"]["major"], "1");
    assert_eq!(v["serverVersion"]["minor"], "34", "{v}");
    Ok(())
}

#[tokio::test]
async fn crd_is_installed_and_explained() -> anyhow::Result<()> {
    let out = kubectl(&["get", "rbeeworkers", "-A"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl(&["explain", "rbeeworker.spec.heartbeat"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("intervalSeconds"), "{text}");
    assert!(text.contains("Seconds between two heartbeats"), "{text}");
    Ok(())
}

#[tokio::test]
async fn gpu_pod_is_scheduled_to_the_fake_gpu_node_and_runs() -> anyhow::Result<()> {
    with_temp_namespace("gpu", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        pods.create(&PostParams::default(), &pod("gpu-pod", Some("1"))).await?;
        let running = wait_for(&pods, "gpu-pod", Duration::from_secs(60), "Running", |p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .await?;
        let node = running.spec.and_then(|s| s.node_name).unwrap_or_default();
        assert_eq!(node, "rbee-gpu-0");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn objects_of_a_deleted_owner_are_garbage_collected() -> anyhow::Result<()> {
    with_temp_namespace("gc", |client, ns| async move {
        let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
        let mut owner = ConfigMap::default();
        owner.metadata.name = Some("owner".into());
        let owner = cms.create(&PostParams::default(), &owner).await?;
        let mut child = ConfigMap::default();
        child.metadata.name = Some("child".into());
        child.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().unwrap_or_default(),
            ..Default::default()
        }]);
        cms.create(&PostParams::default(), &child).await?;
        cms.delete("owner", &DeleteParams::background()).await?;
        rbee_testkit::eventually(Duration::from_secs(60), "child to be garbage-collected", || {
            let cms = cms.clone();
            async move {
                match cms.get_opt("child").await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err("child still exists".to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await
    })
    .await
}

#[tokio::test]
async fn bound_token_passes_token_review_with_pod_identity() -> anyhow::Result<()> {
    with_temp_namespace("token", |client, ns| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let created = pods.create(&PostParams::default(), &pod("tok", None)).await?;
        let uid = created.metadata.uid.clone().unwrap_or_default();
        // The namespace's default ServiceAccount is created by the controller manager.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        wait_for(&sas, "default", Duration::from_secs(30), "created", |_| true).await?;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec!["rbee-operator".into()],
                expiration_seconds: Some(600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some("tok".into()),
                    uid: Some(uid.clone()),
                }),
            },
            ..Default::default()
        };
        let token = sas
            .create_token_request("default", &PostParams::default(), &request)
            .await?
            .status
            .map(|s| s.token)
            .unwrap_or_default();
        assert!(!token.is_empty(), "TokenRequest returned no token");

        let reviews: Api<TokenReview> = Api::all(client);
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token),
                audiences: Some(vec!["rbee-operator".into()]),
            },
            ..Default::default()
        };
        let status =
            reviews.create(&PostParams::default(), &review).await?.status.unwrap_or_default();
        assert_eq!(status.authenticated, Some(true), "{status:?}");
        let user = status.user.unwrap_or_default();
        assert_eq!(
            user.username.as_deref(),
            Some(format!("system:serviceaccount:{ns}:default").as_str())
        );
        let extra = user.extra.unwrap_or_default();
        assert_eq!(
            extra.get("authentication.kubernetes.io/pod-name"),
            Some(&vec!["tok".to_string()])
        );
        assert_eq!(extra.get("authentication.kubernetes.io/pod-uid"), Some(&vec![uid]));
        Ok(())
    })
    .await
}
