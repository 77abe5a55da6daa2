//! The engine: one thread owns the model; requests reach it through a channel and are served
//! round-robin, one token per active sequence per turn, each with its own KV cache.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::Device;
use tokio::sync::mpsc as tokio_mpsc;

use crate::generate::{FinishReason, SamplingParams, Sequence};
use crate::metrics::Metrics;
use crate::model::{self, LoadOptions, LoadedModel};
use crate::{EngineStatus, WorkerError};

/// Limits of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Requests that may wait for a slot; more are refused with 429.
    pub max_queue: usize,
    /// Sequences generated concurrently (interleaved token by token).
    pub max_batch: usize,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

/// What the engine tells a request's handler.
#[derive(Debug, Clone)]
pub enum Event {
    /// More text.
    Delta(String),
    /// Done; no more events follow.
    Finished {
        /// Why it stopped.
        reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// Failed; no more events follow.
    Failed(WorkerError),
}

struct Job {
    prompt: Vec<u32>,
    params: SamplingParams,
    events: tokio_mpsc::UnboundedSender<Event>,
    arrived: Instant,
}

enum Command {
    Generate(Job),
    Shutdown { deadline: Instant },
}

/// Submits requests to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    waiting: Arc<AtomicUsize>,
    config: EngineConfig,
    status: Arc<EngineStatus>,
    metrics: Metrics,
}

/// The engine before its thread runs; [`EngineRunner::spawn`] loads the model and serves.
pub struct EngineRunner {
    rx: mpsc::Receiver<Command>,
    waiting: Arc<AtomicUsize>,
    config: EngineConfig,
    status: Arc<EngineStatus>,
    metrics: Metrics,
}

/// A handle and the runner that serves it. Until the runner is spawned, the handle answers
/// "loading" (which is what tests use to hold a load).
pub fn engine(
    config: EngineConfig,
    status: Arc<EngineStatus>,
    metrics: Metrics,
) -> (EngineHandle, EngineRunner) {
    let (tx, rx) = mpsc::channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    let handle = EngineHandle {
        tx,
        waiting: waiting.clone(),
        config,
        status: status.clone(),
        metrics: metrics.clone(),
    };
    (handle, EngineRunner { rx, waiting, config, status, metrics })
}

impl EngineHandle {
    /// Shared status.
    pub fn status(&self) -> &Arc<EngineStatus> {
        &self.status
    }

    /// Metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Queues a generation; events arrive on the returned receiver. Dropping the receiver
    /// cancels the generation.
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<tokio_mpsc::UnboundedReceiver<Event>, WorkerError> {
        self.check_serving()?;
        let capacity = self.config.max_queue;
        if self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < capacity).then_some(n + 1))
            .is_err()
        {
            return Err(WorkerError::QueueFull { capacity });
        }
        let (events, rx) = tokio_mpsc::unbounded_channel();
        self.status.add_in_flight();
        let job = Job { prompt, params, events, arrived: Instant::now() };
        if self.tx.send(Command::Generate(job)).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.status.remove_in_flight();
            return Err(WorkerError::ShuttingDown);
        }
        Ok(rx)
    }

    /// Fails unless the model is loaded and the worker is not draining.
    pub fn check_serving(&self) -> Result<(), WorkerError> {
        if let Some(e) = self.status.load_error() {
            return Err(WorkerError::NotServing(e));
        }
        if self.status.model().is_none() {
            return Err(WorkerError::Loading { progress: self.status.load_progress_percent() });
        }
        if self.status.is_draining() {
            return Err(WorkerError::ShuttingDown);
        }
        Ok(())
    }

    /// Stops accepting requests; in-flight ones finish until `deadline`, then are cancelled.
    pub fn shutdown(&self, deadline: Instant) {
        self.status.begin_draining();
        let _ = self.tx.send(Command::Shutdown { deadline });
    }
}

struct Active {
    seq: Sequence,
    job: Job,
    last_token: Option<Instant>,
}

impl EngineRunner {
    /// Starts the engine thread: loads the model, then serves until shutdown.
    pub fn spawn(self, opts: LoadOptions, device: Device) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("rbee-engine".into()).spawn(move || self.run(opts, device))
    }

    /// Loads the model, then serves on the current thread until shutdown.
    pub fn run(self, opts: LoadOptions, device: Device) {
        let started = Instant::now();
        let status = self.status.clone();
        let last_logged = std::cell::Cell::new(0u8);
        let progress = |p: u8| {
            status.set_progress(p);
            if p >= last_logged.get().saturating_add(25) || p == 100 {
                last_logged.set(p);
                tracing::info!(percent = p, model = %opts.model_path.display(), "loading model");
            }
        };
        match model::load(&opts, &device, &progress) {
            Ok(model) => {
                let took = started.elapsed();
                self.metrics.model_loaded(took);
                let info = model.info().clone();
                tracing::info!(
                    model = %info.name, path = %info.path.display(), format = info.format,
                    backend = %self.status.backend(), device = self.status.device(),
                    context_length = info.context_length, load_seconds = took.as_secs_f64(),
                    "model loaded"
                );
                self.status.set_loaded(info);
                self.serve(&model);
                self.metrics.model_unloaded();
            }
            Err(e) => {
                tracing::error!(error = %e, "model load failed");
                self.status.set_load_error(e.to_string());
                self.metrics.model_unloaded();
            }
        }
    }

    fn serve(&self, model: &LoadedModel) {
        let mut pending: VecDeque<Job> = VecDeque::new();
        let mut active: Vec<Active> = Vec::new();
        let mut deadline: Option<Instant> = None;
        loop {
            let idle = active.is_empty() && pending.is_empty();
            if idle && deadline.is_some() {
                return;
            }
            if idle {
                match self.rx.recv() {
                    Ok(cmd) => accept(cmd, &mut pending, &mut deadline),
                    // Every handle is gone: nobody can submit any more.
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                accept(cmd, &mut pending, &mut deadline);
            }
            self.turn(model, &mut pending, &mut active, deadline);
        }
    }

    /// Admits waiting jobs, then advances every active sequence by one token.
    fn turn(
        &self,
        model: &LoadedModel,
        pending: &mut VecDeque<Job>,
        active: &mut Vec<Active>,
        deadline: Option<Instant>,
    ) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            self.waiting.fetch_sub(pending.len(), Ordering::AcqRel);
            for job in pending.drain(..).chain(active.drain(..).map(|a| a.job)) {
                self.end(&job, "cancelled", Some(Event::Failed(WorkerError::ShuttingDown)));
            }
            return;
        }
        while active.len() < self.config.max_batch {
            let Some(job) = pending.pop_front() else { break };
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if job.events.is_closed() {
                self.end(&job, "cancelled", None);
                continue;
            }
            self.metrics.started(job.arrived.elapsed(), job.prompt.len());
            match Sequence::new(model, job.prompt.clone(), job.params.clone()) {
                Ok(seq) => active.push(Active { seq, job, last_token: None }),
                Err(e) => self.fail(&job, e),
            }
        }
        active.retain_mut(|a| self.advance(model, a));
    }

    /// One token for `a`; false when it is done.
    fn advance(&self, model: &LoadedModel, a: &mut Active) -> bool {
        if a.job.events.is_closed() {
            self.end(&a.job, "cancelled", None);
            return false;
        }
        match a.seq.step(model) {
            Ok(step) => {
                let now = Instant::now();
                match a.last_token {
                    None => self.metrics.first_token(now - a.job.arrived),
                    Some(prev) => self.metrics.next_token(now - prev),
                }
                a.last_token = Some(now);
                if !step.text.is_empty() {
                    let _ = a.job.events.send(Event::Delta(step.text));
                }
                let Some(reason) = step.finished else { return true };
                let usage = Usage {
                    prompt_tokens: a.seq.prompt_tokens(),
                    completion_tokens: a.seq.generated_tokens(),
                };
                self.end(&a.job, "completed", Some(Event::Finished { reason, usage }));
                false
            }
            Err(e) => {
                self.fail(&a.job, e);
                false
            }
        }
    }

    fn fail(&self, job: &Job, e: WorkerError) {
        tracing::warn!(error = %e, "generation failed");
        self.metrics.error(e.code());
        self.end(job, "error", Some(Event::Failed(e)));
    }

    fn end(&self, job: &Job, outcome: &str, event: Option<Event>) {
        if let Some(event) = event {
            let _ = job.events.send(event);
        }
        self.metrics.request_finished(outcome, job.arrived.elapsed());
        self.status.remove_in_flight();
    }
}

fn accept(cmd: Command, pending: &mut VecDeque<Job>, deadline: &mut Option<Instant>) {
    match cmd {
        Command::Generate(job) => pending.push_back(job),
        Command::Shutdown { deadline: d } => *deadline = Some(d),
    }
}

/// Default shutdown grace for in-flight requests.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
