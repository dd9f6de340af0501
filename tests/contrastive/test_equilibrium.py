"""Equilibrium-propagation estimators with a full outer loss (contrastive/equilibrium.py).

Reference: a strongly convex quadratic energy ``E = ½ φᵀA(θ)φ − b(θ)ᵀφ`` whose minimiser has the
closed form ``φ* = A⁻¹b`` (``torch.linalg.solve``); autograd through that closed form gives the
exact outer gradient. The outer loss ``Σ log cosh(Pφ − y)`` is not quadratic, so ``F(β)`` has
non-zero derivatives of every order and each estimator shows its own bias order.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch

import contrastive.equilibrium as equilibrium_module
from contrastive.equilibrium import equilibrium_gradient, equilibrium_propagation
from contrastive.finite_difference import ep_stencil, forward_difference_coefficients
from declarative.errors import SolverError
from declarative.status import Status

MU0 = 0.5  # A = MU0·I + W Wᵀ is MU0-strongly convex at least
B, N, M = 3, 4, 3


def logcosh(u):
    return torch.nn.functional.softplus(2 * u) - u - np.log(2.0)


def energy(phi, W, c, P, x, y):
    A = MU0 * torch.eye(phi.shape[-1], dtype=phi.dtype, device=phi.device) + W @ W.T
    return 0.5 * ((phi @ A) * phi).sum(-1) - (phi * (c + x)).sum(-1)


def loss(phi, W, c, P, x, y):
    return logcosh(phi @ P.T - y).sum(-1)


def make_problem(dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    W = (rand(N, N) / 2).requires_grad_(True)
    c = rand(N).requires_grad_(True)
    P = (rand(M, N) / 2).requires_grad_(True)
    x, y = rand(B, N), rand(B, M)
    return (W, c, P, x, y)


def exact_free(params):
    W, c, P, x, y = params
    A = MU0 * torch.eye(N, dtype=W.dtype, device=W.device) + W @ W.T
    return torch.linalg.solve(A, (c + x).unsqueeze(-1)).squeeze(-1), A


def exact_gradient(params):
    """∇_θ mean_b ℓ(φ*_b(θ), θ) by autograd through the closed-form minimiser."""
    phi, _ = exact_free(params)
    return torch.autograd.grad(loss(phi, *params).mean(), params[:3])


def rel_error(est, ref):
    num = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(est, ref)))
    den = torch.sqrt(sum((b ** 2).sum() for b in ref))
    return (num / den).item()


def fitted_slope(betas, errors):
    return np.polyfit(np.log(betas), np.log(errors), 1)[0]


# -- coefficients ---------------------------------------------------------------------------------
TABLE = {  # Zucchet & Sacramento (2022), App. C
    2: ["-1", "1"],
    3: ["-3/2", "2", "-1/2"],
    4: ["-11/6", "3", "-3/2", "1/3"],
    5: ["-25/12", "4", "-3", "4/3", "-1/4"],
}


@pytest.mark.parametrize("p", sorted(TABLE))
def test_vandermonde_coefficients_match_the_paper_table(p):
    alpha = forward_difference_coefficients(p)
    expected = torch.tensor([float(Fraction(v)) for v in TABLE[p]], dtype=torch.float64)
    assert alpha.shape == (p,)
    torch.testing.assert_close(alpha, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("p", [6, 7])
def test_vandermonde_coefficients_solve_the_moment_conditions(p):
    alpha = forward_difference_coefficients(p)
    i = torch.arange(p, dtype=torch.float64)
    moments = torch.stack([(alpha * i ** k).sum() for k in range(p)])
    expected = torch.zeros(p, dtype=torch.float64)
    expected[1] = 1
    torch.testing.assert_close(moments, expected, rtol=0, atol=1e-9)


# -- agreement with the exact gradient, dtypes, devices -----------------------------------------------
@pytest.mark.parametrize("estimator,points", [("forward", 2), ("centered", None), ("forward", 3)])
def test_estimate_is_close_to_the_exact_gradient(estimator, points, dtype, device):
    params = make_problem(dtype, device)
    phi0 = torch.zeros(B, N, dtype=dtype, device=device)
    tol = 1e-5 if dtype == torch.float32 else 1e-10  # gradient-norm tolerance of the phases
    est = equilibrium_gradient(energy, loss, phi0, params, beta=0.02, estimator=estimator, points=points,
                               tol=tol)
    assert est[3] is None and est[4] is None  # data that do not require grad
    for g, p in zip(est[:3], params[:3]):
        assert g.shape == p.shape and g.dtype == dtype and g.device == p.device
    ref = exact_gradient(params)
    # measured bias at beta = 0.02: 1.8e-2 (forward p=2), 1.9e-4 (centered), 3.8e-4 (forward p=3),
    # the same in float32 and float64 (float32 adds ~eps·|F|/β ≈ 1e-5 of cancellation).
    assert rel_error(est[:3], ref) < (0.03 if points == 2 else 2e-3)


def test_surrogate_backward_equals_the_returned_estimate(device):
    params = make_problem(torch.float64, device)
    phi0 = torch.zeros(B, N, dtype=torch.float64, device=device)
    est = equilibrium_propagation(energy, loss, phi0, params, beta=0.1, estimator="centered")
    assert est.surrogate.shape == ()
    est.surrogate.backward()
    direct = equilibrium_gradient(energy, loss, phi0, params, beta=0.1, estimator="centered")
    for p, g in zip(params[:3], direct[:3]):
        torch.testing.assert_close(p.grad, g, rtol=1e-7, atol=1e-9)
    # the free phase is the closed-form minimiser; the reductions differ by the batch size
    phi_star, _ = exact_free(params)
    torch.testing.assert_close(est.free.z, phi_star.detach(), rtol=1e-7, atol=1e-8)
    summed = equilibrium_gradient(energy, loss, phi0, params, beta=0.1, estimator="centered",
                                  reduction="sum")
    for g_mean, g_sum in zip(direct[:3], summed[:3]):
        torch.testing.assert_close(g_sum, B * g_mean, rtol=1e-7, atol=1e-9)


# -- bias orders -------------------------------------------------------------------------------------
BETAS = [0.1, 0.05, 0.025, 0.0125]


@pytest.mark.parametrize("estimator,points,order,betas", [
    ("forward", 2, 1, BETAS),
    ("centered", None, 2, BETAS),
    ("forward", 3, 2, BETAS),
    ("forward", 4, 3, BETAS),
])
def test_error_decays_with_the_order_of_the_estimator(estimator, points, order, betas):
    params = make_problem(torch.float64, "cpu", seed=2)
    phi0 = torch.zeros(B, N, dtype=torch.float64)
    ref = exact_gradient(params)
    errors = []
    for beta in betas:
        est = equilibrium_gradient(energy, loss, phi0, params, beta=beta, estimator=estimator,
                                   points=points, tol=1e-11)
        errors.append(rel_error(est[:3], ref))
    slope = fitted_slope(betas, errors)
    assert abs(slope - order) < 0.2, (slope, errors)
    # and the errors themselves shrink by about (β_last/β_first)^order (8^order here)
    assert errors[-1] < 2 * (betas[-1] / betas[0]) ** order * errors[0]


# -- Prop. 3 bounds on the contrastive surrogate ------------------------------------------------------
@pytest.mark.parametrize("beta", [0.01, 0.3, 3.0, 30.0])
def test_contrastive_surrogate_satisfies_the_prop3_bounds(beta):
    params = make_problem(torch.float64, "cpu", seed=4)
    phi0 = torch.zeros(B, N, dtype=torch.float64)
    est = equilibrium_propagation(energy, loss, phi0, params, beta=beta, reduction="none", tol=1e-11)
    L_beta = est.surrogate.detach()
    assert L_beta.shape == (B,)
    phi_star, A = exact_free(params)
    phi_star = phi_star.detach().requires_grad_(True)
    ell = loss(phi_star, *params)
    grad_ell, = torch.autograd.grad(ell.sum(), phi_star)
    mu = torch.linalg.eigvalsh(A.detach())[0]
    lower = ell.detach() - beta / (2 * mu) * (grad_ell ** 2).sum(-1)
    slack = 1e-9 * (1 + ell.detach().abs())  # solver accuracy only
    assert torch.all(L_beta <= ell.detach() + slack), (L_beta, ell)
    assert torch.all(L_beta >= lower - slack), (L_beta, lower)
    if beta >= 3.0:  # the bounds are not vacuous here: the gap to ℓ(φ*) is visible
        assert torch.all(ell.detach() - L_beta > 1e-3)


def test_surrogate_value_estimates_the_loss_to_the_estimator_order():
    params = make_problem(torch.float64, "cpu", seed=3)
    phi0 = torch.zeros(B, N, dtype=torch.float64)
    phi_star, _ = exact_free(params)
    ell = loss(phi_star, *params).detach()
    gaps = {}
    for estimator, points in [("forward", 2), ("centered", None), ("forward", 4)]:
        est = equilibrium_propagation(energy, loss, phi0, params, beta=0.05, estimator=estimator,
                                      points=points, reduction="none", tol=1e-11)
        gaps[(estimator, points)] = (est.surrogate.detach() - ell).abs().max().item()
        torch.testing.assert_close(est.free_loss, ell, rtol=1e-8, atol=1e-9)
    assert gaps[("centered", None)] < 0.2 * gaps[("forward", 2)]
    assert gaps[("forward", 4)] < 0.2 * gaps[("forward", 2)]


# -- warm starts ---------------------------------------------------------------------------------------
def test_forward_phases_are_warm_started_from_the_previous_phase(monkeypatch):
    starts = []
    real = equilibrium_module.minimize

    def recording(fun, z0, **kwargs):
        starts.append(z0.clone())
        return real(fun, z0, **kwargs)

    monkeypatch.setattr(equilibrium_module, "minimize", recording)
    params = make_problem(torch.float64, "cpu")
    phi0 = torch.randn(B, N, dtype=torch.float64)
    est = equilibrium_propagation(energy, loss, phi0, params, beta=0.1, points=4)
    assert len(starts) == 4 and [b for b, _ in est.phases] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    torch.testing.assert_close(starts[0], phi0)
    for i in range(1, 4):
        torch.testing.assert_close(starts[i], est.phases[i - 1][1].z)

    starts.clear()
    est = equilibrium_propagation(energy, loss, phi0, params, beta=0.1, estimator="centered")
    assert [b for b, _ in est.phases] == pytest.approx([0.0, 0.1, -0.1])
    torch.testing.assert_close(starts[1], est.free.z)
    torch.testing.assert_close(starts[2], est.free.z)


# -- unbounded negative phase ---------------------------------------------------------------------------
def _unbounded_problem():
    curvature = torch.tensor([2.0, 0.5, 3.0, 0.25], dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    y = torch.randn(4, 2, dtype=torch.float64)
    theta = torch.ones(2, dtype=torch.float64, requires_grad=True)

    def e(phi, theta, a, x, y):
        return 0.5 * a * (phi ** 2).sum(-1) - (phi * (x + theta)).sum(-1)

    def ell(phi, theta, a, x, y):  # curvature 2: E − β ℓ has curvature a − 2β
        return ((phi - y) ** 2).sum(-1)

    return e, ell, (theta, curvature, x, y)


def test_unbounded_negative_phase_is_reported_with_its_batch_indices():
    e, ell, params = _unbounded_problem()
    phi0 = torch.zeros(4, 2, dtype=torch.float64)
    # beta = 0.5: a − 1 < 0 for elements 1 and 3 only
    with pytest.raises(SolverError, match="negative phase") as info:
        equilibrium_propagation(e, ell, phi0, params, beta=0.5, estimator="centered")
    assert info.value.indices == [1, 3]
    assert set(info.value.statuses) <= {Status.UNBOUNDED_BELOW, Status.NON_FINITE}
    assert "unbounded below" in str(info.value)

    est = equilibrium_propagation(e, ell, phi0, params, beta=0.5, estimator="centered", check=False)
    assert est.status.tolist()[0] == Status.SOLVED and est.status.tolist()[2] == Status.SOLVED
    assert est.status[1] != Status.SOLVED and est.status[3] != Status.SOLVED
    # the forward estimator only nudges towards the loss: every phase is bounded
    fwd = equilibrium_propagation(e, ell, phi0, params, beta=0.5, points=3)
    assert bool((fwd.status == Status.SOLVED).all())


# -- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    ({"beta": 0.0}, ValueError, "beta"),
    ({"beta": -0.1}, ValueError, "beta"),
    ({"beta": float("nan")}, ValueError, "beta"),
    ({"beta": 0.1, "points": 1}, ValueError, "points"),
    ({"beta": 0.1, "points": 2.5}, TypeError, "points"),
    ({"beta": 0.1, "estimator": "backward"}, ValueError, "'forward', 'centered'"),
    ({"beta": 0.1, "estimator": "centered", "points": 4}, ValueError, "centered"),
    ({"beta": 0.1, "reduction": "max"}, ValueError, "reduction"),
])
def test_bad_arguments_are_rejected(kwargs, error, match):
    params = make_problem(torch.float64, "cpu")
    phi0 = torch.zeros(B, N, dtype=torch.float64)
    with pytest.raises(error, match=match):
        equilibrium_propagation(energy, loss, phi0, params, **kwargs)


def test_bad_shapes_and_dtypes_are_rejected():
    params = make_problem(torch.float64, "cpu")
    with pytest.raises(ValueError, match=r"expected shape \(B, n\)"):
        equilibrium_propagation(energy, loss, torch.zeros(N, dtype=torch.float64), params, beta=0.1)
    with pytest.raises(TypeError, match="mixed dtypes"):
        equilibrium_propagation(energy, loss, torch.zeros(B, N), params, beta=0.1)
    with pytest.raises(ValueError, match=r"energy: expected a tensor of shape \(B,\) = \(3,\)"):
        equilibrium_propagation(lambda phi, *p: energy(phi, *p).sum(), loss,
                                torch.zeros(B, N, dtype=torch.float64), params, beta=0.1)
    with pytest.raises(ValueError, match="finite"):
        equilibrium_propagation(energy, loss, torch.full((B, N), float("nan"), dtype=torch.float64),
                                params, beta=0.1)


def test_stencils():
    fwd = ep_stencil("forward", 3)
    assert fwd.nudges == (0.0, 1.0, 2.0) and fwd.warm_from == (None, 0, 1)
    cen = ep_stencil("centered")
    assert cen.nudges == (0.0, 1.0, -1.0) and cen.weights == (0.0, 0.5, -0.5)
    for s in (fwd, cen, ep_stencil("forward", 5)):  # consistency: Σ w = 0, Σ w n = 1
        assert sum(s.weights) == pytest.approx(0.0, abs=1e-12)
        assert sum(w * n for w, n in zip(s.weights, s.nudges)) == pytest.approx(1.0, abs=1e-12)
