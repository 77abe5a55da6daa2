//! The real `rbee-operator` binary as a child process, scoped to one test namespace.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};

/// A running operator.
pub struct OperatorProcess {
    child: Option<Child>,
    /// Where /metrics, /healthz and /readyz answer.
    pub metrics_addr: SocketAddr,
    /// Where POST /v1/heartbeat answers.
    pub heartbeat_addr: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The chart's ServiceAccount (and RBAC object names) for a release in a test namespace;
/// unique per namespace because the ClusterRole and its binding are cluster-scoped.
pub fn operator_service_account(namespace: &str) -> String {
    format!("op-{namespace}").chars().take(63).collect()
}

/// Renders the chart's ServiceAccount and RBAC for a release in `namespace` (scoped to it),
/// applies them as admin, and writes a kubeconfig holding a token of that ServiceAccount.
pub fn chart_rbac_kubeconfig(namespace: &str) -> anyhow::Result<PathBuf> {
    let env = crate::testenv()?;
    let chart = crate::repo_root().join("charts/rbee-operator");
    let rendered = Command::new(env.bin_dir.join("helm"))
        .args(["template", namespace, &chart.to_string_lossy(), "--namespace", namespace])
        .args(["--set", &format!("fullnameOverride={}", operator_service_account(namespace))])
        .args([
            "--set",
            "scope.namespaced=true",
            "--set",
            &format!("scope.watchNamespace={namespace}"),
        ])
        .args([
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
        ])
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .context("running helm template")?;
    if !rendered.status.success() {
        bail!("helm template failed: {}", String::from_utf8_lossy(&rendered.stderr));
    }
    let yaml = String::from_utf8_lossy(&rendered.stdout).to_string();
    let applied = crate::kubectl_with_stdin(&["apply", "-n", namespace, "-f", "-"], Some(&yaml))?;
    if !applied.status.success() {
        bail!("applying the chart's RBAC failed: {}", String::from_utf8_lossy(&applied.stderr));
    }
    let out = std::env::temp_dir().join(format!("rbee-operator-{namespace}.kubeconfig"));
    let minted = Command::new(crate::testenv_script())
        .args([
            "kubeconfig-for-sa",
            namespace,
            &operator_service_account(namespace),
            &out.to_string_lossy(),
        ])
        .output()
        .context("running testenv kubeconfig-for-sa")?;
    if !minted.status.success() {
        bail!("testenv kubeconfig-for-sa failed: {}", String::from_utf8_lossy(&minted.stderr));
    }
    Ok(out)
}

/// The built operator binary next to the test binary's profile directory.
pub fn operator_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("RBEE_OPERATOR_BIN") {
        return Ok(PathBuf::from(p));
    }
    // Test binaries live in <profile>/deps, other binaries in <profile>.
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> =
        exe.ancestors().skip(1).take(2).map(|d| d.join("rbee-operator")).collect();
    let bin = candidates.iter().find(|p| p.exists()).cloned().with_context(|| {
        format!("rbee-operator is missing next to {}: build it first with `cargo build --release -p rbee-operator` (tests/check does)", exe.display())
    })?;
    Ok(bin)
}

impl OperatorProcess {
    /// Starts an operator that watches only `namespace` and elects its leader there, with
    /// the RBAC of the Helm chart (not the admin certificate), so a missing permission fails
    /// the test that needs it.
    pub fn start(namespace: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let kubeconfig = chart_rbac_kubeconfig(namespace)?;
        Self::start_with_kubeconfig(namespace, &kubeconfig, extra)
    }

    /// As [`start`](Self::start), with another identity (kubeconfig).
    pub fn start_with_kubeconfig(
        namespace: &str,
        kubeconfig: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let metrics_addr = free_port()?;
        let heartbeat_addr = free_port()?;
        let log = std::env::temp_dir()
            .join(format!("rbee-operator-{namespace}-{}.log", heartbeat_addr.port()));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(operator_binary()?)
            .arg(format!("--watch-namespace={namespace}"))
            .arg(format!("--leader-election-namespace={namespace}"))
            .arg(format!("--metrics-bind-address={metrics_addr}"))
            .arg(format!("--heartbeat-bind-address={heartbeat_addr}"))
            .arg("--default-worker-image=rbee-dev/llm-worker-rbee:test")
            .arg("--lease-duration-seconds=4")
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,rbee_operator=debug,kube=warn")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting rbee-operator")?;
        Ok(Self { child: Some(child), metrics_addr, heartbeat_addr, log })
    }

    /// The operator's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The heartbeat URL.
    pub fn heartbeat_url(&self) -> String {
        format!("http://{}{}", self.heartbeat_addr, rbee_api::names::HEARTBEAT_PATH)
    }

    /// Scrapes /metrics.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("http://{}/metrics", self.metrics_addr)).await?.text().await?)
    }

    /// The value of one sample line of /metrics (`name{labels}` exactly as printed).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("operator not running")?;
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status()?;
        Ok(c.wait()?)
    }

    /// The log so far, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- operator log {} ----\n{}", self.log.display(), self.log_text());
        }
        self.kill();
    }
}
