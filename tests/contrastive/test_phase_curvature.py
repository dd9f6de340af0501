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
from contrastive.modes import Contrastive
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
    # the whole free-phase Solution, the solver's diagnostics included
    assert info.value.solution.iterations.tolist() == [60, 60]
    with pytest.warns(RuntimeWarning, match="INDEFINITE for batch indices \\[0\\]"):
        g = _layer_grad(check=False)
    phi = newton_stationary(torch.tensor(1.0, dtype=DT), torch.tensor(0.8, dtype=DT)).item()
    exact = 2 * phi / (12 * phi ** 2 - 2.0) * (phi - 1.0)
    assert g[0].item() == 0.0 and abs(g[1].item() - exact) < 0.01 * abs(exact)


def _rbf_energy(phi, c):
    """``½‖φ‖² − Σ_k exp(−‖φ − c_k‖)``: ``torch.cdist`` has no second derivative."""
    return 0.5 * (phi * phi).sum(-1) - torch.exp(-torch.cdist(phi[:, None, :], c)).sum((-1, -2))


class _FirstOrderSquare(torch.autograd.Function):
    """``x²`` with a first-order-only backward (a custom kernel)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


def test_energy_without_a_second_derivative_skips_the_check_with_a_warning():
    """EP needs first derivatives only: ``torch.cdist`` (double backward raises) and a
    ``once_differentiable`` op (∇E does not require grad, its curvature would read 0) are skipped
    with a warning, the estimate is the plain EP one; ``curvature_check=False`` is silent."""
    c = torch.randn(5, 3, dtype=DT, generator=torch.Generator().manual_seed(0), requires_grad=True)
    kwargs = dict(beta=0.1, check=False)
    with pytest.warns(RuntimeWarning, match="no second derivative.*cdist") as rec:
        est = equilibrium_propagation(_rbf_energy, to_one, torch.zeros(4, 3, dtype=DT), (c,), **kwargs)
    assert len([r for r in rec if "no second derivative" in str(r.message)]) == 1   # once per call
    assert est.status.tolist() == [Status.SOLVED] * 4 and not bool(est.mismatch.any())
    (g,) = torch.autograd.grad(est.surrogate, c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = equilibrium_propagation(_rbf_energy, to_one, torch.zeros(4, 3, dtype=DT), (c,),
                                        curvature_check=False, **kwargs)
    torch.testing.assert_close(torch.autograd.grad(quiet.surrogate, c)[0], g)

    # a maximum at 0 through the first-order-only op: not judged (it used to read zero curvature)
    pc = phase_curvature(lambda z: -_FirstOrderSquare.apply(z).sum(-1), torch.zeros(1, 1, dtype=DT),
                         torch.full((1, 1), 0.7, dtype=DT))
    assert "does not depend on phi" in pc.unavailable and not bool(pc.negative.any())
    # E = s² − θs, s = φ² by the op: ∇E requires grad, but its Hessian products are not connected to φ
    th = torch.ones(1, 1, dtype=DT, requires_grad=True)

    def quartic(z, t):
        s = _FirstOrderSquare.apply(z)
        return (s * s - t * s).sum(-1)

    with pytest.warns(RuntimeWarning, match="no second derivative.*does not depend on phi"):
        est = equilibrium_propagation(quartic, to_one, torch.zeros(1, 1, dtype=DT), (th,), beta=0.1, check=False)
    assert est.status.tolist() == [Status.SOLVED]     # the maximum at 0 is not detected: no curvature


@pytest.mark.parametrize("curvature_check", [True, False])
def test_equilibrium_prop_mode_without_a_second_derivative(curvature_check):
    c = torch.randn(5, 3, dtype=DT, generator=torch.Generator().manual_seed(0), requires_grad=True)
    grads = {}
    for mode in (EquilibriumProp(1e-3, points=2, curvature_check=curvature_check), Contrastive(1e-3)):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            phi = argmin(_rbf_energy, torch.zeros(4, 3, dtype=DT), c, mode=mode, check=False)
            (grads[mode.name],) = torch.autograd.grad(((phi - 1) ** 2).sum(), c)
        skipped = [r for r in rec if "no second derivative" in str(r.message)]
        assert len(skipped) == (1 if curvature_check and mode.name == "equilibrium" else 0)
    torch.testing.assert_close(grads["equilibrium"], grads["contrastive"])


def test_equilibrium_prop_mode_zeroes_every_phase_of_a_flagged_element():
    """A saddle ``½θx² − ½y² + ¼y⁴`` at 0, a cotangent almost along ``x``: with p = 3 the phase at
    β barely leaves the saddle along ``y`` (not flagged), the one at 2β does (flagged); the whole
    element's contribution is zero, not the unflagged phase's share."""
    K = 120

    def energy(z, th):
        x, y = z[:, :1], z[:, 1:]
        return (0.5 * th * x ** 2 - 0.5 * y ** 2 + 0.25 * y ** 4).sum(-1)

    def descent(fun, z0, *, lower=None, upper=None, tol, max_iter):
        z = z0.clone()
        for _ in range(K):
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(fun(zz).sum(), zz)
            z = (zz - 0.1 * g).detach()
        status = torch.full((z.shape[0],), int(Status.SOLVED), dtype=torch.int64)
        return Solution(z=z, status=status, iterations=torch.full_like(status, K))

    th = torch.ones(1, 1, dtype=DT, requires_grad=True)
    w = torch.tensor([[1.0, 1e-7]], dtype=DT)
    with pytest.warns(RuntimeWarning, match="INDEFINITE for batch indices \\[0\\]"):
        z = argmin(energy, torch.zeros(1, 2, dtype=DT), th, mode=EquilibriumProp(0.1, points=3), solver=descent,
                   tol=1e-12, max_iter=K, check=False)
        (g,) = torch.autograd.grad((z * w).sum(), th)
    assert g.item() == 0.0


def test_free_phase_just_inside_a_bound_is_at_it():
    """A concave energy on ``[0, 1]`` whose constrained minimum is the bound 1: a solver stopping
    ``1e-13`` inside it (within the energy problem's activity tolerance) is not indefinite."""
    E = lambda z: (-0.5 * z ** 2 - 0.1 * z).sum(-1)  # noqa: E731
    upper = torch.ones(1, dtype=DT)
    for gap in (0.0, 1e-13):
        free = torch.tensor([[1 - gap]], dtype=DT)
        assert phase_curvature(E, free, free - gap, None, upper).negative.tolist() == [False]
    assert phase_curvature(E, torch.tensor([[0.5]], dtype=DT), torch.tensor([[0.4]], dtype=DT),
                           None, upper).negative.tolist() == [True]    # inside: a maximum of E along d


def test_quadratic_energy_with_cancelling_terms_is_not_warned_in_float32():
    """``E = ½‖s‖² − ½k‖s‖² − bᵀs``, k = 0.999, n = 2000, in float32: its Taylor mismatch is 0 in
    exact arithmetic, but ``E`` (≈ −1e6) is the difference of terms ≈ 1e9 whose rounding (~1e2) is
    comparable to the curvature term ½c ≈ 50 — the floor measures it. The fold's jump stays warned
    (``test_nudged_phase_across_the_fold_is_warned``)."""
    n, k = 2000, 0.999

    def energy(s, b):
        return 0.5 * (s * s).sum(-1) - 0.5 * k * (s * s).sum(-1) - (b * s).sum(-1)

    b = torch.ones(1, n, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = equilibrium_propagation(energy, lambda s, b: 0.5 * (s[:, :10] ** 2).sum(-1), b.detach() / (1 - k),
                                      (b,), beta=1e-4, tol=1e-3, max_iter=200)
    assert est.status.tolist() == [Status.SOLVED] and float(est.mismatch) < MISMATCH_WARN
