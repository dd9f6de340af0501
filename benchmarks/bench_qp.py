#!/usr/bin/env python
"""QP layer forward + backward vs qpth, cvxpylayers (DIFFCP) and proxsuite's torch QPLayer.

Problems (float64 by default, ``--dtype float32`` for single precision; per batch element):
``min ½zᵀQz + qᵀz s.t. Gz ≤ h, Az = b`` built by
``declarative.reference.qp.random_qp`` (``Q = MMᵀ/n + 0.1I``, feasible with slack in [0.1, 1.1] at a
random point), all six parameters batched and requiring gradients; the loss is ``ℓ = Σ wᵀz`` for a
fixed random ``w``. One *call* is forward + backward.

* **ours** — ``layers.QPLayer()`` (batched Mehrotra IPM + active-set polish, ``Implicit`` backward);
* **qpth** — ``qpth.qp.QPFunction(verbose=-1)`` (batched PDIPM, OptNet);
* **proxsuite** — ``proxsuite.torch.qplayer.QPFunction()`` with ``−1e20 ≤ Gz ≤ h``;
* **cvxpylayers** — ``CvxpyLayer`` of ``½‖Lᵀz‖² + qᵀz`` with ``L = cholesky(Q)`` computed in torch
  (so that ∂Q flows back), DIFFCP with ``solver_args={"eps": 1e-9}``; few repetitions (slow).

Also timed: the **floor**, the dense linear algebra of 12 IPM iterations alone (form
``Q + Gᵀdiag(w)G``, batched Cholesky, one solve), at the same sizes.

Repetitions are interleaved (each repetition runs every method once in a shuffled order) and
medians reported, with ``peer / ours`` ratios, each method's backward/forward ratio, and the
maximum absolute difference of each peer's gradients (all six parameters, Q symmetrised) to ours.
Our gradients are also checked against central finite differences on a small case (a random
direction; the forward is polished, so exact to ~1e-15 relative) and against cvxpy/Clarabel
finite differences.

``--compare-dtype`` also times our layer in the other dtype (float32 ↔ float64) in the same
interleaved repetitions, as the row ``ours-float64`` (or ``ours-float32``): its ``/ours`` ratio is
the speed-up of the chosen dtype. The data are drawn in float64 and rounded to the dtype.

Sizes ``(B, n, m, p)``: the default set below; ``LARGE`` sizes (seconds per call) only with
``--large`` or when named in ``--sizes``; the sizes left out are printed.

Targets at (128,50,50,0) and (128,100,100,10): faster than every peer, within 1.5× of the floor,
backward ≤ 0.25× forward; at B = 1 within 3× of proxsuite; float32 ≥ 1.3× faster than float64 at
(128, 50, 50) and larger.

Usage::

    python benchmarks/bench_qp.py                 # default sizes, float64, 1 thread
    python benchmarks/bench_qp.py --reps 5 --cvxpy-reps 1 --sizes 128,50,50,0
    python benchmarks/bench_qp.py --dtype float32 --compare-dtype --skip cvxpylayers
    python benchmarks/bench_qp.py --sizes 128,500,500,0 --reps 3 --skip cvxpylayers
    python benchmarks/bench_qp.py --sizes 1,32,64,0 --skip cvxpylayers qpth --clock cpu
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

try:
    import layers
except ImportError:  # pragma: no cover - source tree without `make setup`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import layers
from declarative.reference.qp import qp_reference_batch, random_qp

SIZES = [(1, 10, 10, 0), (32, 20, 20, 0), (128, 10, 10, 0), (128, 50, 50, 0), (128, 100, 100, 0),
         (128, 100, 100, 10), (1, 32, 64, 0), (8, 32, 64, 0), (512, 32, 64, 0)]
LARGE = [(128, 500, 500, 0)]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
NAMES = ("Q", "q", "G", "h", "A", "b")


# -- methods: each maps leaf tensors (Q, q, G, h, A, b) to z --------------------------------------
def make_ours():
    layer = layers.QPLayer()
    return lambda Q, q, G, h, A, b: layer(Q, q, G, h, A, b)


def make_qpth():
    from qpth.qp import QPFunction
    fn = QPFunction(verbose=-1)

    def run(Q, q, G, h, A, b):
        if A is None:
            e = torch.empty(0, dtype=Q.dtype)
            return fn(Q, q, G, h, e, e)
        return fn(Q, q, G, h, A, b)
    return run


def make_proxsuite():
    from proxsuite.torch.qplayer import QPFunction
    fn = QPFunction()

    def run(Q, q, G, h, A, b):
        lo = torch.full_like(h, -1e20)
        if A is None:
            e = torch.empty(0, dtype=Q.dtype)
            return fn(Q, q, e, e, G, lo, h)[0]
        return fn(Q, q, A, b, G, lo, h)[0]
    return run


def make_cvxpylayers(n, m, p):
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer
    z = cp.Variable(n)
    Lt, q, G, h = cp.Parameter((n, n)), cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    cons = [G @ z <= h]
    params = [Lt, q, G, h]
    if p:
        A, b = cp.Parameter((p, n)), cp.Parameter(p)
        cons.append(A @ z == b)
        params += [A, b]
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Lt @ z) + q @ z), cons)
    layer = CvxpyLayer(prob, parameters=params, variables=[z])

    def run(Q, q, G, h, A, b):
        Ltv = torch.linalg.cholesky(0.5 * (Q + Q.transpose(-1, -2))).transpose(-1, -2)
        args = [Ltv, q, G, h] + ([A, b] if A is not None else [])
        return layer(*args, solver_args={"eps": 1e-9})[0]
    return run


# -- timing ------------------------------------------------------------------------------------------
#: the clock of the timings (``--clock``): wall-clock time, or the process's CPU time (on a machine
#: shared with other jobs, wall-clock medians also count the time slices given to them)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def call(fn, params, w):
    leaves = [None if t is None else t.clone().requires_grad_() for t in params]
    t0 = clock()
    z = fn(*leaves)
    t1 = clock()
    (z * w).sum().backward()
    t2 = clock()
    grads = [None if t is None else t.grad for t in leaves]
    return t1 - t0, t2 - t1, grads


def floor_time(params, iters=12):
    Q, q, G, h, A, b = params
    B, m = h.shape
    w = torch.rand(iters, B, m, dtype=torch.float64).to(Q.dtype) + 0.5
    t0 = clock()
    for k in range(iters):
        H = torch.baddbmm(Q, G.transpose(-1, -2), w[k].unsqueeze(-1) * G)
        U, _ = torch.linalg.cholesky_ex(H, upper=True)   # the faster layout on CPU
        torch.cholesky_solve(q.unsqueeze(-1), U, upper=True)
    return clock() - t0


def grad_diff(ga, gb):
    out = 0.0
    for k, (a, b) in enumerate(zip(ga, gb)):
        if a is None or b is None:
            continue
        if k == 0:
            a, b = 0.5 * (a + a.mT), 0.5 * (b + b.mT)
        out = max(out, float((a - b).abs().max()))
    return out


def make_ours_in(dtype):
    """Our layer on the data cast to ``dtype``, the output cast back (the other dtype's row)."""
    layer = layers.QPLayer()

    def run(*params):
        out_dtype = params[0].dtype
        return layer(*(None if t is None else t.to(dtype) for t in params)).to(out_dtype)
    return run


def bench_size(size, methods, reps, cvxpy_reps, seed=0, dtype=torch.float64):
    B, n, m, p = size
    params = tuple(None if t is None else t.to(dtype) for t in random_qp(B, n, m, p, seed=seed))
    w = torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    fns = {}
    for name in methods:
        try:
            fns[name] = {"ours": make_ours, "qpth": make_qpth, "proxsuite": make_proxsuite,
                         "cvxpylayers": lambda: make_cvxpylayers(n, m, p),
                         "ours-float32": lambda: make_ours_in(torch.float32),
                         "ours-float64": lambda: make_ours_in(torch.float64)}[name]()
        except Exception as exc:  # pragma: no cover - missing peer
            print(f"  {name}: unavailable ({type(exc).__name__}: {exc})")
    times = {name: ([], []) for name in fns}
    floor = []
    grads = {}
    for name, fn in fns.items():          # warm-up + gradients
        try:
            _, _, grads[name] = call(fn, params, w)
        except Exception as exc:  # pragma: no cover
            print(f"  {name}: failed ({type(exc).__name__}: {str(exc)[:100]})")
    fns = {k: v for k, v in fns.items() if k in grads}
    floor_time(params)
    for r in range(reps):
        order = list(fns) + ["floor"]
        random.shuffle(order)
        for name in order:
            if name == "floor":
                floor.append(floor_time(params))
                continue
            if name == "cvxpylayers" and r >= cvxpy_reps:
                continue
            tf, tb, _ = call(fns[name], params, w)
            times[name][0].append(tf)
            times[name][1].append(tb)
    return times, floor, grads


def fd_check(seed=5):
    """Our gradients vs central finite differences (our polished forward, and cvxpy)."""
    params = random_qp(2, 5, 5, 1, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    w = torch.randn(2, 5, dtype=torch.float64, generator=gen)
    _, _, grads = call(make_ours(), params, w)
    V = [torch.randn(t.shape, dtype=torch.float64, generator=gen) for t in params]
    V[0] = 0.5 * (V[0] + V[0].mT)
    directional = sum(float((g * v).sum()) for g, v in zip(grads, V))
    layer = layers.QPLayer()
    eps = 1e-6

    def loss_ours(t):
        with torch.no_grad():
            return float((layer(*[a + t * v for a, v in zip(params, V)]) * w).sum())

    def loss_cvxpy(t):
        z, *_ = qp_reference_batch(*[a + t * v for a, v in zip(params, V)])
        return float((z * w.numpy()).sum())

    fd_ours = (loss_ours(eps) - loss_ours(-eps)) / (2 * eps)
    fd_cvx = (loss_cvxpy(1e-5) - loss_cvxpy(-1e-5)) / 2e-5
    return directional, fd_ours, fd_cvx


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cvxpy-reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", type=str, nargs="*", help="B,n,m,p (default: SIZES; LARGE with --large)")
    ap.add_argument("--large", action="store_true", help=f"also the sizes {LARGE} (seconds per call)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    ap.add_argument("--compare-dtype", action="store_true",
                    help="also time our layer in the other dtype, in the same repetitions")
    ap.add_argument("--skip", type=str, nargs="*", default=[], help="peers to skip")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall-clock time, or the process's CPU time (all its threads; for a shared machine)")
    args = ap.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    random.seed(0)
    if args.sizes:
        sizes = [tuple(int(x) for x in s.split(",")) for s in args.sizes]
    else:
        sizes = SIZES + (LARGE if args.large else [])
    left_out = [s for s in SIZES + LARGE if s not in sizes]
    dtype = DTYPES[args.dtype]
    other = "float32" if args.dtype == "float64" else "float64"
    methods = [m for m in ("ours", "proxsuite", "qpth", "cvxpylayers") if m not in args.skip]
    if args.compare_dtype:
        methods.insert(1, f"ours-{other}")
    print(f"QP layer forward+backward, {args.dtype}, {args.threads} thread(s), medians of {args.reps} "
          f"interleaved repetitions (cvxpylayers: {args.cvxpy_reps}), {args.clock} clock")
    if left_out:
        print(f"sizes left out (name them in --sizes, or --large): {left_out}")
    print()
    rows = []
    for size in sizes:
        times, floor, grads = bench_size(size, methods, args.reps, args.cvxpy_reps, dtype=dtype)
        med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in times.items() if v[0]}
        fl = statistics.median(floor)
        ours_total = sum(med["ours"])
        print(f"(B, n, m, p) = {size}   floor (12 IPM iterations of KKT+Cholesky+solve): {fl * 1e3:.1f} ms")
        print(f"  {'method':<12} {'fwd ms':>9} {'bwd ms':>9} {'total ms':>9} {'/ours':>7} {'bwd/fwd':>8} "
              f"{'max|∇−∇ours|':>13}")
        for name, (tf, tb) in med.items():
            diff = "" if name == "ours" else f"{grad_diff(grads[name], grads['ours']):.2e}"
            print(f"  {name:<12} {tf * 1e3:9.2f} {tb * 1e3:9.2f} {(tf + tb) * 1e3:9.2f} "
                  f"{(tf + tb) / ours_total:7.2f} {tb / tf:8.3f} {diff:>13}")
        print(f"  ours / floor = {ours_total / fl:.2f}\n")
        rows.append((size, med, fl))
    d, fo, fc = fd_check()
    print(f"finite-difference check (B=2, n=5, m=5, p=1, random direction): ⟨∇ours, V⟩ = {d:.10f}, "
          f"FD(ours) = {fo:.10f} (diff {abs(d - fo):.1e}), FD(cvxpy) = {fc:.10f} (diff {abs(d - fc):.1e})")
    return rows


if __name__ == "__main__":
    main()
