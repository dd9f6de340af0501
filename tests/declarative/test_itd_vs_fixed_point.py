"""When ITD (``Unrolled(t)``) and AID fixed-point (``FixedPoint(k)``) hypergradients coincide.

For an inner map affine in ``w`` with a constant Jacobian ``A = ∂_wΦ`` (a quadratic inner problem
solved by gradient descent), ``t`` steps from ``w_0`` and ``g = ∇E(w_t)``:

    ITD = Σ_{s<t} ∂_λΦ(w_s)ᵀ (Aᵀ)^{t−1−s} g,        FP (k = t) = Σ_{j<t} ∂_λΦ(w_t)ᵀ (Aᵀ)^j g .

They are equal when ``∂_λΦ`` does not depend on ``w`` (biased regularisation,
``Φ = w − η(Xᵀ(Xw − y) + β(w − λ))``), and differ in general: for ridge regression,
``Φ = w − η(Xᵀ(Xw − y) + λw)``, ``∂_λΦ = −ηw`` changes along the iterates.
Both sums are written out here by hand and compared with the library's modes.
"""

import torch

from declarative import FixedPoint, Unrolled, fixed_point

DT = torch.float64


def _data(n=30, p=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X, Xv = torch.randn(n, p, generator=gen, dtype=DT), torch.randn(n, p, generator=gen, dtype=DT)
    y, yv = torch.randn(n, generator=gen, dtype=DT), torch.randn(n, generator=gen, dtype=DT)
    ev = torch.linalg.eigvalsh(X.T @ X)
    eta = float(2 / (ev[-1] + ev[0] + 2.0))
    return X, y, Xv, yv, eta


def _ridge_phi(X, y, eta):
    return lambda w, lam: w - eta * ((w @ X.T - y) @ X + lam * w)


def _biased_phi(X, y, eta, beta=1.0):
    return lambda w, lam: w - eta * ((w @ X.T - y) @ X + beta * (w - lam))


def _library(phi, outer, lam0, p, mode, t):
    lam = lam0.clone().requires_grad_(True)
    w = fixed_point(phi, torch.zeros(lam0.shape[0], p, dtype=DT), lam, mode=mode, max_iter=t, tol=0.0,
                    check=False)
    return torch.autograd.grad(outer(w), lam)[0]


def _by_hand(phi, outer, lam0, p, t):
    """The two sums of the module docstring, with VJPs of Φ at each iterate."""
    iterates = [torch.zeros(lam0.shape[0], p, dtype=DT)]
    for _ in range(t):
        iterates.append(phi(iterates[-1], lam0))
    w_t = iterates[-1].clone().requires_grad_(True)
    g = torch.autograd.grad(outer(w_t), w_t)[0]

    def vjps(w, v):
        w = w.clone().requires_grad_(True)
        lam = lam0.clone().requires_grad_(True)
        return torch.autograd.grad(phi(w, lam), (w, lam), v)

    # v_j = (Aᵀ)^j g for j = 0..t−1 (A is the same at every w: Φ is affine in w)
    powers = [g]
    for _ in range(t - 1):
        powers.append(vjps(w_t, powers[-1])[0])
    itd = sum(vjps(iterates[s], powers[t - 1 - s])[1] for s in range(t))
    fp = sum(vjps(w_t, v)[1] for v in powers)
    return itd, fp


def _setup(kind, t=5):
    X, y, Xv, yv, eta = _data()
    phi = (_ridge_phi if kind == "ridge" else _biased_phi)(X, y, eta)
    lam0 = torch.tensor([[0.5], [2.0]], dtype=DT) if kind == "ridge" else torch.randn(2, X.shape[1], dtype=DT)

    def outer(w):
        return 0.5 * ((w @ Xv.T - yv) ** 2).sum()

    return phi, outer, lam0, X.shape[1], t


def test_library_modes_are_the_two_sums():
    for kind in ("ridge", "biased"):
        phi, outer, lam0, p, t = _setup(kind)
        itd, fp = _by_hand(phi, outer, lam0, p, t)
        torch.testing.assert_close(_library(phi, outer, lam0, p, Unrolled(t), t), itd, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(_library(phi, outer, lam0, p, FixedPoint(t), t), fp, rtol=1e-10, atol=1e-12)


def test_itd_and_fp_coincide_when_the_lambda_jacobian_is_constant():
    phi, outer, lam0, p, t = _setup("biased")
    itd = _library(phi, outer, lam0, p, Unrolled(t), t)
    fp = _library(phi, outer, lam0, p, FixedPoint(t), t)
    torch.testing.assert_close(itd, fp, rtol=1e-10, atol=1e-12)


def test_itd_and_fp_differ_for_ridge():
    phi, outer, lam0, p, t = _setup("ridge")
    itd = _library(phi, outer, lam0, p, Unrolled(t), t)
    fp = _library(phi, outer, lam0, p, FixedPoint(t), t)
    rel = ((itd - fp).abs() / fp.abs()).min().item()
    assert rel > 1e-2, rel
