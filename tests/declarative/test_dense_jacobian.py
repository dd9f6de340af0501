"""The AID modes with a dense Jacobian (``declarative.dense_jacobian``): the same hypergradients as
the matrix-free products, the exact solve for ``ConjugateGradient(k ≥ D)``, the fallback when the
factorisation fails, and the ``auto`` policy.

References: ``torch.func.jacrev`` for the Jacobian, ``torch.linalg.solve`` of the dense adjoint
system for the exact AID solution, and the matrix-free path (``jacobian="products"``) for the
``k``-step iterates.
"""

import pytest
import torch

from declarative import ConjugateGradient, FixedPoint, argmin, fixed_point
from declarative import dense_jacobian
from declarative.dense_jacobian import DenseJacobian, _neumann_doubling, use_dense_jacobian
from declarative.linear_solvers import fixed_point_iteration
from declarative.fixed_point_layer import FixedPointProblem
from declarative.linearisation import FixedPointLinearisation

DT = torch.float64


def _tanh_map(B=3, event=(2, 3), device="cpu", symmetric=False, scale=0.4):
    """Φ(w, θ) = tanh(W w + θ) (non-symmetric Jacobian) or w − η∇E for E = Σ log cosh(W w) + ½|w|²
    − θᵀw (symmetric), on events of shape ``event``."""
    D = int(torch.tensor(event).prod())
    W = scale * torch.randn(D, D, dtype=DT, device=device) / D ** 0.5

    if symmetric:
        def phi(w, theta):
            x = w.reshape(B, D)
            grad = torch.tanh(x @ W.T) @ W + x - theta.reshape(B, D)
            return (x - 0.5 * grad).reshape(w.shape)
    else:
        def phi(w, theta):
            return torch.tanh(w.reshape(B, D) @ W.T + theta.reshape(B, D)).reshape(w.shape)
    w0 = torch.zeros((B,) + event, dtype=DT, device=device)
    theta = torch.randn((B,) + event, dtype=DT, device=device)
    return phi, w0, theta


def _hypergrad(phi, w0, theta, mode, c, symmetric):
    theta = theta.clone().requires_grad_(True)
    w = fixed_point(phi, w0, theta, mode=mode, tol=1e-13, max_iter=2000, symmetric=symmetric)
    return torch.autograd.grad((w * c).sum(), theta)[0]


def test_jacobian_matches_jacrev(device):
    phi, w0, theta = _tanh_map(device=device)
    w = torch.randn_like(w0)
    lin = FixedPointLinearisation(FixedPointProblem(phi, tol=0.0, max_iter=1), (theta,), w, [True])
    J = lin.jacobian()
    assert J.shape == (3, 6, 6)
    for b in range(3):
        ref = torch.func.jacrev(lambda x: phi(x.expand_as(w0), theta)[b])(w[b:b + 1].expand_as(w0)[b])
        torch.testing.assert_close(J[b], ref.reshape(6, 6), rtol=1e-12, atol=1e-14)
    # a map that ignores w: a zero Jacobian, not an error
    lin0 = FixedPointLinearisation(FixedPointProblem(lambda w, t: t * 1.0, tol=0.0, max_iter=1), (theta,), w,
                                   [True])
    assert torch.equal(lin0.jacobian(), torch.zeros(3, 6, 6, dtype=DT, device=device))


@pytest.mark.parametrize("doubling", [True, False], ids=["fp-doubling", "fp-steps"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_dense_equals_products(device, symmetric, k, doubling, monkeypatch):
    # D = 6: k = 1, 4 run the k CG steps with the dense operator, k = 9 ≥ D is the exact solve;
    # FixedPoint(k) by Neumann doubling or by k dense steps
    monkeypatch.setattr(dense_jacobian, "neumann_by_doubling", lambda D, k: doubling)
    phi, w0, theta = _tanh_map(device=device, symmetric=symmetric)
    c = torch.randn_like(w0)
    for cls in (FixedPoint, ConjugateGradient):
        dense = _hypergrad(phi, w0, theta, cls(k, jacobian="dense"), c, symmetric)
        products = _hypergrad(phi, w0, theta, cls(k, jacobian="products"), c, symmetric)
        if cls is ConjugateGradient and k >= 6:
            # the exact solution; k floating-point CG steps agree with it to their round-off
            exact = _hypergrad(phi, w0, theta, ConjugateGradient(60, jacobian="products"), c, symmetric)
            torch.testing.assert_close(dense, exact, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(products, exact, rtol=1e-6, atol=1e-8)
        else:
            torch.testing.assert_close(dense, products, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 64, 100])
def test_neumann_doubling_equals_steps(k, monkeypatch):
    J = 0.9 * torch.randn(2, 7, 7, dtype=DT) / 7 ** 0.5
    g = torch.randn(2, 7, dtype=DT)
    steps = fixed_point_iteration(lambda v: (v.unsqueeze(1) @ J).squeeze(1), g, max_iter=k)
    torch.testing.assert_close(_neumann_doubling(J, g, k), steps.x, rtol=1e-12, atol=1e-13)
    # DenseJacobian.fixed_point by doubling: also the residual ‖v_k − v_{k−1}‖ of the steps
    monkeypatch.setattr(dense_jacobian, "neumann_by_doubling", lambda D, k: True)
    res = DenseJacobian(J, (7,)).fixed_point(g, k)
    torch.testing.assert_close(res.x, steps.x, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(res.residual, steps.residual, rtol=1e-9, atol=1e-14)


def test_cg_exact_solve_matches_dense_reference():
    # the hypergradient ∂_θΦᵀ (I − ∂_wΦᵀ)⁻¹ c at the fixed point, with the matrices formed by jacrev
    phi, w0, theta = _tanh_map(B=1, event=(5,))
    c = torch.randn_like(w0)
    w = fixed_point(phi, w0, theta, tol=1e-14, max_iter=5000)
    Jw = torch.func.jacrev(lambda x: phi(x, theta))(w)[0, :, 0, :]
    Jt = torch.func.jacrev(lambda t: phi(w, t))(theta)[0, :, 0, :]
    v = torch.linalg.solve(torch.eye(5, dtype=DT) - Jw.T, c[0])
    ref = Jt.T @ v
    for mode in (ConjugateGradient(5, jacobian="dense"), ConjugateGradient(40)):
        torch.testing.assert_close(_hypergrad(phi, w0, theta, mode, c, False)[0], ref, rtol=1e-10,
                                   atol=1e-12)


def test_failed_factorisation_falls_back_to_cg_steps():
    # declared symmetric but I − ∂_wΦ is indefinite (Φ expands along one direction): Cholesky fails,
    # and the dense path runs the k CG steps, like the products path
    S = torch.diag(torch.tensor([0.5, -0.3, 1.5, 0.2], dtype=DT))

    def phi(w, theta):
        return w @ S + theta

    theta = torch.randn(1, 4, dtype=DT)
    w = torch.zeros(1, 4, dtype=DT)
    lin = FixedPointLinearisation(FixedPointProblem(phi, tol=0.0, max_iter=1), (theta,), w, [True])
    g = torch.randn(1, 4, dtype=DT)
    dense = DenseJacobian.of(lin).solve_adjoint(g, symmetric=True, max_iter=4)
    products = lin.solve_adjoint(g, symmetric=True, max_iter=4)
    torch.testing.assert_close(dense.x, products.x, rtol=1e-10, atol=1e-12)
    # CG meets non-positive curvature on the indefinite system and freezes (finite, not exact)
    assert torch.isfinite(dense.x).all() and (dense.iterations < 4).all()


def test_argmin_energy_dense_equals_products():
    # Φ = w − η∇E contains a first derivative: the vmapped backward differentiates through it
    X = torch.randn(30, 8, dtype=DT)
    y = torch.sign(torch.randn(30, dtype=DT))

    def energy(w, lam):
        return torch.nn.functional.softplus(-y * (w @ X.T)).sum(1) + 0.5 * (lam * w ** 2).sum(1)

    lam0 = 1 + torch.rand(2, 8, dtype=DT)
    out = {}
    for jac in ("dense", "products"):
        for mode in (FixedPoint(30, jacobian=jac), ConjugateGradient(5, jacobian=jac)):
            lam = lam0.clone().requires_grad_(True)
            w = argmin(energy, torch.zeros(2, 8, dtype=DT), lam, mode=mode, tol=1e-12)
            out[(jac, type(mode).__name__)] = torch.autograd.grad((w ** 2).sum(), lam)[0]
    for name in ("FixedPoint", "ConjugateGradient"):
        torch.testing.assert_close(out[("dense", name)], out[("products", name)], rtol=1e-10, atol=1e-13)


def test_auto_policy_and_bad_policy():
    w = torch.zeros(2, 100, dtype=DT)
    assert use_dense_jacobian("auto", w, 25) and not use_dense_jacobian("auto", w, 24)
    assert not use_dense_jacobian("auto", w, 0)
    assert not use_dense_jacobian("auto", torch.zeros(1000, 100, dtype=DT), 1000)   # B·D² > 2²²
    assert use_dense_jacobian("dense", w, 1) and not use_dense_jacobian("products", w, 10 ** 6)
    for cls in (FixedPoint, ConjugateGradient):
        with pytest.raises(ValueError, match="'auto', 'dense', 'products'"):
            cls(3, jacobian="explicit")
    assert repr(FixedPoint(3, jacobian="dense")) == "FixedPoint(k=3, jacobian='dense')"
    assert repr(ConjugateGradient(3)) == "ConjugateGradient(k=3)"
