//! Offline evaluation: a temporal hold-out and the ranking metrics the model
//! manifest records, so a model is compared with the baseline before it serves.
//!
//! Relevance is binary: a held-out movie is relevant whatever its kind. Each
//! user's training movies are excluded from their list, as in production.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{MovieId, UserId};
use crate::recommend::popularity::tie_key;
use crate::recommend::{Dataset, Recommender};
use crate::ValidationError;

/// One user's held-out movies (the relevant set for their metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    /// The user.
    pub user: UserId,
    /// Movies first touched after everything kept in training.
    pub items: Vec<MovieId>,
}

/// Training data plus the per-user future it should predict.
#[derive(Debug, Clone)]
pub struct TemporalSplit {
    /// Everything but the held-out pairs; same user and item indices as the input.
    pub train: Dataset,
    /// Held-out movies per user, for users who kept at least one training movie.
    pub test: Vec<HeldOut>,
}

/// Hold out each user's last `holdout` distinct movies (by first interaction
/// time), with all their interactions, so a like cannot leak a held-out view.
/// Users with `holdout` movies or fewer stay wholly in training: with no
/// history left, their metrics would measure cold start, not the model.
pub fn temporal_split(data: &Dataset, holdout: usize) -> TemporalSplit {
    let mut first_seen: Vec<(u32, u32, i64)> = data
        .interactions
        .iter()
        .map(|i| (i.user, i.item, i.ts))
        .collect();
    first_seen.sort_unstable();
    first_seen.dedup_by_key(|p| (p.0, p.1));

    let mut held: HashSet<(u32, u32)> = HashSet::new();
    let mut test = Vec::new();
    let mut start = 0;
    while start < first_seen.len() {
        let user = first_seen[start].0;
        let end = start + first_seen[start..].partition_point(|p| p.0 == user);
        let row = &mut first_seen[start..end];
        if holdout > 0 && row.len() > holdout {
            // Movies first touched in the same second are ordered by the
            // neutral hash popularity uses, not by the order the dataset
            // first met them (which favours whatever it met first).
            row.sort_unstable_by_key(|p| {
                let movie = data.items.get(p.1 as usize).copied();
                (p.2, movie.map_or(0, tie_key), p.1)
            });
            let tail = &row[row.len() - holdout..];
            held.extend(tail.iter().map(|p| (p.0, p.1)));
            if let Some(u) = data.users.get(user as usize) {
                test.push(HeldOut {
                    user: u.clone(),
                    items: tail
                        .iter()
                        .filter_map(|p| data.items.get(p.1 as usize).copied())
                        .collect(),
                });
            }
        }
        start = end;
    }

    let mut train = Dataset::new();
    train.users = data.users.clone();
    train.items = data.items.clone();
    train.interactions = data
        .interactions
        .iter()
        .filter(|i| !held.contains(&(i.user, i.item)))
        .copied()
        .collect();
    train.reindex();
    TemporalSplit { train, test }
}

/// Averages over evaluated users of the ranking metrics at one cut-off `k`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OfflineMetrics {
    /// List length the metrics are cut at.
    pub k: usize,
    /// Users averaged over.
    pub users: usize,
    /// Hits / k (a short list still divides by k: unfilled slots are misses).
    pub precision: f64,
    /// Hits / number of relevant movies.
    pub recall: f64,
    /// DCG with log2 discount over the ideal DCG.
    pub ndcg: f64,
    /// Mean average precision, normalised by min(relevant, k).
    pub map: f64,
    /// Share of the catalog that appears in at least one user's top k.
    pub coverage: f64,
}

/// Metrics of `model` at cut-off `k`; see [`evaluate_at`].
pub fn evaluate(
    model: &dyn Recommender,
    train: &Dataset,
    test: &[HeldOut],
    k: usize,
) -> OfflineMetrics {
    evaluate_at(model, train, test, &[k])
        .into_iter()
        .next()
        .unwrap_or(OfflineMetrics {
            k,
            users: 0,
            precision: 0.0,
            recall: 0.0,
            ndcg: 0.0,
            map: 0.0,
            coverage: 0.0,
        })
}

/// Metrics at several cut-offs from one list per user (the longest `k`),
/// excluding each user's training movies. Coverage is over `train.items`.
pub fn evaluate_at(
    model: &dyn Recommender,
    train: &Dataset,
    test: &[HeldOut],
    ks: &[usize],
) -> Vec<OfflineMetrics> {
    let max_k = ks.iter().copied().max().unwrap_or(0);
    let mut seen: Vec<Vec<u32>> = vec![Vec::new(); train.n_users()];
    for it in &train.interactions {
        if let Some(row) = seen.get_mut(it.user as usize) {
            row.push(it.item);
        }
    }

    let mut sums = vec![[0f64; 4]; ks.len()];
    let mut covered: Vec<HashSet<MovieId>> = vec![HashSet::new(); ks.len()];
    let mut users = 0usize;
    for held in test {
        if held.items.is_empty() {
            continue;
        }
        let exclude: HashSet<MovieId> = train
            .find_user(&held.user)
            .and_then(|u| seen.get(u as usize))
            .map(|row| {
                row.iter()
                    .filter_map(|&i| train.items.get(i as usize).copied())
                    .collect()
            })
            .unwrap_or_default();
        let recs: Vec<MovieId> = model
            .recommend(&held.user, max_k, &exclude)
            .into_iter()
            .map(|s| s.movie_id)
            .collect();
        let relevant: HashSet<MovieId> = held.items.iter().copied().collect();
        users += 1;
        for ((&k, sum), cov) in ks.iter().zip(&mut sums).zip(&mut covered) {
            sum[0] += precision_at_k(&recs, &relevant, k);
            sum[1] += recall_at_k(&recs, &relevant, k);
            sum[2] += ndcg_at_k(&recs, &relevant, k);
            sum[3] += average_precision_at_k(&recs, &relevant, k);
            cov.extend(recs.iter().take(k).copied());
        }
    }

    let n = users.max(1) as f64;
    let catalog = train.n_items();
    ks.iter()
        .zip(sums)
        .zip(covered)
        .map(|((&k, sum), cov)| OfflineMetrics {
            k,
            users,
            precision: sum[0] / n,
            recall: sum[1] / n,
            ndcg: sum[2] / n,
            map: sum[3] / n,
            coverage: if catalog == 0 {
                0.0
            } else {
                cov.len() as f64 / catalog as f64
            },
        })
        .collect()
}

fn hits(recs: &[MovieId], relevant: &HashSet<MovieId>, k: usize) -> usize {
    recs.iter().take(k).filter(|m| relevant.contains(m)).count()
}

/// Hits in the first `k` divided by `k`.
pub fn precision_at_k(recs: &[MovieId], relevant: &HashSet<MovieId>, k: usize) -> f64 {
    if k == 0 {
        return 0.0;
    }
    hits(recs, relevant, k) as f64 / k as f64
}

/// Hits in the first `k` divided by the number of relevant movies.
pub fn recall_at_k(recs: &[MovieId], relevant: &HashSet<MovieId>, k: usize) -> f64 {
    if relevant.is_empty() {
        return 0.0;
    }
    hits(recs, relevant, k) as f64 / relevant.len() as f64
}

/// Binary-relevance NDCG: Σ 1/log2(rank+1) over hits, over the same sum for a perfect list.
pub fn ndcg_at_k(recs: &[MovieId], relevant: &HashSet<MovieId>, k: usize) -> f64 {
    let discount = |rank: usize| 1.0 / ((rank + 1) as f64).log2();
    let dcg: f64 = recs
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, m)| relevant.contains(m))
        .map(|(i, _)| discount(i + 1))
        .sum();
    let ideal: f64 = (1..=relevant.len().min(k)).map(discount).sum();
    if ideal == 0.0 {
        0.0
    } else {
        dcg / ideal
    }
}

/// Mean of precision@rank at each hit, over min(relevant, k) so a perfect list scores 1.
pub fn average_precision_at_k(recs: &[MovieId], relevant: &HashSet<MovieId>, k: usize) -> f64 {
    let denom = relevant.len().min(k);
    if denom == 0 {
        return 0.0;
    }
    let mut found = 0usize;
    let mut sum = 0.0;
    for (i, m) in recs.iter().take(k).enumerate() {
        if relevant.contains(m) {
            found += 1;
            sum += found as f64 / (i + 1) as f64;
        }
    }
    sum / denom as f64
}

/// One algorithm's offline run, the input of [`compare`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlgorithmResult {
    /// Algorithm name as shown in the report.
    pub algorithm: String,
    /// Wall-clock fit time, measured by the caller (the domain has no clock).
    pub fit_seconds: f64,
    /// Metrics at each cut-off, in the same order for every algorithm.
    pub metrics: Vec<OfflineMetrics>,
}

/// Relative change `(x − baseline) / baseline` at one cut-off; `None` when the baseline is 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RelativeChange {
    /// Cut-off the change is measured at.
    pub k: usize,
    /// Change in precision.
    pub precision: Option<f64>,
    /// Change in recall.
    pub recall: Option<f64>,
    /// Change in NDCG.
    pub ndcg: Option<f64>,
    /// Change in MAP.
    pub map: Option<f64>,
    /// Change in coverage.
    pub coverage: Option<f64>,
}

/// One algorithm's line in a [`ComparisonReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    /// The run being compared.
    pub result: AlgorithmResult,
    /// Change against the baseline at each cut-off the baseline also has.
    pub vs_baseline: Vec<RelativeChange>,
}

/// Several algorithms against a baseline; `Display` renders a fixed-width table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComparisonReport {
    /// Name of the baseline algorithm (usually popularity).
    pub baseline: String,
    /// One row per algorithm, baseline included, in input order.
    pub rows: Vec<ComparisonRow>,
}

impl ComparisonReport {
    /// The row of `algorithm`, if it was part of the comparison.
    pub fn row(&self, algorithm: &str) -> Option<&ComparisonRow> {
        self.rows.iter().find(|r| r.result.algorithm == algorithm)
    }
}

/// Compare every result with the one named `baseline`.
pub fn compare(
    baseline: &str,
    results: Vec<AlgorithmResult>,
) -> Result<ComparisonReport, ValidationError> {
    let base: HashMap<usize, OfflineMetrics> = results
        .iter()
        .find(|r| r.algorithm == baseline)
        .ok_or_else(|| ValidationError::new("baseline", "is not among the results"))?
        .metrics
        .iter()
        .map(|m| (m.k, *m))
        .collect();
    let rel = |x: f64, b: f64| (b != 0.0).then(|| (x - b) / b);
    let rows = results
        .into_iter()
        .map(|result| {
            let vs_baseline = result
                .metrics
                .iter()
                .filter_map(|m| {
                    base.get(&m.k).map(|b| RelativeChange {
                        k: m.k,
                        precision: rel(m.precision, b.precision),
                        recall: rel(m.recall, b.recall),
                        ndcg: rel(m.ndcg, b.ndcg),
                        map: rel(m.map, b.map),
                        coverage: rel(m.coverage, b.coverage),
                    })
                })
                .collect();
            ComparisonRow {
                result,
                vs_baseline,
            }
        })
        .collect();
    Ok(ComparisonReport {
        baseline: baseline.to_owned(),
        rows,
    })
}

impl fmt::Display for ComparisonReport {
    /// Headline metrics at the first cut-off, recall at every cut-off, and the
    /// NDCG change that decides whether personalisation pays for itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ks: Vec<usize> = self
            .rows
            .first()
            .map(|r| r.result.metrics.iter().map(|m| m.k).collect())
            .unwrap_or_default();
        let Some(&k0) = ks.first() else {
            return writeln!(f, "(no metrics)");
        };
        let mut header = vec!["algorithm".to_owned(), format!("NDCG@{k0}")];
        header.extend(ks.iter().map(|k| format!("recall@{k}")));
        header.extend([
            format!("P@{k0}"),
            format!("MAP@{k0}"),
            format!("cov@{k0}"),
            "fit s".to_owned(),
            format!("NDCG@{k0} vs {}", self.baseline),
        ]);
        let mut lines = vec![header];
        for row in &self.rows {
            let at = |k: usize| row.result.metrics.iter().find(|m| m.k == k);
            let num = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
            let mut line = vec![row.result.algorithm.clone(), num(at(k0).map(|m| m.ndcg))];
            line.extend(ks.iter().map(|&k| num(at(k).map(|m| m.recall))));
            line.push(num(at(k0).map(|m| m.precision)));
            line.push(num(at(k0).map(|m| m.map)));
            line.push(num(at(k0).map(|m| m.coverage)));
            line.push(format!("{:.2}", row.result.fit_seconds));
            let change = row
                .vs_baseline
                .iter()
                .find(|c| c.k == k0)
                .and_then(|c| c.ndcg);
            line.push(change.map_or("-".to_owned(), |c| format!("{:+.1}%", c * 100.0)));
            lines.push(line);
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
            .collect();
        for (n, line) in lines.iter().enumerate() {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(c, (cell, &w))| {
                    if c == 0 {
                        format!("{cell:<w$}")
                    } else {
                        format!("{cell:>w$}")
                    }
                })
                .collect();
            writeln!(f, "| {} |", cells.join(" | "))?;
            if n == 0 {
                let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
                writeln!(f, "|-{}-|", rule.join("-|-"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recommend::{InteractionKind, ScoredItem};

    fn movie(n: i64) -> MovieId {
        MovieId::parse(n).unwrap()
    }

    fn movies(ns: &[i64]) -> Vec<MovieId> {
        ns.iter().map(|&n| movie(n)).collect()
    }

    fn set(ns: &[i64]) -> HashSet<MovieId> {
        ns.iter().map(|&n| movie(n)).collect()
    }

    #[test]
    fn ndcg_of_a_known_ranking() {
        // Relevant at positions 1 and 3 of k = 3, two relevant in total.
        let got = ndcg_at_k(&movies(&[1, 9, 2]), &set(&[1, 2]), 3);
        let want = (1.0 + 1.0 / 4f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert_eq!(ndcg_at_k(&movies(&[1, 2]), &set(&[1, 2]), 3), 1.0);
        assert_eq!(ndcg_at_k(&movies(&[9]), &set(&[1]), 3), 0.0);
    }

    #[test]
    fn precision_recall_and_map_by_hand() {
        let recs = movies(&[1, 9, 2, 8]);
        let rel = set(&[1, 2, 3]);
        assert_eq!(precision_at_k(&recs, &rel, 4), 0.5);
        assert!((recall_at_k(&recs, &rel, 4) - 2.0 / 3.0).abs() < 1e-12);
        // AP@4 = (1/1 + 2/3) / min(3, 4).
        let ap = average_precision_at_k(&recs, &rel, 4);
        assert!((ap - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        // A short list still divides precision by k.
        assert_eq!(precision_at_k(&movies(&[1]), &rel, 4), 0.25);
    }

    fn dataset() -> Dataset {
        let mut d = Dataset::new();
        let a = UserId::parse("a").unwrap();
        let b = UserId::parse("b").unwrap();
        // a: 1 @10, 2 @20 (view + like), 3 @30. b: 1 @5 only.
        d.push(&a, movie(3), InteractionKind::View, 30);
        d.push(&a, movie(1), InteractionKind::View, 10);
        d.push(&a, movie(2), InteractionKind::View, 20);
        d.push(&a, movie(2), InteractionKind::Like, 21);
        d.push(&b, movie(1), InteractionKind::View, 5);
        d
    }

    #[test]
    fn temporal_split_holds_out_the_latest_movies_with_all_their_events() {
        let split = temporal_split(&dataset(), 2);
        assert_eq!(split.test.len(), 1, "b has too little history to test");
        assert_eq!(split.test[0].items, movies(&[2, 3]));
        let kept: Vec<(u32, u32)> = split
            .train
            .interactions
            .iter()
            .map(|i| (i.user, i.item))
            .collect();
        let a = split.train.find_user(&UserId::parse("a").unwrap()).unwrap();
        let m1 = split.train.find_item(movie(1)).unwrap();
        let b = split.train.find_user(&UserId::parse("b").unwrap()).unwrap();
        assert_eq!(kept, vec![(a, m1), (b, m1)]);
        assert_eq!(
            split.train.n_items(),
            3,
            "indices stay aligned with the input"
        );
    }

    /// Always recommends 1, 2, 3, 4 in that order (minus exclusions).
    struct Fixed;

    impl Recommender for Fixed {
        fn recommend(&self, _: &UserId, k: usize, exclude: &HashSet<MovieId>) -> Vec<ScoredItem> {
            (1..=4)
                .map(movie)
                .filter(|m| !exclude.contains(m))
                .take(k)
                .map(|movie_id| ScoredItem {
                    movie_id,
                    score: 1.0,
                })
                .collect()
        }
    }

    #[test]
    fn evaluate_excludes_training_items_and_averages() {
        let split = temporal_split(&dataset(), 2);
        // a trained on {1}: list is 2, 3 → both relevant.
        let m = evaluate(&Fixed, &split.train, &split.test, 2);
        assert_eq!(m.users, 1);
        assert_eq!(m.precision, 1.0);
        assert_eq!(m.recall, 1.0);
        assert_eq!(m.ndcg, 1.0);
        assert_eq!(m.map, 1.0);
        assert!((m.coverage - 2.0 / 3.0).abs() < 1e-12);
        let at = evaluate_at(&Fixed, &split.train, &split.test, &[1, 3]);
        assert_eq!(at[0].recall, 0.5);
        assert_eq!(at[1].precision, 2.0 / 3.0);
    }

    #[test]
    fn report_relative_change_against_baseline() {
        let metrics = |ndcg: f64| {
            vec![OfflineMetrics {
                k: 10,
                users: 1,
                precision: 0.1,
                recall: 0.2,
                ndcg,
                map: 0.0,
                coverage: 0.5,
            }]
        };
        let results = vec![
            AlgorithmResult {
                algorithm: "popularity".into(),
                fit_seconds: 0.1,
                metrics: metrics(0.2),
            },
            AlgorithmResult {
                algorithm: "knn".into(),
                fit_seconds: 1.0,
                metrics: metrics(0.3),
            },
        ];
        let report = compare("popularity", results.clone()).unwrap();
        let knn = report.row("knn").unwrap();
        assert!((knn.vs_baseline[0].ndcg.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(knn.vs_baseline[0].map, None, "baseline MAP is zero");
        let table = report.to_string();
        assert!(table.contains("+50.0%"), "{table}");
        assert!(compare("als", results).is_err());
    }
}
