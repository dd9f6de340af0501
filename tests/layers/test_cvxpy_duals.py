"""``layers.CvxpyLayer``: gradients through the multipliers it returns (constraints or their dual
variables in ``variables``) — against central finite differences of cvxpy's (Clarabel, tight)
``dual_value``, an analytic case, the contrastive modes, and the errors where the multipliers have
no derivative (weakly active constraints, dependent constraints)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import layers
from declarative.testing import assert_close_to_cvxpy
from tests.helpers import seeded_randn as _randn

F64 = dict(dtype=torch.float64)


def equality_least_squares():
    """min ‖Fx − g‖²  s.t.  Cx = d: ν of ``Cx = d`` (every parameter enters it)."""
    n, k, p = 5, 8, 2
    x = cp.Variable(n)
    F, g, C, d = cp.Parameter((k, n)), cp.Parameter(k), cp.Parameter((p, n)), cp.Parameter(p)
    eq = C @ x == d
    prob = cp.Problem(cp.Minimize(cp.sum_squares(F @ x - g)), [eq])
    values = [_randn(k, n, seed=1), _randn(4, k, seed=2), _randn(p, n, seed=3), _randn(4, p, seed=4)]
    return prob, [F, g, C, d], [x, eq], values


def box_qp_strictly_active():
    """min ½xᵀQx + qᵀx  s.t.  lo ≤ x ≤ hi: both bounds' λ (generic q: active bounds strictly)."""
    n = 5
    M = np.random.default_rng(0).standard_normal((n, n))
    x = cp.Variable(n)
    q, lo, hi = cp.Parameter(n), cp.Parameter(n), cp.Parameter(n)
    lower, upper = x >= lo, x <= hi
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, M @ M.T / n + 0.1 * np.eye(n)) + q @ x), [lower, upper])
    values = [2 * _randn(6, n, seed=5), -torch.ones(n, **F64) + 0.1 * _randn(n, seed=6), torch.ones(n, **F64)]
    return prob, [q, lo, hi], [x, lower, upper.dual_variables[0]], values


def inequality_and_equality():
    """min ‖x − a‖² + ‖Fx‖²  s.t.  Gx ≤ h, 1ᵀx = s: λ and ν together (presolve keeps the rows)."""
    n, m = 4, 3
    x = cp.Variable(n)
    a, G, h, s = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter()
    ineq, eq = G @ x <= h, cp.sum(x) == s
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a) + cp.sum_squares(x[:2])), [ineq, eq])
    values = [2 * _randn(4, n, seed=7), _randn(m, n, seed=8), 0.2 * _randn(4, m, seed=9),
              torch.tensor(0.5, **F64)]
    return prob, [a, G, h, s], [ineq, eq, x], values


def condensed_mpc():
    """The presolve eliminates every dynamics row: their ν come from stationarity."""
    T, nx, nu = 3, 2, 1
    A, B, x0 = cp.Parameter((nx, nx)), cp.Parameter((nx, nu)), cp.Parameter(nx)
    x, u = cp.Variable((nx, T + 1)), cp.Variable((nu, T))
    init = x[:, 0] == x0
    dyn = [x[:, t + 1] == A @ x[:, t] + B @ u[:, t] for t in range(T)]
    bound = u <= 0.5
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x) + cp.sum_squares(u)), [init, bound, u >= -0.5] + dyn)
    values = [torch.eye(nx, **F64) + 0.2 * _randn(nx, nx, seed=10), _randn(nx, nu, seed=11),
              2 * _randn(4, nx, seed=12)]
    return prob, [A, B, x0], [u, init, dyn[1], bound], values


CASES = [equality_least_squares, box_qp_strictly_active, inequality_and_equality, condensed_mpc]


@pytest.mark.parametrize("make", CASES, ids=[f.__name__ for f in CASES])
def test_multiplier_gradients_match_finite_differences_of_cvxpy(make):
    prob, params, variables, values = make()
    layer = layers.CvxpyLayer(prob, params, variables)
    assert_close_to_cvxpy(layer, *values, forward_tol=1e-7, gradient_tol=1e-5)


def test_gradient_through_a_multiplier_analytic():
    """x = argmin ‖x − 1‖² s.t. x ≥ a: the dual is 2(a − 1) on active rows, 0 on inactive ones,
    so ∇_a Σ(x + dual) = (1 + 2, 0) at a = (2, 0); unbatched."""
    x, a = cp.Variable(2), cp.Parameter(2)
    con = x >= a
    layer = layers.CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - 1)), [con]), [a], [x, con])
    a_t = torch.tensor([2.0, 0.0], **F64, requires_grad=True)
    xs, dual = layer(a_t)
    torch.testing.assert_close(dual.detach(), torch.tensor([2.0, 0.0], **F64))
    (xs.sum() + dual.sum()).backward()
    torch.testing.assert_close(a_t.grad, torch.tensor([3.0, 0.0], **F64))


@pytest.mark.parametrize("mode, beta", [("contrastive", 1e-6), ("symmetric", 1e-5)])
def test_contrastive_modes_reach_the_multipliers(mode, beta):
    """The multipliers' gradient goes through ``z``'s backward, whatever its mode: the contrastive
    modes agree with the implicit one up to O(β)."""
    prob, params, variables, values = box_qp_strictly_active()
    w = [_randn(*o.shape, seed=13 + i) for i, o in enumerate(layers.CvxpyLayer(prob, params, variables)(*values))]
    grads = []
    for m, b in (("implicit", None), (mode, beta)):
        leaves = [v.clone().requires_grad_() for v in values]
        outs = layers.CvxpyLayer(prob, params, variables, mode=m, beta=b)(*leaves)
        sum((o * wi).sum() for o, wi in zip(outs[1:], w[1:])).backward()
        grads.append([t.grad for t in leaves])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def _nonnegative_projection():
    x, a = cp.Variable(3), cp.Parameter(3)
    con = x >= 0
    return layers.CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [con]), [a], [x, con])


def test_weakly_active_constraint_raises_for_its_elements_only():
    """a_i = 0: x_i = 0 with a zero multiplier (weakly active) — the multiplier 2·max(−a_i, 0)
    has no derivative there. A cotangent on element 1's multipliers is an error naming it; one
    on element 0's only, or on the primal output, is not."""
    layer = _nonnegative_projection()
    a_t = torch.tensor([[1.0, -2.0, 0.5], [1.0, 0.0, -1.0]], **F64, requires_grad=True)
    x, dual = layer(a_t)
    with pytest.raises(RuntimeError, match=r"weakly active.*batch elements \[1\]"):
        dual.sum().backward(retain_graph=True)
    dual[0].sum().backward(retain_graph=True)
    torch.testing.assert_close(a_t.grad, torch.tensor([[0.0, -2.0, 0.0], [0.0, 0.0, 0.0]], **F64))
    a_t.grad = None
    x.sum().backward()                 # (the weak entry's is the implicit mode's one-sided choice)
    torch.testing.assert_close(a_t.grad[:, [0, 2]], torch.tensor([[1.0, 1.0], [1.0, 0.0]], **F64))


def test_dependent_constraints_raise():
    """The same equality twice: the multipliers are not unique, so not differentiable."""
    x, a = cp.Variable(2), cp.Parameter(2)
    first, second = cp.sum(x) == a[0], 2 * cp.sum(x) == 2 * a[0]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [first, second])
    layer = layers.CvxpyLayer(prob, [a], [x, first], presolve=False)
    a_t = torch.tensor([[1.0, 2.0], [0.5, -1.0]], **F64, requires_grad=True)
    x_out, dual = layer(a_t)
    with pytest.raises(RuntimeError, match=r"linearly dependent.*batch elements \[0, 1\]"):
        dual.sum().backward(retain_graph=True)
    x_out.sum().backward()
    assert torch.isfinite(a_t.grad).all()


def test_values_unchanged_and_no_graph_without_gradients():
    prob, params, variables, values = box_qp_strictly_active()
    layer = layers.CvxpyLayer(prob, params, variables)
    plain = layer(*values)
    leaves = [v.clone().requires_grad_() for v in values]
    tracked = layer(*leaves)
    for a, c in zip(plain, tracked):
        assert not a.requires_grad and c.requires_grad
        torch.testing.assert_close(a, c.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("make", [inequality_and_equality, condensed_mpc], ids=["ineq_eq", "mpc"])
def test_cvxpylayers_backend_differentiates_the_multipliers_alike(make):
    """``ArgminQPSolver`` in cvxpylayers: the same multipliers and gradients as ``CvxpyLayer``."""
    from cvxpylayers.torch import CvxpyLayer as CvxpylayersLayer

    prob, params, variables, values = make()
    variables = [v.dual_variables[0] if isinstance(v, cp.constraints.constraint.Constraint) else v
                 for v in variables]
    ours = layers.CvxpyLayer(prob, params, variables)
    backend = CvxpylayersLayer(prob, parameters=params, variables=variables, solver=layers.ArgminQPSolver())
    results = []
    for layer in (ours, backend):
        leaves = [v.clone().requires_grad_() for v in values]
        outs = layer(*leaves)
        sum((o * _randn(*o.shape, seed=20 + i)).sum() for i, o in enumerate(outs)).backward()
        results.append([o.detach() for o in outs] + [t.grad for t in leaves])
    for a, c in zip(*results):
        torch.testing.assert_close(a, c, atol=1e-9, rtol=1e-8)


def test_zero_multiplier_of_an_equality_is_differentiable():
    """``Σx = s`` holds at the unconstrained minimum (``Σa = s``): ν = 0 to the solver's accuracy
    (~1e-10, not to rounding) — not degenerate: ν = −2(s − Σa)/3 has the gradient (2/3, …, −2/3)."""
    x, a, s = cp.Variable(3), cp.Parameter(3), cp.Parameter()
    eq = cp.sum(x) == s
    layer = layers.CvxpyLayer(cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [eq]), [a, s], [eq])
    a_t = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], **F64, requires_grad=True)
    s_t = torch.tensor(6.0, **F64, requires_grad=True)
    (nu,) = layer(a_t, s_t)
    torch.testing.assert_close(nu.detach(), torch.tensor([0.0, -2.0], **F64), atol=1e-8, rtol=0)
    nu.sum().backward()
    torch.testing.assert_close(a_t.grad, torch.full((2, 3), 2 / 3, **F64))
    torch.testing.assert_close(s_t.grad, torch.tensor(-4 / 3, **F64))


# -- the degeneracy tests are per row and row-scale invariant --------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_a_loose_bound_is_not_weakly_active(dtype):
    """``x ≤ 1e4`` far from ``x``: its slack is large on its own row's scale (``|h_i| = 1e4``), so a
    small slack elsewhere (``x_2 = 0.01``) is not mistaken for a weakly active row.
    ``λ = 2·max(−a, 0)`` of ``x ≥ 0``: gradient ``(0, 0)`` at ``a = (1, 0.01)``, ``(0, −2)`` at
    ``a = (1, −0.5)``."""
    x, a = cp.Variable(2), cp.Parameter(2)
    lower = x >= 0
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a)), [lower, x <= 1e4])
    layer = layers.CvxpyLayer(prob, [a], [lower])
    for value, expected in (([1.0, 0.01], [0.0, 0.0]), ([1.0, -0.5], [0.0, -2.0])):
        a_t = torch.tensor(value, dtype=dtype, requires_grad=True)
        (dual,) = layer(a_t)
        dual.sum().backward()
        torch.testing.assert_close(a_t.grad, torch.tensor(expected, dtype=dtype))


def test_a_small_multiplier_beside_a_large_one_is_strictly_active_float32():
    """``min ½‖x‖² + qᵀx, x ≥ 0`` at ``q = (1, 0.004)``: both rows strictly active (``x = 0``,
    ``λ = q``), although ``λ_2`` is below ``ε^{1/3}`` of ``λ_1`` in float32; ``∇_q Σλ = (1, 1)``."""
    x, q = cp.Variable(2), cp.Parameter(2)
    con = x >= 0
    layer = layers.CvxpyLayer(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), [con]), [q], [con])
    q_t = torch.tensor([1.0, 0.004], dtype=torch.float32, requires_grad=True)
    (dual,) = layer(q_t)
    dual.sum().backward()
    torch.testing.assert_close(q_t.grad, torch.ones(2, dtype=torch.float32))


def _multiplier_gradients(make_problem, values, dtype, weights):
    """∇ of Σ weights_j · output_j with respect to every parameter (the outputs are multipliers)."""
    prob, params, outputs = make_problem()
    layer = layers.CvxpyLayer(prob, params, outputs, presolve=False)
    leaves = [v.detach().to(dtype).clone().requires_grad_() for v in values]
    sum(w * o.sum() for w, o in zip(weights, layer(*leaves))).backward()
    return [t.grad.double() for t in leaves]


@pytest.mark.parametrize("dtype, k", [(torch.float64, 1e-6), (torch.float32, 1e-2)], ids=["f64", "f32"])
def test_scaled_inequality_rows_give_the_same_gradient(dtype, k):
    """``k·x ≤ k·hi`` is ``x ≤ hi``: its multiplier is ``1/k`` times, and ``k·λ`` has the same
    gradient as for ``k = 1`` (the weak-activity test compares each row on its own scale)."""
    n = 5
    P = np.random.default_rng(0).standard_normal((n, n))
    P = P @ P.T / n + 0.1 * np.eye(n)

    def make(scale):
        def problem():
            x, q, lo, hi = cp.Variable(n), cp.Parameter(n), cp.Parameter(n), cp.Parameter(n)
            lower, upper = x >= lo, scale * x <= scale * hi
            prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x), [lower, upper])
            return prob, [q, lo, hi], [lower, upper]
        return problem

    values = [2 * _randn(8, n, seed=5), -torch.ones(n, **F64) + 0.1 * _randn(n, seed=6), torch.ones(n, **F64)]
    reference = _multiplier_gradients(make(1.0), values, torch.float64, [1.0, 1.0])
    scaled = _multiplier_gradients(make(k), values, dtype, [1.0, k])
    tol = 1e-6 if dtype == torch.float64 else 1e-3
    for a, c in zip(reference, scaled):
        torch.testing.assert_close(c, a, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype, k", [(torch.float64, 1e-6), (torch.float32, 1e-3)], ids=["f64", "f32"])
def test_scaled_equality_rows_are_not_dependent(dtype, k):
    """``k(x_2 − x_3) = k·b`` beside ``x_1 + x_2 = a``: independent rows at any ``k`` (the
    dependence test normalises the rows); the gradient of ``ν_1 + k·ν_2`` is that at ``k = 1``."""
    def make(scale):
        def problem():
            x, a, b = cp.Variable(3), cp.Parameter(), cp.Parameter()
            first, second = x[0] + x[1] == a, scale * (x[1] - x[2]) == scale * b
            return cp.Problem(cp.Minimize(cp.sum_squares(x - 1)), [first, second]), [a, b], [first, second]
        return problem

    values = [torch.tensor(0.3, **F64), torch.tensor(-0.2, **F64)]
    reference = _multiplier_gradients(make(1.0), values, torch.float64, [1.0, 1.0])
    scaled = _multiplier_gradients(make(k), values, dtype, [1.0, k])
    tol = 1e-6 if dtype == torch.float64 else 1e-3
    for a, c in zip(reference, scaled):
        torch.testing.assert_close(c, a, atol=tol, rtol=tol)


def _graph_node_names(fn) -> set:
    seen, stack, names = set(), [fn], set()
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        names.add(f.name())
        stack.extend(g for g, _ in f.next_functions)
    return names


def test_multiplier_graph_is_built_in_the_backward_with_the_eager_gradient(monkeypatch):
    """The forward records one node for the multipliers (their graph is built in the backward,
    only when a cotangent reaches them); the gradient equals that of ``differentiable_duals``'s
    graph built eagerly on the same canonical data."""
    from layers import cvxpy_layer
    from layers.cvxpy_duals import differentiable_duals

    prob, params, variables, values = inequality_and_equality()
    layer = layers.CvxpyLayer(prob, params, variables, presolve=False)
    leaves = [v.clone().requires_grad_() for v in values]
    ineq, eq, _ = layer(*leaves)
    names = _graph_node_names(ineq.grad_fn)
    assert any("LazyDuals" in n for n in names) and not any("Cholesky" in n for n in names)
    w = [_randn(*ineq.shape, seed=30), _randn(*eq.shape, seed=31)]
    lazy = torch.autograd.grad((ineq * w[0]).sum() + (eq * w[1]).sum(), leaves)

    monkeypatch.setattr(cvxpy_layer, "lazy_differentiable_duals", differentiable_duals)
    eager_leaves = [v.clone().requires_grad_() for v in values]
    ineq, eq, _ = layer(*eager_leaves)
    assert any("Cholesky" in n for n in _graph_node_names(ineq.grad_fn))
    eager = torch.autograd.grad((ineq * w[0]).sum() + (eq * w[1]).sum(), eager_leaves)
    for a, c in zip(lazy, eager):
        torch.testing.assert_close(a, c, atol=1e-12, rtol=1e-10)


def _kink_problem():
    """min ½xᵀPx + qᵀx s.t. x ≥ lo, a·x = b, with rows 2, 3 strictly active and row 1's bound
    placed ``d`` above the free minimiser's x₁ (its multiplier is O(d))."""
    rng = np.random.default_rng(1)
    n = 4
    P = rng.standard_normal((n, n))
    P = P @ P.T / n + 0.2 * np.eye(n)
    a = rng.standard_normal((1, n))
    x = cp.Variable(n)
    q, lo, b = cp.Parameter(n), cp.Parameter(n), cp.Parameter(1)
    bound, eq = x >= lo, a @ x == b
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, P) + q @ x), [bound, eq])
    q0, b0 = rng.standard_normal(n), np.array([0.3])
    q.value, lo.value, b.value = q0, np.full(n, -5.0), b0
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    lo0 = np.array([-5.0, -5.0, x.value[2] + 0.5, x.value[3] + 0.5])
    q.value, lo.value = q0, lo0
    prob.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    lo0[1] = x.value[1]
    layer = layers.CvxpyLayer(prob, [q, lo, b], [bound, eq])
    return layer, torch.tensor(q0, **F64), torch.tensor(lo0, **F64), torch.tensor(b0, **F64)


def test_multiplier_of_a_nearly_weak_row_raises_instead_of_mixing_sides():
    """A row 1e-9 inside the kink (relative multiplier ~1e-8: weakly active for the QP backward,
    which picks its side by the cotangent) raises; 1e-3 inside it is strictly active (a finite
    gradient, no error)."""
    layer, q0, lo0, b0 = _kink_problem()
    grads = {}
    for d in (1e-3, 1e-9):
        lo = (lo0 + torch.tensor([0.0, d, 0.0, 0.0], **F64)).requires_grad_()
        lam, nu = layer(q0, lo, b0)
        loss = lam.sum() + nu.sum()
        if d == 1e-9:
            with pytest.raises(RuntimeError, match="weakly active"):
                loss.backward()
        else:
            loss.backward()
            grads[d] = lo.grad
    assert torch.isfinite(grads[1e-3]).all()


def test_create_graph_through_multipliers_raises():
    layer, q0, lo0, b0 = _kink_problem()
    lo = (lo0 + torch.tensor([0.0, 1e-2, 0.0, 0.0], **F64)).requires_grad_()
    lam, nu = layer(q0, lo, b0)
    (g,) = torch.autograd.grad(lam.sum(), lo, create_graph=False)
    assert torch.isfinite(g).all()
    lam, nu = layer(q0, lo, b0)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad((lam ** 3).sum(), lo, create_graph=True)


def test_float32_small_multiplier_and_exact_zero_slack_is_strictly_active():
    """float32, ``min ½‖x‖² + qᵀx s.t. x ≥ 0`` with ``q = (1, 1e-3)``: x = 0, λ = q, both rows
    strictly active although λ₂ is below ``τ = eps^(1/3)`` of the scale: ∇_q Σλ = (1, 1)."""
    x = cp.Variable(2)
    q = cp.Parameter(2)
    bound = x >= 0
    layer = layers.CvxpyLayer(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x), [bound]), [q], [bound])
    qt = torch.tensor([1.0, 1e-3], dtype=torch.float32, requires_grad=True)
    (lam,) = layer(qt)
    lam.sum().backward()
    torch.testing.assert_close(qt.grad, torch.ones(2), atol=1e-5, rtol=0)
