"""Reference values for `src/experiments/stats.rs`, computed independently with NumPy/SciPy.

Run from the repository root to (re)write the fixture the Rust tests read:

    target/pyenv/bin/python tests/python/stats_reference.py

Nothing here is ported from the Rust code. Each quantity is computed from its definition:

* mSPRT, normal mixture (Johari, Koomen, Pekelis & Walsh, "Always Valid Inference", 2017,
  two-sample normal case): the mixture likelihood ratio

      Λ(θ̂) = ∫ φ(θ̂; θ, V) / φ(θ̂; 0, V) dN(θ; 0, τ²) = sqrt(V/(V+τ²)) exp(θ̂²τ² / (2V(V+τ²)))

  with the plug-in variance V = s²_c/n_c + s²_t/n_t; the always-valid p-value is
  min(1, 1/Λ) and the (1 − α) always-valid interval is {θ : Λ(θ̂ − θ) < 1/α}, in closed form
  θ̂ ± sqrt(2V(V+τ²)/τ² · (ln(1/α) + ½ ln((V+τ²)/V))). The closed forms are what the fixture
  stores; every case is also checked against the defining integral (scipy.integrate.quad
  over scipy.stats.norm densities) and the interval against a numerical inversion of that
  integral (scipy.optimize.brentq).
* Benjamini–Hochberg (1995) step-up adjusted p-values: scipy.stats.false_discovery_control,
  checked against a hand computation.
* Sample-ratio mismatch: Pearson's χ² goodness of fit, scipy.stats.chisquare.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import integrate, optimize, stats

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "stats_reference.json"

# How closely the closed forms must agree with the numerical integral / inversion.
CROSS_CHECK_RTOL = 1e-8


# --------------------------------------------------------------------------------------------
# Per-arm data (per-user values), built deterministically.
# --------------------------------------------------------------------------------------------


def binary_values(n: int, conversions: int) -> np.ndarray:
    """0/1 per user (conversion, task_completed)."""
    values = np.zeros(n)
    values[:conversions] = 1.0
    return values


def rating_values(counts: dict[float, int]) -> np.ndarray:
    """Per-user values with the given multiplicities (CSAT 1..5, thumbs ±1)."""
    return np.concatenate(
        [np.full(count, value, dtype=float) for value, count in counts.items()]
    )


def revenue_values(n: int, payers: float, sigma: float, median: float) -> np.ndarray:
    """Zero-inflated log-normal revenue: a fraction `payers` of users pay, the rest are 0.

    Values are the quantiles of the mixture at the midpoints (i + ½)/n, a deterministic,
    perfectly representative sample (no random generator, so the fixture is reproducible).
    """
    u = (np.arange(n) + 0.5) / n
    zero_share = 1.0 - payers
    paying = u >= zero_share
    values = np.zeros(n)
    values[paying] = stats.lognorm.ppf(
        (u[paying] - zero_share) / payers, s=sigma, scale=median
    )
    return values


def arm_summary(values: np.ndarray) -> dict[str, Any]:
    """What the Rust side receives (n, Σx, Σx²) and what it must derive (mean, s²)."""
    n = int(values.size)
    if n == 0:
        mean, variance = 0.0, 0.0
    else:
        mean = float(np.mean(values))
        # Sample variance; zero for a single user (no spread can be estimated).
        variance = float(np.var(values, ddof=1)) if n > 1 else 0.0
    return {
        "n": n,
        "sum": math.fsum(values.tolist()),
        "sum_sq": math.fsum((values * values).tolist()),
        "mean": mean,
        "variance": variance,
    }


# --------------------------------------------------------------------------------------------
# mSPRT
# --------------------------------------------------------------------------------------------


def mixture_tau2(control_mean: float, control_variance: float, relative_effect: float) -> float:
    """Product choice for the mixing scale: τ = relative_effect·|control mean|, floored at
    1 % of the control's standard deviation (and 1e-9)."""
    tau = max(
        relative_effect * abs(control_mean), 0.01 * math.sqrt(control_variance), 1e-9
    )
    return tau * tau


def log_lambda_closed(theta_hat: float, v: float, tau2: float) -> float:
    """ln Λ, closed form of the normal-mixture likelihood ratio (Johari et al.)."""
    return 0.5 * math.log(v / (v + tau2)) + theta_hat**2 * tau2 / (
        2.0 * v * (v + tau2)
    )


def log_lambda_integral(theta_hat: float, v: float, tau2: float) -> float:
    """ln Λ from its definition, ∫ f_θ(θ̂)/f_0(θ̂) h(θ) dθ with h = N(0, τ²), by quadrature.

    For the normal model the density ratio is f_θ(θ̂)/f_0(θ̂) = exp((θ θ̂ − θ²/2)/V) (the
    quadratic terms in θ̂ cancel exactly, which also avoids the cancellation of two large
    log-densities). The integrand is evaluated in log space and rescaled by its value at its
    mode so large ratios neither overflow nor lose precision.
    """
    log_norm_const = -0.5 * math.log(2.0 * math.pi * tau2)

    def log_integrand(theta: float) -> float:
        log_ratio = (theta * theta_hat - 0.5 * theta * theta) / v
        log_prior = log_norm_const - 0.5 * theta * theta / tau2
        return log_ratio + log_prior

    # Where the integrand peaks and how wide it is; only used to place the quadrature.
    mode = theta_hat * tau2 / (v + tau2)
    width = math.sqrt(v * tau2 / (v + tau2))
    peak = log_integrand(mode)
    value, _ = integrate.quad(
        lambda theta: math.exp(log_integrand(theta) - peak),
        mode - 40.0 * width,
        mode + 40.0 * width,
        points=[mode],
        epsabs=0.0,
        epsrel=1e-12,
        limit=200,
    )
    return peak + math.log(value)


def half_width_by_inversion(v: float, tau2: float, alpha: float) -> tuple[float, float]:
    """Distances below and above θ̂ where Λ(θ̂ − θ) reaches 1/α, by brentq on the integral."""
    target = math.log(1.0 / alpha)
    guess = math.sqrt(v)
    roots = []
    for sign in (-1.0, 1.0):

        def f(d: float, sign: float = sign) -> float:
            return log_lambda_integral(sign * d, v, tau2) - target

        hi = guess
        while f(hi) < 0.0:
            hi *= 2.0
        roots.append(
            optimize.brentq(f, 0.0, hi, xtol=1e-15 * guess, rtol=4 * np.finfo(float).eps)
        )
    return roots[0], roots[1]


def close(a: float, b: float, rtol: float) -> bool:
    return abs(a - b) <= rtol * max(abs(a), abs(b))


def msprt_case(
    name: str,
    control: np.ndarray,
    treatment: np.ndarray,
    alpha: float = 0.05,
    relative_effect: float | None = 0.1,
    tau2: float | None = None,
) -> dict[str, Any]:
    c, t = arm_summary(control), arm_summary(treatment)
    if tau2 is None:
        assert relative_effect is not None
        tau2_used = mixture_tau2(c["mean"], c["variance"], relative_effect)
    else:
        tau2_used = tau2
    diff = t["mean"] - c["mean"]
    v = (
        c["variance"] / c["n"] + t["variance"] / t["n"]
        if c["n"] > 0 and t["n"] > 0
        else 0.0
    )
    if v > 0.0 and tau2_used > 0.0:
        log_lambda = log_lambda_closed(diff, v, tau2_used)
        p_value = min(1.0, math.exp(-log_lambda))
        half = math.sqrt(
            2.0
            * v
            * (v + tau2_used)
            / tau2_used
            * (math.log(1.0 / alpha) + 0.5 * math.log((v + tau2_used) / v))
        )
        ci_low, ci_high = diff - half, diff + half

        # Cross-checks against the definitions.
        numeric = log_lambda_integral(diff, v, tau2_used)
        assert abs(numeric - log_lambda) <= CROSS_CHECK_RTOL * max(1.0, abs(log_lambda)), (
            name,
            numeric,
            log_lambda,
        )
        below, above = half_width_by_inversion(v, tau2_used, alpha)
        assert close(below, half, CROSS_CHECK_RTOL), (name, below, half)
        assert close(above, half, CROSS_CHECK_RTOL), (name, above, half)
        # The interval excludes 0 exactly when p ≤ α.
        assert (p_value <= alpha) == (ci_low > 0.0 or ci_high < 0.0), name
    else:
        # No variance (or no prior): no evidence either way, an unbounded interval.
        p_value, ci_low, ci_high = 1.0, None, None
    strip = ("n", "sum", "sum_sq")
    return {
        "name": name,
        "control": {k: c[k] for k in strip},
        "treatment": {k: t[k] for k in strip},
        "alpha": alpha,
        "relative_effect": relative_effect if tau2 is None else None,
        "tau2_given": tau2,
        "expected": {
            "control_mean": c["mean"],
            "control_variance": c["variance"],
            "treatment_mean": t["mean"],
            "treatment_variance": t["variance"],
            "tau2": tau2_used,
            "diff": diff,
            "p_value": p_value,
            # null = unbounded (−∞ / +∞).
            "ci_low": ci_low,
            "ci_high": ci_high,
        },
    }


def msprt_cases() -> list[dict[str, Any]]:
    b = binary_values
    return [
        msprt_case("binary small n, equal n", b(200, 20), b(200, 30)),
        msprt_case("binary identical arms", b(1000, 100), b(1000, 100)),
        msprt_case("binary 10% vs 12%, n=10000", b(10_000, 1000), b(10_000, 1200)),
        msprt_case("binary 10% vs 10.3%, n=10000", b(10_000, 1000), b(10_000, 1030)),
        msprt_case("binary unequal n 1:3", b(5000, 500), b(15_000, 1650)),
        msprt_case("binary large n, small lift", b(1_000_000, 100_000), b(1_000_000, 100_600)),
        msprt_case("binary negative effect", b(20_000, 2400), b(20_000, 2150)),
        msprt_case("binary low base rate 0.5%", b(50_000, 250), b(50_000, 330)),
        msprt_case("binary zero conversions both arms", b(500, 0), b(500, 0)),
        msprt_case("binary all converted both arms", b(100, 100), b(100, 100)),
        msprt_case("binary control without conversions", b(400, 0), b(400, 30)),
        msprt_case("binary empty treatment", b(300, 30), b(0, 0)),
        msprt_case("single-user treatment", b(50, 10), b(1, 1)),
        msprt_case(
            "binary explicit tau2, alpha 0.10",
            b(3000, 330),
            b(3000, 390),
            alpha=0.10,
            tau2=1e-4,
        ),
        msprt_case(
            "binary explicit tau2, alpha 0.01",
            b(8000, 800),
            b(8000, 920),
            alpha=0.01,
            tau2=4e-4,
        ),
        msprt_case(
            "revenue zero-inflated, equal n",
            revenue_values(4000, 0.08, 1.0, 20.0),
            revenue_values(4000, 0.10, 1.0, 20.0),
        ),
        msprt_case(
            "revenue zero-inflated, unequal n",
            revenue_values(12_000, 0.05, 1.2, 35.0),
            revenue_values(3000, 0.05, 1.2, 42.0),
        ),
        msprt_case(
            "csat small n",
            rating_values({1.0: 3, 2.0: 4, 3.0: 9, 4.0: 14, 5.0: 10}),
            rating_values({1.0: 1, 2.0: 3, 3.0: 8, 4.0: 15, 5.0: 18}),
        ),
        msprt_case(
            "csat large n",
            rating_values({1.0: 150, 2.0: 250, 3.0: 700, 4.0: 1400, 5.0: 1500}),
            rating_values({1.0: 120, 2.0: 230, 3.0: 650, 4.0: 1450, 5.0: 1550}),
        ),
        msprt_case(
            "thumbs mean near zero (sd floor of tau)",
            rating_values({-1.0: 1002, 1.0: 998}),
            rating_values({-1.0: 900, 1.0: 1100}),
        ),
        msprt_case(
            "hallucination rate, lower is better",
            binary_values(2500, 200),
            binary_values(2400, 150),
        ),
        msprt_case(
            "constant csat both arms (zero variance)",
            rating_values({5.0: 60}),
            rating_values({5.0: 80}),
        ),
        msprt_case(
            "constant control, varying treatment",
            rating_values({4.0: 60}),
            rating_values({3.0: 20, 5.0: 60}),
        ),
    ]


# --------------------------------------------------------------------------------------------
# Benjamini–Hochberg
# --------------------------------------------------------------------------------------------


def bh_by_hand(p: list[float]) -> list[float]:
    """Step-up: adjusted p_(i) = min_{j ≥ i} min(1, m p_(j) / j), back in the given order."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


def bh_case(name: str, p: list[float]) -> dict[str, Any]:
    scipy_adjusted = [float(x) for x in stats.false_discovery_control(np.array(p), method="bh")]
    hand = bh_by_hand(p)
    for a, h in zip(scipy_adjusted, hand):
        assert abs(a - h) <= 1e-15 * max(1.0, abs(h)), (name, scipy_adjusted, hand)
    return {"name": name, "p": p, "adjusted": scipy_adjusted}


def bh_cases() -> list[dict[str, Any]]:
    return [
        bh_case("hand example", [0.01, 0.04, 0.03, 0.2]),
        bh_case("single p-value", [0.03]),
        bh_case("ties", [0.02, 0.02, 0.02, 0.5, 0.01, 0.02]),
        bh_case("all equal", [0.04, 0.04, 0.04, 0.04, 0.04]),
        bh_case("zeros and ones", [0.0, 1.0, 0.0, 0.3, 1.0]),
        bh_case(
            "metrics x variations, unsorted",
            [0.0004, 0.21, 0.011, 0.049, 0.9, 0.0031, 0.033, 0.72, 0.011, 0.06, 0.0001, 0.5],
        ),
        bh_case("capped at one", [0.6, 0.7, 0.8, 0.95]),
    ]


# --------------------------------------------------------------------------------------------
# Sample-ratio mismatch
# --------------------------------------------------------------------------------------------


def srm_case(name: str, observed: list[int], shares: list[float]) -> dict[str, Any]:
    total = sum(observed)
    share_sum = sum(shares)
    expected = np.array([total * s / share_sum for s in shares])
    result = stats.chisquare(np.array(observed, dtype=float), f_exp=expected)
    chi2, p = float(result.statistic), float(result.pvalue)
    # Hand check of the statistic and of the χ²(k − 1) survival function.
    hand = math.fsum((o - e) ** 2 / e for o, e in zip(observed, expected))
    assert close(chi2, hand, 1e-12), (name, chi2, hand)
    assert close(p, float(stats.chi2.sf(hand, len(observed) - 1)), 1e-12), name
    return {"name": name, "observed": observed, "shares": shares, "chi2": chi2, "p_value": p}


def srm_cases() -> list[dict[str, Any]]:
    return [
        srm_case("2 arms, balanced", [5000, 5030], [0.5, 0.5]),
        srm_case("2 arms, a third of one arm dropped", [5000, 3333], [0.5, 0.5]),
        srm_case("2 arms, borderline", [10_000, 10_350], [0.5, 0.5]),
        srm_case("2 arms, 90/10 allocation", [9020, 980], [0.9, 0.1]),
        srm_case("2 arms, shares in percent", [412, 388], [50.0, 50.0]),
        srm_case("3 arms, 50/30/20 as planned", [5012, 2987, 2001], [0.5, 0.3, 0.2]),
        srm_case("3 arms, 50/30/20 mismatched", [5200, 2700, 2100], [0.5, 0.3, 0.2]),
        srm_case("3 arms, unnormalised shares", [1010, 995, 2040], [1.0, 1.0, 2.0]),
    ]


# --------------------------------------------------------------------------------------------


def build_reference() -> dict[str, Any]:
    return {
        "comment": "Generated by tests/python/stats_reference.py (NumPy/SciPy); do not edit.",
        "msprt": msprt_cases(),
        "benjamini_hochberg": bh_cases(),
        "srm": srm_cases(),
    }


def render(reference: dict[str, Any]) -> str:
    return json.dumps(reference, indent=1, allow_nan=False, ensure_ascii=False) + "\n"


def main() -> None:
    reference = build_reference()
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(render(reference), encoding="utf-8")
    cases = sum(len(v) for v in reference.values() if isinstance(v, list))
    print(f"wrote {cases} cases to {FIXTURE}")


if __name__ == "__main__":
    main()
