"""The SOLVED contract on the original problem, verified certificates, and ``QPOptions``' fields.

A SOLVED element must meet ``eps_abs + eps_rel·scale`` on the data as given (judged here by
``declarative.reference.qp_residuals``, numpy, qpbenchmark's definitions); an infeasibility verdict
must come with a certificate that holds on the data as given."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from declarative import QPOptions, Status, solve_qp, solve_qp_ipm
from declarative.reference.qp import random_qp
from declarative.reference.qp_residuals import meets_np, qp_residuals_np

EPS64 = float(np.finfo(np.float64).eps)
#: the contract's rounding allowance per unit of the absolute-value sums (64 unit roundoffs)
ROUND = {torch.float64: 32 * EPS64, torch.float32: 32 * float(np.finfo(np.float32).eps)}


def _element(params, sol, i):
    def one(t, core):
        if t is None:
            return None
        t = t.detach().double().cpu().numpy()
        return t[i] if t.ndim > core else t
    data = [one(t, c) for t, c in zip(params, (2, 1, 2, 1, 2, 1))]
    return data, one(sol.z, 1), one(sol.duals["lam"], 1), one(sol.duals["nu"], 1)


# -- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("eps_abs", 0.0), ("eps_abs", -1e-9), ("eps_abs", math.nan),
                                          ("eps_rel", -1e-9), ("eps_rel", math.nan), ("tol", 0.0),
                                          ("tol", math.nan), ("tol", -1.0), ("max_iter", 0), ("max_iter", -3),
                                          ("max_iter", 2.5), ("tol_infeasible", 0.0), ("eps_abs", True),
                                          ("contract", 1), ("least_norm_multipliers", "yes")])
def test_invalid_options_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"QPOptions.{field}"):
        QPOptions(**{field: value})


def test_defaults_per_dtype_and_tol_alone():
    o64, o32 = QPOptions().resolved(torch.float64), QPOptions().resolved(torch.float32)
    assert (o64.eps_abs, o64.eps_rel) == (1e-8, 0.0)
    assert (o32.eps_abs, o32.eps_rel) == (1e-4, 1e-5)
    # ``tol`` alone: the iterations' tolerance and the contract's absolute one
    t = QPOptions(tol=1e-6).resolved(torch.float64)
    assert (t.eps_abs, t.eps_rel, t.tol) == (1e-6, 0.0, 1e-6)
    # eps given: the iterations' tolerance is capped by them; eps_rel = 0 is a purely absolute test
    e = QPOptions(eps_abs=1e-10, eps_rel=0.0).resolved(torch.float64)
    assert (e.eps_abs, e.eps_rel, e.tol) == (1e-10, 0.0, 1e-10)


# -- the SOLVED contract ------------------------------------------------------------------------------
@pytest.mark.parametrize("obj_scale, row_scale", [(1e6, 1.0), (1.0, 1e6), (1e-4, 1e4)])
@pytest.mark.parametrize("B", [1, 6])
def test_solved_meets_the_tolerances_on_the_original_data(obj_scale, row_scale, B, dtype):
    """Badly scaled data (equilibrated internally): every SOLVED element meets the contract on the
    data as given, and ``residuals`` are the original problem's (absolute)."""
    Q, q, G, h, A, b = random_qp(B, 6, 8, 2, dtype=dtype, seed=3)
    params = (Q * obj_scale, q * obj_scale, G * row_scale, h * row_scale, A * row_scale, b * row_scale)
    opts = QPOptions()
    sol = solve_qp(*params, options=opts, check=False)
    eps = opts.resolved(dtype)
    for i in range(B):
        data, x, lam, nu = _element(params, sol, i)
        res = qp_residuals_np(*data, x, lam, nu)
        if int(sol.status[i]) == Status.SOLVED:
            assert meets_np(res, eps.eps_abs, eps.eps_rel, ROUND[dtype]), res
        for k, r in zip(("primal", "dual", "gap"), res[:3]):
            got = float(sol.residuals[k][i])
            assert abs(got - r) <= 1e-6 * (r + 1e-12 * max(res[3:6]) + 1e-300) + 1e-12 * max(res[3:6]), (k, got, r)
    if dtype == torch.float64:
        assert (sol.status == Status.SOLVED).all()


def test_unattainable_tolerance_is_not_solved():
    """An absolute tolerance below float64 rounding of the data (objective ~1e4): elements that miss
    it are INACCURATE (or MAX_ITERATIONS), never SOLVED; the interior-point path (B = 4, some
    elements must miss it) and the active-set path (B = 1, exact: may meet it)."""
    for B in (4, 1):
        Q, q, G, h, A, b = random_qp(B, 5, 6, 1, seed=11)
        params = (Q * 1e4, q * 1e4, G, h, A, b)
        # interior-point iterates only (no polish), to a relative 1e-6 and the two tighter rungs
        opts = QPOptions(tol=1e-6, eps_abs=1e-15, eps_rel=0.0, polish=False)
        sol = solve_qp(*params, options=opts, check=False)
        for i in range(B):
            data, x, lam, nu = _element(params, sol, i)
            res = qp_residuals_np(*data, x, lam, nu)
            st = int(sol.status[i])
            if st == Status.SOLVED:     # up to the rounding of the two evaluations (64 ulp of the scale)
                assert meets_np(res, 1e-15, 64 * EPS64), res
            else:
                assert st in (Status.INACCURATE, Status.MAX_ITERATIONS)
        if B > 1:
            assert ((sol.status == Status.INACCURATE) | (sol.status == Status.MAX_ITERATIONS)).any()


def test_raw_ipm_checks_the_contract():
    params = random_qp(3, 5, 6, 2, seed=4)
    sol = solve_qp_ipm(*params, options=QPOptions(eps_abs=1e-15, eps_rel=0.0))
    for i in range(3):
        data, x, lam, nu = _element(params, sol, i)
        if int(sol.status[i]) == Status.SOLVED:
            assert meets_np(qp_residuals_np(*data, x, lam, nu), 1e-15, 64 * EPS64)


# -- certificates -------------------------------------------------------------------------------------
def _tiny_row_problem(B, dtype):
    """``−1e-8 z₁ ≤ −1`` (feasible: z₁ ≥ 1e8) and ``z₂ ≤ 1``, ``min ½‖z‖²``."""
    Q = torch.eye(2, dtype=dtype).expand(B, 2, 2)
    q = torch.zeros(B, 2, dtype=dtype)
    G = torch.tensor([[-1e-8, 0.0], [0.0, 1.0]], dtype=dtype).expand(B, 2, 2)
    h = torch.tensor([-1.0, 1.0], dtype=dtype).expand(B, 2)
    return Q, q, G, h


@pytest.mark.parametrize("B", [1, 3])
def test_feasible_row_of_norm_1e_8_is_not_infeasible(B):
    """A feasible problem whose row has norm 1e-8 next to a unit row: an approximate certificate
    (λ on the tiny row: ‖Gᵀλ‖ = 1e-8‖λ‖, hᵀλ = −‖λ‖) is not a verdict."""
    params = _tiny_row_problem(B, torch.float64)
    sol = solve_qp(*params, check=False)
    assert not (sol.status == Status.PRIMAL_INFEASIBLE).any()
    assert not (sol.status == Status.DUAL_INFEASIBLE).any()
    for i in range(B):
        if int(sol.status[i]) == Status.SOLVED:
            np.testing.assert_allclose(sol.z[i].numpy(), [1e8, 0.0], rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("B", [1, 3])
def test_zero_row_with_negative_side_is_infeasible(B, dtype):
    """``0ᵀz ≤ −1``: PRIMAL_INFEASIBLE, and the returned duals are a certificate on the data as
    given (λ ≥ 0, Gᵀλ = 0 to rounding, hᵀλ < 0)."""
    Q, q, G, h = _tiny_row_problem(B, dtype)
    G = G.clone()
    G[:, 0] = 0.0
    sol = solve_qp(Q, q, G, h, check=False)
    assert (sol.status == Status.PRIMAL_INFEASIBLE).all()
    lam = sol.duals["lam"].double()
    assert (lam >= 0).all()
    Gd, hd = G.double(), h.double()
    r = (Gd.mT @ lam.unsqueeze(-1)).squeeze(-1).abs().amax(-1)
    cost = (hd * lam).sum(-1)
    assert (cost < 0).all()
    assert (r <= 1e-6 * lam.abs().amax(-1)).all()


def test_unbounded_ray_is_verified():
    """``min −z₃`` with z₃ free: DUAL_INFEASIBLE, and ``z`` is a descent ray of the data as given."""
    Q = torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)).expand(2, 3, 3)
    q = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64).expand(2, 3)
    G = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64).expand(2, 2, 3)
    h = torch.ones(2, 2, dtype=torch.float64)
    sol = solve_qp(Q, q, G, h, check=False)
    assert (sol.status == Status.DUAL_INFEASIBLE).all()
    d = sol.z
    nd = d.abs().amax(-1)
    assert ((Q @ d.unsqueeze(-1)).squeeze(-1).abs().amax(-1) <= 1e-10 * nd).all()
    assert ((q * d).sum(-1) < 0).all()
    assert ((G @ d.unsqueeze(-1)).squeeze(-1).amax(-1) <= 1e-10 * nd).all()


# -- Q indefinite by rounding only ----------------------------------------------------------------
@pytest.mark.parametrize("B", [1, 3])
def test_q_indefinite_by_rounding_is_solved_and_genuinely_indefinite_q_is_an_error(B):
    """Smallest eigenvalue −1e-10 (relative to max|Q_ii| = 2: rounding of a PSD matrix) is treated
    as PSD and solved (box constraints bound the problem); −1e-3 is an error naming it."""
    q = torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64).expand(B, 3)
    G = torch.cat([torch.eye(3), -torch.eye(3)]).double().expand(B, 6, 3)
    h = torch.ones(B, 6, dtype=torch.float64)
    Q = torch.diag(torch.tensor([1.0, -1e-10, 2.0], dtype=torch.float64)).expand(B, 3, 3)
    sol = solve_qp(Q, q, G, h)
    torch.testing.assert_close(sol.z, torch.tensor([[-1.0, -1.0, 0.5]] * B, dtype=torch.float64),
                               rtol=0, atol=1e-8)
    Qbad = torch.diag(torch.tensor([1.0, -1e-3, 2.0], dtype=torch.float64)).expand(B, 3, 3)
    with pytest.raises(ValueError, match=r"smallest eigenvalue -0\.001"):
        solve_qp(Qbad, q, G, h)


def test_infeasible_pair_of_rows_is_certified_not_non_finite():
    """g·z ≤ h₀ and −g·z ≤ −h₀ − 0.025 with Q positive definite: the multipliers of both rows grow
    to ~1e6 and, with the iterations' detection tolerance at 1e-10, the step went non-finite at
    iteration 7 before a certificate was found (NON_FINITE). Detection at 1e-8 (the certificate is
    then verified on the original data at 1e-10) certifies it."""
    Q = torch.tensor([[4.299538584446057, -0.11748466788526615, -0.6865308710157112, 0.19670328419598787],
                      [-0.11748466788526617, 0.014858749896521941, 0.016923585292605833, -0.024678523810863735],
                      [-0.6865308710157111, 0.016923585292605833, 1.2174418443572508, 0.27664489978093143],
                      [0.19670328419598787, -0.02467852381086373, 0.2766448997809315, 0.2704402830595332]],
                     dtype=torch.float64)
    q = torch.tensor([-5.028823385938067, -0.2277028067031216, 0.9336433016133057, 0.28274042027733753],
                     dtype=torch.float64)
    g = torch.tensor([-3.4373557304258524, -0.215497661842938, -0.08471466352675333, 0.8000306476458211],
                     dtype=torch.float64)
    G, h = torch.stack([g, -g]), torch.tensor([1.3486683989892758, -1.3737536124872582], dtype=torch.float64)
    sol = solve_qp(Q[None], q[None], G[None], h[None], check=False)
    assert sol.status.tolist() == [int(Status.PRIMAL_INFEASIBLE)]


def test_unbounded_small_problem_is_not_solved():
    """One small problem (the active-set path) whose Q is semidefinite up to rounding (rank 6 of 8)
    and unbounded below: its Cholesky factorisation runs through, and a "solution" with z ~ 1e15
    and a dual residual of 70 % of its scale was SOLVED (the contract's rounding term grows with
    |z|) in 55 of 300 seeds. Such a Q goes to the interior-point method; the rounding term is
    capped at √u·(1 + scale)."""
    solved = 0
    for seed in range(60):
        Q, q, *_ = random_qp(None, 8, 0, 0, seed=seed, psd_rank=6)
        sol = solve_qp(Q, q, check=False)
        solved += int(sol.status) == int(Status.SOLVED)
    assert solved == 0
