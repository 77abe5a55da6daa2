//! One pod's life on the local node: mint its token, start its process, probe it, report its
//! status, restart it by the pod's restartPolicy, and stop it when the pod is deleted.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use super::launch::{LaunchPlan, TokenPlan, plan_launch};
use super::status::{
    ContainerState, PodReport, Termination, now_rfc3339, readiness_gates_pass, status_patch,
};
use super::token;

/// Why a pod's process must stop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stop {
    /// Keep running.
    No,
    /// The pod has a deletionTimestamp: stop within the grace period, then delete it for good.
    Deleted { grace_seconds: u64 },
    /// The pod object is gone already.
    Gone,
    /// The runner shuts down: stop the process, leave the pod.
    Shutdown,
}

enum Outcome {
    Exited(Termination),
    Stopped(Stop),
}

/// Shared map `namespace/name` → pid of the running process.
pub(crate) type Pids = Arc<Mutex<HashMap<String, u32>>>;

/// The inputs of one pod's task.
pub(crate) struct PodTask {
    pub pods: Api<Pod>,
    pub accounts: Api<ServiceAccount>,
    pub pod: watch::Receiver<Pod>,
    pub stop: watch::Receiver<Stop>,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub worker_bin: PathBuf,
    pub volumes: BTreeMap<String, PathBuf>,
    pub pids: Pids,
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl PodTask {
    fn snapshot(&self) -> Pod {
        self.pod.borrow().clone()
    }

    fn key(&self) -> String {
        let pod = self.snapshot();
        format!(
            "{}/{}",
            pod.metadata.namespace.unwrap_or_default(),
            pod.metadata.name.unwrap_or_default()
        )
    }

    /// Runs the pod until it is deleted or the runner shuts down.
    pub async fn run(mut self) {
        let pod = self.snapshot();
        let container =
            pod.spec.as_ref().and_then(|s| s.containers.first().cloned()).unwrap_or_default();
        let now = now_rfc3339();
        let mut report = PodReport {
            pod_ip: self.ip,
            start_time: now.clone(),
            phase: "Pending",
            state: ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
            container_ready: false,
            restart_count: 0,
            last_terminated: None,
            ready_since: now,
            container: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
        };
        let pending = *self.stop.borrow_and_update();
        if pending != Stop::No {
            return self.finish(pending).await;
        }
        let plan = match plan_launch(&pod, self.ip, &self.dir, &self.worker_bin, &self.volumes) {
            Ok(plan) => plan,
            Err(message) => {
                return self
                    .fail_to_start(&mut report, "CreateContainerConfigError", message)
                    .await;
            }
        };
        if let Err(message) = prepare_dirs(&self.dir, &plan) {
            return self.fail_to_start(&mut report, "CreateContainerError", message).await;
        }
        let mut token_due = match self.mint_until_done(&plan.tokens).await {
            Ok(due) => due,
            Err(stop) => return self.finish(stop).await,
        };
        loop {
            let (mut child, log_start) = match self.spawn(&plan) {
                Ok(started) => started,
                Err(message) => {
                    return self.fail_to_start(&mut report, "RunContainerError", message).await;
                }
            };
            let started_at = now_rfc3339();
            report.phase = "Running";
            report.state = ContainerState::Running { started_at: started_at.clone() };
            // Without a readiness probe a running container is ready, as with kubelet.
            report.container_ready = plan.readiness.is_none();
            report.ready_since = started_at.clone();
            self.report(&report).await;
            let outcome = self
                .supervise(&mut child, &plan, &mut report, &mut token_due, (&started_at, log_start))
                .await;
            self.pids.lock().map(|mut p| p.remove(&self.key())).ok();
            let termination = match outcome {
                Outcome::Stopped(stop) => {
                    terminate(&mut child, stop).await;
                    return self.finish(stop).await;
                }
                Outcome::Exited(t) => t,
            };
            tracing::info!(pod = %self.key(), exit_code = termination.exit_code, "worker process exited");
            let policy = pod
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.clone())
                .unwrap_or_else(|| "Always".into());
            let restart =
                policy == "Always" || (policy == "OnFailure" && termination.exit_code != 0);
            report.container_ready = false;
            report.ready_since = termination.finished_at.clone();
            if !restart {
                report.phase = if termination.exit_code == 0 { "Succeeded" } else { "Failed" };
                report.state = ContainerState::Terminated(termination);
                self.report(&report).await;
                let stop = self.wait_for_stop().await;
                return self.finish(stop).await;
            }
            let backoff =
                MAX_BACKOFF.min(Duration::from_secs(1 << report.restart_count.clamp(0, 5)));
            report.state = ContainerState::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!("back-off {}s restarting failed container", backoff.as_secs()),
            };
            report.last_terminated = Some(termination);
            self.report(&report).await;
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                stop = self.wait_for_stop() => return self.finish(stop).await,
            }
            report.restart_count += 1;
        }
    }

    async fn supervise(
        &mut self,
        child: &mut Child,
        plan: &LaunchPlan,
        report: &mut PodReport,
        token_due: &mut Instant,
        (started_at, log_start): (&str, u64),
    ) -> Outcome {
        let period = plan.readiness.as_ref().map_or(3600, |p| p.period_seconds);
        let mut probe_tick = tokio::time::interval(Duration::from_secs(period));
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let http = reqwest::Client::new();
        let mut failures = 0u32;
        let mut gates = readiness_gates_pass(&self.snapshot());
        let pending = *self.stop.borrow_and_update();
        if pending != Stop::No {
            return Outcome::Stopped(pending);
        }
        loop {
            tokio::select! {
                status = child.wait() => {
                    let exit_code = match status {
                        Ok(s) => s.code().or_else(|| s.signal().map(|sig| 128 + sig)).unwrap_or(-1),
                        Err(_) => -1,
                    };
                    return Outcome::Exited(Termination {
                        exit_code,
                        started_at: started_at.to_string(),
                        finished_at: now_rfc3339(),
                        message: (exit_code != 0 && plan.fallback_to_logs)
                            .then(|| self.log_tail(log_start))
                            .flatten(),
                    });
                }
                changed = self.stop.changed() => {
                    let stop = if changed.is_ok() { *self.stop.borrow() } else { Stop::Shutdown };
                    if stop != Stop::No {
                        return Outcome::Stopped(stop);
                    }
                }
                changed = self.pod.changed() => {
                    if changed.is_err() {
                        return Outcome::Stopped(Stop::Shutdown);
                    }
                    let now_gates = readiness_gates_pass(&self.snapshot());
                    if now_gates != gates {
                        gates = now_gates;
                        self.report(report).await;
                    }
                }
                _ = probe_tick.tick(), if plan.readiness.is_some() => {
                    let Some(probe) = &plan.readiness else { continue };
                    let ok = http
                        .get(&probe.url)
                        .timeout(Duration::from_secs(probe.timeout_seconds))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().as_u16() >= 200 && r.status().as_u16() < 400);
                    failures = if ok { 0 } else { failures + 1 };
                    let ready = ok || (report.container_ready && failures < probe.failure_threshold);
                    if ready != report.container_ready {
                        report.container_ready = ready;
                        report.ready_since = now_rfc3339();
                        tracing::info!(pod = %self.key(), ready, "readiness changed");
                        self.report(report).await;
                    }
                }
                () = tokio::time::sleep_until(*token_due) => {
                    *token_due = match self.mint_all(&plan.tokens).await {
                        Ok(due) => due,
                        Err(e) => {
                            tracing::warn!(pod = %self.key(), error = %e, "token refresh failed; retrying");
                            Instant::now() + Duration::from_secs(5)
                        }
                    };
                }
            }
        }
    }

    /// Kubelet's FallbackToLogsOnError: the last 80 lines (at most 2 KiB) of this run's log.
    fn log_tail(&self, from: u64) -> Option<String> {
        let bytes = std::fs::read(self.dir.join("worker.log")).ok()?;
        let run = bytes.get(usize::try_from(from).ok()?..)?;
        let text = String::from_utf8_lossy(run);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let mut start = tail.len().saturating_sub(2048);
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        (start < tail.len()).then(|| tail[start..].to_string())
    }

    /// Starts the process; also returns where this run's part of the log begins.
    fn spawn(&self, plan: &LaunchPlan) -> Result<(Child, u64), String> {
        let log_path = self.dir.join("worker.log");
        let log_start = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("{e}"))?;
        let mut cmd = Command::new(&plan.program);
        cmd.args(&plan.args)
            .env_clear()
            .envs(
                std::env::vars()
                    .filter(|(k, _)| matches!(k.as_str(), "PATH" | "RUST_LOG" | "RUST_BACKTRACE")),
            )
            .env("HOME", &self.dir)
            .envs(plan.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", plan.program.display()))?;
        if let Some(pid) = child.id() {
            let _ = std::fs::write(self.dir.join("worker.pid"), pid.to_string());
            self.pids.lock().map(|mut p| p.insert(self.key(), pid)).ok();
            tracing::info!(pod = %self.key(), pid, ip = %self.ip, "worker process started");
        }
        Ok((child, log_start))
    }

    async fn mint_until_done(&mut self, tokens: &[TokenPlan]) -> Result<Instant, Stop> {
        loop {
            match self.mint_all(tokens).await {
                Ok(due) => return Ok(due),
                Err(e) => {
                    tracing::warn!(pod = %self.key(), error = %e, "minting the projected token failed; retrying")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                stop = self.wait_for_stop() => return Err(stop),
            }
        }
    }

    async fn mint_all(&self, tokens: &[TokenPlan]) -> Result<Instant, String> {
        token::mint_all(&self.accounts, &self.snapshot(), tokens).await
    }

    async fn report(&self, report: &PodReport) {
        let gates = readiness_gates_pass(&self.snapshot());
        let name = self.snapshot().metadata.name.unwrap_or_default();
        let patch = status_patch(report, gates);
        if let Err(e) =
            self.pods.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch)).await
        {
            tracing::warn!(pod = %self.key(), error = %e, "pod status update failed");
        }
    }

    async fn fail_to_start(&mut self, report: &mut PodReport, reason: &str, message: String) {
        tracing::warn!(pod = %self.key(), %reason, %message, "cannot start the pod");
        report.state = ContainerState::Waiting { reason: reason.into(), message };
        self.report(report).await;
        let stop = self.wait_for_stop().await;
        self.finish(stop).await;
    }

    async fn wait_for_stop(&mut self) -> Stop {
        loop {
            let stop = *self.stop.borrow_and_update();
            if stop != Stop::No {
                return stop;
            }
            if self.stop.changed().await.is_err() {
                return Stop::Shutdown;
            }
        }
    }

    /// Kubelet's final delete (grace 0) once the process is gone, so the pod disappears.
    async fn finish(&self, stop: Stop) {
        if !matches!(stop, Stop::Deleted { .. }) {
            return;
        }
        let pod = self.snapshot();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.pods.delete(&pod.metadata.name.unwrap_or_default(), &params).await {
            Ok(_) => tracing::info!(pod = %self.key(), "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "final pod delete failed"),
        }
    }
}

fn prepare_dirs(pod_dir: &Path, plan: &LaunchPlan) -> Result<(), String> {
    std::fs::create_dir_all(pod_dir).map_err(|e| format!("creating {}: {e}", pod_dir.display()))?;
    for dir in &plan.dirs {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// SIGTERM, then SIGKILL after the grace period (at once when the pod is already gone).
async fn terminate(child: &mut Child, stop: Stop) {
    let grace = match stop {
        Stop::Deleted { grace_seconds } => grace_seconds,
        Stop::Shutdown => 5,
        Stop::Gone | Stop::No => 0,
    };
    if grace > 0
        && let Some(pid) = child.id()
    {
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        if tokio::time::timeout(Duration::from_secs(grace), child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}
