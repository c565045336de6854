#!/usr/bin/env python3
"""Reference values for domain::stats, computed independently with numpy, scipy
and statsmodels, so the Rust code is checked against tools people trust rather
than against itself.

Only the numbers are committed (domain/tests/fixtures/stats_reference.json);
domain/tests/stats_reference.rs asserts the Rust results match them to 1e-6
(relative). Re-run after changing a formula on purpose:

    python3 -m venv /tmp/statsvenv
    /tmp/statsvenv/bin/pip install scipy statsmodels numpy
    /tmp/statsvenv/bin/python scripts/make_stats_fixtures.py

CTR cases are simulated per user (seeded) and their delta-method variance is
computed from the raw per-user arrays; the fixture stores only the sufficient
statistics ClickHouse would return, which is exactly what the Rust side sees.
"""

import json
import math
from pathlib import Path

import numpy as np
import scipy
import statsmodels
from scipy import integrate
from scipy.stats import chisquare, norm
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    test_proportions_2indep,
)

OUT = Path(__file__).resolve().parent.parent / "domain/tests/fixtures/stats_reference.json"
Z = norm.ppf(0.975)
RNG = np.random.default_rng(20240601)


def f(x):
    """Plain float for JSON; refuse NaN/inf so a broken case cannot be committed."""
    x = float(x)
    assert math.isfinite(x), x
    return x


# ---------------------------------------------------------------- arms


def conversion_arm(users, conversions):
    counts = dict(
        users=users,
        impressions=0,
        clicks=0,
        conversions=conversions,
        sum_clicks_sq=0,
        sum_impressions_sq=0,
        sum_clicks_impressions=0,
    )
    p = conversions / users
    var = p * (1 - p) / users
    low, high = proportion_confint(conversions, users, alpha=0.05, method="normal")
    est = dict(mean=f(p), variance=f(var), std_error=f(math.sqrt(var)), ci_low=f(low), ci_high=f(high))
    return counts, est


def simulate_users(n, ctr_mean, concentration, imps_sampler):
    """Heterogeneous users: own CTR ~ Beta, impressions from imps_sampler, clicks ~ Binomial."""
    imps = imps_sampler(n)
    a = ctr_mean * concentration
    p = RNG.beta(a, concentration - a, n)
    clicks = RNG.binomial(imps, p)
    return clicks.astype(np.int64), imps.astype(np.int64)


def ctr_arm(clicks, imps):
    n = len(clicks)
    counts = dict(
        users=int(n),
        impressions=int(imps.sum()),
        clicks=int(clicks.sum()),
        conversions=0,
        sum_clicks_sq=int((clicks * clicks).sum()),
        sum_impressions_sq=int((imps * imps).sum()),
        sum_clicks_impressions=int((clicks * imps).sum()),
    )
    c = clicks.astype(float)
    i = imps.astype(float)
    mu_c, mu_i = c.mean(), i.mean()
    cov = np.cov(np.vstack([c, i]), ddof=1)
    s_cc, s_ii, s_ci = cov[0, 0], cov[1, 1], cov[0, 1]
    ratio = c.sum() / i.sum()
    var = (s_cc / mu_i**2 - 2 * mu_c * s_ci / mu_i**3 + mu_c**2 * s_ii / mu_i**4) / n
    # Same quantity via the linearised per-user residual c − R·i: guards the formula above.
    lin = np.var(c - ratio * i, ddof=1) / (n * mu_i**2)
    assert abs(var - lin) <= 1e-12 * var, (var, lin)
    se = math.sqrt(var)
    est = dict(mean=f(ratio), variance=f(var), std_error=f(se), ci_low=f(ratio - Z * se), ci_high=f(ratio + Z * se))
    return counts, est


# ---------------------------------------------------------------- comparison


def comparison(ctrl, treat, metric, ctrl_counts, treat_counts):
    c, t = ctrl["mean"], treat["mean"]
    vc, vt = ctrl["variance"], treat["variance"]
    d = t - c
    se = math.sqrt(vc + vt)
    z = d / se
    p_value = 2 * norm.sf(abs(z))
    low, high = d - Z * se, d + Z * se
    if metric == "conversion":
        # Independent route for proportions: statsmodels' unpooled Wald test and interval.
        res = test_proportions_2indep(
            treat_counts["conversions"], treat_counts["users"],
            ctrl_counts["conversions"], ctrl_counts["users"],
            method="wald", compare="diff", correction=False,
        )
        ci = confint_proportions_2indep(
            treat_counts["conversions"], treat_counts["users"],
            ctrl_counts["conversions"], ctrl_counts["users"],
            method="wald", compare="diff", correction=False,
        )
        assert abs(res.pvalue - p_value) <= 1e-9 * max(p_value, 1e-300) + 1e-15, (res.pvalue, p_value)
        p_value = res.pvalue
        low, high = ci
    rel = t / c - 1
    rel_se = math.sqrt(vt / c**2 + t**2 * vc / c**4)
    loss = se * norm.pdf(z) - d * norm.sf(z)
    # Closed form checked against direct integration of E[max(−D, 0)], D ~ N(d, se²).
    numeric, _ = integrate.quad(lambda x: -x * norm.pdf(x, loc=d, scale=se), -np.inf, 0, epsabs=1e-14, epsrel=1e-12)
    assert abs(numeric - loss) <= 1e-8 * max(loss, 1e-12), (numeric, loss)
    return dict(
        abs_lift=f(d),
        abs_std_error=f(se),
        abs_ci_low=f(low),
        abs_ci_high=f(high),
        rel_lift=f(rel),
        rel_ci_low=f(rel - Z * rel_se),
        rel_ci_high=f(rel + Z * rel_se),
        p_value=f(p_value),
        chance_to_beat=f(norm.cdf(z)),
        expected_loss=f(max(loss, 0.0)),
    )


def comparison_case(name, metric, ctrl, treat):
    (cc, ce), (tc, te) = ctrl, treat
    return dict(
        name=name,
        metric=metric,
        control=cc,
        treatment=tc,
        expected_control=ce,
        expected_treatment=te,
        expected=comparison(ce, te, metric, cc, tc),
    )


def comparison_cases():
    cases = [
        comparison_case("conversion_small_effect", "conversion", conversion_arm(1000, 100), conversion_arm(1000, 120)),
        comparison_case("conversion_large_n", "conversion", conversion_arm(50_000, 2_500), conversion_arm(50_000, 2_750)),
        comparison_case("conversion_unequal_n_treatment_worse", "conversion", conversion_arm(800, 64), conversion_arm(3_200, 201)),
        comparison_case("conversion_tiny_p_value", "conversion", conversion_arm(10_000, 500), conversion_arm(10_000, 800)),
    ]
    poisson_imps = lambda n: 1 + RNG.poisson(4.0, n)
    heavy_imps = lambda n: RNG.geometric(0.08, n)  # long tail of heavy users
    cases.append(comparison_case(
        "ctr_heterogeneous_users_lift",
        "ctr",
        ctr_arm(*simulate_users(2_000, 0.10, 20.0, poisson_imps)),
        ctr_arm(*simulate_users(2_000, 0.105, 20.0, poisson_imps)),
    ))
    cases.append(comparison_case(
        "ctr_heavy_tailed_impressions_unequal_n",
        "ctr",
        ctr_arm(*simulate_users(500, 0.05, 10.0, heavy_imps)),
        ctr_arm(*simulate_users(800, 0.05, 10.0, heavy_imps)),
    ))
    cases.append(comparison_case(
        "ctr_large_n_small_effect",
        "ctr",
        ctr_arm(*simulate_users(20_000, 0.08, 30.0, poisson_imps)),
        ctr_arm(*simulate_users(20_000, 0.082, 30.0, poisson_imps)),
    ))
    return cases


# ---------------------------------------------------------------- SRM


def srm_case(name, observed, weights):
    observed = np.asarray(observed, dtype=float)
    w = np.asarray(weights, dtype=float)
    expected = observed.sum() * w / w.sum()
    stat, p = chisquare(observed, f_exp=expected)
    return dict(
        name=name,
        observed=[int(o) for o in observed],
        weights=[float(x) for x in weights],
        statistic=f(stat),
        df=len(observed) - 1,
        p_value=f(p),
        mismatch=bool(p < 0.001),
        expected=[f(e) for e in expected],
    )


def srm_cases():
    return [
        srm_case("balanced", [5000, 5000], [0.5, 0.5]),
        srm_case("two_arm_mismatch", [5200, 4800], [0.5, 0.5]),
        srm_case("three_arm_ok", [3310, 3290, 3400], [1, 1, 1]),
        srm_case("ninety_ten_ok", [9040, 960], [0.9, 0.1]),
        srm_case("ninety_ten_borderline", [8940, 1060], [0.9, 0.1]),
        srm_case("four_arm_unnormalised_weights", [812, 1630, 2480, 5078], [1, 2, 2.5, 5]),
    ]


# ---------------------------------------------------------------- stratified


def stratified_expected(period_estimates, users, weighting):
    d = np.array([t["mean"] - c["mean"] for c, t in period_estimates])
    v = np.array([t["variance"] + c["variance"] for c, t in period_estimates])
    w = 1 / v if weighting == "inverse_variance" else np.asarray(users, dtype=float)
    est = (w * d).sum() / w.sum()
    se = math.sqrt((w * w * v).sum() / w.sum() ** 2)
    return dict(
        estimate=f(est),
        std_error=f(se),
        ci_low=f(est - Z * se),
        ci_high=f(est + Z * se),
        p_value=f(2 * norm.sf(abs(est / se))),
    )


def stratified_cases():
    cases = []
    # Weights 50/50 → 90/10 with a rising base rate; a small true lift.
    shares, rates = [0.5, 0.7, 0.8, 0.9], [0.05, 0.08, 0.11, 0.14]
    periods, ests, users = [], [], []
    for share, rate in zip(shares, rates):
        nt = round(6000 * share)
        nc = 6000 - nt
        c = conversion_arm(nc, int(RNG.binomial(nc, rate)))
        t = conversion_arm(nt, int(RNG.binomial(nt, rate * 1.05)))
        periods.append(dict(control=c[0], treatment=t[0]))
        ests.append((c[1], t[1]))
        users.append(nc + nt)
    for weighting in ["inverse_variance", "users"]:
        cases.append(dict(
            name=f"conversion_changing_weights_{weighting}",
            metric="conversion",
            weighting=weighting,
            periods=periods,
            expected=stratified_expected(ests, users, weighting),
        ))

    poisson_imps = lambda n: 1 + RNG.poisson(3.0, n)
    periods, ests, users = [], [], []
    for share, ctr in zip([0.5, 0.75, 0.9], [0.06, 0.07, 0.09]):
        nt = round(3000 * share)
        nc = 3000 - nt
        c = ctr_arm(*simulate_users(nc, ctr, 15.0, poisson_imps))
        t = ctr_arm(*simulate_users(nt, ctr, 15.0, poisson_imps))
        periods.append(dict(control=c[0], treatment=t[0]))
        ests.append((c[1], t[1]))
        users.append(nc + nt)
    for weighting in ["inverse_variance", "users"]:
        cases.append(dict(
            name=f"ctr_changing_weights_{weighting}",
            metric="ctr",
            weighting=weighting,
            periods=periods,
            expected=stratified_expected(ests, users, weighting),
        ))
    return cases


# ---------------------------------------------------------------- normal


def normal_cases():
    xs = [-6.0, -3.0, -1.959963984540054, -1.0, -0.5, 0.0, 0.3, 1.0, 1.6448536269514722, 2.5, 4.0, 6.0]
    return [dict(x=x, cdf=f(norm.cdf(x)), two_sided_p=f(min(1.0, 2 * norm.sf(abs(x))))) for x in xs]


def main():
    fixture = dict(
        generated_by="scripts/make_stats_fixtures.py",
        versions=dict(numpy=np.__version__, scipy=scipy.__version__, statsmodels=statsmodels.__version__),
        relative_tolerance=1e-6,
        comparisons=comparison_cases(),
        srm=srm_cases(),
        stratified=stratified_cases(),
        normal=normal_cases(),
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
