"""Equilibrium propagation's status at a free phase that is not a minimum, and its warning when a
nudged phase jumps (contrastive/phase_curvature.py, through ``equilibrium_propagation``).

Cases: the tilted pitchfork ``E = φ⁴ − θφ² − aφ`` (Zucchet & Sacramento 2022, §2.1) with
``ℓ = ½(φ − 1)²`` at its local maximum (indefinite: flagged) and at its right minimum (not
flagged); near the fold ``θ_c = 3(a²/8)^{1/3}`` of the left minimum, where the nudged phase
crosses the vanishing barrier (the estimate changes sign: warned); convex energies, one with flat
directions, and a concave energy whose constrained minimum is a vertex of the box (not flagged).
Stationary points are found by Newton's method on ``∂_φE`` (which also converges to maxima).
"""

import warnings

import pytest
import torch

from contrastive.equilibrium import MISMATCH_WARN, equilibrium_propagation
from contrastive.phase_curvature import phase_curvature
from contrastive.equilibrium_mode import EquilibriumProp
from declarative import argmin
from declarative.errors import SolverError
from declarative.solution import Solution
from declarative.status import Status

DT = torch.float64
TILT = 0.1


def pitchfork(phi, theta):
    return (phi ** 4 - theta * phi ** 2 - TILT * phi).sum(-1)


def to_one(phi, theta):
    return 0.5 * ((phi - 1.0) ** 2).sum(-1)


def newton_stationary(theta: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The stationary point of the pitchfork nearest ``start`` (``∂_φE = 4φ³ − 2θφ − a``)."""
    phi = start.clone()
    for _ in range(60):
        phi = phi - (4 * phi ** 3 - 2 * theta * phi - TILT) / (12 * phi ** 2 - 2 * theta)
    return phi


def _estimate(start, theta=1.0, beta=1e-3, estimator="forward", check=False):
    th = torch.full((len(start), 1), theta, dtype=DT, requires_grad=True)
    phi0 = newton_stationary(th.detach(), torch.tensor(start, dtype=DT).reshape(-1, 1))
    est = equilibrium_propagation(pitchfork, to_one, phi0, (th,), beta=beta, estimator=estimator,
                                  tol=1e-12, max_iter=500, check=check)
    est.theta = th
    return est


@pytest.mark.parametrize("estimator", ["forward", "centered"])
def test_free_phase_at_a_maximum_is_indefinite(estimator):
    # batch: [local maximum (H = −1.97), right minimum (H = 4.41)]; before the check both were SOLVED
    est = _estimate([-0.05, 0.8], estimator=estimator)
    assert est.status.tolist() == [Status.INDEFINITE, Status.SOLVED]
    with pytest.raises(SolverError) as info:
        _estimate([-0.05, 0.8], estimator=estimator, check=True)
    assert info.value.indices == [0] and info.value.statuses == [Status.INDEFINITE]


def test_minimum_is_not_flagged_and_its_estimate_is_the_branch_derivative():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = _estimate([0.8], check=True)
    phi = est.free.z.item()
    exact = 2 * phi / (12 * phi ** 2 - 2.0) * (phi - 1.0)     # dφ/dθ · ∂ℓ/∂φ along the branch
    (g,) = torch.autograd.grad(est.surrogate, est.theta)
    assert est.status.tolist() == [Status.SOLVED] and float(est.mismatch) < 0.05
    assert abs(g.item() - exact) < 0.01 * abs(exact)           # O(β) bias, β = 1e-3


@pytest.mark.parametrize("theta, beta", [(1.0, 1e-3), (1.0, 1e-2), (0.6, 1e-2), (0.4, 1e-3), (0.34, 1e-3)])
def test_nudged_phase_near_the_minimum_is_not_warned(theta, beta):
    # measured mismatch 7e-4 … 0.07 here: O(β) (the third-order term over the curvature term)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = _estimate([-1.0], theta=theta, beta=beta, check=True)
    assert float(est.mismatch) < 0.1 * MISMATCH_WARN


@pytest.mark.parametrize("theta, beta", [(0.34, 1e-2), (0.325, 1e-3)])
def test_nudged_phase_across_the_fold_is_warned(theta, beta):
    # the left minimum's barrier is below β·|∂ℓ|: the nudged phase lands in the right basin
    with pytest.warns(RuntimeWarning, match="quadratic neighbourhood"):
        est = _estimate([-1.0], theta=theta, beta=beta, check=True)
    assert est.status.tolist() == [Status.SOLVED] and float(est.mismatch) > 1.0
    assert abs(est.phases[1][1].z - est.free.z).item() > 0.5


def _quadratic(phi, A, b):
    return 0.5 * ((phi @ A) * phi).sum(-1) - (phi * b).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("flat", [0, 3])
def test_convex_energy_is_not_flagged(dtype, flat):
    """``E = ½φᵀAφ − bᵀφ``, ``A`` PSD with ``flat`` zero eigenvalues (``b`` in its range), a
    nonlinear loss: never INDEFINITE, never warned — along a flat direction ``∇²E d`` is round-off
    of either sign, which the Hessian's scale tells apart."""
    gen = torch.Generator().manual_seed(3)
    n, B = 12, 16
    Q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    ev = torch.linspace(0.5, 3.0, n, dtype=torch.float64)
    ev[n - flat:] = 0
    A = ((Q * ev) @ Q.T).to(dtype)
    b = (torch.randn(B, n, dtype=torch.float64, generator=gen) @ (Q * ev) @ Q.T).to(dtype).requires_grad_(True)
    y = torch.randn(B, n, dtype=torch.float64, generator=gen).to(dtype)

    def loss(phi, A, b):
        return torch.log(torch.cosh(phi - y)).sum(-1)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = equilibrium_propagation(_quadratic, loss, torch.zeros(B, n, dtype=dtype), (A, b), beta=1e-3,
                                      points=3, max_iter=2000)   # (−βℓ would be unbounded along flat directions)
    assert bool((est.status == Status.SOLVED).all())
    # the flat directions themselves: d in the null space of A, Hd round-off
    if flat:
        null = Q[:, -1].to(dtype).expand(B, n)
        pc = phase_curvature(lambda z: _quadratic(z, A, b.detach()), torch.zeros(B, n, dtype=dtype), null)
        assert not bool(pc.negative.any())


def test_concave_energy_at_a_vertex_of_the_box_is_not_flagged():
    """``E = −½‖φ‖² − 0.1·1ᵀφ`` on ``[0, 1]ⁿ``: the constrained minimum is the vertex ``φ = 1``,
    a strict minimum although ``∇²E = −I``; the phases stay at the bound (no free coordinate)."""
    B, n = 4, 5
    c = torch.full((B, n), 0.1, dtype=DT, requires_grad=True)

    def energy(phi, c):
        return -0.5 * (phi ** 2).sum(-1) - (c * phi).sum(-1)

    est = equilibrium_propagation(energy, lambda phi, c: ((phi - 0.5) ** 2).sum(-1),
                                  torch.full((B, n), 0.9, dtype=DT), (c,), beta=1e-2,
                                  lower=torch.zeros(n, dtype=DT), upper=torch.ones(n, dtype=DT))
    assert torch.allclose(est.free.z, torch.ones(B, n, dtype=DT))
    assert bool((est.status == Status.SOLVED).all())


def test_phase_curvature_on_a_maximum_and_a_minimum():
    E = lambda phi: (phi ** 4 - phi ** 2).sum(-1)  # noqa: E731  maximum at 0, minima at ±1/√2
    free = torch.tensor([[0.0], [2 ** -0.5]], dtype=DT)
    nudged = free + torch.tensor([[0.7], [1e-3]], dtype=DT)
    pc = phase_curvature(E, free, nudged)
    assert pc.negative.tolist() == [True, False]
    assert pc.mismatch[1] < 0.01 and pc.mismatch[0] > 0.3      # m = d² for this quartic


def newton_solver(fun, z0, *, lower=None, upper=None, tol, max_iter):
    """Newton's method on ``∇fun`` (1-D elements): converges to the nearest stationary point."""
    z = z0.clone()
    for _ in range(max_iter):
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(fun(zz).sum(), zz, create_graph=True)
            (h,) = torch.autograd.grad(g.sum(), zz)
        z = (zz - g / h).detach()
    status = torch.full((z.shape[0],), int(Status.SOLVED), dtype=torch.int64)
    return Solution(z=z, status=status, iterations=torch.full_like(status, max_iter))


def _layer_grad(check):
    th = torch.ones(2, 1, dtype=DT, requires_grad=True)
    phi = argmin(pitchfork, torch.tensor([[-0.05], [0.8]], dtype=DT), th, mode=EquilibriumProp(1e-3, points=2),
                 solver=newton_solver, tol=1e-12, max_iter=60, check=check)
    return torch.autograd.grad(to_one(phi, th).sum(), th)[0]


def test_equilibrium_prop_mode_at_a_maximum():
    with pytest.raises(SolverError) as info:
        _layer_grad(check=True)
    assert info.value.indices == [0] and info.value.statuses == [Status.INDEFINITE]
    with pytest.warns(RuntimeWarning, match="INDEFINITE for batch indices \\[0\\]"):
        g = _layer_grad(check=False)
    phi = newton_stationary(torch.tensor(1.0, dtype=DT), torch.tensor(0.8, dtype=DT)).item()
    exact = 2 * phi / (12 * phi ** 2 - 2.0) * (phi - 1.0)
    assert g[0].item() == 0.0 and abs(g[1].item() - exact) < 0.01 * abs(exact)
