#!/usr/bin/env python
r"""Equilibrium propagation on ``load_digits``: a layered energy-based ReLU network.

The network's state is ``φ = (z_1, …, z_L)`` (hidden layers and the 10 output logits); given an
image ``x = z_0`` it settles in the minimiser of the layered energy

    E(φ; x, θ) = Σ_{k=1}^{L} ½ ‖z_k − W_k z_{k−1} − b_k‖²    s.t.  z_k ≥ 0 for the hidden layers,

a strongly convex, box-constrained problem solved by ``declarative.minimize`` (batched projected
L-BFGS). The output layer is unconstrained, so its term is zero at the minimum whatever
``z_{L−1}`` is; with **one** hidden layer the free equilibrium is therefore exactly the forward pass
``z_1 = relu(W_1 x + b_1)``, ``z_2 = W_2 z_1 + b_2`` of a ReLU MLP (with more layers the later
terms also penalise negative pre-activations and the equilibrium is a nearby, different function).
The outer loss is the cross-entropy of the output logits, ``ℓ(φ) = CE(z_L, y)``.

Trained, from the same initial weights, by

* ``ep2``: the two-point estimator ``(F(β) − F(0))/β`` = ∇ of the contrastive surrogate ``L_β``
  (``contrastive.equilibrium_propagation(…, estimator="forward")``), bias O(β);
* ``ep-centered``: ``(F(β) − F(−β))/(2β)`` (``estimator="centered"``), bias O(β²) — the negative
  phase ``E − β CE`` is bounded below because CE grows at most linearly;
* ``bp``: back-propagation through the feed-forward ReLU MLP with the same layer sizes.

Every phase starts from the feed-forward pass (the free phase) or from the free equilibrium (the
nudged phases). Before training, the script prints how close each estimator is to the exact
gradient on one batch (with one hidden layer, back-propagation *is* the exact gradient of the
energy model's loss). The table reports test accuracy per method (EP models predict with the free
equilibrium, computed by the same solver), final training loss, wall time and the mean number of
solver iterations per nudged phase and the share of phase solves stopped before the tolerance
(counted, not raised: ``check=False``; they end within a few ``tol`` of the equilibrium).

Usage::

    python examples/equilibrium_propagation.py            # default: ~1-2 min on one core
    python examples/equilibrium_propagation.py --full     # more epochs, a wider net, smaller β
    python examples/equilibrium_propagation.py --hidden 64 32 --beta 0.2

References:
    B. Scellier, Y. Bengio, Equilibrium propagation, Front. Comput. Neurosci. 2017.
    N. Zucchet, J. Sacramento, Beyond backpropagation: bilevel optimization through implicit
    differentiation and equilibrium propagation, Neural Computation 2022, Sec. 3.2 and App. C.
    A. Laborieux et al., Scaling equilibrium propagation to deep ConvNets, 2021 (centered EP).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contrastive import equilibrium_propagation  # noqa: E402
from declarative import minimize  # noqa: E402

METHODS = ("ep2", "ep-centered", "bp")


# -- data -----------------------------------------------------------------------------------------------
def load_data(test_fraction: float, seed: int, train_size: int | None, dtype: torch.dtype):
    """``load_digits`` scaled to [0, 1], stratified train/test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(digits.data / 16.0, digits.target, test_size=test_fraction,
                                              stratify=digits.target, random_state=seed)
    if train_size is not None:
        x_tr, y_tr = x_tr[:train_size], y_tr[:train_size]
    as_x = lambda a: torch.as_tensor(a, dtype=dtype)
    as_y = lambda a: torch.as_tensor(a, dtype=torch.int64)
    return as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te)


# -- the model --------------------------------------------------------------------------------------------
class LayeredEnergy:
    """``E(φ; x, θ) = Σ_k ½‖z_k − W_k z_{k−1} − b_k‖²`` with ``φ = concat(z_1, …, z_L)``.

    Parameters are passed as ``(x, y, W_1, b_1, …, W_L, b_L)`` to both the energy and the loss, as
    ``contrastive.equilibrium_propagation`` expects.
    """

    def __init__(self, sizes: list[int]):
        self.sizes = sizes
        self.splits = sizes[1:]
        self.n = sum(self.splits)

    def energy(self, phi, x, y, *wb):
        total, prev = 0.0, x
        for k, z in enumerate(torch.split(phi, self.splits, dim=-1)):
            r = z - prev @ wb[2 * k].T - wb[2 * k + 1]
            total = total + 0.5 * (r * r).sum(-1)
            prev = z
        return total

    def loss(self, phi, x, y, *wb):
        return F.cross_entropy(phi[:, -self.splits[-1]:], y, reduction="none")

    def lower(self, like: torch.Tensor) -> torch.Tensor:
        """0 on the hidden units, −inf on the output logits."""
        low = torch.zeros(self.n, dtype=like.dtype, device=like.device)
        low[-self.splits[-1]:] = -float("inf")
        return low

    def feed_forward(self, x, wb, keep_all: bool = True):
        """The ReLU MLP with the same weights: the free equilibrium for one hidden layer."""
        zs, prev = [], x
        last = len(self.splits) - 1
        for k in range(len(self.splits)):
            a = prev @ wb[2 * k].T + wb[2 * k + 1]
            prev = a if k == last else torch.relu(a)
            zs.append(prev)
        return torch.cat(zs, dim=-1) if keep_all else prev

    def free_phase(self, x, wb, tol, max_iter):
        """Minimise E with the weights fixed, starting from the feed-forward pass."""
        wb = [p.detach() for p in wb]
        with torch.no_grad():
            phi0 = self.feed_forward(x, wb)
        fun = lambda phi: self.energy(phi, x, None, *wb)
        sol = minimize(fun, phi0, lower=self.lower(x), tol=tol, max_iter=max_iter)
        return sol.z[:, -self.splits[-1]:]


def init_weights(sizes: list[int], seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Glorot-uniform weights, zero biases (identical for every method)."""
    gen = torch.Generator().manual_seed(seed)
    wb = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        wb.append((torch.rand(fan_out, fan_in, generator=gen, dtype=dtype) * 2 - 1) * bound)
        wb.append(torch.zeros(fan_out, dtype=dtype))
    return wb


# -- one gradient -----------------------------------------------------------------------------------------
def ep_step(model: LayeredEnergy, wb, x, y, method: str, args):
    """Accumulate the EP estimate into ``.grad``.

    Returns (mean free loss, mean iterations per nudged phase, number of phase solves that stopped
    before the tolerance). Unsolved elements are counted rather than raised (``check=False``): they
    stop within a few ``tol`` of the equilibrium and still give a useful estimate.
    """
    with torch.no_grad():
        phi0 = model.feed_forward(x, [p.detach() for p in wb])
    est = equilibrium_propagation(model.energy, model.loss, phi0, (x, y, *wb), beta=args.beta,
                                  estimator="forward" if method == "ep2" else "centered",
                                  lower=model.lower(x), tol=args.tol, max_iter=args.max_iter,
                                  check=False)
    est.surrogate.backward()
    iters = [sol.iterations.float().mean().item() for b, sol in est.phases if b != 0.0]
    unsolved = sum(int((sol.status != 0).sum()) for _, sol in est.phases)
    return est.free_loss.mean().item(), sum(iters) / len(iters), unsolved


def bp_step(model: LayeredEnergy, wb, x, y):
    logits = model.feed_forward(x, wb, keep_all=False)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    return loss.item(), 0.0, 0


def gradient_check(model: LayeredEnergy, wb, x, y, args) -> dict[str, tuple[float, float]]:
    """Relative error and cosine of each EP estimate against back-propagation, on one batch.

    Run in float64 with the solver tolerance ``--check-tol``, so that the error is the
    estimator's bias in β rather than the solver's. Note: the hidden units' active set changes
    between the phases when a pre-activation lies within O(β) of 0, so F(β) has kinks and the
    centered estimator's O(β²) bias only shows for β below the nearest kink; at the default β both
    estimators are O(β) here (for β = 1e-3 their errors are ~5e-4 and ~6e-7).
    """
    params = [p.detach().to(torch.float64).requires_grad_(True) for p in wb]
    x = x.to(torch.float64)
    F.cross_entropy(model.feed_forward(x, params, keep_all=False), y).backward()
    exact = torch.cat([p.grad.reshape(-1) for p in params])
    tight = argparse.Namespace(**{**vars(args), "tol": args.check_tol, "max_iter": 500})
    out = {}
    for method in ("ep2", "ep-centered"):
        for p in params:
            p.grad = None
        ep_step(model, params, x, y, method, tight)
        est = torch.cat([p.grad.reshape(-1) for p in params])
        out[method] = ((est - exact).norm() / exact.norm()).item(), F.cosine_similarity(est, exact, dim=0).item()
    return out


# -- training -----------------------------------------------------------------------------------------------
def accuracy(model: LayeredEnergy, wb, x, y, method: str, args) -> float:
    with torch.no_grad():
        if method == "bp":
            logits = model.feed_forward(x, wb, keep_all=False)
        else:
            logits = model.free_phase(x, wb, args.tol, args.max_iter)
    return (logits.argmax(-1) == y).double().mean().item()


def train(method: str, data, sizes, args, progress: bool = True) -> dict:
    from tqdm import tqdm

    x_tr, y_tr, x_te, y_te = data
    model = LayeredEnergy(sizes)
    wb = [p.requires_grad_(True) for p in init_weights(sizes, args.seed, x_tr.dtype)]
    opt = torch.optim.Adam(wb, lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    start, iters, last_loss, unsolved, solves = time.perf_counter(), [], float("nan"), 0, 0
    bar = tqdm(range(args.epochs), desc=f"{method:>11}", disable=not progress, leave=True)
    for _ in bar:
        perm = torch.randperm(len(x_tr), generator=gen)
        losses = []
        for i in range(0, len(x_tr), args.batch):
            idx = perm[i: i + args.batch]
            opt.zero_grad()
            if method == "bp":
                loss, it, bad = bp_step(model, wb, x_tr[idx], y_tr[idx])
            else:
                loss, it, bad = ep_step(model, wb, x_tr[idx], y_tr[idx], method, args)
                iters.append(it)
                unsolved += bad
                solves += len(idx) * (2 if method == "ep2" else 3)
            opt.step()
            losses.append(loss)
        last_loss = sum(losses) / len(losses)
        bar.set_postfix(loss=f"{last_loss:.4f}")
    seconds = time.perf_counter() - start
    return {"method": method, "test_accuracy": accuracy(model, wb, x_te, y_te, method, args),
            "train_accuracy": accuracy(model, wb, x_tr, y_tr, method, args),
            "train_loss": last_loss, "seconds": seconds,
            "phase_iterations": sum(iters) / len(iters) if iters else 0.0,
            "unsolved_fraction": unsolved / solves if solves else 0.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="40 epochs, 256 hidden units, beta 0.05")
    p.add_argument("--hidden", type=int, nargs="+", default=None, help="hidden layer sizes (default 64)")
    p.add_argument("--epochs", type=int, default=None, help="default 10 (40 with --full)")
    p.add_argument("--beta", type=float, default=None, help="nudging strength (default 0.1; 0.05 with --full)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tol", type=float, default=1e-3, help="solver gradient-norm tolerance")
    p.add_argument("--max-iter", type=int, default=100, help="solver iteration limit per phase")
    p.add_argument("--check-tol", type=float, default=1e-8, help="solver tolerance of the gradient check")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training images")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    p.add_argument("--double", action="store_true", help="float64 instead of float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.hidden is None:
        args.hidden = [256] if args.full else [64]
    if args.epochs is None:
        args.epochs = 40 if args.full else 10
    if args.beta is None:
        args.beta = 0.05 if args.full else 0.1
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.double else torch.float32
    data = load_data(0.3, args.seed, args.train_size, dtype)
    sizes = [data[0].shape[1], *args.hidden, 10]
    print(f"load_digits: {len(data[0])} train / {len(data[2])} test images; network {sizes}, "
          f"beta={args.beta:g}, {args.epochs} epochs, batch {args.batch}, Adam lr {args.lr:g}, {dtype}")

    model = LayeredEnergy(sizes)
    wb0 = init_weights(sizes, args.seed, dtype)
    n = min(args.batch, len(data[0]))
    check = gradient_check(model, wb0, data[0][:n], data[1][:n], args)
    exact_note = "exact gradient" if len(args.hidden) == 1 else "BP of the feed-forward net (not exact: depth > 1)"
    for method, (err, cos) in check.items():
        print(f"  gradient check at init vs {exact_note}: {method:>11}  rel. error {err:.3e}  cosine {cos:.6f}")

    results = [train(m, data, sizes, args, progress=not args.no_progress) for m in args.methods]
    print(f"\n{'method':>11} | {'test acc':>8} | {'train acc':>9} | {'train loss':>10} | {'time (s)':>8} | "
          f"{'iters/phase':>11} | {'unsolved':>8}")
    print("-" * 84)
    for r in results:
        print(f"{r['method']:>11} | {100 * r['test_accuracy']:7.2f}% | {100 * r['train_accuracy']:8.2f}% | "
              f"{r['train_loss']:10.4f} | {r['seconds']:8.1f} | {r['phase_iterations']:11.1f} | {100 * r['unsolved_fraction']:7.3f}%")
    return {"gradient_check": check, "results": results}


if __name__ == "__main__":
    main()
