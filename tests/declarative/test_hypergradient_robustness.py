"""The bilevel modes when the inner Hessian is indefinite at the solution (Zucchet & Sacramento 2022,
§2.1 and §4.2), and the warm start of the AID linear system across outer steps.

Indefinite case: the imperfect pitchfork ``E(φ, θ) = φ⁴ − θφ² − aφ`` (the §2.1 example with a
small tilt ``a`` so that every branch moves with θ). For θ = 1 it has two minima and a maximum near
``−a/(2θ)``; a root-finding inner solver (Newton on ``∂_φE``) started near the maximum returns it
with zero gradient. Reference: the implicit-function derivative of each branch,
``dφ/dθ = −∂²_{θφ}E / ∂²_φE = 2φ / (12φ² − 2θ)``.
"""

import warnings

import pytest
import torch

from declarative import (ConjugateGradient, FixedPoint, Implicit, SolverError, Solution, Status, argmin,
                         fixed_point)

DT = torch.float64
A_TILT = 0.1


def energy(phi, theta):
    return (phi ** 4 - theta * phi ** 2 - A_TILT * phi).sum(-1)


def newton_root(fun, z0, *, lower=None, upper=None, tol, max_iter):
    """Newton's method on ∇fun (any stationary point, batched, scalar states): a solver that can
    return a maximum."""
    z = z0.clone()
    for _ in range(50):
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(fun(zz).sum(), zz, create_graph=True)
            (h,) = torch.autograd.grad(g.sum(), zz)
        z = (zz - g / h).detach()
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fun(zz).sum(), zz)
    status = torch.where(g.abs().reshape(-1) <= tol, Status.SOLVED, Status.MAX_ITERATIONS)
    return Solution(z=z, status=status.to(torch.int64), iterations=torch.full_like(status, 50))


def _branch_derivative(phi, theta):
    return 2 * phi / (12 * phi ** 2 - 2 * theta)


def _grad(mode, starts, **kw):
    theta = torch.ones(len(starts), 1, dtype=DT, requires_grad=True)
    z0 = torch.tensor(starts, dtype=DT).reshape(-1, 1)
    phi = argmin(energy, z0, theta, mode=mode, solver=newton_root, tol=1e-12, **kw)
    (g,) = torch.autograd.grad(phi.sum(), theta)
    return phi.detach(), g


@pytest.mark.parametrize("mode", [Implicit(), ConjugateGradient(5), FixedPoint(200)], ids=repr)
def test_at_the_minima_every_mode_matches_the_branch_derivative(mode):
    phi, g = _grad(mode, [0.8, -0.6])
    assert (phi.reshape(-1)[0] > 0.5) and (phi.reshape(-1)[1] < -0.5)            # the two minima
    assert torch.allclose(g, _branch_derivative(phi, 1.0), rtol=1e-8)


@pytest.mark.parametrize("mode", [Implicit(), ConjugateGradient(5)], ids=repr)
def test_at_the_maximum_cg_based_modes_raise_indefinite_naming_the_element(mode):
    with pytest.raises(SolverError) as info:
        _grad(mode, [0.8, -0.05, -0.6])
    assert info.value.indices == [1] and info.value.statuses == [Status.INDEFINITE]
    assert "not positive definite" in str(info.value)


def test_at_the_maximum_fixed_point_warns_then_overflows_to_an_error():
    # ∂_wΦ = 1 − ηH with η = 1/|H| at the maximum: the Neumann series doubles every step
    with pytest.warns(RuntimeWarning, match="Neumann series is growing for batch indices \\[1\\]"):
        _, g = _grad(FixedPoint(30), [0.8, -0.05])
    assert abs(g[1].item()) > 1e6 * abs(_branch_derivative(torch.tensor(-0.05), 1.0).item())
    with pytest.raises(SolverError) as info:
        _grad(FixedPoint(2000), [0.8, -0.05])
    assert info.value.statuses == [Status.NON_FINITE] and info.value.indices == [1]


def test_check_false_reports_per_element_and_keeps_the_others():
    mode = ConjugateGradient(5, check=False)
    phi, g = _grad(mode, [0.8, -0.05])
    assert mode.last_solve.negative_curvature.tolist() == [False, True]
    assert torch.allclose(g[0], _branch_derivative(phi[0], 1.0), rtol=1e-8)   # element 0 unaffected


# -- warm start of the linear system across outer steps -----------------------------------------------
def _logistic(p=8, n=60, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X, Xv = torch.randn(n, p, dtype=DT, generator=gen), torch.randn(n, p, dtype=DT, generator=gen)
    w_true = torch.randn(p, dtype=DT, generator=gen)
    y, yv = torch.sign(X @ w_true), torch.sign(Xv @ w_true)
    eta = 1.0 / (torch.linalg.matrix_norm(X, ord=2) ** 2 / (4 * n) + 1.0)

    def phi(w, lam):
        return w - eta * (-(y * torch.sigmoid(-y * (w @ X.T))) @ X / n + lam * w)

    def outer(w):
        return torch.nn.functional.softplus(-yv * (w @ Xv.T)).mean()

    return phi, outer, p


def _outer_loop(mode, steps=8):
    """Hypergradient descent on λ with the inner problem solved to 1e-12: (hypergradients, total
    backward iterations)."""
    phi, outer, p = _logistic()
    lam = torch.full((p,), 0.5, dtype=DT)
    grads, total = [], 0
    for _ in range(steps):
        lam_ = lam.clone().requires_grad_(True)
        w = fixed_point(phi, torch.zeros(1, p, dtype=DT), lam_, mode=mode, tol=1e-12, max_iter=20000,
                        symmetric=True)
        (g,) = torch.autograd.grad(outer(w), lam_)
        grads.append(g)
        total += int(mode.last_solve.iterations.sum())
        lam = (lam - 0.1 * g).clamp(0.05, 1.0)
    return torch.stack(grads), total


@pytest.mark.parametrize("cls", [FixedPoint, ConjugateGradient])
def test_warm_start_same_fixed_point_fewer_steps(cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # every solve reaches rtol
        exact, _ = _outer_loop(cls(5000, rtol=1e-12))
        cold, n_cold = _outer_loop(cls(5000, rtol=1e-6))
        warm, n_warm = _outer_loop(cls(5000, rtol=1e-6, warm_start=True))
    # the same solution up to the tolerance (both within 1e-6 of the tight solve's hypergradient)
    for g in (cold, warm):
        assert ((g - exact).norm(dim=1) <= 1e-5 * exact.norm(dim=1)).all()
    # measured: FP 144 vs 207 steps over 8 outer steps, CG 34 vs 48 (the saving is
    # log(‖v‖/‖Δv‖) steps per solve, Δv the change of the solution between outer steps)
    assert n_warm < 0.8 * n_cold, (n_warm, n_cold)


def test_warm_start_ignored_when_the_shape_changes():
    mode = FixedPoint(500, rtol=1e-10, warm_start=True)
    phi, outer, p = _logistic()
    for B in (1, 3):
        lam = torch.full((B, p), 0.5, dtype=DT, requires_grad=True)
        w = fixed_point(phi, torch.zeros(B, p, dtype=DT), lam, mode=mode, tol=1e-12, max_iter=20000, symmetric=True)
        outer(w).backward()
    assert mode.last_solve.x.shape == (3, p)


def test_option_validation():
    with pytest.raises(ValueError, match="rtol: expected a finite number >= 0"):
        FixedPoint(5, rtol=-1.0)
    with pytest.raises(TypeError, match="warm_start: expected a bool"):
        ConjugateGradient(5, warm_start="yes")
    assert repr(FixedPoint(5, rtol=1e-8, warm_start=True)) == "FixedPoint(k=5, rtol=1e-08, warm_start=True)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cg_fixed_steps_far_past_convergence_stay_at_the_solution(dtype):
    """Exactly k CG steps with k ≫ D on normal equations (I − J)ᵀ(I − J), ‖J‖₂ = 0.9, D = 50: once
    the residual is at round-off the element stops (without that, 0/0 turns the iterate into NaN)."""
    from declarative.linear_solvers import conjugate_gradient
    gen = torch.Generator().manual_seed(0)
    D = 50
    J = torch.randn(8, D, D, dtype=DT, generator=gen)
    N = torch.eye(D, dtype=DT) - 0.9 * J / torch.linalg.matrix_norm(J, ord=2)[:, None, None]
    A = (N.mT @ N).to(dtype)
    b = torch.randn(8, D, dtype=DT, generator=gen).to(dtype)
    res = conjugate_gradient(lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), b, max_iter=2000)
    x = torch.linalg.solve(A.double(), b.double().unsqueeze(-1)).squeeze(-1)
    assert torch.isfinite(res.x).all()
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert ((res.x.double() - x).norm(dim=1) <= tol * x.norm(dim=1)).all()
    assert not res.negative_curvature.any()


# -- check=False of the layers, poisoned warm starts, overflow ---------------------------------------
@pytest.mark.parametrize("layer", ["argmin", "fixed_point"])
def test_layer_check_false_zeroes_the_indefinite_element_and_warns(layer):
    """With ``check=False`` the implicit gradient does not raise for the whole batch: the element at
    the maximum gets a zero gradient and a warning names it; the minima keep their exact gradients."""
    starts = [0.8, -0.05, -0.6]
    if layer == "argmin":
        with pytest.warns(RuntimeWarning, match=r"INDEFINITE for 1 batch element\(s\), batch indices \[1\]"):
            phi, g = _grad(Implicit(), starts, check=False)
    else:
        theta = torch.ones(3, 1, dtype=DT, requires_grad=True)
        w0 = torch.tensor(starts, dtype=DT).reshape(-1, 1)
        phi = newton_root(lambda z: energy(z, theta.detach()), w0, tol=1e-12, max_iter=50).z
        eta = 0.05                       # Φ = w − η∇E: symmetric ∂_wΦ, I − ∂_wΦ = ηH
        step = lambda w, t: w - eta * (4 * w ** 3 - 2 * t * w - A_TILT)   # noqa: E731
        w = fixed_point(step, phi, theta, symmetric=True, max_iter=0, tol=0.0, check=False)
        with pytest.warns(RuntimeWarning, match=r"INDEFINITE for 1 batch element\(s\), batch indices \[1\]"):
            (g,) = torch.autograd.grad(w.sum(), theta)
    assert g[1].item() == 0.0
    keep = torch.tensor([0, 2])
    assert torch.allclose(g[keep], _branch_derivative(phi[keep], 1.0), rtol=1e-8)


def _expansive_then_contractive(mode, factors):
    """``Φ(w) = s·w + (1 − s)(x + t)``: fixed point ``x + t`` for every ``s ≠ 1``, ``d Σw*/dt = 10``;
    one outer step per ``s`` (``s = 2`` expansive: its backward overflows). Returns, per step, the
    gradient or the ``SolverError``."""
    x = torch.randn(2, 5, dtype=DT, generator=torch.Generator().manual_seed(0))
    out = []
    for s in factors:
        t = torch.tensor(0.1, dtype=DT, requires_grad=True)
        w = fixed_point(lambda w, s, t: s * w + (1 - s) * (x + t), (x + 0.1).clone(),
                        torch.tensor(s, dtype=DT), t, mode=mode, check=False)
        try:
            out.append(torch.autograd.grad(w.sum(), t)[0].item())
        except SolverError as err:
            out.append(err)
    return out


@pytest.mark.parametrize("rtol", [0.0, 1e-10])
def test_a_diverged_backward_does_not_poison_the_warm_start(rtol):
    # before: the overflowed iterate was kept as the next warm start, and every later backward
    # failed (fixed steps: NON_FINITE) or started from ~1e154 (rtol: gradient ~1e155, converged only
    # two steps later)
    mode = FixedPoint(2000, rtol=rtol, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = _expansive_then_contractive(mode, [0.5, 2.0, 0.5, 0.5])
    assert isinstance(out[1], SolverError) and set(out[1].statuses) == {Status.NON_FINITE}
    for g in (out[0], out[2], out[3]):
        assert g == pytest.approx(10.0, rel=1e-8)
    assert bool(torch.isfinite(mode._x0).all())


def test_fixed_point_with_rtol_raises_non_finite_when_it_overflows():
    # before: ‖Δv‖² overflowed at |v| ~ 1e154, the iteration stopped with a finite v and the
    # backward returned a gradient of ~1e155 with only an "unconverged" warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        (err,) = _expansive_then_contractive(FixedPoint(5000, rtol=1e-10), [2.0])
    assert isinstance(err, SolverError) and set(err.statuses) == {Status.NON_FINITE}


def test_fixed_point_unconverged_warning_names_the_fixed_point_iteration():
    with pytest.warns(RuntimeWarning, match="the fixed-point iteration did not reach rtol=1e-12 in 3 steps"):
        _expansive_then_contractive(FixedPoint(3, rtol=1e-12), [0.9])
