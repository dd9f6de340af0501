"""``benchmarks/bench_maros_meszaros.py``: which answers it lists as at the rounding of their own
terms (``at_rounding_floor``), and the rounding units it records (``rounding_units``)."""

import importlib.util
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_maros_meszaros", ROOT / "benchmarks" / "bench_maros_meszaros.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _row(primal, dual, gap, units=(1e-12, 1e-12, 1e-12)):
    return dict(primal=primal, dual=dual, gap=gap, primal_unit=units[0], dual_unit=units[1], gap_unit=units[2])


def test_rounding_floor_needs_every_failing_residual_at_a_unit_above_the_tolerance():
    # a gap of 3.7e-9 on terms whose unit is 3.1e-9: at the floor
    assert bench.at_rounding_floor(_row(1e-14, 1e-11, 3.7e-9, (1e-14, 1e-11, 3.1e-9)))
    # the same gap where the unit is 1e-11: a real error, not rounding
    assert not bench.at_rounding_floor(_row(1e-14, 1e-11, 3.7e-9, (1e-14, 1e-11, 1e-11)))
    # a residual more than twice its unit
    assert not bench.at_rounding_floor(_row(1e-14, 1e-11, 7e-9, (1e-14, 1e-11, 3e-9)))
    # two failing residuals: both must be at their floor
    assert bench.at_rounding_floor(_row(1e-14, 2.6e-9, 7.5e-8, (1e-14, 1.9e-9, 6e-8)))
    assert not bench.at_rounding_floor(_row(1e-14, 2.6e-9, 7.5e-8, (1e-14, 1e-12, 6e-8)))
    # nothing fails high accuracy, or the row has no units (an older CSV): not listed
    assert not bench.at_rounding_floor(_row(1e-14, 1e-11, 1e-10, (1, 1, 1)))
    assert not bench.at_rounding_floor(dict(primal=1e-14, dual=1e-11, gap=3.7e-9))


def test_rounding_units_are_the_unit_roundoff_times_the_absolute_sums():
    """``min ½x² − x`` s.t. ``x ≤ 0.5`` at ``x = 0.5, λ = 0.5``: ``a_p = |g||x| + |h| = 1``,
    ``a_d = |P||x| + |q| + |g|λ = 2``, ``a_g = |x||P||x| + |q||x| + |h|λ = 1``."""
    P, q = np.array([[1.0]]), np.array([-1.0])
    G, h = np.array([[1.0]]), np.array([0.5])
    u = float(np.finfo(np.float64).eps) / 2
    units = bench.rounding_units((P, q, G, h, None, None), np.array([0.5]), np.array([0.5]), None)
    np.testing.assert_allclose(units, [u, 2 * u, u], rtol=1e-12)
    assert bench.rounding_units((P, q, G, h, None, None), None, None, None) == (math.inf,) * 3
