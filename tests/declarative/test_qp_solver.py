"""The batched QP interior-point solver against cvxpy/Clarabel, statuses and input validation."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from declarative import QPOptions, SolverError, Status, solve_qp, solve_qp_ipm
from declarative.reference.qp import degenerate_qp, qp_reference_batch, random_qp
from declarative.reference.qp_residuals import meets_np, qp_residuals_np


def assert_solved_contract(params, sol, options):
    """Every SOLVED element meets ``eps_abs + eps_rel·scale`` on ``params`` (qpbenchmark's residuals,
    numpy), and ``sol.residuals`` are those residuals."""
    opts = options.resolved(sol.z.dtype)
    B = sol.z.shape[0] if sol.z.dim() == 2 else 1
    for i in range(B):
        def one(t, core):
            if t is None:
                return None
            t = t.detach().double().cpu().numpy()
            return t[i] if t.ndim > core else t
        P, q, G, h, A, b = (one(t, c) for t, c in zip(params, (2, 1, 2, 1, 2, 1)))
        x = one(sol.z, 1)
        res = qp_residuals_np(P, q, G, h, A, b, x, one(sol.duals["lam"], 1), one(sol.duals["nu"], 1))
        status = sol.status.reshape(-1)[i]
        if status == Status.SOLVED:
            assert meets_np(res, opts.eps_abs, opts.eps_rel, 32 * torch.finfo(sol.z.dtype).eps), (i, res)
        for k, r in zip(("primal", "dual", "gap"), res[:3]):
            got = float(sol.residuals[k].reshape(-1)[i])
            assert abs(got - r) <= 1e-6 * (1 + r) + 1e-12 * max(res[3:6]), (k, got, r)

# Tolerances on z, λ, ν against Clarabel (itself accurate to ~1e-9 here). float64: the solver's
# relative residuals are ≤ 1e-8 and the active-set polish makes z exact to rounding, so 1e-6 keeps
# a wide margin for the conditioning of the random problems. float32: residual tolerance 1e-4.
ATOL = {torch.float64: 1e-6, torch.float32: 2e-3}

BLOCKS = {"none": (0, 0), "ineq": (5, 0), "eq": (0, 2), "both": (5, 2)}


def _ref(params):
    return qp_reference_batch(*[None if t is None else t.double().cpu() for t in params])


@pytest.mark.parametrize("blocks", list(BLOCKS))
@pytest.mark.parametrize("B", [1, 4])
def test_matches_cvxpy(blocks, B, dtype, device):
    m, p = BLOCKS[blocks]
    params = random_qp(B, 4, m, p, dtype=dtype, device=device, seed=B + 10 * m + p)
    sol = solve_qp(*params)
    z, lam, nu, statuses = _ref(params)
    assert statuses == ["optimal"] * B
    assert sol.z.shape == (B, 4) and sol.z.dtype == dtype and sol.z.device.type == device.type
    assert (sol.status == Status.SOLVED).all()
    atol = ATOL[dtype]
    np.testing.assert_allclose(sol.z.double().cpu().numpy(), z, atol=atol, rtol=0)
    np.testing.assert_allclose(sol.duals["lam"].double().cpu().numpy(), lam, atol=atol * 10, rtol=0)
    np.testing.assert_allclose(sol.duals["nu"].double().cpu().numpy(), nu, atol=atol * 10, rtol=0)
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    for r in ("primal", "dual", "gap"):
        assert (sol.residuals[r] <= tol).all(), r


def test_unbatched_and_mixed_inputs(device):
    Q, q, G, h, A, b = random_qp(None, 4, 5, 1, device=device, seed=1)
    sol = solve_qp(Q, q, G, h, A, b)
    assert sol.z.shape == (4,) and sol.duals["lam"].shape == (5,) and sol.status.shape == ()
    z, *_ = _ref((Q, q, G, h, A, b))
    np.testing.assert_allclose(sol.z.cpu().numpy(), z, atol=1e-6)
    # mixed: batched q, unbatched everything else
    qb = q + 0.3 * torch.randn(3, 4, dtype=q.dtype, device=device)
    solb = solve_qp(Q, qb, G, h, A, b)
    assert solb.z.shape == (3, 4)
    zb, *_ = _ref((Q.expand(3, 4, 4), qb, G.expand(3, 5, 4), h.expand(3, 5), A.expand(3, 1, 4), b.expand(3, 1)))
    np.testing.assert_allclose(solb.z.cpu().numpy(), zb, atol=1e-6)


def test_psd_q_linear_program(device):
    """Q = 0 (an LP) and rank-deficient Q are fine when the problem is bounded."""
    n = 3
    G = torch.cat([torch.eye(n), -torch.eye(n)]).double().to(device)
    h = torch.ones(2 * n, dtype=torch.float64, device=device)
    q = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, device=device)
    sol = solve_qp(torch.zeros(n, n, dtype=torch.float64, device=device), q, G, h)
    torch.testing.assert_close(sol.z, -torch.sign(q), atol=1e-8, rtol=0)
    params = random_qp(3, 4, 8, 1, psd_rank=2, device=device, seed=3)
    params = (params[0], params[1], torch.cat([params[2], torch.cat([torch.eye(4), -torch.eye(4)]).double().to(device).expand(3, 8, 4)], 1),
              torch.cat([params[3], 5 * torch.ones(3, 8, dtype=torch.float64, device=device)], 1), params[4], params[5])
    sol = solve_qp(*params)
    z, *_ = _ref(params)
    np.testing.assert_allclose(sol.z.cpu().numpy(), z, atol=1e-6)


def test_degenerate_solution_is_exact(device):
    """Weakly active constraints: IPM iterates are O(√μ) off, the active-set polish is exact."""
    Q, q, G, h, zs, lam, strong, weak = degenerate_qp(4)
    sol = solve_qp(*(t.to(device) for t in (Q, q, G, h)))
    torch.testing.assert_close(sol.z.cpu(), zs, atol=1e-10, rtol=0)
    torch.testing.assert_close(sol.duals["lam"].cpu(), lam, atol=1e-10, rtol=0)
    raw = solve_qp_ipm(Q, q, G, h, options=QPOptions(polish=False))
    assert (raw.z - zs).abs().max() > 1e-8   # the polish is what makes it exact


def test_warm_start_saves_iterations(device):
    params = random_qp(6, 6, 8, 2, device=device, seed=4)
    cold = solve_qp_ipm(*params)
    Q, q, G, h, A, b = params
    q2 = q + 1e-3 * torch.randn_like(q)
    warm = solve_qp_ipm(Q, q2, G, h, A, b, warm_start=cold)
    cold2 = solve_qp_ipm(Q, q2, G, h, A, b)
    assert (warm.status == Status.SOLVED).all()
    torch.testing.assert_close(warm.z, cold2.z, atol=1e-8, rtol=0)
    assert warm.iterations.sum() < cold2.iterations.sum()


def _infeasible(dtype, device):
    Q = torch.eye(2, dtype=dtype, device=device)
    G = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=dtype, device=device)
    return Q, torch.zeros(2, dtype=dtype, device=device), G, torch.tensor([-1.0, -1.0], dtype=dtype, device=device)


def test_primal_infeasible(dtype, device):
    Q, q, G, h = _infeasible(dtype, device)
    sol = solve_qp(Q, q, G, h, check=False)
    assert int(sol.status) == Status.PRIMAL_INFEASIBLE
    A = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=dtype, device=device)
    b = torch.tensor([1.0, 2.0], dtype=dtype, device=device)
    sol = solve_qp(Q, q, A=A, b=b, check=False)
    assert int(sol.status) == Status.PRIMAL_INFEASIBLE
    with pytest.raises(SolverError, match="PRIMAL_INFEASIBLE"):
        solve_qp(Q, q, G, h)


def test_dual_infeasible(dtype, device):
    Q = torch.diag(torch.tensor([1.0, 0.0], dtype=dtype, device=device))
    q = torch.tensor([0.0, -1.0], dtype=dtype, device=device)
    G = torch.tensor([[1.0, 0.0]], dtype=dtype, device=device)
    h = torch.ones(1, dtype=dtype, device=device)
    assert int(solve_qp(Q, q, G, h, check=False).status) == Status.DUAL_INFEASIBLE
    assert int(solve_qp(Q, q, check=False).status) == Status.DUAL_INFEASIBLE
    # an LP unbounded along a feasible ray
    Z = torch.zeros(2, 2, dtype=dtype, device=device)
    assert int(solve_qp(Z, torch.tensor([-1.0, 0.0], dtype=dtype, device=device), -torch.eye(2, dtype=dtype, device=device),
                        torch.zeros(2, dtype=dtype, device=device), check=False).status) == Status.DUAL_INFEASIBLE


def test_batch_with_one_infeasible_element(device):
    params = random_qp(4, 3, 4, 0, device=device, seed=5)
    Q, q, G, h, _, _ = params
    G = G.clone()
    h = h.clone()
    G[2, 0], h[2, 0] = -G[2, 1], -h[2, 1] - 1.0        # row 0 = −row 1 with an empty interval
    with pytest.raises(SolverError) as err:
        solve_qp(Q, q, G, h)
    assert err.value.indices == [2]
    assert "batch indices [2]" in str(err.value)
    sol = solve_qp(Q, q, G, h, check=False)
    assert sol.status.tolist() == [0, 0, int(Status.PRIMAL_INFEASIBLE), 0]
    z, *_ = _ref((Q, q, G, h, None, None))
    ok = [0, 1, 3]
    np.testing.assert_allclose(sol.z[ok].cpu().numpy(), z[ok], atol=1e-6)


def test_non_finite_input(device):
    Q, q, G, h, _, _ = random_qp(3, 3, 4, 0, device=device, seed=6)
    q = q.clone()
    q[1, 0] = float("nan")
    sol = solve_qp(Q, q, G, h, check=False)
    assert sol.status.tolist() == [0, int(Status.NON_FINITE), 0]
    z, *_ = _ref((Q[[0, 2]], q[[0, 2]], G[[0, 2]], h[[0, 2]], None, None))
    np.testing.assert_allclose(sol.z[[0, 2]].cpu().numpy(), z, atol=1e-6)
    with pytest.raises(SolverError, match=r"batch indices \[1\]: NON_FINITE"):
        solve_qp(Q, q, G, h)


def test_iteration_limit():
    params = random_qp(2, 4, 6, 1, seed=7)
    sol = solve_qp(*params, options=QPOptions(max_iter=1, polish=False), check=False)
    assert (sol.status == Status.MAX_ITERATIONS).all()
    assert (sol.iterations == 1).all()


@pytest.mark.parametrize("seed", [35, 36, 37, 38])
def test_iteration_limit_counts_per_element(seed):
    """``max_iter`` is each element's own budget over the interior-point runs: an element iterated
    on again (the polish ladder, the contract, a certificate re-run) gets the rest of its own
    iterations — at least one — and an element that is not stays where it is. Random LPs (many
    unbounded) with ``max_iter = 8``: before, an element still running at its limit iterated along
    whenever another element of the batch was retried, and ended at up to 13 iterations."""
    Q, q, G, h, A, b = random_qp(8, 10, 14, 3, seed=seed, psd_rank=0)
    sol = solve_qp(Q, q, G, h, A, b, options=QPOptions(max_iter=8), check=False)
    assert int(sol.iterations.max()) <= 8 + 1


def test_indefinite_and_asymmetric_q():
    Q = torch.diag(torch.tensor([1.0, -0.5], dtype=torch.float64))
    q = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="indefinite.*smallest eigenvalue -0.5"):
        solve_qp(Q, q)
    Qb = torch.eye(2, dtype=torch.float64).repeat(3, 1, 1)
    Qb[1, 0, 0] = -1.0
    with pytest.raises(ValueError, match=r"indefinite for batch indices \[1\]"):
        solve_qp(Qb, q)
    with pytest.raises(ValueError, match="not symmetric"):
        solve_qp(torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=torch.float64), q)
    with pytest.raises(ValueError, match=r"indefinite for batch indices \[0\]"):
        solve_qp(Q.unsqueeze(0), q)                      # one problem: the short check, then the full one
    # n = 256: the full check factors the lower triangle; a Q asymmetric within the tolerance,
    # definite in its upper triangle and indefinite in its lower one must fail as before (a
    # short check that read the upper triangle would pass it)
    n, a = 256, 1e-6
    Qt = a * torch.eye(n, dtype=torch.float64) + torch.tril(torch.full((n, n), -1e-8 * (1 + a), dtype=torch.float64), -1)
    with pytest.raises(ValueError, match="indefinite"):
        solve_qp(Qt, torch.ones(n, dtype=torch.float64))
    # semidefinite (a singular Cholesky) and indefinite within the tolerance pass
    G, h = torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    for d in (0.0, -1e-12):
        Qs = torch.diag(torch.tensor([1.0, d], dtype=torch.float64))
        sol = solve_qp(Qs, torch.tensor([0.0, -1.0], dtype=torch.float64), G, h)
        torch.testing.assert_close(sol.z, torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("args, match", [
    (dict(Q=torch.eye(3)[None, None]), r"Q: expected shape \(B, n, n\) or \(n, n\), got \(1, 1, 3, 3\)"),
    (dict(q=torch.zeros(4)), r"q: expected n \(the size of Q\) = 3, got 4"),
    (dict(Q=torch.ones(3, 2)), "Q: expected a square matrix"),
    (dict(G=torch.zeros(2, 3), h=torch.zeros(3)), r"h: expected m \(the number of rows of G\) = 2, got 3"),
    (dict(G=torch.zeros(2, 4), h=torch.zeros(2)), "G: expected n"),
    (dict(G=torch.zeros(2, 3)), "G and h must be given together"),
    (dict(A=torch.zeros(1, 3), b=torch.zeros(2)), r"b: expected p"),
    (dict(q=torch.zeros(2, 3), G=torch.zeros(5, 2, 3), h=torch.zeros(2)), "batch sizes differ"),
    (dict(q=torch.zeros(3, dtype=torch.float64)), "mixed dtypes"),
    (dict(q=torch.zeros(3, dtype=torch.int64)), "floating-point"),
])
def test_invalid_inputs(args, match):
    kw = dict(Q=torch.eye(3), q=torch.zeros(3))
    kw.update(args)
    with pytest.raises((ValueError, TypeError), match=match):
        solve_qp(**kw)


def test_unknown_mode_and_bad_beta():
    Q, q = torch.eye(2), torch.zeros(2)
    with pytest.raises(ValueError, match="unknown gradient mode"):
        solve_qp(Q, q, mode="bogus")
    import contrastive  # noqa: F401
    with pytest.raises(ValueError, match="beta"):
        solve_qp(Q, q, mode="contrastive", beta=-1.0)


# derandomized: CI runs the same 12 examples every time (a submission must not fail on a newly drawn
# one); thousands more were run with random seeds while developing (raise max_examples, drop
# derandomize)
@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 4), m=st.integers(0, 5), p=st.integers(0, 2), B=st.integers(1, 3),
       seed=st.integers(0, 10_000), psd=st.booleans(), mixed=st.sampled_from([None, True]),
       obj_scale=st.sampled_from([1.0, 1e-6, 1e6]), row_scale=st.sampled_from([1.0, 1e-5, 1e5]),
       z_scale=st.sampled_from([1.0, 1e-6, 1e5]))
def test_property_random_qps_match_cvxpy(n, m, p, B, seed, psd, mixed, obj_scale, row_scale, z_scale):
    """``mixed=True``: the first interior-point phase in float32 (``QPOptions.mixed_precision``).
    The solver sees the objective × ``obj_scale``, the constraint rows × ``row_scale`` (the same
    minimiser) and ``q, h, b`` × ``z_scale`` (the minimiser × ``z_scale``), all equilibrated by
    ``QPProblem``; cvxpy solves the unscaled problem."""
    p = min(p, n)
    params = random_qp(B, n, m, p, seed=seed)
    if psd and m:
        # rank-deficient Q: bounded thanks to box constraints
        Q = random_qp(B, n, 0, 0, seed=seed + 1, psd_rank=max(1, n - 1))[0]
        box = torch.cat([torch.eye(n), -torch.eye(n)]).double().expand(B, 2 * n, n)
        params = (Q, params[1], torch.cat([params[2], box], 1),
                  torch.cat([params[3], 10 + torch.zeros(B, 2 * n, dtype=torch.float64)], 1), params[4], params[5])
    Q, q, G, h, A, b = params
    scaled = (Q * obj_scale, q * obj_scale * z_scale, None if G is None else G * row_scale,
              None if h is None else h * row_scale * z_scale, None if A is None else A * row_scale,
              None if b is None else b * row_scale * z_scale)
    sol = solve_qp(*scaled, options=QPOptions(mixed_precision=mixed))
    z, _, _, statuses = _ref(params)
    assert all(s == "optimal" for s in statuses)
    np.testing.assert_allclose(sol.z.numpy() / z_scale, z, atol=1e-5, rtol=1e-6)
    assert_solved_contract(scaled, sol, QPOptions())   # SOLVED means the tolerances are met


def _float32_scaled_qp(B, n, m, p, seed):
    r"""A batch of random feasible QPs (``random_qp``) in float32, rewritten in the variables
    ``x = d ⊙ z`` with per-element, per-variable scales ``d_j ∈ [1e-2, 1e2]``, constraint rows
    multiplied by ``r_i ∈ [1e-6, 1e6]`` and the objective by ``o ∈ [1e-4, 1e4]`` (log-uniform):

    .. math::

        Q' = o D^{-1} Q D^{-1},\; q' = o D^{-1} q,\; G' = R_G G D^{-1},\; h' = R_G h,\;
        A' = R_A A D^{-1},\; b' = R_A b .

    Returns the float32 data; the reference solves the same rounded data in float64."""
    Q, q, G, h, A, b = random_qp(B, n, m, p, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)

    def scale(*shape, e):
        return 10.0 ** (e * (2 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 1))
    di, o = 1 / scale(B, n, e=2), scale(B, 1, e=4)
    Q, q = o.unsqueeze(-1) * di.unsqueeze(-1) * Q * di.unsqueeze(-2), o * di * q
    if m:
        r = scale(B, m, e=6)
        G, h = r.unsqueeze(-1) * G * di.unsqueeze(-2), r * h
    if p:
        r = scale(B, p, e=6)
        A, b = r.unsqueeze(-1) * A * di.unsqueeze(-2), r * b
    return tuple(None if t is None else t.float() for t in (Q, q, G, h, A, b))


_SCALED = dict(n=st.integers(1, 6), m=st.integers(0, 7), p=st.integers(0, 2), B=st.integers(1, 4),
               seed=st.integers(0, 10_000))


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(**_SCALED)
def test_property_float32_scaled_qps_solved_means_accurate(n, m, p, B, seed):
    """Each float32 element is either SOLVED with ``‖z − z*‖∞ ≤ 1e-3 ‖z*‖∞`` (``z*``: cvxpy on the
    same rounded data in float64), or not SOLVED."""
    params = _float32_scaled_qp(B, n, m, min(p, n), seed)
    z, _, _, statuses = _ref(params)
    sol = solve_qp(*params, check=False)
    for i in range(B):
        if statuses[i] != "optimal" or int(sol.status[i]) != Status.SOLVED:
            continue
        err = np.abs(sol.z[i].double().numpy() - z[i]).max()
        assert err <= 1e-3 * max(np.abs(z[i]).max(), 1e-6), f"element {i}: SOLVED but off by {err:.3g}"


#: ``(B, n, m, p, seed)`` of ``_float32_scaled_qp`` batches with elements that a float32 polish
#: reported SOLVED but off by 0.2 % to 27 % of ``‖z*‖∞`` (in brackets), and one without inequalities
#: (a float32 equality-constrained solve, 0.2 % off)
_SCALED_REGRESSIONS = [((4, 6, 5, 2, 15), [1, 2]), ((4, 4, 6, 0, 28), [0]), ((3, 5, 0, 2, 53), [0]),
                       ((4, 6, 6, 2, 55), [1])]


@pytest.mark.parametrize("case, wrong", _SCALED_REGRESSIONS)
def test_float32_scaled_qps_are_solved_in_float64_and_accurate(case, wrong):
    """float32 data are solved as float64 problems (the float64 polish) and answered in float32:
    every SOLVED element within ``1e-3 ‖z*‖∞`` of the float64 reference on the same rounded data,
    and the elements once SOLVED but wrong now SOLVED and within ``1e-4 ‖z*‖∞``."""
    B, n, m, p, seed = case
    params = _float32_scaled_qp(B, n, m, p, seed)
    z, _, _, statuses = _ref(params)
    sol = solve_qp(*params, check=False)
    assert sol.z.dtype == torch.float32 and all(v.dtype == torch.float32 for v in sol.duals.values())
    for i in range(B):
        if statuses[i] != "optimal" or int(sol.status[i]) != Status.SOLVED:
            assert i not in wrong
            continue
        err = np.abs(sol.z[i].double().numpy() - z[i]).max() / max(np.abs(z[i]).max(), 1e-6)
        assert err <= (1e-4 if i in wrong else 1e-3), f"element {i}: SOLVED but off by {err:.3g}"


@pytest.mark.parametrize("case", [c for c, _ in _SCALED_REGRESSIONS])
def test_float32_scaled_qps_implicit_gradient_matches_float64(case):
    """The float32 backward works in the forward's float64 factorisations: its gradients of the
    SOLVED elements agree with those of the float64 solve of the same data (to 1e-3 of their
    size; each element's gradient is independent of the others)."""
    B, n, m, p, seed = case
    params = _float32_scaled_qp(B, n, m, p, seed)
    w = torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    out = {}
    for dtype in (torch.float32, torch.float64):
        leaves = [None if t is None else t.detach().to(dtype).requires_grad_() for t in params]
        sol = solve_qp(*leaves, check=False)
        present = [t for t in leaves if t is not None]
        out[dtype] = sol.status, torch.autograd.grad((sol.z * w.to(dtype)).sum(), present)
    both = (out[torch.float32][0] == Status.SOLVED) & (out[torch.float64][0] == Status.SOLVED)
    assert bool(both.any())
    for g32, g64 in zip(out[torch.float32][1], out[torch.float64][1]):
        assert g32.dtype == torch.float32
        for i in torch.nonzero(both).reshape(-1).tolist():
            a, e = g32[i].double(), g64[i]
            assert float((a - e).abs().max()) <= 1e-3 * float(e.abs().max()) + 1e-12, (i, a, e)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(**_SCALED)
def test_property_float32_scaled_qps_backward_never_fails_the_batch(n, m, p, B, seed):
    """The implicit backward of the float32 family with the default ``check=True``: no exception,
    finite gradients for every parameter, and no element whose tangent fails (zeroed with a
    warning) where the float64 backward on the same data differentiates it."""
    params = _float32_scaled_qp(B, n, m, min(p, n), seed)
    w = torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    failed = {}
    for dtype in (torch.float32, torch.float64):
        leaves = [None if t is None else t.detach().to(dtype).requires_grad_() for t in params]
        sol = solve_qp(*leaves, check=False)
        present = [t for t in leaves if t is not None]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grads = torch.autograd.grad((sol.z * w.to(dtype)).sum(), present)
        assert all(torch.isfinite(g_).all() for g_ in grads)
        failed[dtype] = {int(i) for c in caught if "implicit gradient" in str(c.message)
                         for i in re.findall(r"\d+", re.search(r"batch indices \[([^\]]*)\]", str(c.message)).group(1))}
    assert failed[torch.float32] <= failed[torch.float64]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solved_means_the_tolerances_are_met(dtype):
    """Q = diag(1, 1e-9) (float32: 1e-5), z* = (−1, 1e9): the polish's regularised factorisation
    cannot resolve the small eigenvalue, and the last rung's polished point (dual residual 4e-6)
    must not be reported SOLVED: the interior-point iterate is returned instead, SOLVED
    only if it meets the tolerances. A batch of two (the interior-point path)."""
    e, tol = (1e-9, 1e-8) if dtype == torch.float64 else (1e-5, 1e-4)
    Q = torch.diag(torch.tensor([1.0, e], dtype=dtype)).expand(2, 2, 2)
    q = torch.tensor([1.0, -1.0], dtype=dtype).expand(2, 2)
    G, h = torch.tensor([[1.0, 0.0]], dtype=dtype), torch.tensor([10.0], dtype=dtype)
    sol = solve_qp(Q, q, G, h)
    assert_solved_contract((Q, q, G, h, None, None), sol, QPOptions())
    torch.testing.assert_close(sol.z, torch.tensor([[-1.0, 1 / e]] * 2, dtype=dtype), rtol=10 * tol, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_zero_row_with_negative_right_hand_side_is_infeasible(dtype):
    """``0ᵀz ≤ −1``: certified PRIMAL_INFEASIBLE, alone and in a batch (a certificate relative to
    the rows' sizes would lose it)."""
    Q, q = torch.eye(2, dtype=dtype), torch.ones(2, dtype=dtype)
    G, h = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=dtype), torch.tensor([-1.0, -3.0], dtype=dtype)
    assert int(solve_qp(Q, q, G, h, check=False).status) == Status.PRIMAL_INFEASIBLE
    sol = solve_qp(Q.expand(2, 2, 2), q, G, torch.stack([h, torch.tensor([1.0, 1.0], dtype=dtype)]), check=False)
    assert sol.status.tolist() == [Status.PRIMAL_INFEASIBLE, Status.SOLVED]
