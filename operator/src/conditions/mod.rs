//! Every condition of an RbeeWorker: the rules that decide each one ([`desired`]), how they
//! are read back ([`previous`]), the Events their transitions raise ([`transition_notices`]),
//! and metav1.Condition bookkeeping: a condition keeps its `lastTransitionTime` while its
//! status stays the same, so a status that only restates itself never counts as a change.

mod notices;
mod pressure;
mod rules;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub use notices::transition_notices;
pub use rules::{desired, previous};

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// The operator cannot tell yet.
    Unknown,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// A condition before it gets its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// Condition type, from `rbee_api::conditions::types`.
    pub type_: &'static str,
    /// Its status.
    pub status: Status,
    /// CamelCase reason, from `rbee_api::conditions::reasons`.
    pub reason: &'static str,
    /// Detail for humans.
    pub message: String,
}

impl Cond {
    /// A condition.
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

/// Turns desired conditions into metav1 Conditions, keeping the previous transition time of
/// every condition whose status did not change.
pub fn merge(
    previous: &[Condition],
    desired: Vec<Cond>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|c| {
            let status = c.status.as_str();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: c.type_.into(),
                status: status.into(),
                reason: c.reason.into(),
                message: truncate(&c.message, 1024),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Looks a condition up by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of that type is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.into();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap_or_default())
    }

    #[test]
    fn keeps_transition_time_while_status_holds() {
        let first =
            merge(&[], vec![Cond::new("Ready", Status::False, "Loading", "")], Some(1), &t(10));
        let again =
            merge(&first, vec![Cond::new("Ready", Status::False, "Other", "m")], Some(1), &t(20));
        assert_eq!(again[0].last_transition_time, t(10));
        assert_eq!(again[0].reason, "Other");
        let flipped = merge(
            &again,
            vec![Cond::new("Ready", Status::True, "WorkerReady", "")],
            Some(1),
            &t(30),
        );
        assert_eq!(flipped[0].last_transition_time, t(30));
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("ééé", 3), "é");
    }
}
