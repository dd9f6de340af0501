"""``layers.CvxpyLayer`` and ``layers.ArgminQPSolver``: a zoo of DPP problems against cvxpy
(forward) and finite differences of cvxpy solutions (gradients), agreement with ``QPLayer``, the
one-sided gradient at a degenerate point, the cvxpylayers backend, and construction / call errors."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import layers
from contrastive import Contrastive
from declarative.reference.cvxpy_problem import problem_reference
from declarative.reference.qp import degenerate_qp, random_qp
from declarative.testing import assert_close_to_cvxpy
from tests.helpers import seeded_randn as _randn

F64 = dict(dtype=torch.float64)


# -- the zoo: (problem, parameters, variables, parameter values) -----------------------------------
def constrained_least_squares():
    """min ‖Fx − g‖²  s.t.  Cx = d, −1 ≤ x ≤ 1 (F shared, g and d batched)."""
    n, k, p = 5, 8, 2
    x = cp.Variable(n)
    F, g, C, d = cp.Parameter((k, n)), cp.Parameter(k), cp.Parameter((p, n)), cp.Parameter(p)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(F @ x - g)), [C @ x == d, x >= -1, x <= 1])
    values = [_randn(k, n, seed=1), _randn(4, k, seed=2), _randn(p, n, seed=3), 0.3 * _randn(4, p, seed=4)]
    return prob, [F, g, C, d], [x], values


def nonnegative_least_squares():
    n, k = 4, 7
    x = cp.Variable(n)
    F, g = cp.Parameter((k, n)), cp.Parameter(k)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(F @ x - g)), [x >= 0])
    return prob, [F, g], [x], [_randn(3, k, n, seed=5), _randn(3, k, seed=6)]


def box_qp():
    n = 5
    M = np.random.default_rng(0).standard_normal((n, n))
    Q = M @ M.T / n + 0.1 * np.eye(n)
    x = cp.Variable(n)
    q, lo, hi = cp.Parameter(n), cp.Parameter(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, Q) + q @ x), [x >= lo, x <= hi])
    return prob, [q, lo, hi], [x], [2 * _randn(4, n, seed=7), -torch.ones(n, **F64) + 0.1 * _randn(n, seed=8),
                                    torch.ones(n, **F64)]


def unique_lp():
    """min cᵀx  s.t.  Gx ≤ h, −2 ≤ x ≤ 2: a generic c gives a unique vertex."""
    n, m = 3, 5
    x = cp.Variable(n)
    c, G, h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    prob = cp.Problem(cp.Minimize(c @ x), [G @ x <= h, x >= -2, x <= 2])
    return prob, [c, G, h], [x], [_randn(3, n, seed=9), _randn(m, n, seed=10), 1 + torch.rand(3, m, **F64)]


def simplex_projection():
    n = 6
    x = cp.Variable(n)
    a = cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [x >= 0, cp.sum(x) == 1])
    return prob, [a], [x], [_randn(4, n, seed=11)]


def l1_regression():
    n, k = 6, 9
    x = cp.Variable(n)
    F, g, lam = cp.Parameter((k, n)), cp.Parameter(k), cp.Parameter(nonneg=True)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(F @ x - g) + lam * cp.norm1(x)))
    return prob, [F, g, lam], [x], [_randn(k, n, seed=12), _randn(4, k, seed=13), torch.tensor(0.8, **F64)]


def shared_parameter_equalities():
    """``a`` enters the objective and both constraint blocks; ``s`` the equality (matrix y)."""
    x, y = cp.Variable(4), cp.Variable((2, 2))
    a, s = cp.Parameter(4), cp.Parameter()
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a) + cp.sum_squares(y) + cp.sum(cp.abs(x))),
                      [cp.sum(x) + cp.sum(y) == s, x[:2] <= a[2:] + 0.5, y[0, 1] == a[0]])
    return prob, [a, s], [x, y], [_randn(3, 4, seed=14), torch.tensor([0.5, 1.0, -0.2], **F64)]


ZOO = [constrained_least_squares, nonnegative_least_squares, box_qp, unique_lp, simplex_projection,
       l1_regression, shared_parameter_equalities]


@pytest.mark.parametrize("make", ZOO, ids=[f.__name__ for f in ZOO])
def test_zoo_forward_and_gradients_match_cvxpy(make):
    prob, params, variables, values = make()
    layer = layers.CvxpyLayer(prob, params, variables)
    report = assert_close_to_cvxpy(layer, *values, forward_tol=1e-7, gradient_tol=1e-5)
    batch = layer(*values)[0].shape[0]
    assert report.forward_error.shape == (batch,) and report.gradient_error.shape == (2, batch)


def test_mixed_batching_shapes_and_summed_gradients():
    prob, params, variables, values = constrained_least_squares()
    layer = layers.CvxpyLayer(prob, params, variables)
    F, g, C, d = (v.clone().requires_grad_() for v in values)
    (x,) = layer(F, g, C, d)
    assert x.shape == (4, 5)
    x.pow(2).sum().backward()
    assert F.grad.shape == F.shape and g.grad.shape == g.shape
    # the shared F's gradient is the sum of the per-element gradients
    total = torch.zeros_like(F)
    for i in range(4):
        Fi = values[0].clone().requires_grad_()
        (xi,) = layer(Fi, values[1][i], values[2], values[3][i])
        assert xi.shape == (5,)
        xi.pow(2).sum().backward()
        total += Fi.grad
    torch.testing.assert_close(F.grad, total, atol=1e-8, rtol=1e-7)


def test_duals_match_cvxpy():
    x = cp.Variable(3)
    a = cp.Parameter(3)
    cons = [x >= 0.1, cp.sum(x) == 1]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a)), cons)
    layer = layers.CvxpyLayer(prob, [a], [x, cons[0], cons[1].dual_variables[0]])
    a_t = _randn(5, 3, seed=15)
    outs = layer(a_t)
    ref = problem_reference(prob, [a], [x, cons[0], cons[1]], [a_t])
    assert [o.shape for o in outs] == [(5, 3), (5, 3), (5,)]
    for o, r in zip(outs, ref):
        np.testing.assert_allclose(o.numpy(), r, atol=1e-7)
    single = layer(a_t[1])                     # unbatched: no batch dimension anywhere
    assert [o.shape for o in single] == [(3,), (3,), ()]
    for o, r in zip(single, ref):
        np.testing.assert_allclose(o.numpy(), r[1], atol=1e-7)


def test_equals_qp_layer_on_the_same_qp():
    Qv, _, Gv, _, Av, _ = random_qp(None, 5, 6, 2, seed=16)
    Q0 = Qv.numpy()
    z0, qv = _randn(4, 5, seed=23), _randn(4, 5, seed=24)
    hv = z0 @ Gv.T + torch.rand(4, 6, **F64)
    bv = z0 @ Av.T
    z = cp.Variable(5)
    q, G, h, A, b = cp.Parameter(5), cp.Parameter((6, 5)), cp.Parameter(6), cp.Parameter((2, 5)), cp.Parameter(2)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(z, Q0) + q @ z), [G @ z <= h, A @ z == b])
    layer = layers.CvxpyLayer(prob, [q, G, h, A, b], [z])
    ours = [t.clone().requires_grad_() for t in (qv, Gv, hv, Av, bv)]
    theirs = [t.clone().requires_grad_() for t in (qv, Gv, hv, Av, bv)]
    (z1,) = layer(*ours)
    z2 = layers.QPLayer()(Qv, *theirs)
    torch.testing.assert_close(z1, z2, atol=1e-8, rtol=1e-8)
    w = _randn(4, 5, seed=17)
    (z1 * w).sum().backward()
    (z2 * w).sum().backward()
    for a, c in zip(ours, theirs):
        torch.testing.assert_close(a.grad, c.grad, atol=1e-7, rtol=1e-6)


def test_one_sided_gradient_at_a_degenerate_point_equals_contrastive():
    """Weakly active constraints (active with zero multiplier): the implicit gradient is the
    one-sided β → 0⁺ limit, which Contrastive(1e-7) reaches up to O(β)."""
    Q, qv, Gv, hv, *_ = degenerate_qp(3, n=5, m=6, seed=0)
    z = cp.Variable(5)
    q, G, h = cp.Parameter(5), cp.Parameter((6, 5)), cp.Parameter(6)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(z) + q @ z), [G @ z <= h])
    w = _randn(3, 5, seed=18)
    grads = []
    for mode in ("implicit", Contrastive(1e-7)):
        leaves = [t.clone().requires_grad_() for t in (qv, Gv, hv)]
        (zz,) = layers.CvxpyLayer(prob, [q, G, h], [z], mode=mode)(*leaves)
        (zz * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", ["constrained_least_squares", "l1_regression", "small_mpc"])
def test_cvxpylayers_backend_returns_what_cvxpy_layer_returns(make):
    from cvxpylayers.torch import CvxpyLayer as CvxpylayersLayer

    prob, params, variables, values = globals()[make]()
    ours = layers.CvxpyLayer(prob, params, variables)
    backend = CvxpylayersLayer(prob, parameters=params, variables=variables, solver=layers.ArgminQPSolver())
    results = []
    for layer in (ours, backend):
        leaves = [v.clone().requires_grad_() for v in values]
        outs = layer(*leaves)
        sum((o * _randn(*o.shape, seed=19 + i)).sum() for i, o in enumerate(outs)).backward()
        results.append(list(outs) + [t.grad for t in leaves])
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, atol=1e-9, rtol=1e-8)


def test_backend_rejects_second_order_cones():
    from cvxpylayers.torch import CvxpyLayer as CvxpylayersLayer

    x, a = cp.Variable(3), cp.Parameter(3)
    prob = cp.Problem(cp.Minimize(cp.norm(x - a, 2)))
    with pytest.raises(ValueError, match="second-order.*DIFFCP"):
        CvxpylayersLayer(prob, parameters=[a], variables=[x], solver=layers.ArgminQPSolver())


@pytest.mark.parametrize("mode, beta", [("contrastive", 1e-6), ("symmetric", 1e-5)])
def test_contrastive_modes_agree_with_implicit(mode, beta):
    prob, params, variables, values = box_qp()
    w = _randn(4, 5, seed=20)
    grads = []
    for m, b in (("implicit", None), (mode, beta)):
        leaves = [v.clone().requires_grad_() for v in values]
        (x,) = layers.CvxpyLayer(prob, params, variables, mode=m, beta=b)(*leaves)
        (x * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def test_psd_parameter_matrix_in_the_objective():
    """``quad_form(x, P)`` with a PSD parameter: cvxpy reads P's upper triangle."""
    n = 4
    x, P, q = cp.Variable(n), cp.Parameter((n, n), PSD=True), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x), [x >= -0.5, x <= 0.5])
    layer = layers.CvxpyLayer(prob, [P, q], [x])
    M = _randn(n, n, seed=21)

    def fn(S, qv):          # a symmetric perturbation of the PSD matrix M Mᵀ + I
        return layer(M @ M.T + torch.eye(n, **F64) + S + S.T, qv)

    def reference(S, qv):
        Mn = M.numpy()
        return problem_reference(prob, [P, q], [x], [Mn @ Mn.T + np.eye(n) + S + S.T, qv])

    assert_close_to_cvxpy(fn, torch.zeros(n, n, **F64), _randn(3, n, seed=22), reference=reference,
                          forward_tol=1e-7, gradient_tol=1e-5)


def test_float32_forward(device):
    prob, params, variables, values = simplex_projection()
    layer = layers.CvxpyLayer(prob, params, variables).to(device)
    (x,) = layer(values[0].float().to(device))
    assert x.dtype == torch.float32 and x.device.type == device.type
    ref = problem_reference(prob, params, variables, values)[0]
    np.testing.assert_allclose(x.cpu().double().numpy(), ref, atol=1e-4)


# -- errors ---------------------------------------------------------------------------------------
def _x_a():
    return cp.Variable(3), cp.Parameter(3)


@pytest.mark.parametrize("cone, build", [
    ("second-order", lambda x, a: cp.Problem(cp.Minimize(cp.norm(x - a, 2)))),
    ("exponential", lambda x, a: cp.Problem(cp.Minimize(cp.sum(cp.exp(x)) - a @ x))),
    ("PSD", lambda x, a: cp.Problem(cp.Minimize(cp.lambda_max(cp.diag(x)) - a @ x), [x >= -1])),
])
def test_unsupported_cones_are_rejected_with_a_pointer(cone, build):
    x, a = _x_a()
    with pytest.raises(ValueError, match=rf"{cone}.*cvxpylayers") as err:
        layers.CvxpyLayer(build(x, a), [a], [x])
    assert "zero and nonnegative" in str(err.value)


def test_quadratic_constraint_is_rejected():
    x, a = _x_a()
    prob = cp.Problem(cp.Minimize(a @ x), [cp.sum_squares(x) <= 1])
    with pytest.raises(ValueError, match="second-order"):
        layers.CvxpyLayer(prob, [a], [x])


def test_non_dpp_is_rejected():
    x, a = _x_a()
    t = cp.Parameter(nonneg=True)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - t * a)), [x >= 0])
    with pytest.raises(ValueError, match="not DPP"):
        layers.CvxpyLayer(prob, [a, t], [x])


def test_parameters_and_variables_must_belong_to_the_problem():
    x, a = _x_a()
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a)))
    with pytest.raises(ValueError, match="missing"):
        layers.CvxpyLayer(prob, [], [x])
    with pytest.raises(ValueError, match="not in the problem"):
        layers.CvxpyLayer(prob, [a, cp.Parameter(2)], [x])
    with pytest.raises(ValueError, match="neither a variable"):
        layers.CvxpyLayer(prob, [a], [cp.Variable(2)])
    with pytest.raises(TypeError, match="cvxpy.Problem"):
        layers.CvxpyLayer("problem", [a], [x])


def test_wrong_parameter_count_and_shapes():
    prob, params, variables, values = constrained_least_squares()
    layer = layers.CvxpyLayer(prob, params, variables)
    with pytest.raises(ValueError, match="expected 4 parameter tensors.*got 3"):
        layer(*values[:3])
    name = params[1].name()
    with pytest.raises(ValueError, match=rf"parameter {name}: expected shape \(8,\) or \(B, 8\), got \(4, 7\)"):
        layer(values[0], values[1][:, :7], values[2], values[3])
    with pytest.raises(ValueError, match="expected batch size 4.*got 3"):
        layer(values[0], values[1], values[2], values[3][:3])
    with pytest.raises(TypeError, match="floating-point"):
        layer(values[0], values[1].long(), values[2], values[3])


def small_mpc():
    """Dynamics equalities: the presolve condenses the states over several rounds."""
    T, nx, nu = 3, 2, 1
    A, B, x0 = cp.Parameter((nx, nx)), cp.Parameter((nx, nu)), cp.Parameter(nx)
    x, u = cp.Variable((nx, T + 1)), cp.Variable((nu, T))
    cons = [x[:, 0] == x0, u <= 0.5, u >= -0.5] + [x[:, t + 1] == A @ x[:, t] + B @ u[:, t] for t in range(T)]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x) + cp.sum_squares(u)), cons)
    values = [torch.eye(nx, **F64) + 0.2 * _randn(nx, nx, seed=25), _randn(nx, nu, seed=26), 2 * _randn(4, nx, seed=27)]
    return prob, [A, B, x0], [u, x], values


def test_condensed_mpc_matches_cvxpy():
    prob, params, variables, values = small_mpc()
    layer = layers.CvxpyLayer(prob, params, variables)
    assert len(layer.elimination.rounds) > 1
    assert_close_to_cvxpy(layer, *values, forward_tol=1e-7, gradient_tol=1e-5)


@pytest.mark.parametrize("make", [constrained_least_squares, shared_parameter_equalities, l1_regression, small_mpc],
                         ids=["cls", "shared", "l1", "mpc"])
def test_presolve_changes_nothing_but_the_size(make):
    """Eliminating cvxpy's auxiliary variables keeps outputs, multipliers and gradients."""
    prob, params, variables, values = make()
    variables = variables + [c for c in prob.constraints]
    results = []
    for presolve in (True, False):
        layer = layers.CvxpyLayer(prob, params, variables, presolve=presolve)
        leaves = [v.clone().requires_grad_() for v in values]
        outs = layer(*leaves)
        outs[0].pow(2).sum().backward()
        results.append(([o.detach() for o in outs], [t.grad for t in leaves], layer))
    assert results[0][2].elimination is not None and results[1][2].elimination is None
    for a, c in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(a, c, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("presolve", [True, False], ids=["presolve", "no_presolve"])
def test_strict_load_of_a_checkpoint_with_per_round_elimination_buffers(presolve):
    """Older checkpoints hold the elimination's per-round index buffers
    (``elimination.rounds.N.{E,R,K,Rc,a}``), derived from the problem: a strict load drops them
    (the layer rebuilt them at construction) and loads everything else."""
    prob, params, variables, values = small_mpc()
    layer = layers.CvxpyLayer(prob, params, variables, presolve=presolve)
    state = layer.state_dict()
    legacy = dict(state)
    for i in range(3):
        for name in ("E", "R", "K", "Rc", "a"):
            legacy[f"elimination.rounds.{i}.{name}"] = torch.arange(2)
    fresh = layers.CvxpyLayer(prob, params, variables, presolve=presolve)
    assert fresh.load_state_dict(legacy) is not None          # strict: no unexpected keys
    assert fresh.state_dict().keys() == state.keys()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**state, "elimination.other": torch.zeros(1)})
    torch.testing.assert_close(fresh(*values)[0], layer(*values)[0])
