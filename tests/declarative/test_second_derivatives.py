"""``create_graph=True`` backwards through iterative layers: exact where the problem declares the
mode (``ArgminProblem.second_derivative_modes``; the QP's are in ``test_qp_differentiable_kkt.py``);
elsewhere the first-order gradient, whose differentiation raises a ``NotImplementedError`` naming
the problem and the mode — the gradients of those modes
come from solver iterates that are constants for autograd, and their derivatives came out wrong
without a word (lasso, contrastive: 1037.8 against −25.8) or raised autograd's "does not require
grad"."""

import warnings

import pytest
import torch

from declarative import ConjugateGradient, FixedPoint, Unrolled, argmin, fixed_point
from declarative.lasso.functional import solve_lasso

F64 = dict(dtype=torch.float64)
GEN = torch.Generator().manual_seed(0)
B, K = 3, 5
D = torch.randn(B, 6, K, generator=GEN, **F64)
X = torch.randn(B, 6, generator=GEN, **F64)
W = torch.randn(B, K, generator=GEN, **F64)


def _second_derivative_and_differences(fn, x0, eps=1e-6):
    """``⟨V, ∂⟨∇, V⟩⟩`` of ``ℓ = Σ W z²`` by double backward and by central differences."""
    V = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), **F64)

    def grad_of(x, create_graph=False):
        return torch.autograd.grad((W * fn(x) ** 2).sum(), x, create_graph=create_graph)[0]
    x = x0.clone().requires_grad_(True)
    (hv,) = torch.autograd.grad((grad_of(x, True) * V).sum(), x)
    plus, minus = (grad_of((x0 + s * eps * V).requires_grad_(True)) for s in (1, -1))
    return (hv * V).sum(), ((plus - minus) * V).sum() / (2 * eps)


@pytest.mark.parametrize("which", ["D", "x"])
def test_lasso_implicit_second_derivatives_equal_differences_of_the_gradient(which):
    fn = (lambda d: solve_lasso(d, X, 0.1).z) if which == "D" else (lambda x: solve_lasso(D, x, 0.1).z)
    an, fd = _second_derivative_and_differences(fn, D if which == "D" else X)
    torch.testing.assert_close(an, fd, rtol=1e-6, atol=1e-8)


def _phi(w, A, u):
    return torch.tanh(w @ A.T + u)


A0 = 0.3 * torch.randn(K, K, generator=GEN, **F64)
U0 = torch.randn(B, K, generator=GEN, **F64)


@pytest.mark.parametrize("case", ["lasso contrastive", "lasso symmetric", "energy implicit",
                                  "fixed point implicit", "fixed point FixedPoint", "fixed point CG"])
def test_differentiating_a_gradient_without_exact_second_derivatives_raises(case):
    z0 = torch.zeros(B, K, **F64)
    fns = {
        "lasso contrastive": (lambda d: solve_lasso(d, X, 0.1, mode="contrastive", beta=1e-2).z, D),
        "lasso symmetric": (lambda d: solve_lasso(d, X, 0.1, mode="symmetric", beta=1e-2).z, D),
        "energy implicit": (lambda p: argmin(lambda z, p_: (0.5 * z ** 2 + z ** 4 / 4 - z * p_).sum(-1), z0, p,
                                             tol=1e-12), U0),
        "fixed point implicit": (lambda A: fixed_point(_phi, z0, A, U0, tol=1e-13, max_iter=500), A0),
        "fixed point FixedPoint": (lambda A: fixed_point(_phi, z0, A, U0, mode=FixedPoint(200), tol=1e-13,
                                                         max_iter=500), A0),
        "fixed point CG": (lambda A: fixed_point(_phi, z0, A, U0, mode=ConjugateGradient(50), tol=1e-13,
                                                 max_iter=500), A0),
    }
    fn, x0 = fns[case]
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((W * fn(x) ** 2).sum(), x, create_graph=True)   # a first-order use works
    (plain,) = torch.autograd.grad((W * fn(x) ** 2).sum(), x)
    torch.testing.assert_close(g.detach(), plain, rtol=0, atol=0)
    with pytest.raises(NotImplementedError, match=r"second derivatives .*create_graph=True.* through \w+Problem"):
        torch.autograd.grad((g * x).sum(), x)


def test_unrolled_second_derivatives_are_exact():
    """The way the error message points to: ``Unrolled`` differentiates through the iterations."""
    fn = lambda A: fixed_point(_phi, torch.zeros(B, K, **F64), A, U0, mode=Unrolled(200), tol=1e-13,  # noqa: E731
                               max_iter=500)
    an, fd = _second_derivative_and_differences(fn, A0)
    torch.testing.assert_close(an, fd, rtol=1e-6, atol=1e-8)


def test_lasso_element_with_a_weakly_active_coordinate_drops_second_order_terms_with_a_warning():
    """Element 0 has a weakly active coordinate (``z_1 = 0`` with ``|D_1ᵀ(x − Dz)| = λ``): a kink;
    its tangent comes from the backward QP. With a loss linear in z its second derivatives are
    zero, with a warning naming it (before: autograd raised "modified by an inplace operation"
    from inside that QP's solver); element 1's equal those of its solve alone; the first-order
    gradient is unchanged; and the derivative through the cotangent (the backward QP's tangent is
    linear in it on its own support) equals central differences in the cotangent."""
    gen = torch.Generator().manual_seed(3)
    Dv = torch.randn(2, 6, 4, generator=gen, **F64)
    z_star = torch.tensor([[1.0, 0.0, -0.5, 0.0], [0.7, 0.0, 0.3, -0.2]], **F64)
    sign = torch.tensor([[1.0, 1.0, -1.0, 0.3], [1.0, 0.5, 1.0, -1.0]], **F64)   # |·| = 1: active
    lam = 0.1
    # x = D z* + r with Dᵀr = λ·sign: z* is the lasso solution, coordinate 1 of element 0 weakly active
    r = (Dv @ torch.linalg.solve(Dv.mT @ Dv, (lam * sign).unsqueeze(-1))).squeeze(-1)
    x = (Dv @ z_star.unsqueeze(-1)).squeeze(-1) + r
    w = torch.randn(2, 4, generator=gen, **F64)

    def grad_D(d, x_, w_, create_graph=False):
        d = d.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((w_ * solve_lasso(d, x_, lam).z).sum(), d, create_graph=create_graph)
        return d, g
    d, g = grad_D(Dv, x, w, True)
    with pytest.warns(RuntimeWarning, match=r"weakly active coordinates.*batch indices \[0\]"):
        (hv,) = torch.autograd.grad(g.sum(), d)
    assert (hv[0] == 0).all()
    d1, g1 = grad_D(Dv[1:], x[1:], w[1:], True)
    (hv1,) = torch.autograd.grad(g1.sum(), d1)
    torch.testing.assert_close(hv[1:], hv1)
    assert hv1.abs().max() > 0.1
    torch.testing.assert_close(g.detach(), grad_D(Dv, x, w)[1], rtol=0, atol=0)
    # the cotangent's direction: d⟨∇_D, V⟩/dw against differences in w
    V = torch.randn(Dv.shape, generator=gen, **F64)
    U = torch.randn(w.shape, generator=gen, **F64)
    wr = w.clone().requires_grad_(True)
    _, gw = grad_D(Dv, x, wr, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (dw,) = torch.autograd.grad((gw * V).sum(), wr)
    fd = ((grad_D(Dv, x, w + 1e-6 * U)[1] - grad_D(Dv, x, w - 1e-6 * U)[1]) * V).sum() / 2e-6
    torch.testing.assert_close((dw * U).sum(), fd, rtol=1e-6, atol=1e-8)


def test_a_refused_second_derivative_is_refused_through_every_input():
    """The gradient with respect to ``D`` depends on ``x = w·x₀`` too; differentiating it with
    respect to ``w`` (not ``D``) must also meet the refusal. Before, only the first input that
    required grad was joined to it, and d/dw came out as 2.0 (the direct term alone) instead of
    83.2 by differences — silently."""
    x0 = torch.randn(B, 6, generator=torch.Generator().manual_seed(4), **F64)
    d = D.clone().requires_grad_(True)
    w = torch.ones(B, 1, **F64, requires_grad=True)
    (gD,) = torch.autograd.grad((solve_lasso(d, w * x0, 0.1, mode="symmetric", beta=1e-4).z ** 2).sum(), d,
                                create_graph=True)
    with pytest.raises(NotImplementedError, match="second derivatives"):
        torch.autograd.grad((gD ** 2).sum() + (w ** 2).sum(), w)
    with pytest.raises(NotImplementedError, match="second derivatives"):   # nested torch.func.grad
        torch.func.grad(lambda w_: torch.func.grad(
            lambda d_: (solve_lasso(d_, w_ * x0, 0.1, mode="symmetric", beta=1e-4).z ** 2).sum())(D).pow(2).sum()
        )(torch.ones(B, 1, **F64))
