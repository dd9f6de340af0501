#!/usr/bin/env python
"""Cost of a Fenchel-BP training step: ``ArgminReLU`` in each gradient mode vs ``torch.nn.ReLU``.

One *step* is what training does per mini-batch of the paper's MNIST experiment: forward of the MLP
784-256-128-64-10, batch-mean cross-entropy, backward, Adam update (batch 50). The variants —
``nn.ReLU`` (standard back-propagation) and ``layers.ArgminReLU`` with ``implicit``,
``contrastive(β)`` and ``symmetric(β)`` — are timed in the same process, interleaved: every
repetition times a block of steps of each variant in a freshly shuffled order, so that load from other
processes hits all variants alike. Reported: the median time per step over repetitions and two
ratios to the ``nn.ReLU`` step, the ratio of medians and the median of the per-repetition ratios
(the latter cancels slow drifts of the machine), for the wall clock and the process CPU clock.
Every timed block starts from the same weights and Adam state. For reference, the floor any custom
backward written in Python pays is also timed: a minimal ``torch.autograd.Function`` ReLU with
``nn.ReLU``'s own backward inside.

Targets: eager, contrastive and symmetric ≤ 1.10×, implicit ≤ 1.05×; compiled, every mode ≤ 1.05×.

Usage::

    python benchmarks/bench_fenchel.py                  # 2 threads, then 1 thread
    python benchmarks/bench_fenchel.py --threads 1 --reps 200 --steps 10
    python benchmarks/bench_fenchel.py --profile contrastive   # cProfile of that variant's steps
    python benchmarks/bench_fenchel.py --compile        # every model under torch.compile(fullgraph=True)

With ``--compile`` every variant's model (``nn.ReLU`` included) is wrapped in
``torch.compile(model, fullgraph=True)`` (the Adam update stays eager), so the ratios compare the
compiled steps: the argmin activations' forward and backward are traced into the graph.
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

try:
    import layers
except ImportError:  # pragma: no cover - source tree without `make setup`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import layers

SIZES = (784, 256, 128, 64, 10)
BATCH = 50
TARGETS = {"implicit": 1.05, "contrastive": 1.10, "symmetric": 1.10}
#: under ``--compile`` every mode's step is traced like ``nn.ReLU``'s: the same 1.05× for all
TARGETS_COMPILED = {"implicit": 1.05, "contrastive": 1.05, "symmetric": 1.05}


class _MinimalReLUFunction(torch.autograd.Function):
    """The cheapest possible Python ``autograd.Function`` ReLU (``nn.ReLU``'s own backward inside),
    in the combined ``forward(ctx, ...)`` form that the activations use eagerly (no argument
    binding per call): the floor that any custom backward written in Python pays, shown for
    reference."""

    @staticmethod
    def forward(ctx, a):
        z = torch.relu(a)
        ctx.save_for_backward(z)
        return z

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(g, z, 0)


class MinimalFunctionReLU(torch.nn.Module):
    def forward(self, x):
        return _MinimalReLUFunction.apply(x)


FLOOR = "(floor: minimal Function)"


def make_variants(beta: float, compile: bool = False) -> dict[str, tuple]:
    """name -> (model, optimiser, callable); every model starts from the same weights; the callable
    is the model itself or, with ``compile``, ``torch.compile(model, fullgraph=True)``."""
    variants = {}
    for name, mode, b in (("nn.ReLU", "backprop", None), ("implicit", "implicit", None),
                          ("contrastive", "contrastive", beta), ("symmetric", "symmetric", beta),
                          (FLOOR, "backprop", None)):
        model = layers.fenchel_mlp(SIZES, b, mode=mode, init="glorot", generator=torch.Generator().manual_seed(0))
        if name == FLOOR:
            for i, module in enumerate(model):
                if isinstance(module, torch.nn.ReLU):
                    model[i] = MinimalFunctionReLU()
        fn = torch.compile(model, fullgraph=True) if compile else model
        variants[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), fn)
    return variants


def make_batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` random batches shaped like MNIST ones: pixels in [0, 1), labels in 0..9."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(BATCH, SIZES[0], generator=gen), torch.randint(0, SIZES[-1], (BATCH,), generator=gen))
            for _ in range(n)]


def step(fn, opt, x, y) -> None:
    loss = F.cross_entropy(fn(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_block(fn, opt, batches) -> tuple[float, float]:
    """(wall, CPU) seconds per step over ``batches``."""
    w0, c0 = time.perf_counter(), time.process_time()
    for x, y in batches:
        step(fn, opt, x, y)
    return (time.perf_counter() - w0) / len(batches), (time.process_time() - c0) / len(batches)


def run(threads: int, reps: int, steps: int, beta: float, warmup: int = 3,
        compile: bool = False) -> dict[str, list[tuple[float, float]]]:
    """Per-step (wall, CPU) times in seconds of every variant, ``reps`` interleaved blocks of ``steps`` steps."""
    torch.set_num_threads(threads)
    variants = make_variants(beta, compile)
    batches = make_batches(steps)
    for _, opt, fn in variants.values():
        for _ in range(warmup):
            time_block(fn, opt, batches)
    # Every timed block starts from the same (post-warm-up) weights and Adam state: otherwise the
    # variants' weights drift apart over the repetitions (β = 1e3 trains differently) and the
    # timings pick up value-dependent costs (e.g. denormals) instead of the backward's overhead.
    snapshots = {name: (copy.deepcopy(m.state_dict()), copy.deepcopy(o.state_dict()))
                 for name, (m, o, _) in variants.items()}
    times = {name: [] for name in variants}
    order = list(variants)
    rng = random.Random(0)
    try:
        from tqdm.auto import tqdm
        reps_iter = tqdm(range(reps), desc=f"{threads} thread(s)", leave=False, mininterval=1.0)
    except ImportError:  # pragma: no cover
        reps_iter = range(reps)
    for _ in reps_iter:
        rng.shuffle(order)
        for name in order:
            model, opt, fn = variants[name]
            model.load_state_dict(snapshots[name][0])
            opt.load_state_dict(snapshots[name][1])
            times[name].append(time_block(fn, opt, batches))
    return times


def report(times: dict[str, list[tuple[float, float]]], threads: int, targets: dict[str, float] = TARGETS) -> str:
    """Table of medians and ratios to ``nn.ReLU``, for the wall clock and for the process CPU clock
    (the latter is insensitive to time spent descheduled when other processes share the cores, but
    with several threads it also counts their spin-waiting)."""
    lines = [f"\n{threads} thread(s): MLP 784-256-128-64-10, batch {BATCH}, forward + CE + backward + Adam"]
    for k, clock in enumerate(("wall", "CPU")):
        base = [t[k] for t in times["nn.ReLU"]]
        base_med = statistics.median(base)
        lines.append(f"{'variant (' + clock + ' clock)':<26}{'median µs/step':>16}{'ratio of medians':>18}"
                     f"{'median ratio':>14}{'target':>9}")
        for name, pairs in times.items():
            ts = [t[k] for t in pairs]
            med = statistics.median(ts)
            paired = statistics.median(t / b for t, b in zip(ts, base))
            target = targets.get(name)
            mark = "" if target is None else f"≤{target:.2f} {'ok' if paired <= target else 'MISS'}"
            lines.append(f"{name:<26}{med * 1e6:>16.1f}{med / base_med:>17.3f}×{paired:>13.3f}×  {mark}")
    text = "\n".join(lines)
    print(text)
    return text


def profile(variant: str, threads: int, steps: int, beta: float, compile: bool = False) -> None:
    import cProfile
    import pstats

    torch.set_num_threads(threads)
    _, opt, fn = make_variants(beta, compile)[variant]
    batches = make_batches(steps)
    time_block(fn, opt, batches)
    prof = cProfile.Profile()
    prof.enable()
    time_block(fn, opt, batches * 20)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=lambda s: [int(v) for v in s.split(",")], default=[2, 1],
                   help="comma-separated thread counts, each timed separately (default 2,1)")
    p.add_argument("--reps", type=int, default=100, help="interleaved repetitions (default 100)")
    p.add_argument("--steps", type=int, default=10, help="training steps per timed block (default 10)")
    p.add_argument("--beta", type=float, default=1e3, help="β of the contrastive modes (default 1e3)")
    p.add_argument("--profile", choices=["nn.ReLU", "implicit", "contrastive", "symmetric", FLOOR], default=None,
                   help="instead of timing, print a cProfile of this variant's steps")
    p.add_argument("--compile", action="store_true",
                   help="time every model under torch.compile(model, fullgraph=True)")
    args = p.parse_args(argv)
    if args.profile:
        profile(args.profile, args.threads[0], args.steps, args.beta, args.compile)
        return 0
    print(f"torch {torch.__version__}; {args.reps} repetitions x {args.steps} steps per variant, interleaved; "
          + ("compiled (torch.compile, fullgraph=True)" if args.compile else "eager"))
    for threads in args.threads:
        report(run(threads, args.reps, args.steps, args.beta, compile=args.compile), threads,
               TARGETS_COMPILED if args.compile else TARGETS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
