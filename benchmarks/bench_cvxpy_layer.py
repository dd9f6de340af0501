#!/usr/bin/env python
"""cvxpy problems as layers: ``layers.CvxpyLayer`` and ``layers.ArgminQPSolver`` vs cvxpylayers.

Problems (float64; a DPP cvxpy problem each, parameters batched where noted):

* **(a) relu** — the ReLU-as-QP layer of cvxpylayers' tutorial, ``y = argmin ‖y − x‖² s.t. y ≥ 0``,
  20 → 20, ``x`` batched (B = 300);
* **(b) cls** — constrained least squares ``min ‖Fx − g‖² s.t. Cx = d, −1 ≤ x ≤ 1``, 50 variables,
  100 box + 10 equality constraints, ``F (60×50)``, ``C`` shared, ``g, d`` batched (B = 128);
* **(c) mpc** — box-constrained MPC, horizon 10, 4 states, 2 inputs:
  ``min Σ‖x_t‖² + ‖u_t‖² s.t. x_{t+1} = A x_t + B u_t, x_0 = x̄, −1 ≤ u_t ≤ 1``, ``A, B`` shared,
  ``x̄`` batched (B = 64).

Methods: **ours** (``layers.CvxpyLayer``), **backend** (``cvxpylayers.torch.CvxpyLayer(...,
solver=layers.ArgminQPSolver())``), **diffcp** (cvxpylayers' default, DIFFCP/SCS with
``eps=1e-9``), **diffcp-clarabel** (DIFFCP with ``solve_method="Clarabel"``). One *call* is
forward + backward of ``ℓ = Σ wᵀ(outputs)``; the median of ``--reps`` calls (after one warm-up) is
reported with ``peer / ours`` ratios; repetitions are interleaved (each runs every method once, in
a shuffled order) so that the load of the machine affects every method alike (construction: the
median of 5 such repetitions). *Construction* is the layer's constructor on a freshly built
problem (cvxpy caches canonicalisations on the problem object).

*Gradient error*: ``declarative.testing.check_against_cvxpy`` on the first 8 batch elements —
directional derivatives along 2 random (cotangent, direction) pairs of every parameter, per
element, against central differences (step ``--step``, default 1e-6) of cvxpy/Clarabel solutions
at 1e-12, re-solved with the active set of the unperturbed solution fixed
(``problem_reference(..., active_set=True)``: an equality-constrained QP that Clarabel solves to
~1e-13, and differences that do not cross kinks — with plain solves and step 1e-4 the quotients of
(b) were off by up to 0.14 for *every* method); reported as the max of
``|layer − fd| / max(1, |fd|)``.

Targets (issue 12): ours ≥ 10× faster than cvxpylayers' fastest installable backend on (a)–(c),
gradient error ≤ 1e-6, construction ≤ cvxpylayers'.

Usage::

    python benchmarks/bench_cvxpy_layer.py               # everything
    python benchmarks/bench_cvxpy_layer.py --problems relu --reps 3
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
from declarative.reference.cvxpy_problem import problem_reference
from declarative.testing import check_against_cvxpy

F64 = dict(dtype=torch.float64)


# -- problems: build() -> (problem, parameters, variables); values(seed) -> tensors --------------
def relu_problem():
    import cvxpy as cp

    x, y = cp.Parameter(20), cp.Variable(20)
    return cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0]), [x], [y]


def relu_values(gen):
    return [torch.randn(300, 20, generator=gen, **F64)]


def cls_problem():
    import cvxpy as cp

    x = cp.Variable(50)
    F, g, C, d = cp.Parameter((60, 50)), cp.Parameter(60), cp.Parameter((10, 50)), cp.Parameter(10)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(F @ x - g)), [C @ x == d, x >= -1, x <= 1])
    return prob, [F, g, C, d], [x]


def cls_values(gen):
    F = torch.randn(60, 50, generator=gen, **F64) / 50 ** 0.5
    C = torch.randn(10, 50, generator=gen, **F64) / 50 ** 0.5
    x0 = 0.8 * (2 * torch.rand(128, 50, generator=gen, **F64) - 1)      # feasible: |x0| < 1
    return [F, 2 * torch.randn(128, 60, generator=gen, **F64), C, x0 @ C.T]


def mpc_problem(T=10, nx=4, nu=2):
    import cvxpy as cp

    A, B, x0 = cp.Parameter((nx, nx)), cp.Parameter((nx, nu)), cp.Parameter(nx)
    x, u = cp.Variable((nx, T + 1)), cp.Variable((nu, T))
    cons = [x[:, 0] == x0, u <= 1, u >= -1] + [x[:, t + 1] == A @ x[:, t] + B @ u[:, t] for t in range(T)]
    return cp.Problem(cp.Minimize(cp.sum_squares(x) + cp.sum_squares(u)), cons), [A, B, x0], [u]


def mpc_values(gen, nx=4, nu=2):
    A = torch.eye(nx, **F64) + 0.1 * torch.randn(nx, nx, generator=gen, **F64)
    B = torch.randn(nx, nu, generator=gen, **F64)
    return [A, B, 3 * torch.randn(64, nx, generator=gen, **F64)]


PROBLEMS = {"relu": (relu_problem, relu_values), "cls": (cls_problem, cls_values),
            "mpc": (mpc_problem, mpc_values)}


# -- methods -----------------------------------------------------------------------------------
def make(method, build):
    """(layer, construction seconds) for a freshly built problem."""
    from cvxpylayers.torch import CvxpyLayer as CvxpylayersLayer

    prob, params, variables = build()
    t = time.perf_counter()
    if method == "ours":
        layer = layers.CvxpyLayer(prob, params, variables)
    elif method == "backend":
        layer = CvxpylayersLayer(prob, parameters=params, variables=variables, solver=layers.ArgminQPSolver())
    elif method == "diffcp":
        layer = CvxpylayersLayer(prob, parameters=params, variables=variables,
                                 solver_args={"eps": 1e-9})
    elif method == "diffcp-clarabel":
        layer = CvxpylayersLayer(prob, parameters=params, variables=variables,
                                 solver_args={"solve_method": "Clarabel"})
    else:
        raise ValueError(f"unknown method {method!r}")
    return layer, time.perf_counter() - t


def call(layer, values, ws):
    leaves = [v.clone().requires_grad_() for v in values]
    outs = layer(*leaves)
    sum((w * o).sum() for w, o in zip(ws, outs)).backward()
    return [o.detach() for o in outs], [v.grad for v in leaves]


def run_problem(name, methods, reps, step, gen):
    build, make_values = PROBLEMS[name]
    values = make_values(gen)
    _, params, _ = build()
    batched = [v.dim() > len(p.shape) for v, p in zip(values, params)]
    small = [v[:8] if b else v for v, b in zip(values, batched)]
    print(f"\n== ({name}) batch {next(v.shape[0] for v, b in zip(values, batched) if b)}, "
          f"parameters {[tuple(p.shape) for p in params]} ==", flush=True)
    builds = {m: [] for m in methods}
    order = random.Random(0)
    for _ in range(5):                                          # construction: median of 5, interleaved, shuffled
        for m in order.sample(methods, len(methods)):
            builds[m].append(make(m, build))
    built = {m: (builds[m][-1][0], statistics.median(t for _, t in builds[m])) for m in methods}
    times = {m: [] for m in methods}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = [torch.randn(o.shape, generator=torch.Generator().manual_seed(1), **F64)
              for o in built[methods[0]][0](*values)]
        for m in methods:
            call(built[m][0], values, ws)                      # warm-up
        for _ in range(reps):                                   # interleaved, shuffled
            for m in order.sample(methods, len(methods)):
                t = time.perf_counter()
                call(built[m][0], values, ws)
                times[m].append(time.perf_counter() - t)
    rows = {}
    for method in methods:
        layer, t_build = built[method]
        small_prob, small_params, small_vars = build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = check_against_cvxpy(
                layer, *small, step=step,
                reference=lambda *v: problem_reference(small_prob, small_params, small_vars, v, active_set=True))
        rows[method] = dict(time=statistics.median(times[method]), build=t_build,
                            grad=rep.max_gradient_error, fwd=rep.max_forward_error)
        print(f"  {method:16s} call {rows[method]['time'] * 1e3:9.2f} ms   construction "
              f"{t_build * 1e3:8.1f} ms   max forward error {rep.max_forward_error:.1e}   "
              f"max gradient error {rep.max_gradient_error:.1e}", flush=True)
    if "ours" in rows:
        base = rows["ours"]
        for method, r in rows.items():
            if method != "ours":
                print(f"  {method:16s} / ours: time {r['time'] / base['time']:7.1f}x   construction "
                      f"{r['build'] / base['build']:6.2f}x")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", default="relu,cls,mpc")
    ap.add_argument("--methods", default="ours,backend,diffcp,diffcp-clarabel")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--step", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    for name in args.problems.split(","):
        run_problem(name, args.methods.split(","), args.reps, args.step, gen)


if __name__ == "__main__":
    main()
