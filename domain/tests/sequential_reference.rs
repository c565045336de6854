//! domain::stats' confidence sequences against an independent numpy
//! implementation of the same boundary (Howard et al.'s normal mixture on
//! the sum scale; the Rust side uses the per-mean form). The numbers come
//! from `scripts/make_sequential_fixtures.py`; only they are committed.

use domain::stats::{sequential_half_width, sequential_lift};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    relative_tolerance: f64,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    alpha: f64,
    variance: f64,
    n: f64,
    tuning: f64,
    estimate: f64,
    half_width: f64,
    low: f64,
    high: f64,
}

fn close(got: f64, want: f64, tolerance: f64) -> bool {
    (got - want).abs() <= tolerance * want.abs().max(f64::MIN_POSITIVE)
}

#[test]
fn confidence_sequences_match_numpy() {
    let fixture: Fixture =
        serde_json::from_str(include_str!("fixtures/sequential_reference.json")).unwrap();
    assert!(fixture.cases.len() >= 200);
    let tol = fixture.relative_tolerance;
    let mut worst = 0.0f64;
    for (i, c) in fixture.cases.iter().enumerate() {
        let h = sequential_half_width(c.variance, c.n, c.alpha, c.tuning).unwrap();
        worst = worst.max((h - c.half_width).abs() / c.half_width);
        assert!(
            close(h, c.half_width, tol),
            "case {i}: {h} vs {}",
            c.half_width
        );
        if c.alpha == 0.05 {
            let lift = sequential_lift(
                Some((c.estimate, c.variance.sqrt())),
                None,
                c.n as u64,
                c.tuning,
            );
            let ci = lift.abs_ci.unwrap();
            let scale = c.half_width;
            assert!((ci.low - c.low).abs() <= tol * scale, "case {i} low");
            assert!((ci.high - c.high).abs() <= tol * scale, "case {i} high");
        }
    }
    eprintln!(
        "{} cases, worst relative difference {worst:.2e}",
        fixture.cases.len()
    );
}
