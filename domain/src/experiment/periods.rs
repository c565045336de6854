//! Weight periods: the stretches of an experiment during which its split stayed the same.
//!
//! Sticky assignment keeps a user in the arm they were first given, and new
//! users follow the split in force when they first arrive. So the users first
//! exposed within one period form a clean randomised experiment with that
//! period's weights, and the cohort analysis ([`crate::results`]) and the
//! bandit compare arms within those cohorts only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::ArmKey;

/// Weights are the same split when no arm differs by more than this (stored
/// weights went through float arithmetic and a JSON round trip).
const SAME_WEIGHT: f64 = 1e-9;

/// One row of `weight_history`: an arm's weight from `computed_at` on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightHistoryEntry {
    pub arm: ArmKey,
    pub weight: f64,
    pub computed_at: DateTime<Utc>,
    pub reason: String,
}

/// A stretch of constant weights, from `start` until the next period's start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightPeriod {
    /// When this split took effect (the first history row that set it).
    pub start: DateTime<Utc>,
    /// Why the split was set (`start`, `thompson`, an analyst's edit, ...).
    pub reason: String,
    /// Each arm's weight in the period; arms not named had weight 0.
    pub weights: Vec<(ArmKey, f64)>,
}

impl WeightPeriod {
    /// The weight `arm` had in this period (0 if the split did not name it).
    pub fn weight_of(&self, arm: &ArmKey) -> f64 {
        self.weights
            .iter()
            .find(|(a, _)| a == arm)
            .map_or(0.0, |(_, w)| *w)
    }

    fn same_split(&self, other: &[(ArmKey, f64)]) -> bool {
        self.weights.len() == other.len()
            && self.weights.iter().all(|(arm, w)| {
                other
                    .iter()
                    .any(|(a, v)| a == arm && (w - v).abs() <= SAME_WEIGHT)
            })
    }
}

/// The periods of constant weights in `history` (rows ordered by time).
///
/// Rows written together (same time and reason) are one split. A split equal
/// to the one before it (a restart, or a bandit run that held the weights)
/// continues the current period instead of opening a new one, so only a real
/// change of weights splits the users into a new cohort.
pub fn weight_periods(history: &[WeightHistoryEntry]) -> Vec<WeightPeriod> {
    let mut splits: Vec<WeightPeriod> = Vec::new();
    let mut current: Option<(DateTime<Utc>, &str)> = None;
    for row in history {
        if current != Some((row.computed_at, row.reason.as_str())) {
            current = Some((row.computed_at, row.reason.as_str()));
            splits.push(WeightPeriod {
                start: row.computed_at,
                reason: row.reason.clone(),
                weights: Vec::new(),
            });
        }
        if let Some(split) = splits.last_mut() {
            match split.weights.iter_mut().find(|(a, _)| *a == row.arm) {
                Some(slot) => slot.1 = row.weight,
                None => split.weights.push((row.arm.clone(), row.weight)),
            }
        }
    }
    let mut periods: Vec<WeightPeriod> = Vec::with_capacity(splits.len());
    for split in splits {
        match periods.last() {
            Some(last) if last.same_split(&split.weights) => {}
            _ => periods.push(split),
        }
    }
    periods
}

/// Index of the period holding time `at`: the last period starting at or
/// before it. A time before the first period (a clock skew between the api
/// and PostgreSQL) belongs to the first.
pub fn period_index(periods: &[WeightPeriod], at: DateTime<Utc>) -> usize {
    periods.partition_point(|p| p.start <= at).saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(arm: &str, weight: f64, at_s: i64, reason: &str) -> WeightHistoryEntry {
        WeightHistoryEntry {
            arm: ArmKey::parse(arm).unwrap(),
            weight,
            computed_at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(at_s),
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn only_a_changed_split_opens_a_period() {
        assert!(weight_periods(&[]).is_empty());
        let history = [
            row("a", 0.5, 0, "start"),
            row("b", 0.5, 0, "start"),
            // Restarted with the same split: still the first period.
            row("a", 0.5, 60, "start"),
            row("b", 0.5, 60, "start"),
            row("a", 0.7, 120, "thompson"),
            row("b", 0.3, 120, "thompson"),
            // A bandit run that held the weights.
            row("a", 0.7, 180, "thompson"),
            row("b", 0.3, 180, "thompson"),
            row("a", 0.2, 240, "thompson"),
            row("b", 0.8, 240, "thompson"),
        ];
        let periods = weight_periods(&history);
        assert_eq!(periods.len(), 3);
        assert_eq!(periods[0].start.timestamp(), 0);
        assert_eq!(periods[1].start.timestamp(), 120);
        assert_eq!(periods[2].start.timestamp(), 240);
        assert_eq!(periods[2].weight_of(&ArmKey::parse("b").unwrap()), 0.8);
        assert_eq!(periods[2].weight_of(&ArmKey::parse("c").unwrap()), 0.0);
    }

    #[test]
    fn times_fall_in_the_last_period_that_started_before_them() {
        let history = [
            row("a", 0.5, 100, "start"),
            row("b", 0.5, 100, "start"),
            row("a", 0.9, 200, "thompson"),
            row("b", 0.1, 200, "thompson"),
        ];
        let periods = weight_periods(&history);
        let at = |s| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(s);
        assert_eq!(period_index(&periods, at(50)), 0, "before the start");
        assert_eq!(period_index(&periods, at(100)), 0);
        assert_eq!(period_index(&periods, at(199)), 0);
        assert_eq!(period_index(&periods, at(200)), 1);
        assert_eq!(period_index(&periods, at(10_000)), 1);
        assert_eq!(period_index(&[], at(1)), 0);
    }
}
