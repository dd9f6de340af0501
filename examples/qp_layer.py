#!/usr/bin/env python
r"""Learning a polytope end to end through a QP layer: the layer reproduces an unknown projection.

Data: inputs ``x ∈ R^n`` (Gaussian, scale 2) and targets ``y = Π_P(x)``, their Euclidean
projections onto a **hidden** polytope ``P = {z : G* z ≤ h*}`` (computed once with
``declarative.solve_qp_ipm``). The model is the QP layer

    z*(x; G, h) = argmin_z ½‖z − x‖²   s.t.   G z ≤ h          (``layers.QPLayer``, Q = I, q = −x)

with a learned, unbatched ``G`` (m × n) and ``h`` (m) shared by the batch; it is trained on
``‖z*(x) − y‖²`` with Adam. Gradients reach ``G`` and ``h`` only through the layer:
``∇G = dλ z*ᵀ + λ* dzᵀ``, ``∇h = −dλ`` (summed over the batch). Compared, from the same
initialisation (m random facets at distance ``--init-offset``):

* ``implicit``: exact one-sided gradients (KKT system; backward QP at weakly active facets);
* ``contrastive``: nudged re-solves ``q → q + βg``, formula (C), bias O(β);
* ``symmetric``: ``±β``, bias O(β²) where the solution map is smooth.

Prints the final train/test losses and wall time per mode and saves the training curves (and, for
n = 2, the hidden and learned polytopes) to ``runs/qp_layer.png`` (``--out``).

Usage::

    python examples/qp_layer.py            # default: n = 2, < 2 min on one core
    python examples/qp_layer.py --full     # n = 2, more facets, data and steps
    python examples/qp_layer.py --dim 5 --facets 12 --steps 300

References:
    B. Amos, J. Z. Kolter, "OptNet", ICML 2017 (learning constraints through a QP layer).
    C. Zach, "Bilevel programs meet deep learning", 2021 (contrastive gradients).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

try:
    import layers
except ImportError:  # pragma: no cover - source tree without `make setup`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import layers
from declarative import solve_qp_ipm
from plotting import save_figure  # noqa: E402  (examples/plotting.py)

MODES = ("implicit", "contrastive", "symmetric")


def hidden_polytope(n: int, m: int, gen: torch.Generator):
    """``m`` unit-normal facets at distances in [0.5, 1.5] around the origin (bounded for m > n)."""
    G = torch.randn(m, n, generator=gen, dtype=torch.float64)
    if n == 2:   # evenly spread normals: a visibly polygonal set
        ang = 2 * math.pi * (torch.arange(m, dtype=torch.float64) + 0.3 * torch.rand(m, generator=gen)) / m
        G = torch.stack([ang.cos(), ang.sin()], -1)
    G = G / G.norm(dim=-1, keepdim=True)
    h = 0.5 + torch.rand(m, generator=gen, dtype=torch.float64)
    return G, h


def project(x: torch.Tensor, G: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Euclidean projections of the rows of ``x`` onto ``{z : Gz ≤ h}`` (targets; no gradient)."""
    n = x.shape[-1]
    sol = solve_qp_ipm(torch.eye(n, dtype=x.dtype), -x, G, h)
    sol.raise_for_status("target projection")
    return sol.z


def train(mode: str, beta: float, x_tr, y_tr, x_te, y_te, G0, h0, steps: int, batch: int, lr: float,
          seed: int, progress: bool = True):
    from tqdm import tqdm

    layer = layers.QPLayer(mode=mode, beta=None if mode == "implicit" else beta)
    G = torch.nn.Parameter(G0.clone())
    h = torch.nn.Parameter(h0.clone())
    opt = torch.optim.Adam([G, h], lr=lr)
    n = x_tr.shape[-1]
    eye = torch.eye(n, dtype=x_tr.dtype)
    gen = torch.Generator().manual_seed(seed)
    curve = []
    with torch.no_grad():
        initial = ((layer(eye, -x_tr, G, h) - y_tr) ** 2).sum(-1).mean().item()
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=f"{mode:>11}", disable=not progress, leave=True)
    for _ in bar:
        idx = torch.randint(0, x_tr.shape[0], (batch,), generator=gen)
        opt.zero_grad()
        z = layer(eye, -x_tr[idx], G, h)
        loss = ((z - y_tr[idx]) ** 2).sum(-1).mean()
        loss.backward()
        opt.step()
        curve.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.2e}")
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        test = ((layer(eye, -x_te, G, h) - y_te) ** 2).sum(-1).mean().item()
        train_loss = ((layer(eye, -x_tr, G, h) - y_tr) ** 2).sum(-1).mean().item()
    return {"mode": mode, "curve": curve, "initial": initial, "train": train_loss, "test": test, "seconds": elapsed,
            "G": G.detach(), "h": h.detach()}


def polygon(G, h, lim=3.0, res=200):
    """Boolean image of ``{z : Gz ≤ h}`` on ``[−lim, lim]²`` (for plotting)."""
    t = torch.linspace(-lim, lim, res, dtype=torch.float64)
    X, Y = torch.meshgrid(t, t, indexing="xy")
    P = torch.stack([X, Y], -1)
    return ((P @ G.T) <= h).all(-1)


def plot(results, G_true, h_true, beta, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    two_d = G_true.shape[1] == 2
    fig, axes = plt.subplots(1, 2 if two_d else 1, figsize=(11 if two_d else 6, 4.5), squeeze=False)
    ax = axes[0, 0]
    for r in results:
        c = torch.tensor(r["curve"])
        k = max(1, len(c) // 50)
        smooth = torch.nn.functional.avg_pool1d(c[None, None], k, stride=1)[0, 0] if len(c) >= k else c
        label = r["mode"] if r["mode"] == "implicit" else f"{r['mode']} (β={beta:g})"
        ax.semilogy(range(k - 1, k - 1 + len(smooth)), smooth, label=f"{label}: test {r['test']:.1e}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss ‖z*(x) − Π_P(x)‖² (moving average)")
    ax.set_title("QP layer learning a hidden polytope")
    ax.legend()
    if two_d:
        ax = axes[0, 1]
        lim = 2.5
        ax.contour(*torch.meshgrid(torch.linspace(-lim, lim, 200), torch.linspace(-lim, lim, 200), indexing="xy"),
                   polygon(G_true, h_true, lim).double(), levels=[0.5], colors="k", linewidths=2.5)
        colors = ["C0", "C1", "C2"]
        for r, c in zip(results, colors):
            ax.contour(*torch.meshgrid(torch.linspace(-lim, lim, 200), torch.linspace(-lim, lim, 200), indexing="xy"),
                       polygon(r["G"], r["h"], lim).double(), levels=[0.5], colors=c, linestyles="--")
        ax.plot([], [], "k", lw=2.5, label="hidden polytope")
        for r, c in zip(results, colors):
            ax.plot([], [], c, ls="--", label=f"learned ({r['mode']})")
        ax.set_aspect("equal")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("hidden vs learned constraint sets")
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="more facets, data and steps (n = 2)")
    p.add_argument("--dim", type=int, default=2, help="dimension n of z and x")
    p.add_argument("--hidden-facets", type=int, default=None, help="facets of the hidden polytope (default 6; 9 with --full)")
    p.add_argument("--facets", type=int, default=None, help="learned facets m (default 8; 12 with --full)")
    p.add_argument("--train-size", type=int, default=None, help="default 1024 (4096 with --full)")
    p.add_argument("--test-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=None, help="Adam steps per mode (default 250; 1500 with --full)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--beta", type=float, default=0.05, help="nudging strength of the contrastive modes")
    p.add_argument("--init-offset", type=float, default=2.0, help="distance of the initial facets from 0")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    p.add_argument("--out", type=Path, default=Path("runs/qp_layer.png"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hidden = args.hidden_facets or (9 if args.full else 6)
    m = args.facets or (12 if args.full else 8)
    n_tr = args.train_size or (4096 if args.full else 1024)
    steps = args.steps or (1500 if args.full else 250)
    modes = [s.strip() for s in args.modes.split(",") if s.strip()]
    for mode in modes:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")

    gen = torch.Generator().manual_seed(args.seed)
    G_true, h_true = hidden_polytope(args.dim, hidden, gen)
    x_tr = 2 * torch.randn(n_tr, args.dim, generator=gen, dtype=torch.float64)
    x_te = 2 * torch.randn(args.test_size, args.dim, generator=gen, dtype=torch.float64)
    y_tr, y_te = project(x_tr, G_true, h_true), project(x_te, G_true, h_true)
    G0 = torch.randn(m, args.dim, generator=gen, dtype=torch.float64)
    G0 = G0 / G0.norm(dim=-1, keepdim=True)
    h0 = torch.full((m,), args.init_offset, dtype=torch.float64)
    base = ((x_te - y_te) ** 2).sum(-1).mean().item()
    print(f"n = {args.dim}, hidden facets = {hidden}, learned facets = {m}, train {n_tr}, test {args.test_size}, "
          f"{steps} steps of batch {args.batch}; test loss of the identity map: {base:.3e}")

    results = [train(mode, args.beta, x_tr, y_tr, x_te, y_te, G0, h0, steps, args.batch, args.lr,
                     args.seed, progress=not args.no_progress) for mode in modes]
    print(f"\n{'mode':<12} {'train loss':>11} {'test loss':>11} {'seconds':>8}")
    for r in results:
        print(f"{r['mode']:<12} {r['train']:11.3e} {r['test']:11.3e} {r['seconds']:8.1f}")
    plot(results, G_true, h_true, args.beta, args.out)
    print(f"\nsaved {args.out}")
    return results


if __name__ == "__main__":
    main()
