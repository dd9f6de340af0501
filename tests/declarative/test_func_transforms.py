"""``torch.func`` transforms over the solver layers (``docs/ecosystem.md``): ``grad`` and ``vjp``
give autograd's gradients, nested ``grad`` autograd's second derivatives; ``vmap``, ``jacrev``,
forward mode, and ``argmin``/``fixed_point`` under any transform raise ``NotImplementedError``
saying what works — before, every one raised PyTorch's "must override the setup_context"."""

import pytest
import torch

import layers
from declarative import argmin, fixed_point, solve_lasso, solve_qp
from declarative.reference.qp import random_qp

F64 = dict(dtype=torch.float64)
GEN = torch.Generator().manual_seed(0)
Q, q, G, h, A, b = random_qp(3, 4, 5, 1, seed=1)
D = torch.randn(3, 6, 4, generator=GEN, **F64)
X = torch.randn(3, 6, generator=GEN, **F64)


def _qp_loss(G_):
    return (solve_qp(Q, q, G_, h, A, b).z ** 2).sum()


def _autograd(f, x):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(f(x), x)[0]


@pytest.mark.parametrize("case", ["qp", "qp layer", "lasso", "lasso contrastive"])
def test_grad_equals_autograd(case):
    f, x = {
        "qp": (_qp_loss, G),
        "qp layer": (lambda G_: (layers.QPLayer()(Q, q, G_, h, A, b) ** 2).sum(), G),
        "lasso": (lambda d: (solve_lasso(d, X, 0.1).z ** 2).sum(), D),
        "lasso contrastive": (lambda d: (solve_lasso(d, X, 0.1, mode="contrastive", beta=1e-3).z ** 2).sum(), D),
    }[case]
    torch.testing.assert_close(torch.func.grad(f)(x), _autograd(f, x), rtol=0, atol=0)


def test_vjp_equals_autograd():
    z, pullback = torch.func.vjp(lambda G_: solve_qp(Q, q, G_, h, A, b).z, G)
    w = torch.randn(z.shape, generator=GEN, **F64)
    torch.testing.assert_close(pullback(w)[0], _autograd(lambda G_: (solve_qp(Q, q, G_, h, A, b).z * w).sum(), G))


def test_nested_grad_equals_double_backward(device):
    Qd, qd, Gd, hd, Ad, bd = (t.to(device) for t in (Q, q, G, h, A, b))

    def loss(G_):
        return (solve_qp(Qd, qd, G_, hd, Ad, bd).z ** 2).sum()
    V = torch.randn(G.shape, generator=GEN, **F64).to(device)
    nested = torch.func.grad(lambda G_: (torch.func.grad(loss)(G_) * V).sum())(Gd)
    x = Gd.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(x), x, create_graph=True)
    torch.testing.assert_close(nested, torch.autograd.grad((g * V).sum(), x)[0])


def test_nested_grad_without_exact_second_derivatives_raises():
    f = lambda d: (solve_lasso(d, X, 0.1, mode="symmetric", beta=1e-3).z ** 2).sum()   # noqa: E731
    with pytest.raises(NotImplementedError, match="second derivatives.*LassoProblem with Symmetric"):
        torch.func.grad(lambda d: torch.func.grad(f)(d).sum())(D)


@pytest.mark.filterwarnings("ignore:There is a performance drop")   # (PyTorch, jacrev's vmap fallback)
@pytest.mark.parametrize("transform", ["vmap", "jacrev", "hessian", "jvp"])
def test_batching_and_forward_mode_transforms_raise_saying_what_works(transform):
    f = lambda q_: solve_qp(Q[0], q_, G[0], h[0]).z   # noqa: E731   (one problem)
    calls = {"vmap": lambda: torch.func.vmap(f)(q[:2]),
             "jacrev": lambda: torch.func.jacrev(f)(q[0]),
             "hessian": lambda: torch.func.hessian(lambda q_: f(q_).sum())(q[0]),
             "jvp": lambda: torch.func.jvp(f, (q[0],), (torch.ones_like(q[0]),))}
    match = "forward-mode" if transform in ("hessian", "jvp") else "leading dimension"
    with pytest.raises(NotImplementedError, match=match):
        calls[transform]()


@pytest.mark.parametrize("case", ["argmin", "fixed_point"])
def test_solvers_that_use_autograd_inside_raise_under_grad(case):
    z0 = torch.zeros(3, 4, **F64)
    f = {"argmin": lambda p: (argmin(lambda z, p_: (0.5 * z ** 2 + z ** 4 / 4 - z * p_).sum(-1), z0, p) ** 2).sum(),
         "fixed_point": lambda u: (fixed_point(lambda w, u_: torch.tanh(0.3 * w + u_), z0, u) ** 2).sum()}[case]
    with pytest.raises(NotImplementedError, match="torch.autograd"):
        torch.func.grad(f)(torch.randn(3, 4, generator=GEN, **F64))
