//! rbee-operator: reconciles RbeeWorkers into worker pods.
use clap::Parser;

/// Kubernetes operator for fleets of LLM inference workers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("the reconciler is not built yet")
}
