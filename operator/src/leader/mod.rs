//! Leadership: one operator process reconciles and accepts heartbeats. The current term is
//! published on a watch channel; everything that must stop or clear when the term ends (the
//! reconciler, heartbeat acceptance, per-worker metrics, the leader label) subscribes to it.

mod lease;

use std::time::Instant;

use jiff::Timestamp;
use tokio::sync::watch;

pub use lease::{Attempt, LeaseElector, LeaseTiming};

/// One uninterrupted stretch of leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// The lease's transition count when this process took it (0 without election).
    pub number: i32,
    /// When this process became leader.
    pub since: Timestamp,
}

/// A view of the current term; cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<Option<Term>>);

/// Publishes terms: `Some` when one begins, `None` when it ends.
pub type Publisher = watch::Sender<Option<Term>>;

impl Leadership {
    /// A publisher and its view, with no term yet.
    pub fn channel() -> (Publisher, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Self(rx))
    }

    /// A view that always shows `term` (tests, tools).
    pub fn fixed(term: Option<Term>) -> Self {
        Self(watch::channel(term).1)
    }

    /// The current term, if this process leads.
    pub fn current(&self) -> Option<Term> {
        *self.0.borrow()
    }

    /// Whether this process still leads in `term`: the fence every write of a term checks.
    pub fn holds(&self, term: &Term) -> bool {
        self.current().as_ref() == Some(term)
    }

    /// Waits for the next term; `None` once no more will come.
    pub async fn next_term(&mut self) -> Option<Term> {
        loop {
            if let Some(term) = *self.0.borrow_and_update() {
                return Some(term);
            }
            self.0.changed().await.ok()?;
        }
    }

    /// Resolves when `term` has ended.
    pub async fn ended(&mut self, term: &Term) {
        let _ = self.0.wait_for(|t| t.as_ref() != Some(term)).await;
    }

    /// Waits for the next change; false once the publisher is gone.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// Leads from now until `shutdown` (no election: the only replica).
pub async fn lead_alone(publisher: Publisher, mut shutdown: watch::Receiver<bool>) {
    publisher.send_replace(Some(Term { number: 0, since: Timestamp::now() }));
    let _ = shutdown.wait_for(|stop| *stop).await;
    publisher.send_replace(None);
}

/// Campaigns, leads and renews until `shutdown`, publishing each term. The lease is still
/// held when this returns, so that whatever the term ran can finish before
/// [`LeaseElector::release`] hands it on.
pub async fn campaign_and_lead(
    elector: &mut LeaseElector,
    publisher: Publisher,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some((number, renewed_at)) = campaign(elector, &mut shutdown).await {
        let term = Term { number, since: Timestamp::now() };
        tracing::info!(identity = elector.identity(), term = number, "became leader");
        publisher.send_replace(Some(term));
        let shutting_down = renew(elector, renewed_at, &mut shutdown).await;
        publisher.send_replace(None);
        if shutting_down {
            return;
        }
    }
}

/// Tries every retry period until this process holds the lease; returns the term number and
/// when the winning attempt started, `None` on shutdown.
async fn campaign(
    elector: &mut LeaseElector,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(i32, Instant)> {
    let mut last_holder = String::new();
    loop {
        if *shutdown.borrow() {
            return None;
        }
        let started = Instant::now();
        match elector.try_acquire_or_renew().await {
            Ok(Attempt::Held(number)) => return Some((number, started)),
            Ok(Attempt::HeldBy(holder)) if holder != last_holder => {
                tracing::info!(%holder, "waiting for leadership");
                last_holder = holder;
            }
            Ok(Attempt::HeldBy(_) | Attempt::Conflict) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::select! {
            _ = tokio::time::sleep(elector.timing.retry_period) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Renews every retry period until the lease is taken over, cannot be renewed within the
/// renew deadline (measured from the start of the last renewal that went through, so this
/// process stops leading before any other may judge the lease expired), or shutdown; true on
/// shutdown.
async fn renew(
    elector: &mut LeaseElector,
    mut renewed_at: Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(elector.timing.retry_period) => {}
            _ = shutdown.wait_for(|stop| *stop) => return true,
        }
        let started = Instant::now();
        match elector.try_acquire_or_renew().await {
            Ok(Attempt::Held(_)) => renewed_at = started,
            Ok(Attempt::HeldBy(holder)) => {
                tracing::warn!(%holder, "lost leadership: lease taken over");
                return false;
            }
            Ok(Attempt::Conflict) => {}
            Err(e) => tracing::warn!(error = %e, "cannot renew the leader lease"),
        }
        if renewed_at.elapsed() >= elector.timing.renew_deadline {
            tracing::warn!("lost leadership: the lease could not be renewed in time");
            return false;
        }
    }
}
