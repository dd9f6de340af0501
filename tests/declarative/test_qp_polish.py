"""The polish's clean-up of the multipliers (``declarative.qp.polish._least_norm_multipliers``): at a
degenerate vertex the optimal multipliers form a ray, and a point far along it (terms of 1e7 that
cancel) is replaced by the least-norm non-negative one; elements without cancellation, and those
not polished, are left as they are."""

from __future__ import annotations

import torch

from declarative.qp.polish import _least_norm_multipliers


def _degenerate_vertex():
    """``z* = 0`` of ``min ½‖z‖² + qᵀz`` with ``z₁ + z₂ = 0`` and ``z₁ ≥ 0``, ``z₂ ≥ 0``,
    ``z₁ + z₂ ≥ 0`` (all active, dependent rows), one inactive row ``z₃ ≤ 1``; stationarity
    ``ν − λ₁ − λ₃ = −1``, ``ν − λ₂ − λ₃ = −2``: the multipliers ``(ν, λ₁, λ₂, λ₃) = (t, t + 1, t + 2, 0)``
    are optimal for every ``t ≥ 0``, and so are those with ``λ₃ > 0``."""
    n = 4
    Q = torch.eye(n, dtype=torch.float64).unsqueeze(0)
    q = torch.tensor([[1.0, 2.0, 0.5, -0.25]], dtype=torch.float64)
    G = torch.tensor([[[-1.0, 0, 0, 0], [0, -1.0, 0, 0], [-1.0, -1.0, 0, 0], [0, 0, 1.0, 0]]],
                     dtype=torch.float64)
    A = torch.tensor([[[1.0, 1.0, 0, 0]]], dtype=torch.float64)
    z = torch.tensor([[0.0, 0.0, -0.5, 0.25]], dtype=torch.float64)
    return Q, q, G, A, z


def test_cancelling_multipliers_become_least_norm():
    Q, q, G, A, z = _degenerate_vertex()
    t = torch.tensor([1e7, 0.0, 1e7], dtype=torch.float64)      # far along the ray, at its start
    lam = torch.stack([t + 1, t + 2, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)], -1)
    nu = t.unsqueeze(-1).clone()
    polished = torch.tensor([True, True, False])
    z3 = z.expand(3, 4)
    lam2, nu2 = _least_norm_multipliers(Q, q, G, A, z3, lam, nu, polished)
    stat = lambda l_, n_: (z3 @ Q[0].T + q + l_ @ G[0] + n_ @ A[0]).abs().amax(-1)   # noqa: E731
    # element 0: cancelling multipliers of 1e7 -> the least-norm ones on the rows with λ > 0
    # (λ₁, λ₂; λ₃ = 0 stays out): min ν² + λ₁² + λ₂² s.t. ν − λ₁ = −1, ν − λ₂ = −2, λ ≥ 0 is
    # ν = −1, λ = (0, 1), up to the rounding along the null space (1, 1, 1) of the rows, which the
    # regularised normal equations amplify by u/δ ≈ 2e-5 (harmless to stationarity, checked tightly)
    assert (lam2[0] >= 0).all()
    torch.testing.assert_close(lam2[0], torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(nu2[0], torch.tensor([-1.0], dtype=torch.float64), atol=1e-4, rtol=0)
    assert stat(lam2[:1], nu2[:1])[0].item() < 1e-12
    # element 1: no cancellation (the least-norm multipliers already); element 2: not polished
    assert torch.equal(lam2[1:], lam[1:]) and torch.equal(nu2[1:], nu[1:])


def test_full_step_lands_on_the_least_norm_multipliers():
    """A full step to the least-norm multipliers takes them exactly: ``y + (ymn − y)`` would keep a
    rounding error of ``u·‖y‖`` (2e-9 at multipliers of 1e7) from the cancelling ones. Random data
    (off any common grid): rows ``a·z ≤ 0`` and ``a·z = 0`` at a point where they are active, with
    small true multipliers and 1e7·π added along the ray ``(λ₀, ν₀) = (t, −t)``."""
    g = torch.Generator().manual_seed(0)
    B, n = 6, 5
    f64 = torch.float64
    Q = torch.randn(B, n, n, generator=g, dtype=f64)
    Q = Q @ Q.mT / n + 0.1 * torch.eye(n, dtype=f64)
    a = torch.randn(B, 1, n, generator=g, dtype=f64)
    G = torch.cat([a, torch.randn(B, 2, n, generator=g, dtype=f64)], 1)
    A = a.clone()
    z = torch.randn(B, n, generator=g, dtype=f64)
    z = z - (z * a[:, 0]).sum(-1, keepdim=True) / (a[:, 0] ** 2).sum(-1, keepdim=True) * a[:, 0]   # a·z = 0
    lam_true = torch.cat([torch.rand(B, 1, generator=g, dtype=f64), torch.zeros(B, 2, dtype=f64)], 1)
    nu_true = torch.zeros(B, 1, dtype=f64)
    q = -(torch.einsum("bij,bj->bi", Q, z) + torch.einsum("bm,bmn->bn", lam_true, G)
          + torch.einsum("bp,bpn->bn", nu_true, A))
    t = 1e7 * torch.pi
    lam = lam_true.clone()
    lam[:, 0] += t
    nu = nu_true - t
    lam2, nu2 = _least_norm_multipliers(Q, q, G, A, z, lam, nu, torch.ones(B, dtype=torch.bool))
    stat = (torch.einsum("bij,bj->bi", Q, z) + q + torch.einsum("bm,bmn->bn", lam2, G)
            + torch.einsum("bp,bpn->bn", nu2, A)).abs().amax(-1)
    assert (lam2 >= 0).all() and lam2.abs().amax() < 10
    assert stat.amax().item() < 1e-12, stat
