"""Stochastic implicit differentiation (SID, Grazzi, Pontil & Salzo 2021): the mean squared error of
the estimate falls as O(1/J + 1/t + 1/k) with decreasing step sizes, on per-feature-L2 logistic
regression whose exact hypergradient is known (the deterministic implicit gradient at the inner
solution solved to 1e-13); with full batches and unit steps SID is AID-FP exactly."""

import math

import pytest
import torch
import torch.nn.functional as F

from declarative import FixedPoint, fixed_point  # noqa: I001
from declarative import decreasing_steps, stochastic_hypergradient

DT = torch.float64


class LogisticBilevel:
    """``w(λ) = argmin (1/n) Σ log(1 + exp(−y xᵀw)) + ½ Σ λ_j w_j²``, ``f = mean validation log-loss``;
    the inner map is a gradient step ``Φ = w − α∇g`` (``α = 1/L``), on a minibatch of indices."""

    def __init__(self, n=64, p=4, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.X, self.Xv = torch.randn(n, p, dtype=DT, generator=gen), torch.randn(n, p, dtype=DT, generator=gen)
        w_true = torch.randn(p, dtype=DT, generator=gen)
        self.y = torch.sign(self.X @ w_true + 0.5 * torch.randn(n, dtype=DT, generator=gen))
        self.yv = torch.sign(self.Xv @ w_true + 0.5 * torch.randn(n, dtype=DT, generator=gen))
        self.lam = torch.linspace(0.3, 1.0, p, dtype=DT)
        self.alpha = 1.0 / (torch.linalg.matrix_norm(self.X, ord=2) ** 2 / (4 * n) + self.lam.max()).item()
        self.n, self.p = n, p

    def phi_hat(self, w, lam, idx):
        Xb, yb = self.X[idx], self.y[idx]                       # (B, m, p), (B, m)
        m = yb * torch.einsum("bmp,bp->bm", Xb, w)
        grad = -torch.einsum("bm,bmp->bp", yb * torch.sigmoid(-m), Xb) / idx.shape[1] + lam * w
        return w - self.alpha * grad

    def outer_hat(self, w, lam, idx):
        return F.softplus(-self.yv[idx] * torch.einsum("bmp,bp->bm", self.Xv[idx], w)).mean(1)

    def exact(self):
        lam = self.lam.clone().requires_grad_(True)
        full = torch.arange(self.n).reshape(1, -1)
        w = fixed_point(lambda w, lam: self.phi_hat(w, lam, full), torch.zeros(1, self.p, dtype=DT), lam,
                        tol=1e-13, max_iter=100000, symmetric=True)
        return torch.autograd.grad(self.outer_hat(w, lam, full).sum(), lam)[0]


def _mse(prob, exact, B, t, k, J, seed):
    gen = torch.Generator().manual_seed(seed)
    steps = decreasing_steps(3.0, 10.0)
    lam = prob.lam.expand(B, prob.p).clone().requires_grad_(True)
    est = stochastic_hypergradient(prob.phi_hat, prob.outer_hat, torch.zeros(B, prob.p, dtype=DT), (lam,),
                                   sampler=lambda m: torch.randint(0, prob.n, (B, m), generator=gen),
                                   t=t, k=k, J=J, inner_steps=steps, linear_steps=steps)
    return ((est.grads[0] - exact) ** 2).sum(1).mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("varied", ["t", "k", "J"])
def test_mse_rate_is_one_over_each_budget(varied):
    """B = 256 independent replicates in one batch estimate the MSE; the other two budgets are
    1000, so their terms are ≤ 1/12 of the varied one over x ∈ {5, 20, 80}. Fitted log-log slopes
    (measured with 4000 and 512 replicates): t −1.10, k −1.27, J −1.00 (k's bias term decays faster
    than its 1/k noise term at small k)."""
    prob = LogisticBilevel()
    exact = prob.exact()
    xs = [5, 20, 80]
    mses = []
    for i, x in enumerate(xs):
        budget = dict(t=1000, k=1000, J=1000)
        budget[varied] = x
        mses.append(_mse(prob, exact, 256, **budget, seed=i))
    slope = (math.log(mses[-1]) - math.log(mses[0])) / (math.log(xs[-1]) - math.log(xs[0]))
    assert -1.45 < slope < -0.7, (varied, mses, slope)
    assert mses[0] > mses[1] > mses[2]


def test_full_batches_and_unit_steps_are_aid_fixed_point():
    prob = LogisticBilevel(n=20, p=3)
    full = torch.arange(prob.n).reshape(1, -1)
    lam = prob.lam.clone().reshape(1, -1).requires_grad_(True)
    est = stochastic_hypergradient(prob.phi_hat, prob.outer_hat, torch.zeros(1, prob.p, dtype=DT), (lam,),
                                   sampler=lambda m: full, t=30, k=25, J=prob.n)
    lam2 = prob.lam.clone().reshape(1, -1).requires_grad_(True)
    w = fixed_point(lambda w, lam: prob.phi_hat(w, lam, full), torch.zeros(1, prob.p, dtype=DT), lam2,
                    mode=FixedPoint(25), tol=0.0, max_iter=30, check=False)
    (ref,) = torch.autograd.grad(prob.outer_hat(w, lam2, full).sum(), lam2)
    assert torch.allclose(est.w, w.detach(), rtol=1e-13, atol=1e-15)
    assert torch.allclose(est.grads[0], ref, rtol=1e-12, atol=1e-15)


def test_bad_arguments():
    prob = LogisticBilevel(n=8, p=2)
    w0 = torch.zeros(1, 2, dtype=DT)
    with pytest.raises(TypeError, match="sampler: expected a callable"):
        stochastic_hypergradient(prob.phi_hat, prob.outer_hat, w0, (prob.lam,), sampler=None, t=1, k=1, J=1)
    with pytest.raises(ValueError, match="J: expected an int >= 1"):
        stochastic_hypergradient(prob.phi_hat, prob.outer_hat, w0, (prob.lam,), sampler=lambda m: m, t=1, k=1, J=0)
    with pytest.raises(ValueError, match="decreasing_steps"):
        decreasing_steps(-1.0, 1.0)
