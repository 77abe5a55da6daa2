//! One candidate of the election on a coordination.k8s.io Lease. As in client-go, a candidate
//! judges the lease by its own clock: a lease is expired when its record has not changed for
//! its duration since this candidate saw it change, whatever `renewTime` says, so a skewed clock
//! on either side cannot take a live lease.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::error::{Call, Error, Result};

/// Timing of the election, in client-go's proportions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a lease holds without renewal.
    pub duration: Duration,
    /// A leader that could not renew for this long steps down (before anyone may take over).
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate retries.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// For a lease of `duration`: renew every quarter of it (at most every 2 s), and give up
    /// after two thirds of it without a renewal (client-go: 15 s, 10 s, 2 s).
    pub fn for_duration(duration: Duration) -> Self {
        Self {
            duration,
            renew_deadline: duration * 2 / 3,
            retry_period: (duration / 4).min(Duration::from_secs(2)),
        }
    }
}

/// The fields of a lease record; any change proves its holder alive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: String,
    renew_time: Option<Timestamp>,
    acquire_time: Option<Timestamp>,
    transitions: i32,
    duration_seconds: i32,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
            duration_seconds: spec.lease_duration_seconds.unwrap_or(15),
        }
    }
}

/// A lease record and when this candidate first saw it so, on its own monotonic clock.
#[derive(Clone, Debug)]
struct Sighting {
    record: Record,
    at: Instant,
}

impl Sighting {
    /// The sighting after reading `record` at `now`: the time moves only when the record changed.
    fn update(previous: Option<Self>, record: Record, now: Instant) -> Self {
        match previous {
            Some(seen) if seen.record == record => seen,
            _ => Self { record, at: now },
        }
    }

    /// Unchanged for its duration since it was first seen so.
    fn expired(&self, now: Instant) -> bool {
        let duration = u64::try_from(self.record.duration_seconds).unwrap_or(0).max(1);
        now.duration_since(self.at) >= Duration::from_secs(duration)
    }
}

/// The outcome of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This candidate holds the lease; the lease's transition count when it took it.
    Held(i32),
    /// Someone else does.
    HeldBy(String),
    /// Another candidate wrote the lease between our read and our write.
    Conflict,
}

/// One candidate in the election.
pub struct LeaseElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    /// Timing.
    pub timing: LeaseTiming,
    sighting: Option<Sighting>,
}

impl LeaseElector {
    /// A candidate for Lease `namespace/name` under `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
            sighting: None,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Takes or renews the lease if it is free, expired or ours.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt> {
        let lease = self.api.get_opt(&self.name).await.map_err(Error::api(Call::GetLease))?;
        let Some(mut lease) = lease else { return self.create().await };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let seen = Sighting::update(self.sighting.take(), Record::of(spec), Instant::now());
        let holder = seen.record.holder.clone();
        let ours = holder == self.identity;
        let free = holder.is_empty() || seen.expired(Instant::now());
        self.sighting = Some(seen);
        if !ours && !free {
            return Ok(Attempt::HeldBy(holder));
        }
        let now = MicroTime(Timestamp::now());
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.duration_seconds());
        let transitions = spec.lease_transitions.unwrap_or(0);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Held(transitions)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(Error::api(Call::UpdateLease)(e)),
        }
    }

    async fn create(&self) -> Result<Attempt> {
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Held(0)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(Error::api(Call::CreateLease)(e)),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.timing.duration.as_secs()).unwrap_or(15)
    }

    /// Gives the lease up so another candidate takes over at once.
    pub async fn release(&self) -> Result<()> {
        let lease = self.api.get_opt(&self.name).await.map_err(Error::api(Call::GetLease))?;
        let Some(mut lease) = lease else { return Ok(()) };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(Error::api(Call::UpdateLease))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(renewed: i64) -> Record {
        Record {
            holder: "a".into(),
            renew_time: Timestamp::from_second(renewed).ok(),
            acquire_time: Timestamp::from_second(0).ok(),
            transitions: 3,
            duration_seconds: 15,
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration_unchanged_on_the_candidates_clock() {
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        let seen = Sighting::update(None, record(100), at(0));
        assert!(!seen.expired(at(14)));
        let seen = Sighting::update(Some(seen), record(100), at(14));
        assert!(seen.expired(at(15)), "the same record for 15 s");
    }

    /// The holder's clock is an hour behind the candidate's (or the candidate's an hour
    /// ahead): every renewTime it writes looks long expired, yet each renewal proves it alive.
    #[test]
    fn a_skewed_clock_cannot_take_a_live_lease() {
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        let an_hour_ago = Timestamp::now().as_second() - 3600;
        let mut seen = Sighting::update(None, record(an_hour_ago), at(0));
        for s in 1..60 {
            seen = Sighting::update(Some(seen), record(an_hour_ago + s as i64), at(s));
            assert!(!seen.expired(at(s)), "taken over at {s} s although renewed every second");
        }
        let last = record(an_hour_ago + 59);
        for s in 60..74 {
            seen = Sighting::update(Some(seen), last.clone(), at(s));
            assert!(!seen.expired(at(s)), "taken over {} s after the last renewal", s - 59);
        }
        assert!(seen.expired(at(74)), "silent for its duration since the last renewal");
    }

    #[test]
    fn timing_keeps_client_go_proportions() {
        let t = LeaseTiming::for_duration(Duration::from_secs(15));
        assert_eq!(
            (t.renew_deadline, t.retry_period),
            (Duration::from_secs(10), Duration::from_secs(2))
        );
        let t = LeaseTiming::for_duration(Duration::from_secs(4));
        assert_eq!(t.retry_period, Duration::from_secs(1));
        assert!(t.renew_deadline < t.duration);
    }
}
