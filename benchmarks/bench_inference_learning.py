#!/usr/bin/env python
"""Cost of one training step of each inference-learning method, relative to back-propagation.

One *step* is what training does per mini-batch: the method turns an MNIST batch of 50 into
gradients in ``.grad`` and Adam steps (MLP 784-256-10 by default, 784-256-128-64-10 with ``--full``).
The reference is back-propagation by autograd (``loss.backward()`` on the ``nn.Sequential``); every
method of ``contrastive.inference_learning`` is timed in the same process, interleaved: each
repetition times a block of steps of every variant in a freshly shuffled order, on the same batches,
from the same weights (so load from other processes hits all variants alike). Reported per method:
the median time per step, the ratio of medians to autograd BP and the median of per-repetition
ratios, and the mean inference iterations (sweeps, all phases) per step with the share of batch
elements whose inference converged.

Target (issue 13): the closed-form methods (BP, Fenchel BP, penalty BP) within 1.5× of BP; the
iterative ones are reported with their iteration counts (every inference is vectorised over the
batch: no Python loop over examples).

Usage::

    python benchmarks/bench_inference_learning.py                 # 784-256-10, 1 thread
    python benchmarks/bench_inference_learning.py --full --reps 5
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
try:
    import layers
    from contrastive import inference_learning as il
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT))
    import layers
    from contrastive import inference_learning as il

BATCH = 50
TARGET = 1.5
CLOSED_FORM = ("BP (il)", "Fenchel BP β=1", "penalty BP β=1")


def methods() -> dict:
    """The variants: name -> learning method (None: autograd back-propagation)."""
    return {
        "BP (autograd)": None,
        "BP (il)": il.BP(),
        "Fenchel BP β=1": il.FenchelBP(1.0),
        "penalty BP β=1": il.PenaltyBP(1.0),
        "predictive coding β=0.1": il.PredictiveCoding(0.1, steps=100, tol=1e-2),
        "LPOM β=1": il.LPOM(1.0, max_iter=50),
        "CHL β=1 γ=0.1": il.CHL(1.0, max_iter=50),
        "convex CHL β=1 γ=0.1": il.ConvexCHL(1.0, max_iter=20),
        "EP centered β=1 γ=0.1": il.EquilibriumProp(1.0, max_iter=20),
    }


def load_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    sys.path.insert(0, str(ROOT / "examples"))
    from mnist_data import load_mnist
    data = load_mnist()
    return [(data.train.x[i * BATCH:(i + 1) * BATCH], data.train.y[i * BATCH:(i + 1) * BATCH]) for i in range(n)]


def step_fn(method):
    """One training step of a variant on ``(model, opt, x, y)``; returns (iterations, converged share)."""
    def step(model, opt, x, y):
        opt.zero_grad(set_to_none=True)
        if method is None:
            F.cross_entropy(model(x), y).backward()
            opt.step()
            return 0.0, 1.0
        report = method(model, x, y)
        opt.step()
        return float(report.iterations.double().mean()), float(report.converged.double().mean())
    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="MLP 784-256-128-64-10 (default 784-256-10)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=4, help="steps per timed block")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated subset of variant names")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = (784, 256, 128, 64, 10) if args.full else (784, 256, 10)
    base = layers.fenchel_mlp(sizes, None, mode="backprop", generator=torch.Generator().manual_seed(0))
    batches = load_batches(args.steps)
    variants = methods()
    if args.only:
        keep = {"BP (autograd)"} | {s.strip() for s in args.only.split(",")}
        variants = {k: v for k, v in variants.items() if k in keep}
    times = {k: [] for k in variants}
    iters = {k: [] for k in variants}
    conv = {k: [] for k in variants}
    rng = random.Random(0)
    for rep in range(args.reps + 1):  # the first repetition warms up and is dropped
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            model = copy.deepcopy(base)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            step = step_fn(variants[name])
            t0 = time.perf_counter()
            stats = [step(model, opt, x, y) for x, y in batches]
            dt = (time.perf_counter() - t0) / len(batches)
            if rep > 0:
                times[name].append(dt)
                iters[name].append(statistics.mean(s[0] for s in stats))
                conv[name].append(statistics.mean(s[1] for s in stats))
    ref = times["BP (autograd)"]
    print(f"MLP {'-'.join(map(str, sizes))}, batch {BATCH}, {args.threads} thread(s), {args.reps} reps × "
          f"{args.steps} steps\n")
    print("| method | median ms/step | × BP (ratio of medians) | × BP (median of ratios) | "
          "inference iterations/step | converged % | target |")
    print("|---|---:|---:|---:|---:|---:|---|")
    rows = {}
    for name in variants:
        med = statistics.median(times[name])
        r1 = med / statistics.median(ref)
        r2 = statistics.median(a / b for a, b in zip(times[name], ref))
        target = f"≤ {TARGET}×: {'met' if r2 <= TARGET else 'NOT met'}" if name in CLOSED_FORM else "—"
        rows[name] = {"ms": 1e3 * med, "ratio": r2, "iterations": statistics.mean(iters[name])}
        print(f"| {name} | {1e3 * med:.2f} | {r1:.2f} | {r2:.2f} | {statistics.mean(iters[name]):.1f} | "
              f"{100 * statistics.mean(conv[name]):.1f} | {target} |")
    return rows


if __name__ == "__main__":
    main()
