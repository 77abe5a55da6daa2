//! llm-worker-rbee: the inference server of rbee worker pods.

use clap::Parser;
use llm_worker_rbee::cli::Args;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(threads) = args.threads {
        apply_thread_count(threads)?;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(steps) = args.verify_against_cpu {
        return llm_worker_rbee::parity::run(&args, steps);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(llm_worker_rbee::server::run(args))
}

/// candle sizes its CPU thread pools from `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS` when
/// they are first used; setting them from inside the process would need `unsafe`
/// (`std::env::set_var`), so the worker re-executes itself once with them set.
#[cfg(unix)]
fn apply_thread_count(threads: usize) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let want = threads.to_string();
    let is_set = |name: &str| std::env::var(name).is_ok_and(|v| v == want);
    if is_set("CANDLE_NUM_THREADS") && is_set("RAYON_NUM_THREADS") {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env("CANDLE_NUM_THREADS", &want)
        .env("RAYON_NUM_THREADS", &want)
        .exec();
    anyhow::bail!("cannot re-execute {} with {threads} compute threads: {err}", exe.display())
}

#[cfg(not(unix))]
fn apply_thread_count(_threads: usize) -> anyhow::Result<()> {
    Ok(())
}
