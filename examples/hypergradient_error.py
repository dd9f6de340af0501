#!/usr/bin/env python
r"""Hypergradient approximation error against the number of inner iterations: Fig. 1 of Grazzi et al.
(2020), on the four synthetic bilevel problems of their Sec. 3.1 / App. C.1.

For each problem, ``f(λ) = E(w(λ), λ)`` with ``w(λ) = argmin_w ℓ(w, λ)``. As in the paper, the inner
problem is solved from ``w₀ = 0`` by ``t`` steps of gradient descent with the optimal step
``2/(L + μ)`` (LR) or of heavy ball with the optimal step and momentum (KRR, BR, HR), as
``declarative.fixed_point`` layers (``max_iter=t``; heavy ball on the state ``(w, w_prev)``), and the
hypergradient is approximated by the gradient modes

* ``ITD``        – ``Unrolled(t)`` (back-propagation through the t solver steps),
* ``FP k=t``, ``FP k=10``  – ``FixedPoint(k)`` (AID with the fixed-point method, on the solver's map),
* ``CG k=t``, ``CG k=10``  – ``ConjugateGradient(k)`` (AID with conjugate gradient, on the gradient
  descent map, whose Jacobian is symmetric),

and compared with the exact hypergradient ``∇f(λ)``: autograd through the closed form ``w(λ)`` for
KRR, BR and HR; for LR (no closed form) ``declarative.argmin`` solved to a gradient norm of 1e-11 with
the ``Implicit`` mode (CG to 1e-12) — the paper uses CG with t = k = 2000. The error shown is the
relative error ``‖g(λ) − ∇f(λ)‖ / ‖∇f(λ)‖``, mean and std over 20 values of λ (one batch of 20).

Problems (X, X′ of 50×100; H of 100×200; App. C.1):

* LR  – logistic regression with per-feature L2, ``λ ∈ [0.01, 10]^100``, ``y = sign(Xw* + 0.1ε)``;
* KRR – kernel ridge regression with a per-feature Gaussian kernel, ``(β, γ) ∈ [0.0005, 0.005]^101``;
* BR  – biased regularisation, ``λ ∈ [−5, 5]^100``, ``β = 1``, ``y = X(w* + 1) + 0.1ε``;
* HR  – hyper-representation, ``H ∈ [−1, 1]^{100×200}``, ``β = 10``, ``y = XH*w* + 0.1ε``
  (the inner loss is ``½‖XHw − y‖²``; the paper's ``X′`` there is a typo).

Computations are in float64 (``--float32`` for single precision, where the paper notes an error
floor). The exact L and μ (eigenvalues) set the step sizes; for LR the usual bounds
``L = ‖X‖²/4 + max λ``, ``μ = min λ``.

Usage::

    python examples/hypergradient_error.py            # default: t up to 1000, < 3 min
    python examples/hypergradient_error.py --full     # t up to 5000
    python examples/hypergradient_error.py --problems LR,BR --num-lambdas 5

Reference: R. Grazzi, L. Franceschi, M. Pontil, S. Salzo. On the iteration complexity of hypergradient
computation. ICML 2020, Sec. 3.1, Fig. 1, App. C.1.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
try:
    import declarative
except ImportError:  # running from a checkout without installation
    sys.path.insert(0, str(ROOT))
    import declarative
from declarative import ConjugateGradient, FixedPoint, Implicit, Unrolled, argmin, fixed_point  # noqa: E402
from plotting import save_figure  # noqa: E402  (examples/plotting.py)

METHODS = ("ITD", "FP k=t", "CG k=t", "FP k=10", "CG k=10")


@dataclass
class Bilevel:
    """One batched bilevel problem.

    ``grad(w, *lp)`` is ``∇_wℓ`` (written out), where ``lp = layer_params(*hyper)`` are the tensors
    the inner layer depends on (by default the hyperparameters themselves); ``outer(w, *hyper)`` the
    summed outer loss; ``exact(*hyper)`` the exact hypergradient per element; ``hyper`` the sampled
    hyperparameters ``(B, ...)``; ``w0`` the initial point; ``L``, ``mu`` ``(B,)`` the extreme
    eigenvalues of the inner Hessian (for LR: bounds); ``heavy_ball`` whether the inner solver is
    heavy ball (else gradient descent)."""

    name: str
    grad: Callable
    outer: Callable
    exact: Callable
    hyper: list
    w0: torch.Tensor
    L: torch.Tensor
    mu: torch.Tensor
    heavy_ball: bool = True
    layer_params: Callable | None = None

    def _col(self, x):
        return x.reshape((-1,) + (1,) * (self.w0.dim() - 1))

    @property
    def q(self) -> torch.Tensor:
        """Linear rate of the inner solver: (L−μ)/(L+μ) for GD, (√L−√μ)/(√L+√μ) for heavy ball."""
        if self.heavy_ball:
            return (self.L.sqrt() - self.mu.sqrt()) / (self.L.sqrt() + self.mu.sqrt())
        return (self.L - self.mu) / (self.L + self.mu)

    def phi_gd(self, w, *lp):
        """Gradient descent with the optimal step: ``Φ(w) = w − 2/(L+μ) ∇ℓ(w)`` (symmetric Jacobian)."""
        return w - self._col(2 / (self.L + self.mu)) * self.grad(w, *lp)

    def phi_hb(self, s, *lp):
        """Heavy ball on the state ``s = (w, w_prev)``: ``w⁺ = w − α∇ℓ(w) + m(w − w_prev)`` with the
        optimal ``α = 4/(√L+√μ)²``, ``m = ((√L−√μ)/(√L+√μ))²``."""
        w, w_prev = s.chunk(2, dim=1)
        alpha = self._col(4 / (self.L.sqrt() + self.mu.sqrt()) ** 2)
        m = self._col(self.q ** 2)
        return torch.cat([w - alpha * self.grad(w, *lp) + m * (w - w_prev), w], 1)


def _uniform(shape, lo, hi, dtype, gen):
    return lo + (hi - lo) * torch.rand(shape, dtype=dtype, generator=gen)


def _data(n_e, p, dtype, gen):
    X = torch.randn(n_e, p, dtype=dtype, generator=gen)
    Xv = torch.randn(n_e, p, dtype=dtype, generator=gen)
    return X, Xv


def _noise(n, dtype, gen):
    return 0.1 * torch.randn(n, dtype=dtype, generator=gen)


def _grads(loss, hyper):
    gs = torch.autograd.grad(loss, hyper)
    return torch.cat([g.reshape(g.shape[0], -1) for g in gs], 1)


def make_lr(B, n_e, p, dtype, gen) -> Bilevel:
    X, Xv = _data(n_e, p, dtype, gen)
    w_star = torch.randn(p, dtype=dtype, generator=gen)
    y = torch.sign(X @ w_star + _noise(n_e, dtype, gen))
    yv = torch.sign(Xv @ w_star + _noise(n_e, dtype, gen))
    lam = _uniform((B, p), 0.01, 10.0, dtype, gen)
    L = torch.linalg.matrix_norm(X, ord=2) ** 2 / 4 + lam.max(1).values
    mu = lam.min(1).values
    sp = torch.nn.functional.softplus

    def grad(w, lam):  # ∇ℓ = −Xᵀ(y σ(−y Xw)) + λ w
        m = y * (w @ X.T)
        return -(y * torch.sigmoid(-m)) @ X + lam * w

    def outer(w, lam):
        return sp(-yv * (w @ Xv.T)).sum()

    def energy(w, lam):
        return sp(-y * (w @ X.T)).sum(1) + 0.5 * (lam * w ** 2).sum(1)

    def exact(lam):
        lam = lam.clone().requires_grad_(True)
        w = argmin(energy, torch.zeros(B, p, dtype=dtype), lam, mode=Implicit(), tol=1e-11,
                   max_iter=5000)
        return _grads(outer(w, lam), [lam])

    return Bilevel("LR", grad, outer, exact, [lam], torch.zeros(B, p, dtype=dtype), L, mu, heavy_ball=False)


def make_krr(B, n_e, p, dtype, gen) -> Bilevel:
    X, Xv = _data(n_e, p, dtype, gen)
    w_star = torch.randn(p, dtype=dtype, generator=gen)
    y = X @ w_star + _noise(n_e, dtype, gen)
    yv = Xv @ w_star + _noise(n_e, dtype, gen)
    D = (X[:, None, :] - X[None, :, :]) ** 2            # (n, n, p)
    Dv = (Xv[:, None, :] - X[None, :, :]) ** 2
    beta = _uniform((B, 1), 0.0005, 0.005, dtype, gen)
    gamma = _uniform((B, p), 0.0005, 0.005, dtype, gen)

    def K(g, D=D):
        return torch.exp(-torch.einsum("ijp,bp->bij", D, g))

    with torch.no_grad():
        ev = torch.linalg.eigvalsh(K(gamma) + beta[:, :, None] * torch.eye(n_e, dtype=dtype))
    L, mu = ev[:, -1], ev[:, 0]

    # the kernel matrix is passed to the fixed-point layer as a parameter (computed once from γ by
    # autograd), so that ITD stores it once rather than once per step
    def grad(w, beta, Kg):
        return torch.einsum("bij,bj->bi", Kg, w) + beta * w - y

    def outer(w, beta, gamma):
        return 0.5 * ((yv - torch.einsum("bij,bj->bi", K(gamma, Dv), w)) ** 2).sum()

    def exact(beta, gamma):
        beta, gamma = beta.clone().requires_grad_(True), gamma.clone().requires_grad_(True)
        A = K(gamma) + beta[:, :, None] * torch.eye(n_e, dtype=dtype)
        w = torch.linalg.solve(A, y.expand(B, n_e))
        return _grads(outer(w, beta, gamma), [beta, gamma])

    return Bilevel("KRR", grad, outer, exact, [beta, gamma], torch.zeros(B, n_e, dtype=dtype), L, mu,
                   layer_params=lambda beta, gamma: (beta, K(gamma)))


def make_br(B, n_e, p, dtype, gen, beta=1.0) -> Bilevel:
    X, Xv = _data(n_e, p, dtype, gen)
    w_star = torch.randn(p, dtype=dtype, generator=gen)
    y = X @ (w_star + 1) + _noise(n_e, dtype, gen)
    yv = Xv @ (w_star + 1) + _noise(n_e, dtype, gen)
    lam = _uniform((B, p), -5.0, 5.0, dtype, gen)
    Hs = X.T @ X + beta * torch.eye(p, dtype=dtype)
    ev = torch.linalg.eigvalsh(Hs)
    L, mu = ev[-1].expand(B), ev[0].expand(B)

    def grad(w, lam):
        return (w @ X.T - y) @ X + beta * (w - lam)

    def outer(w, lam):
        return 0.5 * ((w @ Xv.T - yv) ** 2).sum()

    def exact(lam):
        lam = lam.clone().requires_grad_(True)
        w = torch.linalg.solve(Hs, (X.T @ y + beta * lam).T).T
        return _grads(outer(w, lam), [lam])

    return Bilevel("BR", grad, outer, exact, [lam], torch.zeros(B, p, dtype=dtype), L, mu)


def make_hr(B, n_e, p, dtype, gen, d=None, beta=10.0) -> Bilevel:
    d = 2 * p if d is None else d
    X, Xv = _data(n_e, p, dtype, gen)
    H_star = torch.randn(p, d, dtype=dtype, generator=gen)
    w_star = torch.randn(d, dtype=dtype, generator=gen)
    y = X @ H_star @ w_star + _noise(n_e, dtype, gen)
    yv = Xv @ H_star @ w_star + _noise(n_e, dtype, gen)
    H = _uniform((B, p, d), -1.0, 1.0, dtype, gen)
    with torch.no_grad():
        XH = X @ H                                       # (B, n, d)
        ev = torch.linalg.eigvalsh(XH @ XH.transpose(1, 2))   # the non-zero spectrum of (XH)ᵀXH
    L, mu = ev[:, -1] + beta, torch.full((B,), beta, dtype=dtype)

    # XH is passed to the layer as its parameter (computed once from H by autograd; see KRR)
    def grad(w, XH):
        r = torch.einsum("bnd,bd->bn", XH, w) - y
        return torch.einsum("bnd,bn->bd", XH, r) + beta * w

    def outer(w, H):
        return 0.5 * ((torch.einsum("bnd,bd->bn", Xv @ H, w) - yv) ** 2).sum()

    def exact(H):
        H = H.clone().requires_grad_(True)
        XH = X @ H
        A = XH.transpose(1, 2) @ XH + beta * torch.eye(d, dtype=dtype)
        w = torch.linalg.solve(A, torch.einsum("bnd,n->bd", XH, y))
        return _grads(outer(w, H), [H])

    return Bilevel("HR", grad, outer, exact, [H], torch.zeros(B, d, dtype=dtype), L, mu,
                   layer_params=lambda H: (X @ H,))


MAKERS = {"LR": make_lr, "KRR": make_krr, "BR": make_br, "HR": make_hr}


def make_mode(method: str, t: int):
    return {"ITD": lambda: Unrolled(t), "FP k=t": lambda: FixedPoint(t), "CG k=t": lambda: ConjugateGradient(t),
            "FP k=10": lambda: FixedPoint(10), "CG k=10": lambda: ConjugateGradient(10)}[method]()


def hypergradient(prob: Bilevel, method: str, t: int) -> torch.Tensor:
    """The approximate hypergradient ``(B, n_hyper)`` of one method after ``t`` inner steps.

    Gradient descent (LR): every mode on ``fixed_point(Φ_GD, w₀, max_iter=t)``. Heavy ball (as the
    paper's code, hypertorch): ITD and FP on the heavy-ball map of the state ``(w, w_prev)``; CG needs
    a symmetric Jacobian, so it runs on the GD map at the heavy-ball iterate ``w_t``, through a
    ``fixed_point`` layer warm-started at ``w_t`` with ``max_iter=0`` (the forward returns ``w_t``).
    """
    hyper = [h.clone().requires_grad_(True) for h in prob.hyper]
    lp = prob.layer_params(*hyper) if prob.layer_params is not None else hyper
    mode = make_mode(method, t)
    opts = dict(tol=0.0, check=False)
    if not prob.heavy_ball:
        w = fixed_point(prob.phi_gd, prob.w0, *lp, mode=mode, max_iter=t, symmetric=True, **opts)
    else:
        s0 = torch.cat([prob.w0, prob.w0], 1)
        n = prob.w0.shape[1]
        if method.startswith("CG"):
            w_t = fixed_point(prob.phi_hb, s0, *[x.detach() for x in lp], mode="first_order", max_iter=t,
                              **opts)[:, :n]
            w = fixed_point(prob.phi_gd, w_t, *lp, mode=mode, max_iter=0, symmetric=True, **opts)
        else:
            w = fixed_point(prob.phi_hb, s0, *lp, mode=mode, max_iter=t, **opts)[:, :n]
    return _grads(prob.outer(w, *hyper), hyper)


def run(problems, ts, num_lambdas, n_e, p, dtype, seed, progress=True):
    """Errors ``{problem: {method: (len(ts), B) tensor}}`` and the problems' contraction factors."""
    from tqdm import tqdm
    results, qs = {}, {}
    jobs = [(name, t) for name in problems for t in ts]
    bar = tqdm(total=len(jobs) * len(METHODS), desc="hypergradients", disable=not progress)
    for name in problems:
        gen = torch.Generator().manual_seed(seed)
        prob = MAKERS[name](num_lambdas, n_e, p, dtype, gen)
        ref = prob.exact(*prob.hyper)
        qs[name] = (prob.q, prob.heavy_ball)
        errs = {m: [] for m in METHODS}
        for t in ts:
            for m in METHODS:
                g = hypergradient(prob, m, t)
                errs[m].append((g - ref).norm(dim=1) / ref.norm(dim=1))
                bar.set_postfix(problem=name, t=t)
                bar.update(1)
        results[name] = {m: torch.stack(v) for m, v in errs.items()}
    bar.close()
    return results, qs


def table(results, ts, qs) -> str:
    lines = []
    for name, errs in results.items():
        q, heavy_ball = qs[name]
        solver = "heavy ball, rate (√L−√μ)/(√L+√μ)" if heavy_ball else "GD, rate (L−μ)/(L+μ)"
        lines.append(f"\n{name}  (inner {solver}: mean {q.mean():.5f}, max {q.max():.5f}); "
                     "relative error, mean ± std over λ")
        lines.append(f"{'t':>6} " + " ".join(f"{m:>21}" for m in METHODS))
        for i, t in enumerate(ts):
            cells = [f"{errs[m][i].mean():.3e} ± {errs[m][i].std():.1e}" for m in METHODS]
            lines.append(f"{t:>6} " + " ".join(f"{c:>21}" for c in cells))
    return "\n".join(lines)


def plot(results, ts, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    styles = {"ITD": ("C0", "-"), "FP k=t": ("C1", "-"), "CG k=t": ("C2", "-"), "FP k=10": ("C1", "--"),
              "CG k=10": ("C2", "--")}
    for ax, (name, errs) in zip(axes[0], results.items()):
        for m in METHODS:
            e = errs[m].log10()
            mean, std = e.mean(1), e.std(1)
            color, ls = styles[m]
            ax.plot(ts, mean, ls, color=color, label=m)
            ax.fill_between(ts, mean - std, mean + std, color=color, alpha=0.15)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("t (inner iterations)")
        ax.set_ylabel(r"$\log_{10}\|g(\lambda) - \nabla f(\lambda)\| / \|\nabla f(\lambda)\|$")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="t up to 5000 (default: up to 1000)")
    ap.add_argument("--problems", default="LR,KRR,BR,HR")
    ap.add_argument("--ts", default=None, help="comma-separated t values (overrides the default grid)")
    ap.add_argument("--num-lambdas", type=int, default=20)
    ap.add_argument("--n-examples", type=int, default=50, help="rows of X, X' (paper: 50)")
    ap.add_argument("--n-features", type=int, default=100, help="columns of X, X' (paper: 100; H is p×2p)")
    ap.add_argument("--float32", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs" / "hypergradient_error"))
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ts:
        ts = [int(x) for x in args.ts.split(",")]
    elif args.full:
        ts = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    else:
        ts = [10, 30, 100, 300, 1000]
    problems = [p.strip().upper() for p in args.problems.split(",") if p.strip()]
    for p in problems:
        if p not in MAKERS:
            ap.error(f"unknown problem {p!r}; choose from {', '.join(MAKERS)}")
    dtype = torch.float32 if args.float32 else torch.float64
    start = time.time()
    results, qs = run(problems, ts, args.num_lambdas, args.n_examples, args.n_features, dtype, args.seed,
                      progress=not args.no_progress)
    print(table(results, ts, qs))
    out = Path(args.out)
    png = out.with_suffix(".png") if out.suffix != ".png" else out
    plot(results, ts, png)
    print(f"\nplot saved to {png}  ({time.time() - start:.0f} s)")
    return results


if __name__ == "__main__":
    main()
