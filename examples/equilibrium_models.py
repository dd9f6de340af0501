#!/usr/bin/env python
r"""Equilibrium models on MNIST trained by ITD, AID-FP and AID-CG, with and without the constraint
``‖A‖ < 1`` (Grazzi et al. 2020, §3.2, Fig. 2).

Every image ``x_i`` gets a state ``w_i ∈ R^h`` (``h = 200``), the fixed point of

    w_i = φ(w_i, γ) = tanh(A w_i + B x_i + c),     γ = (A, B, c),

and a multinomial logistic classifier ``θ = (W, d)`` reads it out; the training objective is the
mean cross-entropy ``f(γ, θ) = (1/n) Σ_i CE(W w_i(γ) + d, y_i)``. The state is ``t = 20`` iterations
of ``φ`` from ``w = 0`` (a ``declarative.fixed_point`` layer, batch = the training examples) and the
hypergradient w.r.t. ``γ`` is computed by

* ``ITD`` – ``Unrolled(t)``: back-propagation through the ``t`` iterations;
* ``FP``  – ``FixedPoint(k)``: AID with ``k = 20`` fixed-point (recurrent back-propagation) steps;
* ``CG``  – ``ConjugateGradient(k)``: AID with ``k = 20`` CG steps on the normal equations
  (``∂_wφ`` is not symmetric).

The outer problem is full-batch gradient descent with Nesterov momentum (as in the paper), either
projected — after every step ``A ← project_spectral_ball(A, 1 − ε)``, so that φ is a contraction
(``‖∂_wφ‖ ≤ ‖A‖`` since ``|tanh′| ≤ 1``) — or unconstrained (marked ``†``). Reported per run: final
training objective, test accuracy (the test states by the same ``t`` iterations), training time,
the fraction of outer steps in which the inner iteration of some training example had not
converged after ``t`` steps (``‖φ(w_t) − w_t‖₂ > --conv-tol``; the layers' per-element status), the
fraction of steps whose backward warned (``FixedPoint``: the Neumann series grew, i.e. ``∂_wφ`` had
spectral radius ≥ 1 there), the fraction of seeds whose hypergradient became non-finite, and the
final spectral norm of ``A``.
The figure has the paper's panels: training objective, test accuracy and hypergradient norm
against the outer iteration (mean and min–max range over seeds), and the final objective against
the learning rate (``--lr-sweep``, in ``--full``).

Usage::

    python examples/equilibrium_models.py            # 500 images, 100 steps, 1 seed: ~1-2 min on 2 cores
    python examples/equilibrium_models.py --lr-sweep 0.03,0.3,1   # adds the learning-rate panel
    python examples/equilibrium_models.py --quick    # CI: seconds
    python examples/equilibrium_models.py --full     # paper: 5000 images, 1000 steps, 5 seeds, lr sweep

Reference: R. Grazzi, L. Franceschi, M. Pontil, S. Salzo. On the iteration complexity of hypergradient
computation. ICML 2020, §3.2 and Fig. 2.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
EXAMPLES = Path(__file__).resolve().parent
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

from declarative import (ConjugateGradient, FixedPoint, Status, Unrolled,  # noqa: E402
                         fixed_point_solution, project_spectral_ball)
from plotting import save_figure  # noqa: E402  (examples/plotting.py)

METHODS = ("ITD", "FP", "CG")


# -- the model ------------------------------------------------------------------------------------------
class EquilibriumModel:
    """``w = tanh(A w + B x + c)`` with a linear read-out ``W w + d``; parameters as leaf tensors.

    Args:
        n_in, hidden, n_classes: sizes ``p``, ``h``, number of classes.
        seed: initialisation seed (PyTorch ``nn.Linear``'s uniform ``±1/√fan_in``, so ``‖A‖₂ ≈ 1.15``
            at ``h = 200``: not a contraction before the first projection).
    """

    def __init__(self, n_in: int, hidden: int, n_classes: int, seed: int, dtype=torch.float32):
        gen = torch.Generator().manual_seed(seed)

        def uniform(*shape, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            return ((torch.rand(*shape, generator=gen, dtype=dtype) * 2 - 1) * bound).requires_grad_(True)

        self.A = uniform(hidden, hidden, fan_in=hidden)
        self.B = uniform(hidden, n_in, fan_in=n_in)
        self.c = uniform(hidden, fan_in=n_in)
        self.W = uniform(n_classes, hidden, fan_in=hidden)
        self.d = uniform(n_classes, fan_in=hidden)
        self.hidden = hidden

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.A, self.B, self.c, self.W, self.d]

    @staticmethod
    def phi(w: torch.Tensor, A: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``φ(w) = tanh(A w + u)`` with ``u = B x + c`` (computed once per step and passed as a
        parameter, so that ITD's graph stores it once rather than once per iteration)."""
        return torch.tanh(torch.addmm(u, w, A.T))

    def states(self, x: torch.Tensor, mode, t: int, conv_tol: float):
        """The ``Solution`` of the fixed-point layer: ``t`` iterations from 0 (fewer for examples
        that reach ``‖φ(w) − w‖ ≤ conv_tol`` under the AID modes), status per example."""
        u = torch.addmm(self.c, x, self.B.T)
        w0 = torch.zeros(x.shape[0], self.hidden, dtype=x.dtype)
        return fixed_point_solution(self.phi, w0, self.A, u, mode=mode, max_iter=t, tol=conv_tol,
                                    check=False)

    def logits(self, w: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.d, w, self.W.T)


def make_mode(method: str, t: int, k: int, conv_tol: float):
    return {"ITD": lambda: Unrolled(t, tol=conv_tol), "FP": lambda: FixedPoint(k),
            "CG": lambda: ConjugateGradient(k)}[method]()


# -- one run ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    method: str
    projected: bool
    seed: int
    lr: float
    objective: list = field(default_factory=list)
    test_accuracy: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    unconverged_steps: int = 0
    warned_steps: int = 0
    nonfinite_steps: int = 0
    steps: int = 0
    seconds: float = 0.0
    spectral_norm: float = float("nan")

    @property
    def label(self) -> str:
        return self.method + ("" if self.projected else "†")


def test_accuracy(model: EquilibriumModel, x, y, t: int) -> float:
    with torch.no_grad():
        sol = model.states(x, "first_order", t, 0.0)
        return (model.logits(sol.z).argmax(1) == y).float().mean().item()


def train(method: str, projected: bool, data, args, seed: int, lr: float, progress: bool = True) -> Run:
    """Full-batch Nesterov gradient descent on ``f``; stops early if the objective is not finite."""
    from tqdm import tqdm

    x_tr, y_tr, x_te, y_te = data
    model = EquilibriumModel(x_tr.shape[1], args.hidden, 10, seed)
    opt = torch.optim.SGD(model.params, lr=lr, momentum=0.9, nesterov=True)
    run = Run(method, projected, seed, lr)
    radius = 1.0 - args.epsilon
    if projected:
        with torch.no_grad():
            model.A.copy_(project_spectral_ball(model.A, radius))
    bar = tqdm(range(args.steps), desc=f"{method + ('' if projected else '†'):>4} seed {seed} lr {lr:g}",
               disable=not progress, leave=False)
    start = time.perf_counter()
    for step in bar:
        opt.zero_grad()
        sol = model.states(x_tr, make_mode(method, args.t, args.k, args.conv_tol), args.t, args.conv_tol)
        loss = F.cross_entropy(model.logits(sol.z), y_tr)
        with warnings.catch_warnings(record=True) as caught:   # FixedPoint: the Neumann series grew
            warnings.simplefilter("always", RuntimeWarning)
            loss.backward()
        run.warned_steps += int(any(issubclass(w.category, RuntimeWarning) for w in caught))
        grads = torch.cat([p.grad.reshape(-1) for p in model.params[:3]])
        gnorm = grads.norm().item()
        run.steps += 1
        run.unconverged_steps += int(bool((sol.status != Status.SOLVED).any()))
        run.objective.append(loss.item())
        run.grad_norm.append(gnorm)
        if not math.isfinite(gnorm) or not math.isfinite(loss.item()):
            run.nonfinite_steps += 1
            break                      # the outer iterate is lost: a non-finite step cannot be undone
        opt.step()
        if projected:
            with torch.no_grad():
                model.A.copy_(project_spectral_ball(model.A, radius))
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            run.test_accuracy.append((step + 1, test_accuracy(model, x_te, y_te, args.t)))
            bar.set_postfix(f=f"{loss.item():.3f}", acc=f"{run.test_accuracy[-1][1]:.3f}")
    run.seconds = time.perf_counter() - start
    with torch.no_grad():
        run.spectral_norm = torch.linalg.matrix_norm(model.A, ord=2).item()
    return run


# -- data, report, figure ------------------------------------------------------------------------------
def load_data(n_train: int, n_test: int, seed: int):
    """A random subset of ``n_train`` MNIST training images (the paper: 5000) and the first
    ``n_test`` test images; pixels in [0, 1)."""
    from mnist_data import load_mnist
    mnist = load_mnist()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(mnist.train), generator=gen)[:n_train]
    return mnist.train.x[idx], mnist.train.y[idx], mnist.test.x[:n_test], mnist.test.y[:n_test]


def summary(runs: list[Run]) -> list[dict]:
    """One row per (method, projected) at the main learning rate: means over seeds."""
    rows = []
    for projected in (True, False):
        for method in METHODS:
            rs = [r for r in runs if r.method == method and r.projected == projected]
            if not rs:
                continue
            final_acc = [r.test_accuracy[-1][1] if r.test_accuracy and r.nonfinite_steps == 0 else float("nan")
                         for r in rs]
            rows.append(dict(
                method=rs[0].label,
                objective=sum(r.objective[-1] for r in rs) / len(rs),
                test_accuracy=sum(final_acc) / len(rs),
                seconds=sum(r.seconds for r in rs) / len(rs),
                ms_per_step=1000 * sum(r.seconds / max(r.steps, 1) for r in rs) / len(rs),
                unconverged=sum(r.unconverged_steps for r in rs) / sum(r.steps for r in rs),
                warned=sum(r.warned_steps for r in rs) / sum(r.steps for r in rs),
                diverged=sum(r.nonfinite_steps > 0 for r in rs) / len(rs),
                spectral_norm=sum(r.spectral_norm for r in rs) / len(rs),
            ))
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'method':>6} | {'train obj.':>10} | {'test acc.':>9} | {'time (s)':>8} | {'ms/step':>7} | "
            f"{'unconverged':>11} | {'bwd warned':>10} | {'diverged':>8} | {'‖A‖₂':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['method']:>6} | {r['objective']:10.4f} | {100 * r['test_accuracy']:8.2f}% | "
                     f"{r['seconds']:8.1f} | {r['ms_per_step']:7.1f} | {100 * r['unconverged']:10.1f}% | "
                     f"{100 * r['warned']:9.1f}% | "
                     f"{100 * r['diverged']:7.0f}% | {r['spectral_norm']:6.3f}")
    return "\n".join(lines)


def sweep_table(sweep: list[Run]) -> str:
    """Final training objective (test accuracy) per method and learning rate; ``diverged`` where the
    hypergradient became non-finite."""
    lrs = sorted({r.lr for r in sweep})
    lines = [f"{'method':>6} | " + " | ".join(f"{'lr ' + format(lr, 'g'):>17}" for lr in lrs)]
    for projected in (True, False):
        for method in METHODS:
            cells = []
            for lr in lrs:
                rs = [r for r in sweep if r.method == method and r.projected == projected and r.lr == lr]
                if not rs:
                    cells.append(f"{'':>17}")
                    continue
                if any(r.nonfinite_steps for r in rs):
                    cells.append(f"{'diverged':>17}")
                    continue
                obj = sum(r.objective[-1] for r in rs) / len(rs)
                acc = sum(r.test_accuracy[-1][1] for r in rs) / len(rs)
                cells.append(f"{obj:8.3g} ({100 * acc:5.1f}%)")
            if any(c.strip() for c in cells):
                lines.append(f"{method + ('' if projected else '†'):>6} | " + " | ".join(cells))
    return "\n".join(lines)


def plot(runs: list[Run], sweep: list[Run], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ITD": "C4", "FP": "C3", "CG": "C2"}
    panels = 4 if sweep else 3
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    for method in METHODS:
        for projected in (True, False):
            rs = [r for r in runs if r.method == method and r.projected == projected]
            if not rs:
                continue
            ls = "-" if projected else "--"
            label = rs[0].label
            for ax, key in ((axes[0], "objective"), (axes[2], "grad_norm")):
                n = min(len(getattr(r, key)) for r in rs)
                curves = torch.tensor([getattr(r, key)[:n] for r in rs], dtype=torch.float64)
                steps = range(1, n + 1)
                ax.plot(steps, curves.mean(0), ls, color=colors[method], label=label)
                ax.fill_between(steps, curves.min(0).values, curves.max(0).values, color=colors[method], alpha=0.15)
            n = min(len(r.test_accuracy) for r in rs)
            if n:
                xs = [s for s, _ in rs[0].test_accuracy[:n]]
                acc = torch.tensor([[a for _, a in r.test_accuracy[:n]] for r in rs], dtype=torch.float64)
                axes[1].plot(xs, 100 * acc.mean(0), ls, color=colors[method], label=label)
                axes[1].fill_between(xs, 100 * acc.min(0).values, 100 * acc.max(0).values,
                                     color=colors[method], alpha=0.15)
    axes[0].set_ylabel("training objective")
    axes[1].set_ylabel("test accuracy (%)")
    axes[2].set_ylabel("‖g(λ)‖ (hypergradient w.r.t. A, B, c)")
    axes[2].set_yscale("log")
    for ax in axes[:3]:
        ax.set_xlabel("outer iteration")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if sweep:
        ax = axes[3]
        lrs = sorted({r.lr for r in sweep})
        for method in METHODS:
            for projected in (True, False):
                rs = [r for r in sweep if r.method == method and r.projected == projected]
                if not rs:
                    continue
                finals = [[r.objective[-1] if r.nonfinite_steps == 0 else float("nan") for r in rs if r.lr == lr]
                          for lr in lrs]
                vals = torch.tensor(finals, dtype=torch.float64)
                ls = "-" if projected else "--"
                ax.plot(lrs, vals.nanmean(1), ls, marker="o", ms=3, color=colors[method], label=rs[0].label)
                lo = torch.where(vals.isnan(), torch.full_like(vals, 10.0), vals).min(1).values
                hi = torch.where(vals.isnan(), torch.full_like(vals, 10.0), vals).max(1).values
                ax.fill_between(lrs, lo, hi, color=colors[method], alpha=0.15)
        ax.set_xscale("log")
        ax.set_ylim(0, 2.5)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final training objective (diverged: top)")
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI: 200 images, hidden 32, 15 steps")
    p.add_argument("--full", action="store_true", help="the paper: 5000 images, 1000 steps, 5 seeds, lr sweep")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None, help="state size h (default 200)")
    p.add_argument("--steps", type=int, default=None, help="outer iterations")
    p.add_argument("--t", type=int, default=20, help="inner fixed-point iterations")
    p.add_argument("--k", type=int, default=20, help="AID linear-system steps")
    p.add_argument("--lr", type=float, default=0.1, help="outer learning rate (Nesterov momentum 0.9)")
    p.add_argument("--epsilon", type=float, default=0.01, help="projection radius 1 − ε of ‖A‖₂")
    p.add_argument("--conv-tol", type=float, default=1e-3,
                   help="an example's inner iteration has converged when ‖φ(w_t) − w_t‖₂ ≤ this")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--lr-sweep", default=None, help="comma-separated learning rates for the sensitivity panel")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(EXAMPLES / "figures" / "equilibrium_models.png"))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    preset = ({"n_train": 5000, "n_test": 10000, "hidden": 200, "steps": 1000, "seeds": 5, "eval_every": 50,
               "lr_sweep": "0.01,0.03,0.1,0.3,1"} if a.full else
              {"n_train": 200, "n_test": 200, "hidden": 32, "steps": 15, "seeds": 1, "eval_every": 5,
               "lr_sweep": ""} if a.quick else
              {"n_train": 500, "n_test": 2000, "hidden": 200, "steps": 100, "seeds": 1, "eval_every": 20,
               "lr_sweep": ""})
    for key, value in preset.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.methods = [m.strip().upper() for m in a.methods.split(",") if m.strip()]
    bad = [m for m in a.methods if m not in METHODS]
    if bad:
        p.error(f"unknown methods {bad}; valid: {', '.join(METHODS)}")
    a.lr_sweep = [float(v) for v in a.lr_sweep.split(",") if v.strip()]
    return a


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data(args.n_train, args.n_test, seed=0)
    print(f"MNIST: {args.n_train} training / {args.n_test} test images; h = {args.hidden}, t = {args.t}, "
          f"k = {args.k}, {args.steps} outer steps (Nesterov, lr {args.lr:g}), {args.seeds} seed(s), "
          f"projection radius 1 − {args.epsilon:g}")
    progress = not args.no_progress
    runs = [train(m, proj, data, args, seed, args.lr, progress)
            for proj in (True, False) for m in args.methods for seed in range(args.seeds)]
    sweep = [train(m, proj, data, args, seed, lr, progress)
             for lr in args.lr_sweep for proj in (True, False) for m in args.methods for seed in range(args.seeds)]
    rows = summary(runs)
    print(table(rows))
    print("(† = unconstrained A; unconverged = share of outer steps in which some training example had "
          f"‖φ(w_t) − w_t‖₂ > {args.conv_tol:g} after t = {args.t} iterations; bwd warned = share of steps "
          "whose backward warned (FP: the Neumann series grew); diverged = share of seeds whose "
          "hypergradient became non-finite)")
    if sweep:
        print("\nlearning-rate sweep: final training objective (test accuracy)")
        print(sweep_table(sweep))
    out = Path(args.out)
    plot(runs, sweep, out)
    print(f"figure saved to {out}")
    return {"rows": rows, "runs": runs, "sweep": sweep}


if __name__ == "__main__":
    main()
