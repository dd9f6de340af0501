"""Gradients of the QP layer: Implicit vs finite differences of cvxpy solutions and gradcheck,
the one-sided derivative at weakly active constraints, and the contrastive modes' β-slopes."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

import contrastive  # noqa: F401  (registers "contrastive" and "symmetric")
from contrastive import Contrastive, Symmetric
from declarative import QPOptions, QPProblem, solve_qp
from declarative.reference.qp import degenerate_qp, qp_reference, qp_reference_batch, random_qp

NAMES = ("Q", "q", "G", "h", "A", "b")


def _grads(params, w, mode="implicit", beta=None, check=True):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in params]
    sol = solve_qp(*leaves, mode=mode, beta=beta, check=check)
    loss = (sol.z * w).sum()
    present = [t for t in leaves if t is not None]
    out = iter(torch.autograd.grad(loss, present))
    return [None if t is None else next(out) for t in leaves]


def _fd_cvxpy(params, w, k, eps=1e-6):
    """Central finite differences of ``Σ w·z*`` w.r.t. ``params[k]`` with cvxpy solutions.

    Q is perturbed entry-wise and symmetrised (the QP sees only ½(Q + Qᵀ)), so the FD gradient of
    an entry is the symmetric part, like the layer's."""
    base = [None if t is None else t.double().numpy() for t in params]
    P = base[k]
    fd = np.zeros_like(P)
    for idx in np.ndindex(P.shape):
        vals = []
        for sgn in (1, -1):
            args = [None if a is None else a.copy() for a in base]
            args[k][idx] += sgn * eps
            if k == 0:
                args[0] = 0.5 * (args[0] + np.swapaxes(args[0], -1, -2))
            z, *_ = qp_reference_batch(*args)
            vals.append((z * w.numpy()).sum())
        fd[idx] = (vals[0] - vals[1]) / (2 * eps)
    return fd


@pytest.mark.parametrize("blocks", [(3, 1), (3, 0), (0, 1)])
def test_implicit_matches_cvxpy_finite_differences(blocks):
    m, p = blocks
    params = random_qp(2, 3, m, p, seed=11 + m + p)
    # non-degenerate: every constraint strictly complementary
    z, lam, nu, _ = qp_reference_batch(*params)
    if m:
        s = params[3].numpy() - np.einsum("bmn,bn->bm", params[2].numpy(), z)
        assert np.minimum(s, lam).max() < 1e-7 and np.maximum(s, lam).min() > 1e-3
    w = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = _grads(params, w)
    for k, name in enumerate(NAMES):
        if params[k] is None:
            assert grads[k] is None
            continue
        fd = _fd_cvxpy(params, w, k)
        # cvxpy solutions are accurate to ~1e-9, so FD with eps = 1e-6 to ~1e-3 absolute in the
        # worst case; observed errors are ~1e-7
        np.testing.assert_allclose(grads[k].numpy(), fd, atol=2e-5, rtol=1e-4, err_msg=name)


def test_gradcheck_all_parameters():
    Q, q, G, h, A, b = random_qp(2, 3, 3, 1, seed=21)

    def f(Qr, q, G, h, A, b):
        Qs = 0.5 * (Qr + Qr.transpose(-1, -2))
        return solve_qp(Qs, q, G, h, A, b).z

    inputs = tuple(t.clone().requires_grad_() for t in (Q, q, G, h, A, b))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradcheck_unbatched_shared_constraints():
    """Unbatched G, h shared by a batch: their gradient is the sum over the batch."""
    Q, q, G, h, _, _ = random_qp(None, 3, 4, 0, seed=22)
    qb = q + 0.3 * torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def f(G, h, qb):
        return solve_qp(Q, qb, G, h).z

    inputs = (G.clone().requires_grad_(), h.clone().requires_grad_(), qb.clone().requires_grad_())
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_unbatched_parameter_gradient_is_batch_sum():
    Q, q, G, h, A, b = random_qp(None, 3, 4, 1, seed=23)
    qb = q + 0.3 * torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    grads = _grads((Q, qb, G, h, A, b), w)
    assert grads[2].shape == G.shape and grads[0].shape == Q.shape
    per = [_grads((Q, qb[i], G, h, A, b), w[i]) for i in range(4)]
    for k in (0, 2, 3, 4, 5):
        torch.testing.assert_close(grads[k], sum(g[k] for g in per), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(grads[1], torch.stack([g[1] for g in per]), atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_implicit_dtypes_agree(dtype, device):
    params = random_qp(3, 4, 5, 1, seed=24)
    w = torch.randn(3, 4, dtype=torch.float64)
    ref = _grads(params, w)
    got = _grads([t.to(dtype=dtype, device=device) for t in params], w.to(dtype=dtype, device=device))
    tol = 1e-9 if dtype == torch.float64 else 5e-3
    for a, b_ in zip(got, ref):
        torch.testing.assert_close(a.double().cpu(), b_, atol=tol, rtol=tol)


def _degenerate(B=4):
    Q, q, G, h, zs, lam, strong, weak = degenerate_qp(B, seed=3)
    g = torch.randn(B, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return (Q, q, G, h, None, None), g, strong, weak


def _closed_form(G, g, strong, weak):
    """For Q = I: the projection of −g onto {d : G_S d = 0, G_W d ≤ 0}, per element (cvxpy)."""
    closed = []
    for i in range(g.shape[0]):
        Gi = G[i].numpy()
        d, *_ = qp_reference(np.eye(Gi.shape[1]), g[i].numpy(), Gi[weak[i].numpy()], np.zeros(int(weak[i].sum())),
                             Gi[strong[i].numpy()], np.zeros(int(strong[i].sum())))
        closed.append(d)
    return np.stack(closed)


def test_weakly_active_classification():
    params, g, strong, weak = _degenerate()
    problem = QPProblem()
    sol = problem.solve(params)
    s, w = problem.classify_constraints(sol, params)
    assert torch.equal(s, strong) and torch.equal(w, weak)


def test_degenerate_one_sided_gradient_equals_tiny_beta_contrastive_and_closed_form():
    """At weakly active constraints the implicit gradient is the one-sided limit: equal to
    Contrastive(β = 1e-7) and, for Q = I, to the projection of −g onto the cone
    {d : G_S d = 0, G_W d ≤ 0}."""
    params, g, strong, weak = _degenerate()
    imp = _grads(params, g)
    con = _grads(params, g, mode=Contrastive(1e-7))
    for k in range(4):
        # polished solves are exact to ~1e-15, so the β = 1e-7 quotient is accurate to ~1e-8
        torch.testing.assert_close(con[k], imp[k], atol=1e-6, rtol=1e-6, msg=NAMES[k])
    Q, q, G, h = params[:4]
    dz = imp[1]           # ∇q = dz
    closed = _closed_form(G, g, strong, weak)
    np.testing.assert_allclose(dz.numpy(), closed, atol=1e-7)
    # not vacuous: some weakly active constraint binds (G_W d = 0 where the unconstrained
    # projection would violate it) and some is left (G_W d < 0)
    Gd = np.einsum("bmn,bn->bm", G.numpy(), closed)[weak.numpy()]
    assert (np.abs(Gd) < 1e-8).any() and (Gd < -1e-3).any()
    free = []
    for i in range(g.shape[0]):
        Gi = G[i].numpy()
        d, *_ = qp_reference(np.eye(5), g[i].numpy(), None, None, Gi[strong[i].numpy()], np.zeros(2))
        free.append(d)
    assert np.abs(np.stack(free) - closed).max() > 1e-2   # the two-sided (KKT) answer differs


def test_symmetric_averages_the_one_sided_derivatives_at_a_kink():
    params, g, strong, weak = _degenerate()
    sym = _grads(params, g, mode=Symmetric(1e-6))
    imp_plus = _grads(params, g)
    imp_minus = _grads(params, -g)
    # the nudged paths are affine for |β| below the first kink: exactly (dz(g) − dz(−g))/2
    torch.testing.assert_close(sym[1], 0.5 * (imp_plus[1] - imp_minus[1]), atol=1e-6, rtol=1e-6)


def test_contrastive_and_symmetric_slopes():
    """Smooth (non-degenerate) problem: Contrastive → Implicit at O(β) (fitted slope ≈ 1). The QP
    solution is affine in q near a non-degenerate point, so the nudged path ẑ_β = z* + β dz is
    exact and Symmetric has no O(β²) term at all: it equals Implicit to rounding."""
    params = random_qp(2, 4, 5, 1, seed=31)
    w = torch.randn(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    imp = _grads(params, w)
    betas = [1e-2, 3e-3, 1e-3, 3e-4]
    errs_c, errs_s = [], []
    for beta in betas:
        c = _grads(params, w, Contrastive(beta))
        s = _grads(params, w, Symmetric(beta))
        errs_c.append(max(float((a - b).abs().max()) for a, b in zip(c, imp)))
        errs_s.append(max(float((a - b).abs().max()) for a, b in zip(s, imp)))
    slope = np.polyfit(np.log(betas), np.log(errs_c), 1)[0]
    assert 0.9 < slope < 1.1, (slope, errs_c)
    assert max(errs_s) < 1e-8, errs_s
    # q and b enter 𝓛 linearly in z, ν: their contrastive gradients are exact as well
    c = _grads(params, w, Contrastive(1e-2))
    for k in (1, 5):
        torch.testing.assert_close(c[k], imp[k], atol=1e-8, rtol=1e-8)


def test_failed_elements_get_zero_gradient():
    Q, q, G, h, _, _ = random_qp(3, 3, 4, 0, seed=41)
    G, h = G.clone(), h.clone()
    G[1, 0], h[1, 0] = -G[1, 1], -h[1, 1] - 1.0
    qq = q.clone().requires_grad_()
    sol = solve_qp(Q, qq, G, h, check=False)
    sol.z.sum().backward()
    assert torch.isfinite(qq.grad).all()
    assert (qq.grad[1] == 0).all() and (qq.grad[[0, 2]] != 0).any()


def test_contrastive_beta_validation():
    params = random_qp(1, 2, 2, 0, seed=42)
    for bad in (0.0, -1e-3, math.inf):
        with pytest.raises(ValueError):
            solve_qp(*params, mode="contrastive", beta=bad)


@pytest.mark.parametrize("active_set", [True, False])
def test_float32_weak_row_repeating_a_strong_one(active_set):
    """float32, a row repeated ×(1 + 1e-7) (equal to rounding): the copy is weakly active, and its
    backward QP (the original as an equality, the copy as ``≤ 0``) has undetermined multipliers at
    float32 precision — its interior-point solve failed with NON_FINITE in some draws (these
    seeds). Failing elements are re-solved in float64. The tangent ``dz``
    (``∇q``) is that of the problem without the copy, and the two rows' ``∇h`` add up to the
    original row's (only their sum is determined). Single problems and a batch of all of them."""
    from declarative import QPOptions
    opts = QPOptions(active_set=active_set)
    seeds = [11, 27, 45, 81]
    data = [random_qp(1, 5, 6, 0, seed=s, dtype=torch.float32)[:4] for s in seeds]
    Q, q, G, h = (torch.cat(parts) for parts in zip(*data))
    q = q * 5
    Gd, hd = torch.cat([G, G[:, :1] * 1.0000001], 1), torch.cat([h, h[:, :1]], 1)
    for sl in [slice(i, i + 1) for i in range(len(seeds))] + [slice(None)]:
        leaves = [t[sl].clone().requires_grad_() for t in (Q, q, Gd, hd)]
        sol = solve_qp(*leaves, options=opts)
        dq, dh = torch.autograd.grad(sol.z.sum(), [leaves[1], leaves[3]])
        ref = [t[sl].clone().requires_grad_() for t in (Q, q, G, h)]
        rq, rh = torch.autograd.grad(solve_qp(*ref, options=opts).z.sum(), [ref[1], ref[3]])
        torch.testing.assert_close(dq, rq, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(dh[:, 1:6], rh[:, 1:], atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(dh[:, 0] + dh[:, 6], rh[:, 0], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_one_sided_gradient_with_large_solutions(dtype):
    """The degenerate problems with z* scaled by 1e5 (q, h × 1e5): equilibration's variable scale
    makes the backward QP's direction ~1e-6, below the solver's absolute tolerances — in float32
    ∇q came out up to 250% off the closed form. The backward QP is solved for
    g/‖g‖∞ (its solution is positively homogeneous in g) and scaled back."""
    (Q, q, G, h, _, _), g, strong, weak = _degenerate()
    t = 1e5
    params = tuple(x.to(dtype) for x in (Q, q * t, G, h * t)) + (None, None)
    dz = _grads(params, g.to(dtype))[1].double()
    tol = 1e-3 if dtype == torch.float32 else 1e-7
    np.testing.assert_allclose(dz.numpy(), _closed_form(G, g, strong, weak), atol=tol)


def _batch_with_a_failing_element(dtype, device):
    """Four problems with n = 2 and three rows ``G``: two random ones (indices 0, 3), at index 1
    ``Q = I, q = (0, −½)``, ``−z₁ ≤ 0`` weakly active at ``z* = (0, ½)`` (its backward QP gives
    ``dz = (max(−g₁, 0), −g₂)``), and at index 2 ``Q = diag(1, 0), q = 0``: ``z₁ = 0`` weakly
    active, ``z₂ ∈ [−1, 1]`` undetermined — its backward QP is unbounded along ``d₂`` in every
    precision (the derivative does not exist), so its tangent fails."""
    Q, q, G, h, _, _ = random_qp(4, 2, 3, 0, seed=61)
    Q, q, G, h = Q.clone(), q.clone(), G.clone(), h.clone()
    rows = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    G[1:3], h[1:3] = rows, torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    Q[1], q[1] = torch.eye(2, dtype=torch.float64), torch.tensor([0.0, -0.5], dtype=torch.float64)
    Q[2], q[2] = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64)), 0.0
    return tuple(t.to(dtype=dtype, device=device) for t in (Q, q, G, h)) + (None, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_failing_element_keeps_the_others_exact(dtype, device):
    """A batch element whose tangent fails gets zero gradients and a ``RuntimeWarning`` naming its
    index — no ``SolverError`` for the batch, with the default ``check=True`` — and the other
    elements get their exact gradients: finite differences of cvxpy for the random ones, the closed
    form of the one-sided derivative for the weakly active one."""
    params = _batch_with_a_failing_element(dtype, device)
    w = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(62))
    named = r"1 solved batch element\(s\), batch indices \[2\]; their gradients are set to zero"
    with pytest.warns(RuntimeWarning, match=named):
        grads = _grads(params, w.to(dtype=dtype, device=device))
    for k in range(4):
        assert (grads[k][2] == 0).all()
        assert torch.isfinite(grads[k]).all()
    tol = 1e-6 if dtype == torch.float64 else 2e-3
    ref = [t.double().cpu() for t in params[:4]]
    for k in (1, 3):       # q, h of the random elements against finite differences of cvxpy
        fd = _fd_cvxpy([t[[0, 3]] for t in ref] + [None, None], w[[0, 3]], k)
        np.testing.assert_allclose(grads[k][[0, 3]].double().cpu().numpy(), fd, atol=tol, rtol=tol)
    closed = torch.stack([torch.clamp(-w[1, 0], min=0.0), -w[1, 1]])
    torch.testing.assert_close(grads[1][1].double().cpu(), closed, atol=tol, rtol=0)


def test_non_finite_cotangent_is_not_hidden():
    """A NaN in the cotangent of one element stays in that element's gradient (the caller's NaN,
    not a failed tangent: no warning, not zeroed); the other elements' gradients are unchanged."""
    params = _batch_with_a_failing_element(torch.float64, "cpu")
    params = tuple(t if t is None else t[[0, 1, 3]] for t in params)
    w = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(63))
    ref = _grads(params, w)
    w[0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _grads(params, w)
    assert torch.isnan(got[1][0]).all()
    torch.testing.assert_close(got[1][1:], ref[1][1:], atol=0, rtol=0)


def test_float32_small_slack_is_not_weakly_active():
    """float32, polished: a row of slack 8.4e-4 (element 105 of ``random_qp(128, 10, 10, 0,
    seed=0)``, the benchmark's data) was called weakly active by a slack threshold of √eps
    (3.5e-4 × (1 + ‖h‖∞)); the backward QP then held ``G_i d ≤ 0`` and ∇q came out 40 % off.
    Every element's float32 gradients now match float64's."""
    params = random_qp(128, 10, 10, 0, seed=0)
    w = torch.randn(128, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = _grads(params, w)
    got = _grads([t if t is None else t.float() for t in params], w.float())
    for a, b_ in zip(got[:4], ref[:4]):
        torch.testing.assert_close(a.double(), b_, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("seed", [3, 8, 10])
def test_float32_degenerate_lp_backward_does_not_fail_the_batch(seed):
    """LPs (Q = 0) with integer data and a box: degenerate vertices and minimisers that are not
    unique. In float32 the backward QP of one element ended DUAL_INFEASIBLE, also when re-solved in
    float64 (these seeds), and a ``SolverError`` took down the whole batch, which float64
    differentiates. Now: no exception, finite gradients for all six parameters."""
    Q, q, G, h, A, b = random_qp(8, 4, 3, 2, seed=seed)
    box = torch.cat([torch.eye(4), -torch.eye(4)]).double().expand(8, 8, 4)
    params = (torch.zeros(8, 4, 4, dtype=torch.float64), q.round(), torch.cat([G.round(), box], 1),
              torch.cat([h.round().clamp(min=0), torch.ones(8, 8, dtype=torch.float64)], 1), A, b)
    w = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    leaves = [t.float().requires_grad_() for t in params]
    sol = solve_qp(*leaves, check=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        grads = torch.autograd.grad((sol.z * w.float()).sum(), leaves)
    assert all(torch.isfinite(g_).all() for g_ in grads)


def test_float32_small_multiplier_is_strongly_active():
    """float32, polished: multipliers of 3e-4…7e-4 with ‖λ‖∞ ≈ 1, exact to 1e-7 (elements 156,
    374, 412, 499 of ``random_qp(512, 32, 64, 0, seed=0)``, the benchmark's data), were called
    weakly active by a multiplier threshold of √eps = 3.5e-4 and ∇q came out 10–50 % off. With
    eps^¾ their float32 gradients match float64's."""
    params = random_qp(512, 32, 64, 0, seed=0)
    w = torch.randn(512, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = _grads(params, w)[1]
    # check=False: two other float32 elements (117, 129) miss the SOLVED contract and are reported
    # (INACCURATE, MAX_ITERATIONS); the elements compared here are solved
    got = _grads([t if t is None else t.float() for t in params], w.float(), check=False)[1].double()
    idx = [156, 374, 412, 499]
    torch.testing.assert_close(got[idx], ref[idx], atol=1e-3, rtol=1e-3)


def test_float64_slack_at_rounding_outside_the_active_set_is_weakly_active():
    """Q = diag(1, 0): the minimiser is not unique in z₂, and the polish ends with a slack of 4e-11
    on the row z₂ ≤ 2 (outside its active set). With the float32 slack threshold eps^¾ in float64
    that row was inactive and the KKT tangent, regularised along the null direction, gave
    ∇q₂ = −5e10 with no warning; with √eps it is weakly active, its backward QP is unbounded,
    and the element gets a zero gradient and a warning."""
    Q = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    q = torch.tensor([-1.0, 0.0], dtype=torch.float64, requires_grad=True)
    G = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    h = torch.tensor([2.0, 5.0], dtype=torch.float64)
    sol = solve_qp(Q, q, G, h, check=False)
    if float(h[0] - sol.z[1]) == 0.0:
        pytest.skip("the polish ended exactly on the row: the case is not exercised")
    with pytest.warns(RuntimeWarning, match=r"batch indices \[0\]"):
        sol.z.sum().backward()
    assert torch.isfinite(q.grad).all() and float(q.grad.abs().max()) < 10


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B", [1, 3])
def test_null_direction_without_constraint_has_no_derivative(dtype, B):
    """Q = diag(1, 0) and the only row bounds z₁: the minimiser is not unique in z₂, and the loss
    sees z₂. The regularised KKT factorisation returned ∇q₂ ≈ −1/reg (−5e10 in float64, −1.5e7 in
    float32) silently; the tangent does not satisfy the unregularised stationarity row, so the
    element gets a zero gradient and a warning naming it."""
    Q = torch.diag(torch.tensor([1.0, 0.0], dtype=dtype)).expand(B, 2, 2)
    q = torch.tensor([-1.0, 0.0], dtype=dtype).expand(B, 2).clone().requires_grad_(True)
    G = torch.tensor([[1.0, 0.0]], dtype=dtype)
    h = torch.tensor([5.0], dtype=dtype)
    sol = solve_qp(Q, q, G, h, check=False)
    with pytest.warns(RuntimeWarning, match=r"batch indices \[0"):
        sol.z.sum().backward()
    assert torch.isfinite(q.grad).all() and float(q.grad.abs().max()) <= 1.0


def _grads_with(params, w, options):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in params]
    sol = solve_qp(*leaves, options=options, check=False)
    present = [t for t in leaves if t is not None]
    out = iter(torch.autograd.grad((sol.z * w).sum(), present))
    return sol, [None if t is None else next(out) for t in leaves]


@pytest.mark.parametrize("options", [QPOptions(polish=False), QPOptions(polish=False, tol=1e-2, eps_abs=1e-9)],
                         ids=["polish=False", "polish=False-second-solver"])
def test_unpolished_answers_match_cvxpy_finite_differences(options):
    """Unpolished answers (``polish=False``) are differentiated on the active set λ > s, classified
    with the threshold of their accuracy (√min(tol, eps_abs)): their gradients w.r.t. q and h equal
    central differences of cvxpy solutions. (On this batch a backward by the barrier form
    (Q + Gᵀdiag(λ/s)G) dz = −g at the interior-point iterate is off by 0.58 in gradients of size
    1: an active row whose small multiplier the barrier weights misread.) With tol = 1e-2 and eps_abs = 1e-9 the interior-point iterations end
    INACCURATE and the second solver's answers are the ones differentiated."""
    params = random_qp(4, 8, 12, 3, seed=0)
    w = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sol, grads = _grads_with(params, w, options)
    assert sol.status.tolist() == [0, 0, 0, 0]
    if options.tol == 1e-2:
        alone = solve_qp(*params, options=dataclasses.replace(options, proximal_max_iter=0), check=False)
        assert (alone.status != 0).all()
    for k in (1, 3):
        fd = _fd_cvxpy(params, w, k)
        np.testing.assert_allclose(grads[k].numpy(), fd, atol=1e-5 * max(1.0, np.abs(fd).max()))


@pytest.mark.parametrize("options", [QPOptions(polish=False, eps_abs=1e-4), QPOptions(polish=False, contract=False)],
                         ids=["eps_abs=1e-4", "contract=False"])
def test_unpolished_weak_rows_follow_the_answers_accuracy(options):
    """Weakly active rows at an unpolished answer less accurate than √tol suggests (eps_abs = 1e-4,
    or no contract): their λ and s (~1e-3) exceed √tol = 1e-4, and the threshold 30√μ̂ of the
    element's own complementarity keeps them weakly active — gradients within 1e-3 of the exact
    (polished, one-sided) ones, where √tol alone read them as strongly active (1.7 off)."""
    Q, q, G, h, *_ = degenerate_qp(16, seed=2)
    params = (Q, q, G, h, None, None)
    w = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, exact = _grads_with(params, w, QPOptions())
    _, got = _grads_with(params, w, options)
    for a, b in zip(got[:4], exact[:4]):
        scale = b.flatten(1).abs().amax(1).clamp(min=1.0)
        assert ((a - b).flatten(1).abs().amax(1) / scale).max() < 1e-3


def test_unpolished_inactive_rows_with_small_slacks_stay_inactive():
    """random_qp(32, 6, 30, 0, seed=3) without polish: an inactive row with λ ≈ 1e-5 and a slack of
    ~25√μ̂ stays inactive — the 30√μ̂ floor raises the multipliers' threshold only (raised for
    the slacks too, it called the row weakly active and bent the element's gradient by 0.81)."""
    params = random_qp(32, 6, 30, 0, seed=3)
    w = torch.randn(32, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, exact = _grads_with(params, w, QPOptions())
    _, got = _grads_with(params, w, QPOptions(polish=False))
    for a, b in zip(got[:4], exact[:4]):
        scale = b.flatten(1).abs().amax(1).clamp(min=1.0)
        assert ((a - b).flatten(1).abs().amax(1) / scale).max() < 1e-4
