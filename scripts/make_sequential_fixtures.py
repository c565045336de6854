#!/usr/bin/env python3
"""Reference values for domain::stats' confidence sequences, computed
independently with numpy from Howard et al.'s two-sided normal-mixture
boundary on the *sum* scale (Howard, Ramdas, McAuliffe, Sekhon 2021, eq. (14)
with the normal mixture, V_t = n s2):

    u(V) = sqrt((V + r) * log((V + r) / (r * alpha**2)))

divided by n for the mean, with the mixing variance r = s2 / rho**2 and rho
chosen, as GrowthBook does, for the tuning sample size N*. The Rust side
uses the algebraically equal per-mean form of Waudby-Smith et al.; the test
domain/tests/sequential_reference.rs asserts agreement to 1e-9 (relative).

Only the numbers are committed (domain/tests/fixtures/sequential_reference.json).
Re-run after changing the formula on purpose:

    python3 -m venv /tmp/statsvenv && /tmp/statsvenv/bin/pip install numpy
    /tmp/statsvenv/bin/python scripts/make_sequential_fixtures.py
"""

import json
from pathlib import Path

import numpy as np

CASES = 250
rng = np.random.default_rng(20261208)


def rho_for(alpha, tuning):
    # GrowthBook's gbstats: rho minimising the boundary at n = N*.
    return np.sqrt((-2.0 * np.log(alpha) + np.log(-2.0 * np.log(alpha) + 1.0)) / tuning)


def half_width(variance, n, alpha, tuning):
    s2 = variance * n  # variance of one unit
    r = s2 / rho_for(alpha, tuning) ** 2
    v = n * s2  # intrinsic time of the sum
    return np.sqrt((v + r) * np.log((v + r) / (r * alpha**2))) / n


cases = []
for i in range(CASES):
    alpha = 0.05 if i % 2 == 0 else float(rng.choice([0.01, 0.1, rng.uniform(0.001, 0.2)]))
    variance = float(10 ** rng.uniform(-9, -1))
    n = float(np.floor(10 ** rng.uniform(1, 7)))
    tuning = float(10 ** rng.uniform(2, 6))
    estimate = float(rng.normal(0.0, 0.05))
    h = float(half_width(variance, n, alpha, tuning))
    cases.append(
        {
            "alpha": alpha,
            "variance": variance,
            "n": n,
            "tuning": tuning,
            "estimate": estimate,
            "half_width": h,
            "low": estimate - h,
            "high": estimate + h,
        }
    )

out = Path(__file__).resolve().parent.parent / "domain/tests/fixtures/sequential_reference.json"
out.write_text(
    json.dumps(
        {
            "generator": "scripts/make_sequential_fixtures.py",
            "numpy": np.__version__,
            "relative_tolerance": 1e-9,
            "cases": cases,
        },
        indent=1,
    )
    + "\n"
)
print(f"wrote {len(cases)} cases to {out}")
