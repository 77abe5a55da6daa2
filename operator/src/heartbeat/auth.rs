//! Who is speaking: the bearer token of a heartbeat, checked with a TokenReview (cached
//! until shortly before the token expires).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use rbee_api::names::TOKEN_AUDIENCE;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

const MAX_CACHE_TTL: Duration = Duration::from_secs(600);
const EXPIRY_MARGIN_SECS: i64 = 30;
const MAX_CACHE_ENTRIES: usize = 100_000;

/// The pod a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// Namespace of the service account (and so of the pod).
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// Name of the pod the token is bound to.
    pub pod_name: String,
    /// UID of that pod.
    pub pod_uid: String,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Invalid, expired, wrong audience, or bound to a pod that is gone.
    #[error("token rejected: {0}")]
    Rejected(String),
    /// A valid token that is not bound to a pod.
    #[error("token is not bound to a pod: mount a projected service-account token")]
    NotPodBound,
    /// The API server could not be asked.
    #[error("cannot review the token now: {0}")]
    Unavailable(String),
}

struct Cached {
    identity: PodIdentity,
    until: Instant,
}

/// TokenReview client with a cache keyed by the token's SHA-256.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl TokenReviewer {
    /// A reviewer using `client`.
    pub fn new(client: Client) -> Self {
        Self { api: Api::all(client), cache: Mutex::default() }
    }

    /// The pod the token is bound to, from the cache or a TokenReview.
    pub async fn review(&self, token: &str, metrics: &Metrics) -> Result<PodIdentity, AuthError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.lock().get(&key).filter(|c| c.until > Instant::now()) {
            return Ok(hit.identity.clone());
        }
        metrics.token_review();
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: Some(vec![TOKEN_AUDIENCE.into()]),
            },
            ..TokenReview::default()
        };
        let status = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
            .status
            .unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Rejected(
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if !status.audiences.unwrap_or_default().iter().any(|a| a == TOKEN_AUDIENCE) {
            return Err(AuthError::Rejected(format!("audience is not {TOKEN_AUDIENCE}")));
        }
        let identity = pod_identity(status.user.unwrap_or_default())?;
        let ttl = cache_ttl(token);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
        }
        cache.insert(key, Cached { identity: identity.clone(), until: Instant::now() + ttl });
        Ok(identity)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn pod_identity(
    user: k8s_openapi::api::authentication::v1::UserInfo,
) -> Result<PodIdentity, AuthError> {
    let username = user.username.unwrap_or_default();
    let mut parts =
        username.strip_prefix("system:serviceaccount:").unwrap_or_default().splitn(2, ':');
    let (Some(namespace), Some(service_account)) = (parts.next(), parts.next()) else {
        return Err(AuthError::Rejected(format!("{username} is not a service account")));
    };
    let extra = user.extra.unwrap_or_default();
    let one = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    match (
        one("authentication.kubernetes.io/pod-name"),
        one("authentication.kubernetes.io/pod-uid"),
    ) {
        (Some(pod_name), Some(pod_uid)) => Ok(PodIdentity {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod_name,
            pod_uid,
        }),
        _ => Err(AuthError::NotPodBound),
    }
}

/// Until shortly before the token's `exp` claim, at most [`MAX_CACHE_TTL`]. The claim is read
/// unverified: the review already proved the token; this only bounds how long we trust it.
fn cache_ttl(token: &str) -> Duration {
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|payload| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|claims| claims.get("exp").and_then(serde_json::Value::as_i64));
    let Some(exp) = exp else { return Duration::ZERO };
    let left = exp - jiff::Timestamp::now().as_second() - EXPIRY_MARGIN_SECS;
    Duration::from_secs(u64::try_from(left).unwrap_or(0)).min(MAX_CACHE_TTL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.sig", enc(&serde_json::json!({"alg": "RS256"})), enc(&claims))
    }

    #[test]
    fn cache_ttl_stops_before_expiry_and_is_capped() {
        let now = jiff::Timestamp::now().as_second();
        assert_eq!(cache_ttl(&jwt(serde_json::json!({"exp": now + 3600}))), MAX_CACHE_TTL);
        let short = cache_ttl(&jwt(serde_json::json!({"exp": now + 90})));
        assert!(short <= Duration::from_secs(60) && short >= Duration::from_secs(58), "{short:?}");
        assert_eq!(cache_ttl(&jwt(serde_json::json!({"exp": now + 10}))), Duration::ZERO);
        assert_eq!(cache_ttl("not a jwt"), Duration::ZERO);
    }

    #[test]
    fn identity_needs_a_pod_bound_service_account() {
        let user = |name: &str, pod: bool| k8s_openapi::api::authentication::v1::UserInfo {
            username: Some(name.into()),
            extra: pod.then(|| {
                [
                    ("authentication.kubernetes.io/pod-name".to_string(), vec!["p".to_string()]),
                    ("authentication.kubernetes.io/pod-uid".to_string(), vec!["u".to_string()]),
                ]
                .into()
            }),
            ..Default::default()
        };
        let id =
            pod_identity(user("system:serviceaccount:ns:default", true)).expect("pod identity");
        assert_eq!(
            (id.namespace.as_str(), id.pod_name.as_str(), id.pod_uid.as_str()),
            ("ns", "p", "u")
        );
        assert!(matches!(
            pod_identity(user("system:serviceaccount:ns:default", false)),
            Err(AuthError::NotPodBound)
        ));
        assert!(matches!(pod_identity(user("alice", true)), Err(AuthError::Rejected(_))));
    }
}
