//! The projected service-account tokens of a pod, minted through the TokenRequest API and
//! bound to the pod, as kubelet does.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use super::launch::TokenPlan;

/// Mints every token; says when the first needs a refresh (a day away when none).
pub(crate) async fn mint_all(
    accounts: &Api<ServiceAccount>,
    pod: &Pod,
    tokens: &[TokenPlan],
) -> Result<Instant, String> {
    let mut due = Instant::now() + Duration::from_secs(86400);
    for token in tokens {
        due = due.min(mint(accounts, pod, token).await?);
    }
    Ok(due)
}

/// Mints the token bound to the pod, writes it, and says when to refresh (80 % of life).
async fn mint(
    accounts: &Api<ServiceAccount>,
    pod: &Pod,
    token: &TokenPlan,
) -> Result<Instant, String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Some(token.audience.clone()).filter(|a| !a.is_empty()).into_iter().collect(),
            expiration_seconds: Some(token.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let issued = Instant::now();
    let answer = accounts
        .create_token_request(&token.service_account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("TokenRequest for serviceaccount {}: {e}", token.service_account))?;
    let jwt = answer.status.map(|s| s.token).ok_or("TokenRequest answered without a token")?;
    let tmp = token.file.with_extension("tmp");
    std::fs::write(&tmp, jwt).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &token.file)
        .map_err(|e| format!("writing {}: {e}", token.file.display()))?;
    let life = u64::try_from(token.expiration_seconds).unwrap_or(600);
    Ok(issued + Duration::from_millis(life * 800))
}
