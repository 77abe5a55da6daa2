//! rbee-local-kubelet: runs the pods bound to a local node (default `rbee-local-0`) as local
//! `llm-worker-rbee` processes, as a kubelet would, for end-to-end tests and the demo.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Parser;
use rbee_testkit::runner::{LOCAL_NODE, LocalKubelet, RunnerConfig, node_kubeconfig};

/// Plays the kubelet of a local node: each pod bound to it runs as a local process on its own
/// local IP (10.254.0.N on lo), with its projected service-account token minted through the
/// TokenRequest API and its status reported as the node. Stop it with Ctrl-C or SIGTERM: it
/// stops every process it started.
#[derive(Parser, Debug)]
#[command(name = "rbee-local-kubelet", version)]
struct Args {
    /// Node whose pods to run.
    #[arg(long, default_value = LOCAL_NODE)]
    node: String,
    /// Kubeconfig of the node identity (default: the testenv's node-<node>.kubeconfig).
    #[arg(long, env = "RBEE_LOCAL_KUBELET_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Only run pods of this namespace.
    #[arg(long)]
    namespace: Option<String>,
    /// The llm-worker-rbee binary (default: next to this binary).
    #[arg(long, value_name = "PATH")]
    worker_bin: Option<PathBuf>,
    /// Maps a PersistentVolumeClaim to a local directory; repeatable.
    #[arg(long = "volume", value_name = "CLAIM=DIR")]
    volumes: Vec<String>,
    /// Where per-pod directories (token, emptyDirs, worker.log, worker.pid) go.
    #[arg(long, value_name = "DIR", default_value_os_t = std::env::temp_dir().join("rbee-local-kubelet"))]
    state_dir: PathBuf,
}

fn parse_volumes(specs: &[String]) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut volumes = BTreeMap::new();
    for spec in specs {
        let Some((claim, dir)) = spec.split_once('=') else {
            bail!("--volume {spec}: expected CLAIM=DIR");
        };
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("--volume {spec}: directory {dir} does not exist"))?;
        volumes.insert(claim.to_string(), dir);
    }
    Ok(volumes)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let kubeconfig = args.kubeconfig.clone().unwrap_or_else(|| node_kubeconfig(&args.node));
    if !kubeconfig.exists() {
        bail!(
            "{} does not exist: start the local control plane with tests/testenv/testenv up, or pass --kubeconfig",
            kubeconfig.display()
        );
    }
    let worker_bin = match args.worker_bin.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .join("llm-worker-rbee"),
    };
    if !worker_bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p llm-worker-rbee` or pass --worker-bin",
            worker_bin.display()
        );
    }
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let config = RunnerConfig {
        node: args.node.clone(),
        namespace: args.namespace.clone(),
        worker_bin,
        volumes: parse_volumes(&args.volumes)?,
        state_dir: std::fs::canonicalize(&args.state_dir)?,
    };
    let client = rbee_testkit::client_for(&kubeconfig).await?;
    tracing::info!(node = %config.node, state_dir = %config.state_dir.display(), "running pods of the node");
    let kubelet = LocalKubelet::start(client, config);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping every pod process");
    kubelet.shutdown().await;
    Ok(())
}
