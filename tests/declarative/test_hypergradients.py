"""Bilevel hypergradient modes (Grazzi et al. 2020): ITD = ``Unrolled(t)``, AID-FP =
``FixedPoint(k)``, AID-CG = ``ConjugateGradient(k)``, ``FirstOrder()``.

References: closed forms ``w(λ)`` of biased regularisation (BR) and kernel ridge regression (KRR)
differentiated by autograd through ``torch.linalg.solve``; for logistic regression (no closed form)
central finite differences of the outer loss at inner solutions computed by SciPy's L-BFGS-B.
The inner problem is solved as in the paper: ``t`` gradient-descent steps ``w ← Φ(w) = w − η∇ℓ``
from ``w₀ = 0`` with the optimal step ``η = 2/(L + μ)`` (contraction ``q = (L − μ)/(L + μ)``).
A batch of 20 random hyperparameters is one batched problem.
"""

import math
import re

import numpy as np
import pytest
import scipy.optimize
import torch

from declarative import (ConjugateGradient, FirstOrder, FixedPoint, Implicit, Unrolled, argmin,
                         fixed_point, resolve_mode)
from declarative.linear_solvers import conjugate_gradient, fixed_point_iteration

DT = torch.float64


# -- problems with closed-form inner solutions --------------------------------------------------------
def _biased_regularisation(B=20, n_e=30, p=15, beta=1.0):
    """BR: w(λ) = argmin ½|Xw − y|² + β/2 |w − λ|², f = ½|X'w − y'|², λ ~ U[−5, 5]^p (App. C.1)."""
    X, Xv = torch.randn(n_e, p, dtype=DT), torch.randn(n_e, p, dtype=DT)
    w_star = torch.randn(p, dtype=DT)
    y = X @ (w_star + 1) + 0.1 * torch.randn(n_e, dtype=DT)
    yv = Xv @ (w_star + 1) + 0.1 * torch.randn(n_e, dtype=DT)
    H = X.T @ X + beta * torch.eye(p, dtype=DT)
    ev = torch.linalg.eigvalsh(H)
    eta, q = 2 / (ev[-1] + ev[0]), (ev[-1] - ev[0]) / (ev[-1] + ev[0])
    lam0 = torch.rand(B, p, dtype=DT) * 10 - 5

    def phi(w, lam):
        return w - eta * ((w @ X.T - y) @ X + beta * (w - lam))

    def closed_form(lam):
        return torch.linalg.solve(H, (X.T @ y + beta * lam).T).T

    def outer(w):
        return 0.5 * ((w @ Xv.T - yv) ** 2).sum()

    return dict(phi=phi, closed_form=closed_form, outer=outer, hyper=[lam0], w0=torch.zeros(B, p, dtype=DT),
                q=torch.full((B,), float(q), dtype=DT))


def _kernel_ridge(B=20, n_e=25, p=6):
    """KRR: w(β, γ) = argmin ½wᵀ(K(γ) + βI)w − wᵀy, f = ½|y' − K'(γ)w|², per-feature Gaussian γ."""
    X, Xv = torch.randn(n_e, p, dtype=DT), torch.randn(n_e, p, dtype=DT)
    w_star = torch.randn(p, dtype=DT)
    y = X @ w_star + 0.1 * torch.randn(n_e, dtype=DT)
    yv = Xv @ w_star + 0.1 * torch.randn(n_e, dtype=DT)
    D = (X[:, None, :] - X[None, :, :]) ** 2
    Dv = (Xv[:, None, :] - X[None, :, :]) ** 2
    gamma0 = 0.05 + 0.1 * torch.rand(B, p, dtype=DT)
    beta0 = 0.5 + torch.rand(B, 1, dtype=DT)

    def K(gamma):
        return torch.exp(-(D @ gamma.T).permute(2, 0, 1))   # (B, n, n)

    with torch.no_grad():
        A = K(gamma0) + beta0[:, :, None] * torch.eye(n_e, dtype=DT)
        ev = torch.linalg.eigvalsh(A)
        L, mu = ev[:, -1], ev[:, 0]
    eta = (2 / (L + mu))[:, None]

    def phi(w, beta, gamma):
        return w - eta * (torch.einsum("bij,bj->bi", K(gamma), w) + beta * w - y)

    def closed_form(beta, gamma):
        A = K(gamma) + beta[:, :, None] * torch.eye(n_e, dtype=DT)
        return torch.linalg.solve(A, y.expand(B, n_e))

    def outer(w, beta, gamma):
        Kv = torch.exp(-(Dv @ gamma.T).permute(2, 0, 1))
        return 0.5 * ((yv - torch.einsum("bij,bj->bi", Kv, w)) ** 2).sum()

    return dict(phi=phi, closed_form=closed_form, outer=outer, hyper=[beta0, gamma0],
                w0=torch.zeros(B, n_e, dtype=DT), q=(L - mu) / (L + mu))


PROBLEMS = {"BR": _biased_regularisation, "KRR": _kernel_ridge}


def _hypergrad(prob, mode, t):
    hyper = [h.clone().requires_grad_(True) for h in prob["hyper"]]
    w = fixed_point(prob["phi"], prob["w0"], *hyper, mode=mode, max_iter=t, tol=0.0, check=False)
    loss = prob["outer"](w, *hyper) if len(hyper) > 1 else prob["outer"](w)
    grads = torch.autograd.grad(loss, hyper)
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], 1)


def _exact(prob):
    hyper = [h.clone().requires_grad_(True) for h in prob["hyper"]]
    w = prob["closed_form"](*hyper)
    loss = prob["outer"](w, *hyper) if len(hyper) > 1 else prob["outer"](w)
    grads = torch.autograd.grad(loss, hyper)
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], 1)


def _rel_err(g, ref):
    return (g - ref).norm(dim=1) / ref.norm(dim=1)


def _modes(jacobian):
    """ITD, FP and CG with the AID products by VJPs or by the dense Jacobian (dense_jacobian)."""
    return {"ITD": Unrolled, "FP": lambda k: FixedPoint(k, jacobian=jacobian),
            "CG": lambda k: ConjugateGradient(k, jacobian=jacobian)}


@pytest.mark.parametrize("jacobian", ["products", "dense"])
@pytest.mark.parametrize("name", ["BR", "KRR"])
def test_linear_rates_and_paper_ordering(name, jacobian):
    prob = PROBLEMS[name]()
    ref = _exact(prob)
    ts = [20, 40, 80]
    errs = {m: torch.stack([_rel_err(_hypergrad(prob, cls(t), t), ref) for t in ts]) for m, cls in
            _modes(jacobian).items()}
    log_q = torch.log(prob["q"]).mean().item()
    for m, e in errs.items():
        # linear convergence: log(mean error) is affine in t with the slope of the inner contraction
        # (the forward error q^t dominates every mode when k = t). Fitted slope within a factor 2.
        slope, _ = np.polyfit(ts, np.log(e.mean(1).numpy()), 1)
        assert 2.0 * log_q < slope < 0.5 * log_q, (m, slope, log_q)
        assert (e[-1] < 1e-3).all()
    # the ordering of the paper on average over the random hyperparameters at t = k:
    # CG ≤ FP ≤ ITD (for BR, whose ∂_λΦ does not depend on w, ITD and FP with k = t coincide up
    # to round-off, hence the 1e-9 relative slack; for KRR, ∂_γΦ depends on w and they differ:
    # test_itd_vs_fixed_point.py)
    for i in range(1, len(ts)):
        cg, fp, itd = (errs[m][i].mean() for m in ("CG", "FP", "ITD"))
        assert cg <= fp * (1 + 1e-9) and fp <= itd * (1 + 1e-9), (ts[i], cg, fp, itd)


@pytest.mark.parametrize("jacobian", ["products", "dense"])
def test_fixed_k_plateaus_and_k_convergence(jacobian):
    prob = _biased_regularisation(B=8)
    ref = _exact(prob)
    modes = _modes(jacobian)
    # with w solved (t large) the AID error is the linear-solver error: FP ~ q^k, CG faster
    t = 400
    fp = [_rel_err(_hypergrad(prob, modes["FP"](k), t), ref).mean().item() for k in (10, 20, 40)]
    cg = [_rel_err(_hypergrad(prob, modes["CG"](k), t), ref).mean().item() for k in (5, 10, 20)]
    slope_fp, _ = np.polyfit([10, 20, 40], np.log(fp), 1)
    assert 2.0 * math.log(prob["q"][0]) < slope_fp < 0.5 * math.log(prob["q"][0])
    # (CG on a p = 15 dimensional system: exact after ~p steps up to the loss of orthogonality)
    assert cg[0] > cg[1] > cg[2] and cg[2] < 1e-10 and cg[1] < fp[0] and cg[2] < fp[1]
    # k = 10 fixed while t grows: the error stays at the k-step linear-solver error (a plateau)
    plateau = [_rel_err(_hypergrad(prob, modes["FP"](10), t), ref).mean().item() for t in (100, 400)]
    assert plateau[1] > 0.5 * plateau[0] > 1e-3
    # FirstOrder: no gradient through w (BR's outer loss has no direct λ dependence)
    assert torch.equal(_hypergrad(prob, FirstOrder(), t), torch.zeros_like(ref))
    assert torch.equal(_hypergrad(prob, FixedPoint(0), t), torch.zeros_like(ref))


# -- logistic regression with per-feature L2: no closed form --------------------------------------------
def _logistic(B=4, n_e=40, p=6):
    X, Xv = torch.randn(n_e, p, dtype=DT), torch.randn(n_e, p, dtype=DT)
    w_star = torch.randn(p, dtype=DT)
    y = torch.sign(X @ w_star + 0.1 * torch.randn(n_e, dtype=DT))
    yv = torch.sign(Xv @ w_star + 0.1 * torch.randn(n_e, dtype=DT))
    lam0 = 1 + 4 * torch.rand(B, p, dtype=DT)

    def inner(w, lam):
        return torch.nn.functional.softplus(-y * (w @ X.T)).sum(1) + 0.5 * (lam * w ** 2).sum(1)

    def outer(w):
        return torch.nn.functional.softplus(-yv * (w @ Xv.T)).sum()

    return X, y, Xv, yv, lam0, inner, outer


def _scipy_inner(X, y, lam):
    def f(w):
        m = -y * (X @ w)
        return np.logaddexp(0, m).sum() + 0.5 * (lam * w ** 2).sum(), \
            X.T @ (-y / (1 + np.exp(-m))) + lam * w

    def hess(w):
        s = 1 / (1 + np.exp(y * (X @ w)))
        return X.T @ (X * (s * (1 - s))[:, None]) + np.diag(lam)

    # a second-order method: the finite differences need inner solutions accurate to ~1e-13
    r = scipy.optimize.minimize(f, np.zeros(X.shape[1]), jac=True, hess=hess, method="trust-exact",
                                options=dict(gtol=1e-13, maxiter=1000))
    # polish: the stationarity equation ∇f = 0 by MINPACK's hybrid Powell method
    r = scipy.optimize.root(lambda w: f(w)[1], r.x, jac=hess, method="hybr", tol=1e-15)
    assert np.abs(f(r.x)[1]).max() < 1e-12
    return r.x


def test_logistic_regression_modes_agree_with_reference():
    X, y, Xv, yv, lam0, inner, outer = _logistic()
    # reference: central finite differences of f(λ) with SciPy's inner solutions (element 0, 1)
    Xn, yn, Xvn, yvn = X.numpy(), y.numpy(), Xv.numpy(), yv.numpy()

    def f_outer(lam):
        w = _scipy_inner(Xn, yn, lam)
        return np.logaddexp(0, -yvn * (Xvn @ w)).sum()

    h = 1e-5
    fd = np.array([[(f_outer(lam0[b].numpy() + h * e) - f_outer(lam0[b].numpy() - h * e)) / (2 * h)
                    for e in np.eye(X.shape[1])] for b in range(2)])

    def grad(mode, **kw):
        lam = lam0.clone().requires_grad_(True)
        w = argmin(inner, torch.zeros(4, X.shape[1], dtype=DT), lam, mode=mode, **kw)
        (g,) = torch.autograd.grad(outer(w), lam)
        return g

    ref = grad(Implicit(), tol=1e-12)
    # FD error ~ h² f''' + round-off/h ~ 1e-8 relative
    np.testing.assert_allclose(ref[:2].numpy(), fd, rtol=1e-6, atol=1e-8)
    for mode, rtol in [(ConjugateGradient(50), 1e-8), (FixedPoint(400), 1e-6)]:
        torch.testing.assert_close(grad(mode, tol=1e-12), ref, rtol=rtol, atol=1e-10)
    # ITD from w0 = 0 with GD steps η = 1/L̂: t large enough that w_t has converged
    torch.testing.assert_close(grad(Unrolled(300)), ref, rtol=1e-6, atol=1e-10)


# -- memory: ITD's saved state grows with t, AID's does not ------------------------------------------
def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


def test_memory_itd_grows_aid_constant():
    prob = _biased_regularisation(B=4)
    lam = prob["hyper"][0].clone().requires_grad_(True)

    def run(mode, t):
        return _saved_bytes(lambda: fixed_point(prob["phi"], prob["w0"], lam, mode=mode, max_iter=t,
                                                tol=0.0, check=False))

    itd = [run(Unrolled(t), t)[0] for t in (10, 40)]
    assert itd[1] >= 3.5 * itd[0] > 0
    for mode in (FixedPoint(10), ConjugateGradient(10), FixedPoint(100)):
        aid = [run(mode, t)[0] for t in (10, 40, 160)]
        assert aid[0] == aid[1] == aid[2] > 0, (mode, aid)
        assert aid[0] < itd[0]


# -- registry, bad input, shared solvers ------------------------------------------------------------
def test_mode_names_and_errors():
    assert isinstance(resolve_mode("first_order"), FirstOrder)
    for name, cls in [("unrolled", "Unrolled"), ("fixed_point", "FixedPoint"),
                      ("conjugate_gradient", "ConjugateGradient")]:
        with pytest.raises(ValueError, match=cls):
            resolve_mode(name)
    # a negative count is a wrong value, a float / bool / None a wrong type
    for bad, exc in ((-1, ValueError), (2.5, TypeError), (True, TypeError), (None, TypeError)):
        with pytest.raises(exc, match="int >= 0"):
            FixedPoint(bad)
        with pytest.raises(exc, match="int >= 0"):
            Unrolled(bad)
    assert repr(ConjugateGradient(3)) == "ConjugateGradient(k=3)"


def test_modes_need_a_fixed_point_map():
    from declarative import ReLUProblem
    x = torch.randn(3, 4, requires_grad=True)
    # raised at the forward, naming the mode and the missing capability (not later, in the backward)
    for mode in (FixedPoint(5), ConjugateGradient(5), Unrolled(5)):
        with pytest.raises(ValueError, match=re.escape(repr(mode)) + ".*fixed-point map.*ReLUProblem"):
            mode.apply(ReLUProblem(), (x,), None)
    with pytest.raises(NotImplementedError, match="fixed-point map"):
        ReLUProblem().fixed_point_map((x,), at=x)


def test_linear_solvers_against_dense_solve():
    A = torch.randn(3, 8, 8, dtype=DT)
    S = A @ A.transpose(1, 2) + 0.5 * torch.eye(8, dtype=DT)
    b = torch.randn(3, 8, dtype=DT)
    mv = lambda v: torch.einsum("bij,bj->bi", S, v)  # noqa: E731
    res = conjugate_gradient(mv, b, max_iter=100, rtol=1e-12)
    assert res.converged.all() and (res.iterations <= 16).all()
    torch.testing.assert_close(res.x, torch.linalg.solve(S, b))
    # exactly n steps of CG solve an n×n system (up to round-off) without a tolerance
    torch.testing.assert_close(conjugate_gradient(mv, b, max_iter=8).x, torch.linalg.solve(S, b),
                               rtol=1e-6, atol=1e-8)
    T = 0.3 * torch.randn(3, 8, 8, dtype=DT) / math.sqrt(8)
    res = fixed_point_iteration(lambda v: torch.einsum("bij,bj->bi", T, v), b, max_iter=500, rtol=1e-13)
    assert res.converged.all()
    torch.testing.assert_close(res.x, torch.linalg.solve(torch.eye(8, dtype=DT) - T, b))
