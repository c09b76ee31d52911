"""The committed statistics fixture is exactly what NumPy/SciPy compute.

`tests/stats_reference.rs` checks the Rust statistics against
`tests/fixtures/stats_reference.json`; this test recomputes that file with
`stats_reference.py` and requires every number to agree within 1e-12 (relative), so the
fixture cannot drift from its independent derivation or be edited by hand.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import stats_reference

RTOL = 1e-12


def _diff(committed: Any, computed: Any, where: str, out: list[str]) -> None:
    if isinstance(committed, dict) and isinstance(computed, dict):
        if committed.keys() != computed.keys():
            out.append(f"{where}: keys {sorted(committed)} != {sorted(computed)}")
            return
        for key in committed:
            _diff(committed[key], computed[key], f"{where}.{key}", out)
    elif isinstance(committed, list) and isinstance(computed, list):
        if len(committed) != len(computed):
            out.append(f"{where}: {len(committed)} items != {len(computed)}")
            return
        for i, (a, b) in enumerate(zip(committed, computed)):
            _diff(a, b, f"{where}[{i}]", out)
    elif isinstance(committed, bool) or isinstance(computed, bool):
        if committed is not computed:
            out.append(f"{where}: {committed!r} != {computed!r}")
    elif isinstance(committed, (int, float)) and isinstance(computed, (int, float)):
        if not math.isclose(committed, computed, rel_tol=RTOL, abs_tol=0.0):
            out.append(f"{where}: committed {committed!r}, SciPy computes {computed!r}")
    elif committed != computed:
        out.append(f"{where}: {committed!r} != {computed!r}")


@pytest.fixture(scope="module")
def computed() -> dict[str, Any]:
    # Building the reference also runs its cross-checks (closed forms against quadrature
    # and brentq inversion, BH against a hand computation, χ² against chi2.sf).
    return stats_reference.build_reference()


def test_committed_fixture_is_what_scipy_computes(computed: dict[str, Any]) -> None:
    committed = json.loads(stats_reference.FIXTURE.read_text(encoding="utf-8"))
    differences: list[str] = []
    _diff(committed, computed, "fixture", differences)
    assert not differences, (
        "tests/fixtures/stats_reference.json is stale; regenerate it with "
        "`python tests/python/stats_reference.py`:\n" + "\n".join(differences[:20])
    )


def test_fixture_covers_the_planned_cases(computed: dict[str, Any]) -> None:
    msprt = computed["msprt"]
    assert len(msprt) + len(computed["benjamini_hochberg"]) + len(computed["srm"]) >= 30
    assert any(c["control"]["n"] != c["treatment"]["n"] for c in msprt)
    assert any(c["control"]["n"] >= 1_000_000 for c in msprt)
    assert any(c["expected"]["ci_low"] is None for c in msprt)
    assert any(c["expected"]["p_value"] <= c["alpha"] for c in msprt)
    assert any(len(set(c["p"])) < len(c["p"]) for c in computed["benjamini_hochberg"])
    assert {len(c["observed"]) for c in computed["srm"]} >= {2, 3}


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("ratio", [1e-3, 0.3, 1.0, 7.0, 1e3])
def test_closed_form_interval_is_the_inverted_mixture_test(alpha: float, ratio: float) -> None:
    """{θ : Λ(θ̂ − θ) < 1/α} found numerically equals θ̂ ± the closed-form half-width."""
    v = 2.5e-5
    tau2 = ratio * v
    half = math.sqrt(
        2.0 * v * (v + tau2) / tau2 * (math.log(1.0 / alpha) + 0.5 * math.log((v + tau2) / v))
    )
    below, above = stats_reference.half_width_by_inversion(v, tau2, alpha)
    assert math.isclose(below, half, rel_tol=1e-9)
    assert math.isclose(above, half, rel_tol=1e-9)


@pytest.mark.parametrize("theta_hat", [0.0, 0.002, -0.01, 0.05])
def test_closed_form_likelihood_ratio_is_the_mixture_integral(theta_hat: float) -> None:
    v, tau2 = 1.8e-5, 1e-4
    closed = stats_reference.log_lambda_closed(theta_hat, v, tau2)
    numeric = stats_reference.log_lambda_integral(theta_hat, v, tau2)
    assert math.isclose(closed, numeric, rel_tol=1e-9, abs_tol=1e-12)
