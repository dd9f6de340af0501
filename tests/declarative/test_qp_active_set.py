"""The dual active-set fast path for one small QP (``declarative.qp.active_set``).

It must give what the interior-point path gives — solution, multipliers, statuses and the
gradients of all six parameters, including the one-sided ones at weakly active constraints — and
hand every case outside its scope (semidefinite Q, infeasible or non-finite data, dependent
equalities) to the interior-point method.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from declarative import QPOptions, Status, solve_qp
from declarative.qp import active_set
from declarative.qp.active_set import solve_qp_active_set
from declarative.reference.qp import degenerate_qp, qp_reference_batch, random_qp

IPM = QPOptions(active_set=False)
BLOCKS = {"none": (0, 0), "ineq": (9, 0), "eq": (0, 2), "both": (9, 2), "many": (30, 3)}


@pytest.fixture
def spy(monkeypatch):
    """Counts the active-set solves that succeeded (``ok``) and failed (``none``); those that
    stopped at the in-band test (``OUT_OF_BAND``: the equilibrated data are solved next) are not
    counted."""
    calls = {"ok": 0, "none": 0}
    real = active_set.solve_qp_active_set

    def counted(*a, **k):
        out = real(*a, **k)
        if out is not active_set.OUT_OF_BAND:
            calls["ok" if out is not None else "none"] += 1
        return out
    import declarative.qp.problem as problem
    monkeypatch.setattr(problem, "solve_qp_active_set", counted)
    return calls


@pytest.mark.parametrize("blocks", list(BLOCKS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_cvxpy_and_the_interior_point_path(blocks, seed, device, spy):
    m, p = BLOCKS[blocks]
    params = tuple(None if t is None else t.to(device) for t in random_qp(1, 6, m, p, seed=seed + 7 * m))
    sol = solve_qp(*params)
    assert spy["ok"] == 1 and (sol.status == Status.SOLVED).all()
    # exact: the KKT stationarity residual is at rounding level
    Q, q, G, h, A, b = params
    r = Q[0] @ sol.z[0] + q[0]
    if m:
        r = r + G[0].T @ sol.duals["lam"][0]
    if p:
        r = r + A[0].T @ sol.duals["nu"][0]
    assert r.abs().max() <= 1e-12 * (1 + q.abs().max())
    # the interior-point path polishes only with inequalities; without, its Newton step carries the
    # static regularisation (stationarity ~3e-10 here)
    ipm = solve_qp(*params, options=IPM)
    atol = 1e-10 if m else 1e-8
    torch.testing.assert_close(sol.z, ipm.z, atol=atol, rtol=0)
    torch.testing.assert_close(sol.duals["lam"], ipm.duals["lam"], atol=10 * atol, rtol=0)
    torch.testing.assert_close(sol.duals["nu"], ipm.duals["nu"], atol=10 * atol, rtol=0)
    z, lam, nu, st = qp_reference_batch(*[None if t is None else t.cpu() for t in params])
    assert st == ["optimal"]
    np.testing.assert_allclose(sol.z.cpu().numpy(), z, atol=1e-7)
    for r in ("primal", "dual", "gap"):
        assert (sol.residuals[r] <= 1e-8).all(), r


def _grads(params, options=None, mode="implicit", beta=None):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in params]
    sol = solve_qp(*leaves, options=options, mode=mode, beta=beta)
    w = torch.linspace(-1.0, 1.0, sol.z.numel(), dtype=sol.z.dtype, device=sol.z.device).reshape(sol.z.shape)
    return torch.autograd.grad((sol.z * w).sum(), [t for t in leaves if t is not None])


@pytest.mark.parametrize("kind", ["random", "degenerate", "unbatched"])
def test_gradients_as_the_interior_point_path(kind, spy):
    if kind == "random":
        params = random_qp(1, 6, 9, 2, seed=3)
    elif kind == "degenerate":
        Q, q, G, h, *_ = degenerate_qp(1, seed=4)   # weakly active constraints: the backward QP
        params = (Q, q, G, h, None, None)
    else:
        params = random_qp(None, 5, 7, 1, seed=5)
    got, ref = _grads(params), _grads(params, IPM)
    # the forward; with weakly active constraints the (small) backward QP as well
    assert spy["ok"] == (2 if kind == "degenerate" else 1)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_contrastive_modes_as_the_interior_point_path():
    import contrastive  # noqa: F401  (registers the modes)
    params = random_qp(1, 5, 8, 1, seed=6)
    for mode in ("contrastive", "symmetric"):
        for a, b in zip(_grads(params, None, mode, 1e-3), _grads(params, IPM, mode, 1e-3)):
            torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_gradcheck():
    Q, q, G, h, A, b = random_qp(1, 3, 4, 1, seed=21)
    inputs = tuple(t.clone().requires_grad_() for t in (Q, q, G, h, A, b))

    def f(Q, q, G, h, A, b):
        return solve_qp(0.5 * (Q + Q.mT), q, G, h, A, b).z
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_dependent_and_repeated_constraints(spy):
    """A repeated row and a row that is the sum of two others (dependent active constraints: the
    method drops one before it adds the other)."""
    Q, q, G, h, _, _ = random_qp(1, 4, 6, 0, seed=8)
    G = torch.cat([G, G[:, :1], G[:, 1:2] + G[:, 2:3]], 1)
    h = torch.cat([h, h[:, :1], h[:, 1:2] + h[:, 2:3]], 1)
    q = q * 20                                   # push the minimiser against many rows
    sol = solve_qp(Q, q, G, h)
    ref = solve_qp(Q, q, G, h, options=IPM)
    torch.testing.assert_close(sol.z, ref.z, atol=1e-9, rtol=0)
    z, *_ = qp_reference_batch(Q, q, G, h)
    np.testing.assert_allclose(sol.z.numpy(), z, atol=1e-6)


def test_out_of_scope_goes_to_the_interior_point_method(spy):
    f64 = torch.float64
    # an LP (Q = 0): not strictly convex
    G = torch.cat([torch.eye(3), -torch.eye(3)]).double()
    sol = solve_qp(torch.zeros(3, 3, dtype=f64), torch.tensor([1.0, -2.0, 0.5], dtype=f64), G, torch.ones(6, dtype=f64))
    torch.testing.assert_close(sol.z, torch.tensor([-1.0, 1.0, -1.0], dtype=f64), atol=1e-8, rtol=0)
    # infeasible, unbounded, non-finite: the interior-point method's statuses
    Q, q = torch.eye(2, dtype=f64), torch.zeros(2, dtype=f64)
    Gi, hi = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=f64), torch.tensor([-1.0, -1.0], dtype=f64)
    assert int(solve_qp(Q, q, Gi, hi, check=False).status) == Status.PRIMAL_INFEASIBLE
    Qs = torch.diag(torch.tensor([1.0, 0.0], dtype=f64))
    assert int(solve_qp(Qs, torch.tensor([0.0, -1.0], dtype=f64), torch.tensor([[1.0, 0.0]], dtype=f64),
                        torch.ones(1, dtype=f64), check=False).status) == Status.DUAL_INFEASIBLE
    qn = torch.tensor([float("nan"), 0.0], dtype=f64)
    assert int(solve_qp(Q, qn, Gi.abs(), hi.abs(), check=False).status) == Status.NON_FINITE
    assert spy["ok"] == 0 and spy["none"] == 4
    # the raw solver directly: None for each
    assert solve_qp_active_set(Q, q, Gi, hi) is None
    assert solve_qp_active_set(Qs, q, Gi, -hi) is None


def test_only_single_small_problems(spy):
    solve_qp(*random_qp(2, 4, 5, 0, seed=1))                       # a batch
    solve_qp(*random_qp(1, 60, 80, 0, seed=1))                     # n + m > MAX_SIZE (128)
    solve_qp(*random_qp(1, 4, 5, 0, seed=1), options=IPM)          # switched off
    assert spy["ok"] == spy["none"] == 0
    with pytest.raises(ValueError, match="active_set"):
        QPOptions(active_set="yes")


def test_problems_up_to_max_size_agree_with_the_interior_point_path(spy):
    """n + m + p up to ``MAX_SIZE`` (here 40 + 80 + 5 = 125) takes the active-set path and returns
    the interior-point path's solution and implicit gradients."""
    params = random_qp(1, 40, 80, 5, seed=4)
    grads = []
    for opts in (QPOptions(), IPM):
        ps = [t.clone().requires_grad_() for t in params]
        sol = solve_qp(*ps, options=opts)
        assert int(sol.status) == Status.SOLVED
        (sol.z * torch.linspace(-1, 1, 40, dtype=torch.float64)).sum().backward()
        grads.append((sol.z.detach(), [t.grad for t in ps]))
    assert spy["ok"] == 1 and spy["none"] == 0
    (za, ga), (zb, gb) = grads
    torch.testing.assert_close(za, zb, atol=1e-9, rtol=0)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


def test_float32():
    params = random_qp(1, 5, 8, 1, seed=9, dtype=torch.float32)
    sol = solve_qp(*params)
    z, *_ = qp_reference_batch(*[t.double() for t in params])
    np.testing.assert_allclose(sol.z.double().numpy(), z, atol=1e-4)


def test_random_problems_gradients_as_the_interior_point_path():
    """40 random single problems of random shape: solution and implicit gradients of all six
    parameters as on the interior-point path."""
    g = torch.Generator().manual_seed(0)
    for seed in range(40):
        n, m, p = (int(v) for v in torch.randint(1, 8, (3,), generator=g))
        p = min(p % 3, n - 1)
        params = random_qp(1, n, m, p, seed=100 + seed)
        a, b = _grads(params), _grads(params, IPM)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=1e-7, rtol=1e-7, msg=f"seed {seed} (n, m, p) = {(n, m, p)}")


def test_float32_small_violations_are_not_accepted():
    """Rows violated by more than their rounding level join the active set, also in float32 (a
    threshold of 1e3·eps·(1 + ‖h‖∞) accepted z₁ = 2 against z₁ ≤ 1.99 when
    max|h| = 100, with λ = 0 and the wrong gradient); inconsistent rows are infeasible."""
    f32 = torch.float32
    Q, q = torch.eye(2, dtype=f32), torch.tensor([-2.0, -2.0], dtype=f32)
    G, h = torch.eye(2, dtype=f32), torch.tensor([1.99, 100.0], dtype=f32)
    leaves = [t.clone().requires_grad_() for t in (Q, q, G, h)]
    sol = solve_qp(*leaves)
    torch.testing.assert_close(sol.z, torch.tensor([1.99, 2.0], dtype=f32), atol=1e-6, rtol=0)
    torch.testing.assert_close(sol.duals["lam"], torch.tensor([0.01, 0.0], dtype=f32), atol=1e-6, rtol=0)
    dq, dh = torch.autograd.grad(sol.z.sum(), [leaves[1], leaves[3]])
    torch.testing.assert_close(dq, torch.tensor([0.0, -1.0], dtype=f32), atol=1e-6, rtol=0)
    torch.testing.assert_close(dh, torch.tensor([1.0, 0.0], dtype=f32), atol=1e-6, rtol=0)
    # z₁ ≤ 1 and z₁ ≥ 1.001: infeasible (was SOLVED with z₁ = 1.001)
    Gi = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=f32)
    hi = torch.tensor([1.0, -1.001, 10.0], dtype=f32)
    assert int(solve_qp(torch.eye(2, dtype=f32), torch.zeros(2, dtype=f32), Gi, hi, check=False).status) \
        == Status.PRIMAL_INFEASIBLE


def _ill_conditioned_f32(seed):
    """float32, cond(Q) 1e4, rows scaled over 1e-2…1e2, half of them near copies of the others."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    n, m = 8, 40
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=f64))[0]
    Q = U @ torch.diag(torch.logspace(-3, 1, n, dtype=f64)) @ U.T
    G = torch.randn(m, n, generator=g, dtype=f64) * torch.logspace(-2, 2, m, dtype=f64)[:, None]
    G[m // 2:] = G[:m // 2] * (1 + 1e-5 * torch.randn(m // 2, 1, generator=g, dtype=f64))
    h = torch.rand(m, generator=g, dtype=f64) * G.abs().sum(-1) * 0.1
    q = torch.randn(n, generator=g, dtype=f64) * 10
    return tuple(t.float() for t in (Q, q, G, h))


def test_float32_rows_the_steps_let_through_are_caught_by_the_fresh_solve(monkeypatch):
    """The steps track ``g_i·z − h_i`` on the host; their rounding can let a row through that the
    final active set's fresh solve finds violated, and the method goes on from there (more than
    one final factorisation: about 1 in 70 of these ill-conditioned float32 problems). Every
    result is feasible to each row's rounding level, with non-negative multipliers, and agrees
    with the float64 interior-point solution (checked on every tenth and every continued one)."""
    factorisations = []
    real = torch.linalg.lu_factor_ex
    monkeypatch.setattr(torch.linalg, "lu_factor_ex", lambda *a, **k: factorisations.append(1) or real(*a, **k))
    continued = 0
    for seed in range(300):
        factorisations.clear()
        Q, q, G, h = _ill_conditioned_f32(seed)
        sol = solve_qp_active_set(Q, q, G, h, options=QPOptions())
        if sol is None:
            continue
        went_on = len(factorisations) > 1
        continued += went_on
        z = sol.z[0]
        level = 16 * torch.finfo(torch.float32).eps * (h.abs() + G.abs().sum(-1) * z.abs().max())
        assert ((G @ z - h) <= level).all(), seed
        assert (sol.duals["lam"] >= 0).all(), seed
        if went_on or seed % 10 == 0:
            ref = solve_qp(*(t.double() for t in (Q, q, G, h)), options=IPM)
            assert (sol.z.double() - ref.z).abs().max() <= 1e-3 * (1 + ref.z.abs().max()), seed
    assert continued >= 1


@pytest.mark.parametrize("kind", ["random", "degenerate"])
def test_strict_complementarity_is_classified_as_the_backward_does(kind):
    """``act_strict`` (the host-side classification that sends the backward straight to the KKT
    system) is present exactly when ``QPProblem.classify_constraints`` finds no weakly active row,
    and then equals its strongly active mask."""
    from declarative.qp.problem import QPProblem
    problem = QPProblem()
    seen = set()
    for seed in range(12):
        if kind == "random":
            params = random_qp(1, 5, 8, seed % 3, seed=300 + seed)
        else:
            params = degenerate_qp(1, seed=seed)[:4] + (None, None)
        sol = solve_qp_active_set(*params, options=problem.options)
        assert sol is not None
        strong, weak = problem.classify_constraints(sol, params)
        strict = "act_strict" in sol.cache
        assert strict == (not bool(weak.any()))
        if strict:
            assert torch.equal(sol.cache["act_strict"], strong)
        seen.add(strict)
    assert seen == ({True} if kind == "random" else {False})


def test_tableau_pivots_give_the_active_sets_directions():
    """The dual tableau after pivoting in a set W of rows, against dense solves of our own: the
    active multipliers' rates ``−M_WW⁻¹M_Wp``, the Schur complement ``M_pp − M_pWM_WW⁻¹M_Wp`` and
    the values at the vertex (the equality-constrained minimiser's multipliers and ``r − Cz``);
    pivoting the same rows again gives the initial tableau back."""
    Q, q, G, h, _, _ = (None if t is None else t[0] for t in random_qp(1, 7, 12, 0, seed=3))
    L = torch.linalg.cholesky(Q)
    S, z0 = active_set._dual_tableau(L, torch.cat([G.T, -q[:, None]], 1), h)
    S0 = S.clone()
    Qi = torch.linalg.inv(Q)
    M = G @ Qi @ G.T
    torch.testing.assert_close(S[:-1], M, rtol=0, atol=1e-12)
    torch.testing.assert_close(z0[:, 0], -Qi @ q, rtol=0, atol=1e-12)
    torch.testing.assert_close(S[-1], h - G @ z0[:, 0], rtol=0, atol=1e-12)
    E = torch.eye(13, 12, dtype=S.dtype)
    W = [4, 0, 9, 2]
    for j in W:
        active_set._pivot(S, E, j, float(S[j, j]))
    T = S.T                                          # rows: basic variables, columns: non-basic
    Ww = torch.tensor(W)
    MWW = M[Ww][:, Ww]
    lam_W = torch.linalg.solve(MWW, -(h - G @ z0[:, 0])[Ww])     # w_W = M_WW λ_W + w₀_W = 0
    z = z0[:, 0] - Qi @ G[Ww].T @ lam_W
    torch.testing.assert_close(T[Ww, -1], lam_W, rtol=0, atol=1e-10)
    rest = torch.tensor([i for i in range(12) if i not in W])
    torch.testing.assert_close(T[rest, -1], (h - G @ z)[rest], rtol=0, atol=1e-10)
    for p in rest.tolist():
        rate = -torch.linalg.solve(MWW, M[Ww, p])
        torch.testing.assert_close(T[Ww, p], rate, rtol=0, atol=1e-10)
        torch.testing.assert_close(T[p, p], M[p, p] + M[p, Ww] @ rate, rtol=0, atol=1e-10)
    for j in reversed(W):
        active_set._pivot(S, E, j, float(S[j, j]))
    torch.testing.assert_close(S, S0, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.bool, torch.float16])
def test_lift(dtype, device):
    values = [1, 0, 1] if dtype == torch.bool else [1.5, -2.0, 3.0] if dtype.is_floating_point else [4, -1, 7]
    t = active_set._lift(values, dtype, device)
    assert t.dtype == dtype and t.device.type == device.type and t.tolist() == values
    assert active_set._lift([], dtype, device).shape == (0,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 1e-4])
def test_classification_on_the_host_near_its_thresholds(dtype, scale):
    """Multipliers and slacks within a few ulps of the weak-activity thresholds (a regression:
    ``act_strict`` was set where ``classify_constraints``, evaluated in the dtype and after
    equilibration's round trip, found a weakly active row — dz 0 instead of −1). With or without
    ``act_strict``, the implicit tangent must be the same; ``scale`` 1e-4 goes through equilibration."""
    from declarative.qp.problem import QPProblem
    problem = QPProblem()
    tau = torch.finfo(dtype).eps ** 0.5
    eye = torch.eye(3, dtype=dtype)
    g = torch.tensor([[0.0, 1.0, 0.0]], dtype=dtype)
    cases = [(torch.tensor([-32.75385214977677, -0.011654091067612171, 0.0], dtype=dtype),
              torch.tensor([0.0, 0.0, 1.0], dtype=dtype)),
             (torch.tensor([-2.0, -1.0, 0.0], dtype=dtype), torch.tensor([0.0, 0.0, 1.0], dtype=dtype))]
    for big in (0.7, 3.0, 41.0):
        # the multiplier threshold τ(min(1, λ̄) + ‖λ‖∞), λ̄ = max|q| = big here (z* = 0), and the
        # slack threshold τ(1 + ‖h‖∞)
        edge_lam = float(torch.tensor(tau * (min(1.0, big) + big), dtype=dtype))
        edge_s = float(torch.tensor(tau * (1 + big), dtype=dtype))
        ulp = float(torch.finfo(dtype).eps)
        for k in range(-3, 4):
            v = edge_lam * (1 + k * ulp)
            cases.append((torch.tensor([-big, -v, 0.0], dtype=dtype), torch.tensor([0.0, 0.0, 1.0], dtype=dtype)))
            v = edge_s * (1 + k * ulp)
            cases.append((torch.tensor([-1.0, 0.0, 0.0], dtype=dtype), torch.tensor([0.0, v, big], dtype=dtype)))
    strict_seen = 0
    for q, h in cases:
        params = (eye, q * scale, eye, h * scale, None, None)
        sol = problem.solve(params)
        t1 = problem.implicit_tangent(sol, params, g)
        strict_seen += "act_strict" in sol.cache
        sol.cache.pop("act_strict", None)
        t2 = problem.implicit_tangent(sol, params, g)
        torch.testing.assert_close(t1.z, t2.z, atol=0, rtol=0)
        torch.testing.assert_close(t1.duals["lam"], t2.duals["lam"], atol=0, rtol=0)
    assert strict_seen > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_of_very_different_norms(dtype):
    """A row of norm 1e-5 (float32) or 1e-8 (float64) against unit data: z₁ ≥ 1/ε, so
    z* = (1/ε, −1). Exact on this path; a test of the final system's LU pivots against the largest
    pivot (scale-dependent: a row of norm ε gives a pivot ratio ε²) sent it to the interior-point
    method, which fails on it."""
    e = 1e-5 if dtype == torch.float32 else 1e-8
    Q, q = torch.eye(2, dtype=dtype), torch.tensor([0.0, 1.0], dtype=dtype)
    G, h = torch.tensor([[-e, 0.0]], dtype=dtype), torch.tensor([-1.0], dtype=dtype)
    sol = solve_qp_active_set(Q, q, G, h, options=QPOptions())
    assert sol is not None
    torch.testing.assert_close(sol.z[0], torch.tensor([1 / e, -1.0], dtype=dtype), rtol=1e-6, atol=0)


def _vertex(seed, n=4, cond=100.0):
    """A strictly complementary vertex: n active rows (condition ``cond``) with multipliers in
    [0.5, 1.5], two inactive rows."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=f64))[0]
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=f64))[0]
    C = U @ torch.diag(torch.logspace(0, -float(np.log10(cond)), n, dtype=f64)) @ V.T
    M = torch.randn(n, n, generator=g, dtype=f64)
    Q = M @ M.T / n + 0.1 * torch.eye(n, dtype=f64)
    zs = torch.randn(n, generator=g, dtype=f64)
    lam = torch.rand(n, generator=g, dtype=f64) + 0.5
    G = torch.cat([C, torch.randn(2, n, generator=g, dtype=f64)])
    h = torch.cat([C @ zs, G[n:] @ zs + 1.0])
    return Q, -Q @ zs - C.T @ lam, G, h


@pytest.mark.parametrize("t", [1.0, 1e4])
def test_float32_vertex_tangent_is_zero(t):
    """At a vertex (n strongly active rows) z* does not move with q: ∇q = 0. The float32 LU
    solve of the backward's KKT system left ∇q at up to 1.7e-4 (times t², the scale of ∇q) here,
    and 23 on a variable-scaled case; the solve is refined with float64 residuals
    (t = 1e4: z = z'/t, through equilibration's variable scale)."""
    worst, vertices = 0.0, 0
    for seed in range(20):
        Q, q, G, h = _vertex(seed)
        leaves = [x.float().clone().requires_grad_() for x in (Q * t * t, q * t, G * t, h)]
        sol = solve_qp(*leaves)
        if int((sol.duals["lam"] > 0).sum()) < 4:
            continue
        vertices += 1
        dq, = torch.autograd.grad(sol.z.sum(), leaves[1])
        worst = max(worst, float(dq.abs().max()) * t * t)
    assert vertices >= 15 and worst <= 1e-9
