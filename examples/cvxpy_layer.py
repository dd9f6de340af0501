#!/usr/bin/env python
r"""Learning an MPC controller from demonstrations through ``layers.CvxpyLayer``.

An expert steers a linear system ``x_{t+1} = A* x_t + B* u_t`` with a box-constrained MPC policy

.. math::

    u^\star(\bar x) = \arg\min_{u} \sum_{t \le T} \|x_t\|^2 + \rho\|u_t\|^2 \quad\text{s.t.}\quad
    x_0 = \bar x,\; x_{t+1} = A x_t + B u_t,\; -u_{\max} \le u_t \le u_{\max},

with hidden ``A*, B*, u*_max``. From demonstrations ``(x̄, u*(x̄))`` (the whole planned input
sequence) the same cvxpy problem, with ``A, B, u_max`` as learned (unbatched) parameters and
``x̄`` batched, is fitted end to end on ``‖u(x̄) − u*(x̄)‖²`` with Adam. The layer is
``layers.CvxpyLayer`` (batched interior-point QP solve, exact one-sided implicit gradients); the
same model is also trained through ``cvxpylayers.torch.CvxpyLayer`` with its default DIFFCP
solver (``eps=1e-9``), from the same initialisation and batches, to compare wall time and the
final loss.

Prints per backend the final train/test losses, the error of the learned ``u_max`` and the wall
time, and saves the training curves and one test demonstration (expert vs learned plan) to
``examples/figures/cvxpy_layer.png`` (``--out``).

Usage::

    python examples/cvxpy_layer.py              # default: T = 8, 3 states, 2 inputs, 40 steps
    python examples/cvxpy_layer.py --quick      # seconds (the test)
    python examples/cvxpy_layer.py --full       # T = 10, 4 states, 2 inputs, 150 steps
    python examples/cvxpy_layer.py --skip-cvxpylayers

References:
    B. Amos, I. D. Jimenez Rodriguez, J. Sacks, B. Boots, J. Z. Kolter, "Differentiable MPC for
    end-to-end planning and control", NeurIPS 2018. A. Agrawal, B. Amos, S. Barratt, S. Boyd,
    S. Diamond, J. Z. Kolter, "Differentiable convex optimization layers", NeurIPS 2019.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from plotting import save_figure  # noqa: E402  (examples/plotting.py)

try:
    import layers
except ImportError:  # pragma: no cover - source tree without `make setup`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import layers

F64 = dict(dtype=torch.float64)
BACKENDS = ("ours", "cvxpylayers")


def mpc_problem(T: int, nx: int, nu: int, rho: float = 0.1):
    """The DPP MPC problem: parameters ``[A, B, u_max, x̄]``, variable ``u (nu, T)``."""
    import cvxpy as cp

    A, B = cp.Parameter((nx, nx)), cp.Parameter((nx, nu))
    umax, x0 = cp.Parameter(nu, nonneg=True), cp.Parameter(nx)
    x, u = cp.Variable((nx, T + 1)), cp.Variable((nu, T))
    cons = [x[:, 0] == x0] + [x[:, t + 1] == A @ x[:, t] + B @ u[:, t] for t in range(T)]
    cons += [u[:, t] <= umax for t in range(T)] + [u[:, t] >= -umax for t in range(T)]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x) + rho * cp.sum_squares(u)), cons)
    return prob, [A, B, umax, x0], [u]


def hidden_system(nx: int, nu: int, gen: torch.Generator):
    """A mildly unstable system and a bound that is active for typical starts."""
    A = torch.eye(nx, **F64) + 0.15 * torch.randn(nx, nx, generator=gen, **F64)
    B = torch.randn(nx, nu, generator=gen, **F64) / nx ** 0.5
    umax = 0.4 + 0.4 * torch.rand(nu, generator=gen, **F64)
    return A, B, umax


def make_layer(backend: str, T: int, nx: int, nu: int):
    prob, params, variables = mpc_problem(T, nx, nu)
    if backend == "ours":
        return layers.CvxpyLayer(prob, params, variables)
    from cvxpylayers.torch import CvxpyLayer as CvxpylayersLayer

    return CvxpylayersLayer(prob, parameters=params, variables=variables, solver_args={"eps": 1e-9})


def train(backend, expert, data, init, args, progress):
    """Fit ``A, B, u_max`` from ``init``; returns the loss curve, test loss, learned values, time."""
    from tqdm import tqdm

    layer = make_layer(backend, args.horizon, args.states, args.inputs)
    A, B, log_umax = (t.clone().requires_grad_() for t in init)
    opt = torch.optim.Adam([A, B, log_umax], lr=args.lr)
    (x_train, u_train), (x_test, u_test) = data
    gen = torch.Generator().manual_seed(args.seed + 1)
    curve = []
    start = time.perf_counter()
    for _ in tqdm(range(args.steps), desc=f"{backend:>11}", disable=not progress, leave=True):
        idx = torch.randint(0, x_train.shape[0], (args.batch,), generator=gen)
        with warnings.catch_warnings():      # cvxpylayers' numpy-2 deprecation warnings
            warnings.simplefilter("ignore")
            (u,) = layer(A, B, log_umax.exp(), x_train[idx])
            loss = (u - u_train[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
        opt.step()
        curve.append(loss.item())
    seconds = time.perf_counter() - start
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = (layer(A, B, log_umax.exp(), x_test)[0] - u_test).pow(2).mean().item()
    return dict(backend=backend, curve=curve, test=test, seconds=seconds, A=A.detach(), B=B.detach(),
                umax=log_umax.detach().exp(), layer=layer)


def plot(results, expert_umax, demo, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x0, u_star = demo
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in results:
        axes[0].semilogy(r["curve"], label=f"{r['backend']} ({r['seconds']:.1f} s)")
    axes[0].set_xlabel("Adam step")
    axes[0].set_ylabel("training loss ‖u − u*‖² (mean)")
    axes[0].legend()
    axes[0].set_title("learning A, B, u_max from demonstrations")
    r = results[0]
    with torch.no_grad():
        (u,) = r["layer"](r["A"], r["B"], r["umax"], x0)
    for i in range(u_star.shape[0]):
        line = axes[1].step(range(u_star.shape[1]), u_star[i], where="post", label=f"expert u{i}")
        axes[1].step(range(u.shape[1]), u[i], "--", where="post", color=line[0].get_color(),
                     label=f"learned u{i}")
        axes[1].axhline(float(expert_umax[i]), color=line[0].get_color(), lw=0.5)
        axes[1].axhline(-float(expert_umax[i]), color=line[0].get_color(), lw=0.5)
    axes[1].set_xlabel("t")
    axes[1].set_title(f"a test start: planned inputs ({r['backend']})")
    axes[1].legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds)")
    p.add_argument("--full", action="store_true", help="T = 10, 4 states, 2 inputs, 150 steps")
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--states", type=int, default=None)
    p.add_argument("--inputs", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--train-size", type=int, default=256)
    p.add_argument("--test-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--skip-cvxpylayers", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "figures" / "cvxpy_layer.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    preset = (4, 3, 6, 8) if args.quick else (10, 4, 150, 32) if args.full else (8, 3, 40, 32)
    for name, val in zip(("horizon", "states", "steps", "batch"), preset):
        if getattr(args, name) is None:
            setattr(args, name, val)
    if args.quick:
        args.train_size, args.test_size = 32, 16
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    A_s, B_s, umax_s = hidden_system(args.states, args.inputs, gen)
    expert = make_layer("ours", args.horizon, args.states, args.inputs)
    x_all = 2 * torch.randn(args.train_size + args.test_size, args.states, generator=gen, **F64)
    with torch.no_grad():
        (u_all,) = expert(A_s, B_s, umax_s, x_all)
    n = args.train_size
    data = ((x_all[:n], u_all[:n]), (x_all[n:], u_all[n:]))
    init = (torch.eye(args.states, **F64) + 0.1 * torch.randn(args.states, args.states, generator=gen, **F64),
            B_s + 0.3 * torch.randn(args.states, args.inputs, generator=gen, **F64),
            torch.zeros(args.inputs, **F64))                    # u_max = 1 initially
    results = []
    for backend in BACKENDS if not args.skip_cvxpylayers else BACKENDS[:1]:
        r = train(backend, expert, data, init, args, progress=not args.no_progress)
        r["initial"] = r["curve"][0]
        results.append(r)
        print(f"{backend:>11}: train loss {r['curve'][0]:.3e} -> {r['curve'][-1]:.3e}, test loss "
              f"{r['test']:.3e}, |u_max - u*_max| = {(r['umax'] - umax_s).abs().max():.3f}, "
              f"{r['seconds']:.1f} s ({1e3 * r['seconds'] / args.steps:.0f} ms/step)", flush=True)
    if len(results) == 2:
        print(f"cvxpylayers / ours wall time: {results[1]['seconds'] / results[0]['seconds']:.1f}x")
    plot(results, umax_s, (x_all[n], u_all[n]), args.out)
    print(f"figure: {args.out}")
    return results


if __name__ == "__main__":
    main()
