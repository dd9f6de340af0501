"""Equilibration of badly scaled QPs (``declarative.qp.equilibration``) and the QP layer on them.

A QP with its objective multiplied by ``c`` and its constraint rows by ``r_i``, ``e_j`` has the same
minimiser, multipliers ``cλ/r`` and ``cν/e``, and gradients ``∂L/∂(cQ) = ∂L/∂Q / c`` etc. Without
equilibration the solver's ``1 + scale`` tolerances made an objective of size 1e-6 "converge" 1%
away from its minimiser; these tests hold the layer to the well-scaled problem's cvxpy solution.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from declarative import QPOptions, Status, solve_qp
from declarative.qp.equilibration import equilibration
from declarative.reference.qp import qp_reference_batch, random_qp

B, N, M, P = 3, 5, 7, 2


def _badly_scaled(c, row_exp, seed=3):
    """A well-scaled random QP, the same QP with objective × c and constraint rows × 10^U(-row_exp,
    row_exp), and the scales."""
    params = random_qp(B, N, M, P, seed=seed)
    Q, q, G, h, A, b = params
    g = torch.Generator().manual_seed(seed)
    r = 10.0 ** ((2 * torch.rand(B, M, generator=g, dtype=torch.float64) - 1) * row_exp)
    e = 10.0 ** ((2 * torch.rand(B, P, generator=g, dtype=torch.float64) - 1) * row_exp)
    bad = (c * Q, c * q, r.unsqueeze(-1) * G, r * h, e.unsqueeze(-1) * A, e * b)
    return params, bad, (c, r, e)


def test_scaled_problem_has_the_same_minimiser():
    params, bad, (c, r, e) = _badly_scaled(1e-6, 4)
    eq = equilibration(*bad)
    assert eq is not None
    scaled = eq.params(bad)
    # unit sizes: max|σQ| = 1, every constraint row of ∞-norm 1
    torch.testing.assert_close(scaled[0].abs().amax((-2, -1)), torch.ones(B, dtype=torch.float64))
    torch.testing.assert_close(scaled[2].abs().amax(-1), torch.ones(B, M, dtype=torch.float64))
    torch.testing.assert_close(scaled[4].abs().amax(-1), torch.ones(B, P, dtype=torch.float64))
    z, lam, nu, st = qp_reference_batch(*params)
    zs, lams, nus, sts = qp_reference_batch(*scaled)
    assert st == sts == ["optimal"] * B
    np.testing.assert_allclose(zs, z, atol=1e-7)
    duals = eq.unscale_duals({"lam": torch.as_tensor(lams), "nu": torch.as_tensor(nus)})
    # multipliers of the badly scaled problem: cλ/r, cν/e
    np.testing.assert_allclose(duals["lam"].numpy(), c * lam / r.numpy(), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(duals["nu"].numpy(), c * nu / e.numpy(), rtol=1e-5, atol=1e-12)
    back = eq.scale_duals(duals)
    np.testing.assert_allclose(back["lam"].numpy(), lams, rtol=1e-12, atol=1e-15)


def test_well_scaled_data_are_left_alone():
    assert equilibration(*random_qp(B, N, M, P, seed=1)) is None
    Q, q, G, h, A, b = random_qp(B, N, M, P, seed=1)
    assert equilibration(Q * 10, q * 10, G, h, A, b) is None          # max|Q| ≤ 4.7 here
    assert equilibration(Q * 1e3, q * 1e3, G, h, A, b) is not None
    assert equilibration(Q, q, G * 1e-3, h * 1e-3, A, b) is not None


def test_shapes_of_unbatched_and_mixed_inputs():
    Q, q, G, h, A, b = random_qp(None, N, M, P, seed=2)
    eq = equilibration(Q * 1e-5, q * 1e-5, G, h, A, b)
    assert eq.cost.shape == () and eq.ineq.shape == (M,) and eq.eq.shape == (P,)
    qb = torch.randn(4, N, dtype=torch.float64)
    eq = equilibration(Q * 1e-5, qb, G, h, A, b)
    assert eq.cost.shape == ()                       # Q non-zero and unbatched: one scale
    assert eq.params((Q, qb, G, h, A, b))[0].shape == (N, N)
    Z = torch.zeros(N, N, dtype=torch.float64)
    eq = equilibration(Z, qb * 1e-5, G, h)           # an LP: σ from q, per element; Q stays (n, n)
    assert eq.cost.shape == (4,)
    Qs, qs, *_ = eq.params((Z, qb * 1e-5, G, h, None, None))
    assert Qs.shape == (N, N)
    torch.testing.assert_close(qs.abs().amax(-1), torch.ones(4, dtype=torch.float64))


def test_non_finite_data_stay_in_their_element():
    Q, q, G, h, A, b = random_qp(B, N, M, P, seed=4)
    G = G.clone() * 1e4
    G[1, 2, 0] = float("nan")
    eq = equilibration(Q, q, G, h, A, b)
    assert torch.isfinite(eq.ineq).all()            # a NaN row keeps the scale 1 ...
    Gs = eq.params((Q, q, G, h, A, b))[2]
    assert torch.isnan(Gs[1]).any()                 # ... and its NaN (the solver flags element 1)
    assert torch.isfinite(Gs[[0, 2]]).all()


# -- the QP layer on badly scaled data ----------------------------------------------------------------
@pytest.mark.parametrize("c, row_exp", [(1e-8, 0), (1e-6, 4), (1e8, 4), (1.0, 6), (1e30, 0)])
def test_solution_and_multipliers_of_badly_scaled_problems(c, row_exp, device):
    params, bad, (c, r, e) = _badly_scaled(c, row_exp)
    sol = solve_qp(*(t.to(device) for t in bad))
    z, lam, nu, st = qp_reference_batch(*params)
    assert st == ["optimal"] * B and (sol.status == Status.SOLVED).all()
    # without equilibration: 1e-2 away at c = 1e-6, MAX_ITERATIONS at c = 1e8, NON_FINITE for rows × 1e6
    np.testing.assert_allclose(sol.z.cpu().numpy(), z, atol=1e-7)
    # the multipliers cλ/r, cν/e, compared in the units of the well-scaled problem (cvxpy's zeros
    # of inactive constraints are ~1e-14, which 1/r would inflate)
    np.testing.assert_allclose(sol.duals["lam"].cpu().numpy() * r.numpy() / c, lam, atol=1e-6)
    np.testing.assert_allclose(sol.duals["nu"].cpu().numpy() * e.numpy() / c, nu, atol=1e-6)


def _grads(params, mode="implicit", beta=None):
    leaves = [t.detach().clone().requires_grad_() for t in params]
    sol = solve_qp(*leaves, mode=mode, beta=beta)
    w = torch.linspace(-1.0, 1.0, sol.z.numel(), dtype=sol.z.dtype).reshape(sol.z.shape)
    return torch.autograd.grad((sol.z * w).sum(), leaves)


@pytest.mark.parametrize("mode, beta", [("implicit", None), ("contrastive", 1e-4), ("symmetric", 1e-4)])
def test_gradients_follow_the_chain_rule(mode, beta):
    """z*(cQ, cq, rG, rh, eA, eb) = z*(Q, q, G, h, A, b): ∂L/∂(cQ) = ∂L/∂Q / c, ∂L/∂(rG) = ∂L/∂G / r,
    ∂L/∂(rh) = ∂L/∂h / r (and so on). The contrastive modes nudge by β relative to the data scale:
    β·c for the scaled problem."""
    import contrastive  # noqa: F401  (registers the contrastive modes)
    params, bad, (c, r, e) = _badly_scaled(1e-6, 3, seed=8)
    ref = _grads(params, mode, beta)
    got = _grads(bad, mode, None if beta is None else beta * c)
    factors = (c, c, r.unsqueeze(-1), r, e.unsqueeze(-1), e)
    for name, gr, gb, f in zip("Q q G h A b".split(), ref, got, factors):
        torch.testing.assert_close(gb * f, gr, atol=1e-7, rtol=1e-6, msg=name)


def test_degenerate_problem_scaled_keeps_the_one_sided_gradient():
    """Weakly active constraints at objective scale 1e-7: the classification runs on the scaled
    problem, so the backward QP sees the same strong/weak sets as at unit scale."""
    from declarative.reference.qp import degenerate_qp
    Q, q, G, h, zs, *_ = degenerate_qp(4, seed=2)
    ref = _grads((Q, q, G, h))
    c = 1e-7
    got = _grads((c * Q, c * q, G, h))
    for gr, gb, f in zip(ref, got, (c, c, 1.0, 1.0)):
        torch.testing.assert_close(gb * f, gr, atol=1e-8, rtol=1e-7)
