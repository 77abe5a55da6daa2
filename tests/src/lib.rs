//! Test support for the cluster tests: a client for the local control plane
//! (tests/testenv, started on demand), temporary namespaces, and waits with deadlines that
//! print the object when they fail.

pub mod bench;
pub mod node;
pub mod operator;
pub mod runner;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Root of the repository.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The testenv script.
pub fn testenv_script() -> PathBuf {
    repo_root().join("tests/testenv/testenv")
}

/// What `testenv env` exports: the kubeconfig and the bin dir with kubectl and helm.
#[derive(Debug, Clone)]
pub struct TestEnv {
    /// Admin kubeconfig of the local control plane.
    pub kubeconfig: PathBuf,
    /// Directory holding kubectl, helm and the control-plane binaries.
    pub bin_dir: PathBuf,
}

static TESTENV: OnceLock<Result<TestEnv, String>> = OnceLock::new();

/// Brings the local control plane up (a no-op when it already runs) and returns where it is.
pub fn testenv() -> anyhow::Result<TestEnv> {
    TESTENV
        .get_or_init(|| start_testenv().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn start_testenv() -> anyhow::Result<TestEnv> {
    let script = testenv_script();
    let up = Command::new(&script).arg("up").status().context("running testenv up")?;
    if !up.success() {
        bail!("`{} up` failed: {up}", script.display());
    }
    let out = Command::new(&script).arg("env").output().context("running testenv env")?;
    if !out.status.success() {
        bail!("`{} env` failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    parse_env(&String::from_utf8_lossy(&out.stdout))
}

fn parse_env(text: &str) -> anyhow::Result<TestEnv> {
    let mut kubeconfig = None;
    let mut bin_dir = None;
    for line in text.lines() {
        let line = line.trim().trim_start_matches("export ");
        if let Some(v) = line.strip_prefix("KUBECONFIG=") {
            kubeconfig = Some(PathBuf::from(unquote(v)));
        } else if let Some(v) = line.strip_prefix("PATH=") {
            let first = unquote(v).split(':').next().unwrap_or_default().to_string();
            bin_dir = Some(PathBuf::from(first));
        }
    }
    Ok(TestEnv {
        kubeconfig: kubeconfig.context("testenv env printed no KUBECONFIG")?,
        bin_dir: bin_dir.context("testenv env printed no PATH")?,
    })
}

fn unquote(v: &str) -> &str {
    v.trim_matches(|c| c == '"' || c == '\'')
}

/// A kube client for the local control plane, as cluster admin.
pub async fn client() -> anyhow::Result<Client> {
    let env = testenv()?;
    client_for(&env.kubeconfig).await
}

/// A kube client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Runs the testenv's kubectl (not whatever kubectl is on PATH) and returns its output.
pub fn kubectl(args: &[&str]) -> anyhow::Result<std::process::Output> {
    kubectl_with_stdin(args, None)
}

/// Runs the testenv's kubectl with `stdin` piped in.
pub fn kubectl_with_stdin(
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<std::process::Output> {
    use std::io::Write;
    let env = testenv()?;
    let mut cmd = Command::new(env.bin_dir.join("kubectl"));
    cmd.args(args).env("KUBECONFIG", &env.kubeconfig);
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("starting kubectl")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

/// A namespace that exists for one test and is deleted afterwards.
pub struct TempNamespace {
    /// Its name.
    pub name: String,
    client: Client,
}

impl TempNamespace {
    /// Creates `rbee-<prefix>-<random>` with the given labels.
    pub async fn create(
        client: &Client,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let suffix = format!("{:08x}", rand_u32());
        let name = format!("rbee-{prefix}-{suffix}");
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels =
            Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
        Ok(Self { name, client: client.clone() })
    }

    /// Deletes the namespace (without waiting for its contents to go).
    pub async fn delete(self) -> anyhow::Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await?;
        Ok(())
    }
}

/// Runs `body` in a fresh namespace and deletes the namespace afterwards, also on failure.
pub async fn with_temp_namespace<F, Fut, T>(prefix: &str, body: F) -> anyhow::Result<T>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let client = client().await?;
    let ns = TempNamespace::create(&client, prefix, &[]).await?;
    let result = body(client, ns.name.clone()).await;
    let deleted = ns.delete().await;
    let value = result?;
    deleted?;
    Ok(value)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// Polls `name` in `api` until `ready` holds, or fails after `timeout` printing the object
/// as it last was.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    ready: impl Fn(&K) -> bool,
) -> anyhow::Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match api.get_opt(name).await {
            Ok(Some(obj)) => {
                if ready(&obj) {
                    return Ok(obj);
                }
                last = Some(obj);
            }
            Ok(None) => last = None,
            Err(e) if Instant::now() < deadline => eprintln!("wait_for {name}: {e}"),
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            let dump = last
                .map(|o| serde_yaml::to_string(&o).unwrap_or_else(|e| format!("<{e}>")))
                .unwrap_or_else(|| "<not found>".into());
            bail!(
                "timed out after {timeout:?} waiting for {name} to be {what}; last seen:\n{dump}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls an arbitrary async check until it returns `Some`, or fails after `timeout` with the
/// last diagnostic it gave.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(why) if Instant::now() >= deadline => {
                bail!("timed out after {timeout:?} waiting for {what}; last: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls an async check for the whole of `window` and fails at the first poll where it does
/// not hold, with what it said: proves that something stays true, not that it was once.
pub async fn holds_for<F, Fut>(window: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let mut polls = 0;
    loop {
        if let Err(why) = check().await {
            bail!("{what} stopped holding after {:?} ({polls} polls): {why}", start.elapsed());
        }
        polls += 1;
        if start.elapsed() >= window {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An RbeeWorker that runs on the fake GPU node and is never restarted for lack of
/// heartbeats; `spec` overrides top-level spec fields.
pub fn kwok_worker(name: &str, spec: serde_json::Value) -> rbee_api::RbeeWorker {
    let mut base = serde_json::json!({
        "backend": "cuda", "gpus": 1,
        "model": {"path": "/models/m.gguf"},
        "nodeSelector": {"kubernetes.io/hostname": "rbee-gpu-0"},
        "heartbeat": {"intervalSeconds": 30, "staleAfterSeconds": 3600},
        "restartPolicy": {"mode": "Never"}
    });
    if let (Some(b), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "rbee.dev/v1alpha1", "kind": "RbeeWorker",
        "metadata": {"name": name}, "spec": base
    }))
    .expect("valid worker")
}

/// A service-account token of the namespace's `default` ServiceAccount, bound to `pod`, with
/// the operator's audience: what kubelet projects into a worker pod.
pub async fn bound_token(
    client: &Client,
    namespace: &str,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::{
        BoundObjectReference, TokenRequest, TokenRequestSpec,
    };
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    wait_for(&sas, "default", Duration::from_secs(30), "created", |_| true).await?;
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![rbee_api::names::TOKEN_AUDIENCE.into()],
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let resp = sas.create_token_request("default", &PostParams::default(), &req).await?;
    resp.status.map(|s| s.token).filter(|t| !t.is_empty()).context("TokenRequest returned no token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_testenv_env_output() {
        let env = parse_env("export KUBECONFIG=\"/s/kubeconfig\"\nexport PATH=\"/c/bin:$PATH\"\n")
            .expect("parses");
        assert_eq!(env.kubeconfig, PathBuf::from("/s/kubeconfig"));
        assert_eq!(env.bin_dir, PathBuf::from("/c/bin"));
    }
}
