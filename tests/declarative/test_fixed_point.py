"""``declarative.fixed_point``: contractive maps against closed forms and gradcheck, non-contractive
maps reported instead of returning garbage, every mode on a non-symmetric Jacobian."""

import pytest
import torch

from declarative import (ConjugateGradient, FirstOrder, FixedPoint, SolverError, Status, Unrolled,
                         fixed_point, fixed_point_solution)

DT = torch.float64


def _affine(B=3, n=5, dtype=DT, device="cpu", norm=0.6):
    """Φ(w) = A w + b(θ) with ‖A‖₂ = norm < 1, A non-symmetric; w* = (I − A)⁻¹ b."""
    M = torch.randn(B, n, n, dtype=torch.float64)
    A = (norm * M / torch.linalg.matrix_norm(M, ord=2)[:, None, None]).to(dtype=dtype, device=device)

    def phi(w, theta, scale):
        return torch.einsum("bij,bj->bi", A, w) + scale * torch.tanh(theta)

    def closed_form(theta, scale):
        rhs = (scale * torch.tanh(theta)).expand(B, n)
        return torch.linalg.solve(torch.eye(n, dtype=dtype, device=device) - A, rhs)

    return phi, closed_form


def test_contractive_affine_map_matches_closed_form(device, dtype):
    phi, closed_form = _affine(dtype=dtype, device=device)
    theta = torch.randn(3, 5, dtype=dtype, device=device, requires_grad=True)
    scale = torch.tensor(1.3, dtype=dtype, device=device, requires_grad=True)
    c = torch.randn(3, 5, dtype=dtype, device=device)
    sol = fixed_point_solution(phi, torch.zeros(3, 5, dtype=dtype, device=device), theta, scale)
    assert (sol.status == Status.SOLVED).all() and sol.z.dtype == dtype
    g = torch.autograd.grad((sol.z * c).sum(), (theta, scale))
    w_ref = closed_form(theta, scale)
    g_ref = torch.autograd.grad((w_ref * c).sum(), (theta, scale))
    # float32: tol = sqrt(eps) ≈ 3.5e-4 on ‖Φ(w) − w‖, error ≤ tol/(1 − 0.6) ≈ 1e-3
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == DT else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(sol.z, w_ref, **tol)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("mode, rtol", [(FixedPoint(80), 1e-10), (ConjugateGradient(10), 1e-8),
                                        (Unrolled(120), 1e-10)])
def test_modes_on_non_symmetric_jacobian(mode, rtol):
    phi, closed_form = _affine()
    c = torch.randn(3, 5, dtype=DT)

    def grad(m, **kw):
        theta = torch.linspace(-1, 1, 15, dtype=DT).reshape(3, 5).requires_grad_(True)
        w = fixed_point(phi, torch.zeros(3, 5, dtype=DT), theta, torch.tensor(1.0, dtype=DT), mode=m,
                        **kw)
        return torch.autograd.grad((w * c).sum(), theta)[0]

    theta = torch.linspace(-1, 1, 15, dtype=DT).reshape(3, 5).requires_grad_(True)
    ref = torch.autograd.grad((closed_form(theta, 1.0) * c).sum(), theta)[0]
    # 0.6^80 ≈ 2e-18; CG on the normal equations of a 5×5 system: exact after 5 steps
    kw = dict(max_iter=mode.t, tol=1e-300, check=False) if isinstance(mode, Unrolled) else {}
    torch.testing.assert_close(grad(mode, **kw), ref, rtol=rtol, atol=1e-12)
    assert torch.equal(grad(FirstOrder()), torch.zeros_like(ref))


def test_deq_style_nonlinear_map_gradcheck():
    # w = tanh(W w + U x), ‖W‖ ≤ 0.5: a contraction (an equilibrium layer)
    torch.manual_seed(1)
    W = torch.randn(4, 4, dtype=DT)
    W = (0.5 * W / torch.linalg.matrix_norm(W, ord=2)).requires_grad_(True)
    U = torch.randn(4, 3, dtype=DT, requires_grad=True)
    x = torch.randn(2, 3, dtype=DT, requires_grad=True)

    def phi(w, W, U, x):
        return torch.tanh(w @ W.T + x @ U.T)

    f = lambda W, U, x: fixed_point(phi, torch.zeros(2, 4, dtype=DT), W, U, x, tol=1e-14)  # noqa: E731
    assert torch.autograd.gradcheck(f, (W, U, x), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_non_contractive_maps_report_non_convergence():
    # expanding map: diverges to inf -> NON_FINITE; rotation by 90° (|eigenvalues| = 1): cycles ->
    # MAX_ITERATIONS; element 0 of the batch is a contraction and is solved
    def phi(w, a):
        rot = torch.stack([-w[:, 1], w[:, 0]], 1)
        return torch.where(a[:, None] == 0, 0.5 * w + 1, torch.where(a[:, None] == 1, 3 * w + 1, rot))

    a = torch.tensor([0.0, 1.0, 2.0], dtype=DT)
    w0 = torch.ones(3, 2, dtype=DT)
    sol = fixed_point_solution(phi, w0, a, max_iter=2000, check=False)
    assert sol.status.tolist() == [Status.SOLVED, Status.NON_FINITE, Status.MAX_ITERATIONS]
    torch.testing.assert_close(sol.z[0], torch.full((2,), 2.0, dtype=DT))
    with pytest.raises(SolverError, match=r"\[1\]: NON_FINITE.*\[2\]: MAX_ITERATIONS"):
        fixed_point(phi, w0, a, max_iter=2000)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(w0=torch.zeros(3)), ValueError, r"expected shape \(B, n\)"),
    (dict(w0=torch.zeros(2, 0)), ValueError, "non-empty problems"),
    (dict(phi=lambda w, a: w[:, :1]), ValueError, "shape of w"),
    (dict(phi=3), TypeError, "callable"),
    (dict(tol=-1.0), ValueError, "tol"),
    (dict(max_iter=-2), ValueError, "max_iter"),
    (dict(params=(torch.ones(3, dtype=torch.float64),)), TypeError, "mixed dtypes"),
    (dict(mode="fixed_point"), ValueError, r"FixedPoint\(k="),
])
def test_bad_input(kwargs, exc, match):
    args = dict(phi=lambda w, a: 0.5 * w + a, w0=torch.zeros(2, 3), params=(torch.ones(3),))
    args.update(kwargs)
    phi, w0, params = args.pop("phi"), args.pop("w0"), args.pop("params")
    with pytest.raises(exc, match=match):
        fixed_point(phi, w0, *params, **args)


def test_tol_zero_runs_exactly_max_iter_steps():
    a = torch.tensor([[1.0, 2.0]], dtype=DT)
    sol = fixed_point_solution(lambda w, a: 0.5 * w + a, torch.zeros(1, 2, dtype=DT), a, tol=0.0,
                               max_iter=3, check=False)
    # w_3 = a(1 + 1/2 + 1/4); last step a/4
    torch.testing.assert_close(sol.z, 1.75 * a)
    assert sol.status.tolist() == [Status.MAX_ITERATIONS] and sol.iterations.tolist() == [3]
    torch.testing.assert_close(sol.residuals["residual"], (0.25 * a).norm(dim=1))
    bad = fixed_point_solution(lambda w, a: 1e200 * w + a, torch.ones(1, 2, dtype=DT), a, tol=0.0,
                               max_iter=5, check=False)
    assert bad.status.tolist() == [Status.NON_FINITE]
