//! What every reconcile of one leadership term shares.

use std::sync::Arc;

use jiff::SignedDuration;
use kube::Client;
use kube::runtime::events::Recorder;

use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::pod::PodSettings;
use crate::term::TermState;

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Inputs of the pod builder.
    pub pod: PodSettings,
    /// A status that only refreshes numbers is written at most this often.
    pub report_period: SignedDuration,
}

/// The same for every term of the process.
#[derive(Clone)]
pub struct Shared {
    /// API client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// One Event recorder for everything.
    pub recorder: Recorder,
}

/// Shared by the reconciles of one term.
pub struct Context {
    /// What every term shares.
    pub shared: Shared,
    /// Leadership, to fence writes with.
    pub leadership: Leadership,
    /// The term's caches and heartbeats.
    pub term: Arc<TermState>,
}

impl Context {
    /// Whether this process still leads in the term the reconciles run for.
    pub fn leads(&self) -> bool {
        self.leadership.holds(&self.term.term)
    }
}
