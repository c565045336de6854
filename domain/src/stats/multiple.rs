//! Several arms and several metrics: p-values adjusted for how many tests
//! were run, so "one of three treatments won" is not a 14% false alarm.
//!
//! Holm–Bonferroni (Holm, "A simple sequentially rejective multiple test
//! procedure", 1979) controls the family-wise error rate across treatment
//! arms; Benjamini–Hochberg ("Controlling the false discovery rate", 1995)
//! the false discovery rate across metrics. Both as adjusted p-values, the
//! form statsmodels' `multipletests` reports, so a test is rejected at level
//! α exactly when its adjusted p-value is under α.

/// The defined p-values with their positions, smallest first (ties by position).
fn ascending(p: &[Option<f64>]) -> Vec<(usize, f64)> {
    let mut order: Vec<(usize, f64)> = p
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.filter(|v| v.is_finite()).map(|v| (i, v)))
        .collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    order
}

/// Holm's step-down adjusted p-values, in the input's order; `None` stays `None`
/// and does not count as a test.
pub fn holm(p: &[Option<f64>]) -> Vec<Option<f64>> {
    let order = ascending(p);
    let m = order.len();
    let mut out = vec![None; p.len()];
    let mut running = 0.0f64;
    for (rank, (i, v)) in order.into_iter().enumerate() {
        running = running.max(((m - rank) as f64 * v).min(1.0));
        out[i] = Some(running);
    }
    out
}

/// Benjamini–Hochberg step-up adjusted p-values, in the input's order.
pub fn benjamini_hochberg(p: &[Option<f64>]) -> Vec<Option<f64>> {
    let order = ascending(p);
    let m = order.len();
    let mut out = vec![None; p.len()];
    let mut running = 1.0f64;
    for (rank, (i, v)) in order.into_iter().enumerate().rev() {
        running = running.min((m as f64 * v / (rank + 1) as f64).min(1.0));
        out[i] = Some(running);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[Option<f64>], b: &[Option<f64>]) -> bool {
        a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() < 1e-12,
            (None, None) => true,
            _ => false,
        })
    }

    #[test]
    fn holm_matches_statsmodels() {
        // statsmodels.stats.multitest.multipletests([0.01, 0.04, 0.03, 0.2], method="holm")
        let got = holm(&[Some(0.01), Some(0.04), Some(0.03), Some(0.2)]);
        assert!(
            close(&got, &[Some(0.04), Some(0.09), Some(0.09), Some(0.2)]),
            "{got:?}"
        );
        assert_eq!(holm(&[None, Some(0.5)]), vec![None, Some(0.5)]);
        assert_eq!(holm(&[Some(0.6), Some(0.7)]), vec![Some(1.0), Some(1.0)]);
    }

    #[test]
    fn bh_matches_statsmodels() {
        // multipletests([0.01, 0.04, 0.03, 0.2], method="fdr_bh")
        let got = benjamini_hochberg(&[Some(0.01), Some(0.04), Some(0.03), Some(0.2)]);
        assert!(
            close(
                &got,
                &[
                    Some(0.04),
                    Some(0.05333333333333334),
                    Some(0.05333333333333334),
                    Some(0.2)
                ]
            ),
            "{got:?}"
        );
        assert_eq!(benjamini_hochberg(&[Some(0.02)]), vec![Some(0.02)]);
    }
}
