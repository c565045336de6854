//! domain::stats against reference values from numpy, scipy and statsmodels.
//!
//! The numbers come from `scripts/make_stats_fixtures.py`; only they are
//! committed, so this test needs no Python. A mismatch means either the Rust
//! formula or the documented one changed: regenerate only on purpose.

use domain::stats::{
    compare, estimate, sample_ratio_mismatch, stratified_lift, ArmCounts, Comparison, Metric,
    MetricEstimate, PeriodCounts, Weighting,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    relative_tolerance: f64,
    comparisons: Vec<ComparisonCase>,
    srm: Vec<SrmCase>,
    stratified: Vec<StratifiedCase>,
    normal: Vec<NormalCase>,
}

#[derive(Deserialize)]
struct ExpectedEstimate {
    mean: f64,
    variance: f64,
    std_error: f64,
    ci_low: f64,
    ci_high: f64,
}

#[derive(Deserialize)]
struct ExpectedComparison {
    abs_lift: f64,
    abs_std_error: f64,
    abs_ci_low: f64,
    abs_ci_high: f64,
    rel_lift: f64,
    rel_ci_low: f64,
    rel_ci_high: f64,
    p_value: f64,
    chance_to_beat: f64,
    expected_loss: f64,
}

#[derive(Deserialize)]
struct ComparisonCase {
    name: String,
    metric: Metric,
    control: ArmCounts,
    treatment: ArmCounts,
    expected_control: ExpectedEstimate,
    expected_treatment: ExpectedEstimate,
    expected: ExpectedComparison,
}

#[derive(Deserialize)]
struct SrmCase {
    name: String,
    observed: Vec<u64>,
    weights: Vec<f64>,
    statistic: f64,
    df: u64,
    p_value: f64,
    mismatch: bool,
    expected: Vec<f64>,
}

#[derive(Deserialize)]
struct ExpectedStratified {
    estimate: f64,
    std_error: f64,
    ci_low: f64,
    ci_high: f64,
    p_value: f64,
}

#[derive(Deserialize)]
struct StratifiedCase {
    name: String,
    metric: Metric,
    weighting: Weighting,
    periods: Vec<PeriodCounts>,
    expected: ExpectedStratified,
}

#[derive(Deserialize)]
struct NormalCase {
    x: f64,
    cdf: f64,
    two_sided_p: f64,
}

fn load() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stats_reference.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture readable");
    serde_json::from_str(&text).expect("fixture parses")
}

/// Relative agreement, with a floor so values that are 0 up to rounding
/// (tiny tail probabilities, CI ends near 0) compare absolutely.
struct Checker {
    rel: f64,
    failures: Vec<String>,
}

impl Checker {
    fn check(&mut self, what: String, got: Option<f64>, want: f64) {
        match got {
            Some(g) if (g - want).abs() <= self.rel * want.abs() + 1e-12 => {}
            _ => self
                .failures
                .push(format!("{what}: got {got:?}, want {want}")),
        }
    }

    fn estimate(&mut self, what: &str, got: &MetricEstimate, want: &ExpectedEstimate) {
        self.check(format!("{what}.mean"), got.mean, want.mean);
        self.check(format!("{what}.variance"), got.variance, want.variance);
        self.check(format!("{what}.std_error"), got.std_error, want.std_error);
        self.check(format!("{what}.ci_low"), got.ci_low, want.ci_low);
        self.check(format!("{what}.ci_high"), got.ci_high, want.ci_high);
    }

    fn comparison(&mut self, what: &str, got: &Comparison, want: &ExpectedComparison) {
        self.check(format!("{what}.abs_lift"), got.abs_lift, want.abs_lift);
        self.check(
            format!("{what}.abs_std_error"),
            got.abs_std_error,
            want.abs_std_error,
        );
        self.check(
            format!("{what}.abs_ci.low"),
            got.abs_ci.map(|c| c.low),
            want.abs_ci_low,
        );
        self.check(
            format!("{what}.abs_ci.high"),
            got.abs_ci.map(|c| c.high),
            want.abs_ci_high,
        );
        self.check(format!("{what}.rel_lift"), got.rel_lift, want.rel_lift);
        self.check(
            format!("{what}.rel_ci.low"),
            got.rel_ci.map(|c| c.low),
            want.rel_ci_low,
        );
        self.check(
            format!("{what}.rel_ci.high"),
            got.rel_ci.map(|c| c.high),
            want.rel_ci_high,
        );
        self.check(format!("{what}.p_value"), got.p_value, want.p_value);
        self.check(
            format!("{what}.chance_to_beat"),
            got.chance_to_beat,
            want.chance_to_beat,
        );
        self.check(
            format!("{what}.expected_loss"),
            got.expected_loss,
            want.expected_loss,
        );
    }

    fn finish(self, count: usize) {
        assert!(count > 0, "fixture has no cases");
        assert!(
            self.failures.is_empty(),
            "{} mismatches:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

fn checker(fixture: &Fixture) -> Checker {
    assert!(fixture.relative_tolerance <= 1e-6);
    Checker {
        rel: fixture.relative_tolerance,
        failures: Vec::new(),
    }
}

#[test]
fn stats_reference_estimates_and_comparisons() {
    let fixture = load();
    let mut ck = checker(&fixture);
    for case in &fixture.comparisons {
        let c = estimate(case.metric, &case.control).expect("valid control");
        let t = estimate(case.metric, &case.treatment).expect("valid treatment");
        ck.estimate(
            &format!("{}.control", case.name),
            &c,
            &case.expected_control,
        );
        ck.estimate(
            &format!("{}.treatment", case.name),
            &t,
            &case.expected_treatment,
        );
        ck.comparison(&case.name, &compare(&c, &t), &case.expected);
    }
    ck.finish(fixture.comparisons.len());
}

#[test]
fn stats_reference_sample_ratio_mismatch() {
    let fixture = load();
    let mut ck = checker(&fixture);
    for case in &fixture.srm {
        let got = sample_ratio_mismatch(&case.observed, &case.weights).expect("valid SRM input");
        ck.check(
            format!("{}.statistic", case.name),
            Some(got.statistic),
            case.statistic,
        );
        ck.check(
            format!("{}.p_value", case.name),
            Some(got.p_value),
            case.p_value,
        );
        for (i, (g, w)) in got.expected.iter().zip(&case.expected).enumerate() {
            ck.check(format!("{}.expected[{i}]", case.name), Some(*g), *w);
        }
        assert_eq!(got.df, case.df, "{}", case.name);
        assert_eq!(got.mismatch, case.mismatch, "{}", case.name);
    }
    ck.finish(fixture.srm.len());
}

#[test]
fn stats_reference_stratified_lift() {
    let fixture = load();
    let mut ck = checker(&fixture);
    for case in &fixture.stratified {
        let got =
            stratified_lift(case.metric, &case.periods, case.weighting).expect("valid periods");
        let want = &case.expected;
        let n = &case.name;
        assert_eq!(got.periods_used, case.periods.len(), "{n}");
        assert_eq!(got.method, case.weighting.method_name(), "{n}");
        ck.check(format!("{n}.estimate"), got.estimate, want.estimate);
        ck.check(format!("{n}.std_error"), got.std_error, want.std_error);
        ck.check(format!("{n}.ci.low"), got.ci.map(|c| c.low), want.ci_low);
        ck.check(format!("{n}.ci.high"), got.ci.map(|c| c.high), want.ci_high);
        ck.check(format!("{n}.p_value"), got.p_value, want.p_value);
    }
    ck.finish(fixture.stratified.len());
}

#[test]
fn stats_reference_normal_tail_probabilities() {
    // Φ reaches the public API as chance_to_beat and the p-value; build a
    // comparison whose difference is exactly N(x, 1) to read them off.
    let fixture = load();
    let mut ck = checker(&fixture);
    let arm = |mean: f64| MetricEstimate {
        n: 1,
        mean: Some(mean),
        variance: Some(0.5),
        std_error: Some(0.5f64.sqrt()),
        ci_low: None,
        ci_high: None,
    };
    for case in &fixture.normal {
        let r = compare(&arm(0.0), &arm(case.x));
        ck.check(format!("cdf({})", case.x), r.chance_to_beat, case.cdf);
        ck.check(format!("p({})", case.x), r.p_value, case.two_sided_p);
    }
    ck.finish(fixture.normal.len());
}
