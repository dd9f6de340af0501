"""``declarative.argmin`` on user energies: every gradient mode (implicit, contrastive, symmetric,
bilevel) against references we did not write — closed forms through ``torch.linalg.solve``,
``torch.autograd.gradcheck`` in float64, cvxpylayers (``eps = 1e-10``) for a box-constrained QP."""

import gc
import math
import weakref

import numpy as np
import pytest
import torch

import contrastive  # noqa: F401  (registers "contrastive" and "symmetric")
from contrastive import Contrastive, Symmetric
from declarative import (ConjugateGradient, EnergyProblem, FirstOrder, FixedPoint, Implicit, SolverError,
                         Status, Unrolled, argmin, argmin_solution)


def _ridge(B, m, n, dtype, device):
    X = torch.randn(B, m, n, dtype=dtype, device=device)
    y = torch.randn(B, m, dtype=dtype, device=device)

    def energy(w, lam):
        return 0.5 * ((torch.einsum("bmn,bn->bm", X, w) - y) ** 2).sum(1) + 0.5 * (lam * w ** 2).sum(-1)

    def closed_form(lam):
        A = X.transpose(1, 2) @ X + torch.diag_embed(lam.expand(B, n))
        return torch.linalg.solve(A, (X.transpose(1, 2) @ y[..., None])[..., 0])

    return energy, closed_form


def test_ridge_value_and_implicit_gradient(device, dtype):
    energy, closed_form = _ridge(3, 20, 6, dtype, device)
    lam = (0.5 + torch.rand(6, dtype=dtype, device=device)).requires_grad_(True)  # unbatched, broadcast
    c = torch.randn(3, 6, dtype=dtype, device=device)
    w = argmin(energy, torch.zeros(3, 6, dtype=dtype, device=device), lam)
    assert w.shape == (3, 6) and w.dtype == dtype and w.device.type == device.type
    (g,) = torch.autograd.grad((w * c).sum(), lam)
    lam_ref = lam.detach().double().cpu().requires_grad_(True)
    w_ref = closed_form(lam_ref.to(dtype=dtype, device=device)).double().cpu()
    (g_ref,) = torch.autograd.grad((w_ref * c.double().cpu()).sum(), lam_ref)
    # float32: the solver stops at |∇E| ≤ 3.5e-4 (default tol), the Hessian's smallest eigenvalue is
    # ≳ 0.5, and the CG tolerance is 1e-5: errors of a few 1e-4 relative are expected
    tol = dict(rtol=1e-7, atol=1e-8) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(w.double().cpu(), w_ref, **tol)
    torch.testing.assert_close(g.double().cpu(), g_ref, **tol)


def _smooth_energy(B=2, n=4):
    """A non-quadratic strongly convex energy: E = Σ softplus(Az) + ½ s|z|² − bᵀz."""
    A = torch.randn(B, 5, n, dtype=torch.float64)

    def energy(z, b, s):
        return torch.nn.functional.softplus(torch.einsum("bkn,bn->bk", A, z)).sum(1) \
            + 0.5 * s * (z ** 2).sum(1) - (b * z).sum(1)

    return energy


def test_implicit_gradcheck_float64():
    energy = _smooth_energy()
    b = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    z0 = torch.zeros(2, 4, dtype=torch.float64)
    f = lambda b, s: argmin(energy, z0, b, s, tol=1e-13)  # noqa: E731
    assert torch.autograd.gradcheck(f, (b, s), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_contrastive_and_symmetric_rates():
    energy = _smooth_energy()
    b = torch.randn(2, 4, dtype=torch.float64)
    s = torch.tensor(1.5, dtype=torch.float64)
    c = torch.randn(2, 4, dtype=torch.float64)
    z0 = torch.zeros(2, 4, dtype=torch.float64)

    def grad(mode):
        bb = b.clone().requires_grad_(True)
        ss = s.clone().requires_grad_(True)
        z = argmin(energy, z0, bb, ss, mode=mode, tol=1e-13)
        return torch.cat([x.reshape(-1) for x in torch.autograd.grad((z * c).sum(), (bb, ss))])

    ref = grad(Implicit())
    betas = np.array([0.2, 0.1, 0.05])
    for cls, expected in ((Contrastive, 1.0), (Symmetric, 2.0)):
        errs = [(grad(cls(float(beta))) - ref).norm().item() for beta in betas]
        slope, _ = np.polyfit(np.log(betas), np.log(errs), 1)
        assert abs(slope - expected) < 0.25, (cls.__name__, slope)
    # the string names work as well
    torch.testing.assert_close(grad(Contrastive(1e-6)), ref, rtol=1e-4, atol=1e-6)


def test_bilevel_modes_on_argmin_converge_to_implicit():
    energy, _ = _ridge(2, 25, 6, torch.float64, "cpu")
    c = torch.randn(2, 6, dtype=torch.float64)
    z0 = torch.zeros(2, 6, dtype=torch.float64)

    def grad(mode, **kw):
        lam = torch.full((6,), 0.7, dtype=torch.float64, requires_grad=True)
        w = argmin(energy, z0, lam, mode=mode, tol=1e-12, **kw)
        return torch.autograd.grad((w * c).sum(), lam)[0]

    ref = grad(Implicit())
    # CG on the symmetric system ηH v = g: exact after n = 6 steps (up to round-off)
    torch.testing.assert_close(grad(ConjugateGradient(12)), ref, rtol=1e-8, atol=1e-10)
    fp = [(grad(FixedPoint(k)) - ref).norm().item() for k in (20, 40, 80)]
    assert fp[0] > fp[1] > fp[2]
    slope, _ = np.polyfit([20, 40, 80], np.log(fp), 1)
    assert slope < -0.01  # linear rate
    itd = [(grad(Unrolled(t)) - ref).norm().item() for t in (20, 80)]
    assert itd[1] < 0.2 * itd[0]
    # the step size η does not change the converged gradient (v = (ηH)⁻¹g, ∇ = −η∂²E v)
    torch.testing.assert_close(grad(ConjugateGradient(12), step_size=1e-3), ref, rtol=1e-8, atol=1e-10)
    assert torch.equal(grad(FirstOrder()), torch.zeros_like(ref))


def test_box_constrained_qp_against_cvxpylayers():
    cp = pytest.importorskip("cvxpy")
    from cvxpylayers.torch import CvxpyLayer

    n = 6
    M = torch.randn(n, n, dtype=torch.float64)
    Q = M @ M.T / n + 0.5 * torch.eye(n, dtype=torch.float64)
    lo, hi = -0.3, 0.4
    z_var, q_par = cp.Variable(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(z_var, Q.numpy()) + q_par @ z_var),
                      [z_var >= lo, z_var <= hi])
    layer = CvxpyLayer(prob, parameters=[q_par], variables=[z_var])
    q = torch.randn(3, n, dtype=torch.float64)
    c = torch.randn(3, n, dtype=torch.float64)

    qr = q.clone().requires_grad_(True)
    (z_ref,) = layer(qr, solver_args={"eps": 1e-10})
    (g_ref,) = torch.autograd.grad((z_ref * c).sum(), qr)

    def energy(z, q):
        return 0.5 * torch.einsum("bi,ij,bj->b", z, Q, z) + (q * z).sum(1)

    for mode, tol in [(Implicit(), 1e-6), (ConjugateGradient(60), 1e-6), (FixedPoint(400), 1e-5)]:
        qq = q.clone().requires_grad_(True)
        z = argmin(energy, torch.zeros(3, n, dtype=torch.float64), qq, lower=lo, upper=hi, tol=1e-12,
                   mode=mode)
        torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-7)
        (g,) = torch.autograd.grad((z * c).sum(), qq)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=tol)
    # some bounds are active (otherwise this test would not exercise them)
    assert ((z_ref - lo).abs() < 1e-6).any() or ((z_ref - hi).abs() < 1e-6).any()


def test_one_sided_rule_at_weakly_active_bound():
    # z*(θ) = max(θ, 0) = argmin ½|z − θ|² s.t. z ≥ 0; at θ_i = 0 the bound is weakly active.
    # One-sided (β → 0⁺) derivative along g: dz = max(−g, 0) there, so ∇_θ = −dz = min(g, 0).
    theta = torch.tensor([[0.0, 0.0, 1.0, -1.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, -1.0, 2.0, 3.0]], dtype=torch.float64)

    def energy(z, th):
        return 0.5 * ((z - th) ** 2).sum(1)

    expect = torch.tensor([[0.0, -1.0, 2.0, 0.0]], dtype=torch.float64)
    for mode in (Implicit(), Contrastive(1e-3)):
        th = theta.clone().requires_grad_(True)
        z = argmin(energy, torch.ones(1, 4, dtype=torch.float64), th, lower=0.0, mode=mode, tol=1e-12)
        torch.testing.assert_close(z, theta.clamp_min(0))
        (grad,) = torch.autograd.grad((z * g).sum(), th)
        torch.testing.assert_close(grad, expect, atol=1e-8, rtol=0)


def test_statuses_and_check():
    # element 1 is unbounded below (linear energy)
    coef = torch.tensor([[1.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    curv = torch.tensor([1.0, 0.0], dtype=torch.float64)

    def energy(z, a):
        return (a * z).sum(1) + torch.where(curv > 0, 0.5 * (z ** 2).sum(1), torch.zeros_like(z[:, 0]))

    with pytest.raises(SolverError, match=r"batch indices \[1\]: UNBOUNDED_BELOW"):
        argmin(energy, torch.zeros(2, 2, dtype=torch.float64), coef)
    sol = argmin_solution(energy, torch.zeros(2, 2, dtype=torch.float64), coef, check=False)
    assert sol.status.tolist() == [Status.SOLVED, Status.UNBOUNDED_BELOW]
    # Unrolled's truncated w_t is its intended output: no error for MAX_ITERATIONS
    a = torch.ones(1, 2, dtype=torch.float64)
    sol = argmin_solution(lambda z, a: 0.5 * (z ** 2).sum(1) - (a * z).sum(1), torch.zeros(1, 2, dtype=torch.float64),
                          a, mode=Unrolled(2), step_size=0.1)
    assert sol.status.tolist() == [Status.MAX_ITERATIONS]
    torch.testing.assert_close(sol.z, torch.full((1, 2), 1 - 0.9 ** 2, dtype=torch.float64))


def test_memory_unrolled_grows_implicit_constant():
    energy, _ = _ridge(2, 10, 4, torch.float64, "cpu")

    def saved(mode, **kw):
        # bytes of the tensors saved by graphs still alive after the call (the solver's internal
        # autograd graphs for ∇E are freed as it goes: holders track what the output keeps)
        holders = []

        class Holder:
            def __init__(self, t):
                self.t = t

        def pack(t):
            h = Holder(t)
            holders.append(weakref.ref(h))
            return h

        lam = torch.ones(4, dtype=torch.float64, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda h: h.t):
            out = argmin(energy, torch.zeros(2, 4, dtype=torch.float64), lam, mode=mode, check=False,
                         **kw)
        gc.collect()
        total = sum(h().t.numel() * h().t.element_size() for h in holders if h() is not None)
        del out
        return total

    assert saved(Unrolled(40)) >= 3.5 * saved(Unrolled(10))
    assert saved(ConjugateGradient(10), max_iter=5) == saved(ConjugateGradient(10), max_iter=50)
    assert saved(Implicit(), max_iter=5) == saved(Implicit(), max_iter=50)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(z0=torch.zeros(3)), ValueError, r"expected shape \(B, n\)"),
    (dict(z0=torch.zeros(2, 0)), ValueError, "non-empty problems"),
    (dict(params=(torch.ones(3, dtype=torch.float64),)), TypeError, "mixed dtypes"),
    (dict(params=("3.0",)), TypeError, r"params\[0\]: expected a torch.Tensor or a number"),
    (dict(energy=lambda z, a: z), ValueError, r"shape \(B,\)"),
    (dict(energy="x"), TypeError, "callable"),
    (dict(mode="newton"), ValueError, "unknown gradient mode"),
    (dict(mode="implicit", beta=0.1), ValueError, "does not use beta"),
    (dict(mode="contrastive", beta=-1.0), ValueError, "beta"),
    (dict(mode="unrolled"), ValueError, r"Unrolled\(t="),
    (dict(lower=1.0, upper=0.0), ValueError, "lower <= upper"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(energy=lambda z, a: ((z - a) ** 2).sum(1), z0=torch.zeros(2, 3), params=(torch.ones(3),))
    args.update(kwargs)
    energy, z0, params = args.pop("energy"), args.pop("z0"), args.pop("params")
    with pytest.raises(exc, match=match):
        argmin(energy, z0, *params, **args)


def test_energy_problem_is_an_argmin_problem():
    from declarative import ArgminProblem
    p = EnergyProblem(lambda z: (z ** 2).sum(1), like=torch.zeros(2, 3))
    assert isinstance(p, ArgminProblem) and p.fixed_point_symmetric
    assert not EnergyProblem(lambda z: (z ** 2).sum(1), like=torch.zeros(2, 3), lower=0.0).fixed_point_symmetric
    assert math.isclose(p.lipschitz_estimate((), torch.zeros(2, 3))[0].item(), 2.0, rel_tol=1e-6)


def test_custom_solver_is_used_for_solve_and_nudged_solves():
    from declarative import minimize
    calls = []

    def solver(fun, z0, **kw):
        calls.append(sorted(kw))
        return minimize(fun, z0, **kw)

    a = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    z = argmin(lambda z, a: 0.5 * ((z - a) ** 2).sum(1), torch.zeros(2, 3, dtype=torch.float64), a,
               mode=Contrastive(0.1), solver=solver, tol=1e-12)
    z.sum().backward()
    assert len(calls) == 2 and calls[0] == ["lower", "max_iter", "tol", "upper"]
    torch.testing.assert_close(a.grad, torch.ones_like(a))  # z*(a) = a, exact for any β (quadratic)
