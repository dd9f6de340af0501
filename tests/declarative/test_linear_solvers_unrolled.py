"""Autograd through the fixed-step conjugate gradient (``rtol = atol = 0``): a user who unrolls it
gets finite gradients for every batch element, including one whose right-hand side is zero (its
iteration stops at once, and the discarded ``0/0`` branch of the step must not reach the backward;
its gradient is that of the stopped iteration, 0).
"""

import pytest
import torch

from declarative.linear_solvers import conjugate_gradient


@pytest.mark.parametrize("semidefinite", [False, True])
def test_unrolled_cg_gradients_are_finite_and_match_the_solve(semidefinite):
    gen = torch.Generator().manual_seed(0)
    B, n = 3, 4
    M = torch.randn(B, n, n, dtype=torch.float64, generator=gen)
    A = (M @ M.mT + torch.eye(n, dtype=torch.float64)).requires_grad_()
    b = torch.randn(B, n, dtype=torch.float64, generator=gen)
    b[1] = 0
    b.requires_grad_()
    res = conjugate_gradient(lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), b, max_iter=12,
                             semidefinite=semidefinite)
    gb, gA = torch.autograd.grad(res.x.sum(), (b, A))
    assert gb.isfinite().all() and gA.isfinite().all()
    # the exact gradient of x = A⁻¹b: ∂/∂b = A⁻ᵀ1, ∂/∂A = −(A⁻ᵀ1) xᵀ
    ones = torch.ones(B, n, 1, dtype=torch.float64)
    w = torch.linalg.solve(A.detach().mT, ones)
    x = torch.linalg.solve(A.detach(), b.detach().unsqueeze(-1))
    # (elements with b ≠ 0. At b = 0 the stopping test ‖r‖² > eps²‖b‖² ends the iteration before
    # its first step: x = x₀ whatever b, and autograd differentiates that constant — a gradient
    # of 0, not A⁻ᵀ1; finite is what is asserted there)
    live = [0, 2]
    torch.testing.assert_close(gb[live], w.squeeze(-1)[live], rtol=1e-8, atol=1e-10)
    # CG assumes A symmetric: only the gradient along symmetric perturbations is A⁻¹b's
    sym = lambda t: (t + t.mT) / 2
    torch.testing.assert_close(sym(gA)[live], sym(-w @ x.mT)[live], rtol=1e-8, atol=1e-10)
