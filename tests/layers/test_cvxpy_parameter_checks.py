"""``layers.CvxpyLayer``: values of ``symmetric`` / ``PSD`` / ``NSD`` parameters (stored reduced
by cvxpy, its upper triangle) are checked at call time — a value that violates the declared
structure is refused with the parameter and the batch elements named, never read as another
matrix."""

from __future__ import annotations

import cvxpy as cp
import pytest
import torch

import layers
from declarative.reference.cvxpy_problem import problem_reference
from declarative.testing import assert_close_to_cvxpy
from tests.helpers import seeded_randn as _randn

F64 = dict(dtype=torch.float64)
N = 4


def _psd_batch(B, rank=N, seed=0):
    M = _randn(B, N, rank, seed=seed)
    return M @ M.mT


def _quad_layer(attr):
    """``min ±½ xᵀPx + qᵀx`` over a box, ``P`` a parameter declared ``attr``."""
    x, P, q = cp.Variable(N), cp.Parameter((N, N), **{attr: True}), cp.Parameter(N)
    sign = -1.0 if attr == "NSD" else 1.0
    prob = cp.Problem(cp.Minimize(sign * 0.5 * cp.quad_form(x, P) + q @ x), [x >= -0.5, x <= 0.5])
    return layers.CvxpyLayer(prob, [P, q], [x]), P


def _symmetric_constraint_layer():
    """``min ‖x − a‖²  s.t.  S x ≤ 1``, ``S`` symmetric (not definite) in a constraint."""
    x, S, a = cp.Variable(N), cp.Parameter((N, N), symmetric=True), cp.Parameter(N)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [S @ x <= 1])
    return layers.CvxpyLayer(prob, [S, a], [x]), S


def test_asymmetric_value_of_a_symmetric_parameter_is_refused():
    layer, S = _symmetric_constraint_layer()
    M = _randn(5, N, N, seed=1)
    value = M + M.mT
    value[1, 0, 2] += 1e-3
    value[3, 3, 1] -= 0.5
    with pytest.raises(ValueError, match=rf"parameter {S.name()}: expected a symmetric matrix "
                                         rf"\(declared symmetric=True.*batch elements \[1, 3\]"):
        layer(value, _randn(N, seed=2))
    with pytest.raises(ValueError, match=r"not symmetric \(unbatched value\)"):
        layer(value[1], _randn(N, seed=2))


def test_symmetric_value_is_accepted_and_matches_cvxpy():
    """Within rounding (asymmetry 1e-15 of the scale) the value is accepted, and the layer
    agrees with cvxpy on it (forward and gradients along symmetric directions)."""
    layer, S = _symmetric_constraint_layer()
    x = layer.variables[0]
    M = 0.3 * _randn(3, N, N, seed=3)

    def reference(W, a):
        return problem_reference(layer.problem, [S, layer.parameters[1]], [x], [W + W.swapaxes(-1, -2), a])

    assert_close_to_cvxpy(lambda W, a: layer(W + W.mT, a), M, _randn(3, N, seed=5),
                          reference=reference, forward_tol=1e-7, gradient_tol=1e-4, directions=1)
    value = (M + M.mT) * (1 + 1e-15 * _randn(3, N, N, seed=6))             # rounding-level asymmetry
    assert bool((value != value.mT).any())
    layer(value, _randn(3, N, seed=5))


def test_indefinite_value_of_a_psd_parameter_is_refused():
    layer, P = _quad_layer("PSD")
    value = _psd_batch(6, seed=7)
    value[0] = _psd_batch(1, rank=N - 1, seed=8)[0]                     # λ_min = 0, then −1e-6·scale:
    value[0] -= 1e-6 * value[0].abs().max() * torch.eye(N, **F64)       # below −√eps·scale
    value[4] = -value[4]
    with pytest.raises(ValueError, match=rf"parameter {P.name()}: expected a positive semidefinite "
                                         rf"matrix \(declared PSD=True\).*batch elements \[0, 4\]"):
        layer(value, _randn(N, seed=8))


def test_psd_parameter_accepts_singular_and_rounding_level_values():
    layer, _ = _quad_layer("PSD")
    singular = _psd_batch(4, rank=2, seed=9)                             # λ_min = 0 (to rounding)
    (x,) = layer(singular, _randn(4, N, seed=10))
    assert x.shape == (4, N)
    scale = singular.abs().amax((-2, -1), keepdim=True)
    nudged = singular - 1e-12 * scale * torch.eye(N, **F64)             # far above −√eps·scale
    layer(nudged, _randn(4, N, seed=10))


def test_nsd_parameter_refuses_a_positive_definite_value():
    layer, P = _quad_layer("NSD")
    value = -_psd_batch(3, seed=11)
    (x,) = layer(value, _randn(3, N, seed=12))
    assert x.shape == (3, N)
    value[2] = -value[2]
    with pytest.raises(ValueError, match=rf"parameter {P.name()}: expected a negative semidefinite "
                                         rf"matrix \(declared NSD=True\).*batch elements \[2\]"):
        layer(value, _randn(3, N, seed=12))


def test_non_finite_values_are_left_to_the_solver():
    """A NaN element is not called asymmetric or indefinite here: the solver reports it."""
    layer, _ = _quad_layer("PSD")
    value = _psd_batch(3, seed=13)
    value[1, 0, 0] = float("nan")
    outs, sol = layer.__class__.solve(layer.__class__(layer.problem, layer.parameters, layer.variables,
                                                      check=False), value, _randn(N, seed=14))
    assert not bool(sol.solved[1]) and bool(sol.solved[0]) and bool(sol.solved[2])
