#!/usr/bin/env python
r"""Inference-learning methods side by side: every row of Zach (2021, Table 1) on one MLP.

The same MLP (ReLU hidden layers, softmax + cross-entropy output), the same optimiser (Adam, lr
1e-3 on MNIST as in the paper, 1e-2 on the small digits set; batch 50, data in order), the same initial weights per initialisation, trained by each
learning method of ``contrastive.inference_learning`` with a small β sweep:

* ``BP`` — back-propagation (the reference);
* ``FenchelBP(β)`` — Fenchel back-propagation (targets ``relu(a − βδ)`` instead of derivatives);
* ``PenaltyBP(β, γ)`` — the top-down linearised penalty family (γ = 1 is BP, γ = ½ a descent
  direction that damps the lower layers);
* ``PredictiveCoding(β)`` — quadratic-penalty (MAC / PCN) inference by gradient descent;
* ``LPOM(β)`` — lifted proximal operator machine, block-coordinate inference;
* ``CHL(β, γ = 0.1)`` — layered contrastive Hebbian learning, free and clamped phases;
* ``ConvexCHL(β, γ = 0.1)`` — proximal (jointly convex) CHL, phases by projected L-BFGS;
* ``EquilibriumProp(β, γ = 0.1)`` — centered equilibrium propagation on the layered energy;

for two initialisations: ``glorot`` (Glorot-uniform weights, zero biases) and ``negative`` (first
layer ``−|Glorot|``: every first-layer ReLU is dead on the non-negative pixels, so back-propagation
cannot learn). β multiplies the per-example loss (``layers.fenchel_mlp``'s β with a batch-mean loss
is this β times the batch size).

Printed: one Markdown table (method, β, init, train error %, test error %, seconds per epoch, mean
inference iterations per step, % of elements whose inference converged) and a figure of the test
error per epoch (``examples/figures/inference_learning[_quick|_full].png``). "train error" is the
running error over the epoch's batches (each scored before its update), as in the paper.

Usage::

    python examples/inference_learning.py --quick   # load_digits, 64-32-10, < 3 min on 2 cores
    python examples/inference_learning.py           # MNIST 784-256-10, 2 epochs on 10,000 images
    python examples/inference_learning.py --full    # MNIST 784-256-128-64-10, 50 epochs, 50,000 images

Reference: C. Zach, "Bilevel Programs Meet Deep Learning: A Unifying View on Inference Learning
Methods", 2021, Table 1, Sec. 3 and 4.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
try:  # the package is normally installed (make setup); fall back to the source tree
    import layers
    from contrastive import inference_learning as il
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT))
    import layers
    from contrastive import inference_learning as il

__all__ = ["Config", "make_configs", "make_method", "train", "format_table", "plot_histories", "main"]

BATCH_SIZE = 50
INITS = ("glorot", "negative")
METHODS = ("bp", "fenchel_bp", "penalty_bp", "predictive_coding", "lpom", "chl", "convex_chl", "equilibrium_prop")
LABELS = {"bp": "BP", "fenchel_bp": "Fenchel BP", "penalty_bp": "Penalty BP", "predictive_coding": "PC / MAC",
          "lpom": "LPOM", "chl": "CHL (γ=0.1)", "convex_chl": "convex CHL (γ=0.1)",
          "equilibrium_prop": "EP centered (γ=0.1)"}
#: β sweep per method (penalty BP: β cancels, the sweep is over its feedback γ: (β, γ) pairs).
SWEEPS = {"bp": [None], "fenchel_bp": [1.0, 100.0], "penalty_bp": [(1.0, 1.0), (1.0, 0.5)],
          "predictive_coding": [0.1], "lpom": [1.0, 100.0], "chl": [1.0, 100.0],
          "convex_chl": [1.0], "equilibrium_prop": [1.0, 100.0]}
#: inference limits: (iteration limit, tolerance relative to β) per iterative method.
INFERENCE = {"predictive_coding": (100, 1e-2), "lpom": (50, 1e-3), "chl": (50, 1e-3),
             "convex_chl": (20, 1e-3), "equilibrium_prop": (20, 1e-3)}
SIZES = {"quick": (64, 32, 10), "default": (784, 256, 10), "full": (784, 256, 128, 64, 10)}
EPOCHS = {"quick": 5, "default": 2, "full": 50}
#: Adam learning rate: the paper's 1e-3 on MNIST; 1e-2 on digits (only 26 steps per epoch).
LRS = {"quick": 1e-2, "default": 1e-3, "full": 1e-3}


@dataclass(frozen=True)
class Config:
    """One training run."""

    method: str
    beta: float | None
    init: str
    feedback: float | None = None

    @property
    def name(self) -> str:
        beta = "" if self.beta is None else f" β={self.beta:g}"
        fb = "" if self.feedback is None else f" γ={self.feedback:g}"
        return f"{LABELS[self.method]}{beta}{fb} [{self.init}]"


def make_configs(methods: Sequence[str], inits: Sequence[str]) -> list[Config]:
    """Every (method, β) of ``SWEEPS`` for every init, init-major."""
    out = []
    for init in inits:
        for m in methods:
            for b in SWEEPS[m]:
                if isinstance(b, tuple):
                    out.append(Config(m, b[0], init, b[1]))
                else:
                    out.append(Config(m, b, init))
    return out


def make_method(config: Config) -> il.LearningMethod:
    """The learning method of a configuration (inference limits from ``INFERENCE``)."""
    m, b = config.method, config.beta
    limit, tol = INFERENCE.get(m, (None, None))
    if m == "bp":
        return il.BP()
    if m == "fenchel_bp":
        return il.FenchelBP(b)
    if m == "penalty_bp":
        return il.PenaltyBP(b, feedback=config.feedback)
    if m == "predictive_coding":
        return il.PredictiveCoding(b, steps=limit, tol=tol)
    if m == "lpom":
        return il.LPOM(b, max_iter=limit, tol=tol)
    if m == "chl":
        return il.CHL(b, discount=0.1, max_iter=limit, tol=tol)
    if m == "convex_chl":
        return il.ConvexCHL(b, discount=0.1, max_iter=limit, tol=tol)
    if m == "equilibrium_prop":
        return il.EquilibriumProp(b, discount=0.1, max_iter=limit, tol=tol)
    raise ValueError(f"unknown method {m!r}; valid: {', '.join(METHODS)}")


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(mode: str, train_size: int | None, test_size: int | None) -> Data:
    """``quick``: scikit-learn's digits (pixels /16, a stratified 70/30 split); else offline MNIST."""
    if mode == "quick":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        x, y = load_digits(return_X_y=True)
        xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.3, random_state=0, stratify=y)
        data = Data(*(torch.as_tensor(v, dtype=torch.float32) if i % 2 == 0 else torch.as_tensor(v)
                      for i, v in enumerate((xtr, ytr, xte, yte))))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from mnist_data import load_mnist
        mn = load_mnist()
        data = Data(mn.train.x, mn.train.y, mn.test.x, mn.test.y)
    return Data(data.x_train[:train_size], data.y_train[:train_size], data.x_test[:test_size],
                data.y_test[:test_size])


def build_model(sizes: Sequence[int], init: str, seed: int) -> torch.nn.Sequential:
    """The MLP; the initial weights depend only on (init, seed)."""
    gen = torch.Generator().manual_seed(seed + INITS.index(init))
    return layers.fenchel_mlp(sizes, None, mode="backprop", init=init, generator=gen)


@dataclass
class History:
    config: Config
    epochs: list[dict] = field(default_factory=list)


@torch.no_grad()
def error_rate(model, x, y) -> float:
    return 100.0 * float((model(x).argmax(1) != y).double().mean())


def train(config: Config, data: Data, sizes: Sequence[int], epochs: int, seed: int = 0,
          progress: bool = False, lr: float = 1e-3) -> History:
    """Train one configuration; per epoch: train/test error, seconds, mean iterations, % converged."""
    from tqdm.auto import tqdm

    torch.set_num_threads(1)
    model = build_model(sizes, config.init, seed)
    method = make_method(config)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = History(config)
    n = data.x_train.shape[0]
    batches = range(0, n, BATCH_SIZE)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        wrong, iters, converged = 0, 0.0, 0
        for start in tqdm(batches, desc=f"{config.name} {epoch}/{epochs}", leave=False, disable=not progress):
            xb, yb = data.x_train[start:start + BATCH_SIZE], data.y_train[start:start + BATCH_SIZE]
            opt.zero_grad(set_to_none=True)
            report = method(model, xb, yb)
            opt.step()
            wrong += int((report.logits.argmax(1) != yb).sum())
            iters += float(report.iterations.double().sum())
            converged += int(report.converged.sum())
        seconds = time.perf_counter() - t0
        hist.epochs.append({"epoch": epoch, "train_error": 100.0 * wrong / n,
                            "test_error": error_rate(model, data.x_test, data.y_test), "seconds": seconds,
                            "iterations": iters / n, "converged": 100.0 * converged / n})
    return hist


def format_table(histories: Sequence[History], accuracy: bool = False) -> str:
    """One Markdown row per configuration (last epoch; seconds and iterations averaged over epochs)."""
    head = "| method | β | init | train error % | test error % |"
    sep = "|---|---:|---|---:|---:|"
    if accuracy:
        head += " test accuracy % |"
        sep += "---:|"
    head += " s/epoch | mean inference iterations | converged % |"
    sep += "---:|---:|---:|"
    lines = [head, sep]
    for h in histories:
        c, last = h.config, h.epochs[-1]
        label = LABELS[c.method] + ("" if c.feedback is None else f", feedback {c.feedback:g}")
        beta = "—" if c.beta is None else f"{c.beta:g}"
        secs = sum(e["seconds"] for e in h.epochs) / len(h.epochs)
        iters = sum(e["iterations"] for e in h.epochs) / len(h.epochs)
        conv = sum(e["converged"] for e in h.epochs) / len(h.epochs)
        row = f"| {label} | {beta} | {c.init} | {last['train_error']:.2f} | {last['test_error']:.2f} |"
        if accuracy:
            row += f" {100 - last['test_error']:.2f} |"
        row += f" {secs:.2f} | {iters:.1f} | {conv:.1f} |"
        lines.append(row)
    return "\n".join(lines)


def plot_histories(histories: Sequence[History], path: Path, title: str) -> Path:
    """Test error per epoch, one panel per initialisation; one colour per method, the last (largest)
    value of a method's sweep solid, the others dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, init in zip(axes, INITS):
        for h in histories:
            c = h.config
            if c.init != init:
                continue
            last = SWEEPS[c.method][-1]
            is_last = (c.feedback == last[1]) if isinstance(last, tuple) else (c.beta == last)
            ep = [e["epoch"] for e in h.epochs]
            ax.plot(ep, [e["test_error"] for e in h.epochs], "-" if is_last else "--",
                    color=colours(METHODS.index(c.method)), marker="o", ms=3,
                    label=c.name.replace(f" [{init}]", ""))
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(f"{init} initialisation")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("test error %")
    handles = {}
    for ax in axes:
        for hnd, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, hnd)
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _names(valid):
    def parse(s):
        out = [v.strip() for v in s.split(",") if v.strip()]
        bad = [v for v in out if v not in valid]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; valid: {', '.join(valid)}")
        return out
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="scikit-learn digits, 64-32-10 (< 3 min on 2 cores)")
    g.add_argument("--full", action="store_true", help="MNIST 784-256-128-64-10, 50 epochs (hours)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--methods", type=_names(METHODS), default=list(METHODS))
    p.add_argument("--inits", type=_names(INITS), default=list(INITS))
    p.add_argument("--train-size", type=int, default=None,
                   help="first N training examples (default: all digits; 10,000 MNIST; 50,000 with --full)")
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--jobs", type=int, default=2, help="parallel processes, one thread each (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--figure", type=Path, default=None)
    p.add_argument("--no-figure", action="store_true")
    p.add_argument("--progress", action="store_true", help="tqdm bars (with --jobs 1)")
    args = p.parse_args(argv)
    args.mode = "quick" if args.quick else "full" if args.full else "default"
    if args.epochs is None:
        args.epochs = EPOCHS[args.mode]
    if args.train_size is None and args.mode == "default":
        args.train_size = 10_000
    if args.figure is None:
        suffix = {"quick": "_quick", "default": "", "full": "_full"}[args.mode]
        args.figure = ROOT / "examples" / "figures" / f"inference_learning{suffix}.png"
    return args


def _run(job):
    config, data, sizes, epochs, seed, progress, lr = job
    return train(config, data, sizes, epochs, seed, progress, lr)


def main(argv=None) -> dict:
    """Run the comparison; returns ``{"histories", "table"}``."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    data = load_data(args.mode, args.train_size, args.test_size)
    sizes = SIZES[args.mode]
    configs = make_configs(args.methods, args.inits)
    print(f"{len(configs)} runs, MLP {'-'.join(map(str, sizes))}, {args.epochs} epoch(s) on "
          f"{data.x_train.shape[0]} examples, test on {data.x_test.shape[0]}, {args.jobs} process(es)")
    jobs = [(c, data, sizes, args.epochs, args.seed, args.progress and args.jobs == 1, LRS[args.mode])
            for c in configs]
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            histories = list(pool.map(_run, jobs))
    else:
        histories = [_run(j) for j in jobs]
    table = format_table(histories, accuracy=args.mode == "quick")
    print(table)
    if not args.no_figure:
        title = f"MLP {'-'.join(map(str, sizes))} on {'digits' if args.mode == 'quick' else 'MNIST'}: test error"
        print(f"figure: {plot_histories(histories, args.figure, title)}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return {"histories": histories, "table": table}


if __name__ == "__main__":
    main()
