#!/usr/bin/env python
r"""Task-driven dictionary learning (Mairal, Bach & Ponce 2012) on ``sklearn.datasets.load_digits``.

Each 8×8 image ``x`` (centred, unit ℓ2 norm) is encoded by the elastic-net / lasso layer

    z*(D, x) = argmin_z ½‖Dz − x‖² + lam‖z‖₁ + (mu/2)‖z‖²          (``layers.LassoLayer``)

and classified by a linear layer ``W z* + b``. The dictionary ``D`` (64 × k, unit-norm columns,
renormalised after every step) and the classifier are learned **end to end** on the cross-entropy,
through the lasso layer's gradient in ``D`` — the "task-driven" part: the codes are shaped for the
classification, not only for reconstruction.

Compared (every task-driven run starts from the same point: the initial dictionary — random
training images — and the classifier trained on its codes, as in Mairal et al.):

* ``implicit``: exact gradients (linear system on the support, one-sided backward QP at weakly
  active coordinates);
* ``contrastive`` / ``symmetric``: nudged re-solves with strength β (warm-started from z*);
* baselines: a linear classifier on the **raw pixels**, and one on the codes of the **unlearned**
  (initial) dictionary (only W, b trained, D fixed); both are trained for ``--baseline-epochs``
  (cheap, so trained to convergence — the comparison does not favour the learned dictionary).

Prints a table of test accuracy, final training loss and wall time per method, and saves a picture
of the learned atoms (``runs/dictionary_atoms.png`` by default, ``--out``).

Usage::

    python examples/dictionary_learning.py            # default: < 3 min on one core
    python examples/dictionary_learning.py --full     # more atoms and epochs
    python examples/dictionary_learning.py --modes implicit --epochs 5
    torchrun --nproc_per_node=2 examples/dictionary_learning.py --ddp   # data-parallel, gloo

With ``--ddp`` (under ``torchrun``) every mini-batch of ``--batch`` images is split over the ``W``
processes (rank ``r`` takes every ``W``-th image of it); each rank's loss is its share of the batch
mean (its summed loss / the batch size) and the ranks' gradients are summed
(``layers.ddp.allreduce_sum_hook``), so the training is that of one process: the contrastive
backward is not linear in the cotangent, and each image must receive the cotangent it receives in
one process. Rank 0 prints and saves the picture.

References:
    J. Mairal, F. Bach, J. Ponce, "Task-driven dictionary learning", IEEE TPAMI 34(4), 2012.
    C. Zach, "Bilevel programs meet deep learning", 2021 (contrastive gradients).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import layers
except ImportError:  # pragma: no cover - source tree without `make setup`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import layers

from layers import LassoLayer
from plotting import save_figure  # noqa: E402  (examples/plotting.py)

MODES = ("implicit", "contrastive", "symmetric")


def load_data(seed: int, train_size: int | None, test_size: int | None):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    if train_size:
        X_tr, y_tr = X_tr[:train_size], y_tr[:train_size]
    if test_size:
        X_te, y_te = X_te[:test_size], y_te[:test_size]
    mean = X_tr.mean(0)

    def prep(A):
        A = A - mean
        return torch.tensor(A / np.linalg.norm(A, axis=1, keepdims=True).clip(1e-8), dtype=torch.float64)

    return prep(X_tr), torch.tensor(y_tr), prep(X_te), torch.tensor(y_te)


def initial_dictionary(x_tr: torch.Tensor, atoms: int, seed: int) -> torch.Tensor:
    """Random training images as atoms (unit norm), the usual initialisation."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x_tr.shape[0], generator=gen)[:atoms]
    D = x_tr[idx].T.clone()
    return D / D.norm(dim=0, keepdim=True)


def train_linear(features_tr, y_tr, epochs: int, lr: float, seed: int, batch: int):
    """Multinomial logistic regression by Adam (the baseline heads)."""
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(features_tr.shape[1], 10, dtype=torch.float64)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(features_tr.shape[0], generator=gen)
        for i in range(0, len(perm), batch):
            j = perm[i:i + batch]
            loss = F.cross_entropy(head(features_tr[j]), y_tr[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(-1) == y).double().mean().item()


class TaskDrivenModel(torch.nn.Module):
    """Lasso codes of a learned dictionary ``D`` (64 × k), classified by a linear ``head``."""

    def __init__(self, D0: torch.Tensor, head: torch.nn.Linear, lasso: LassoLayer, lam: float):
        super().__init__()
        self.D = torch.nn.Parameter(D0.clone())
        self.head = head
        self.lasso = lasso
        self.lam = lam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lasso(self.D, x, self.lam))


def _rank_and_world() -> tuple[int, int]:
    """``(rank, world size)``: ``(0, 1)`` unless a process group is initialised (``--ddp``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def train_task_driven(mode: str, data, D0: torch.Tensor, head0: torch.nn.Linear, args,
                      progress: bool) -> dict:
    from tqdm import tqdm

    x_tr, y_tr, x_te, y_te = data
    rank, world = _rank_and_world()
    beta = None if mode == "implicit" else args.beta
    torch.manual_seed(args.seed)
    # start from the classifier of the unlearned dictionary
    net = TaskDrivenModel(D0, copy.deepcopy(head0), LassoLayer(mode=mode, beta=beta, mu=args.mu), args.lam)
    D, head = net.D, net.head
    model = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net)
        model.register_comm_hook(None, layers.ddp.allreduce_sum_hook)
    opt = torch.optim.Adam([{"params": [D], "lr": args.lr_dict},
                            {"params": head.parameters(), "lr": args.lr}])
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    n_steps = args.epochs * ((x_tr.shape[0] + args.batch - 1) // args.batch)
    bar = tqdm(total=n_steps, desc=f"{mode:>11}", disable=not progress or rank > 0, leave=True)
    loss_val = float("nan")
    for _ in range(args.epochs):
        perm = torch.randperm(x_tr.shape[0], generator=gen)
        for i in range(0, len(perm), args.batch):
            j = perm[i:i + args.batch]
            if world == 1:
                loss = F.cross_entropy(model(x_tr[j]), y_tr[j])
            else:   # this rank's share of the batch mean; the hook sums the ranks' gradients
                mine = j[rank::world]
                loss = F.cross_entropy(model(x_tr[mine]), y_tr[mine], reduction="sum") / len(j)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if world > 1:   # the batch's loss, for the progress bar and the table
                loss = loss.detach().clone()
                torch.distributed.all_reduce(loss)
            with torch.no_grad():  # unit-norm atoms (the constraint set of the dictionary)
                D /= D.norm(dim=0, keepdim=True).clamp(min=1e-12)
            loss_val = loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.3f}")
    bar.close()
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        z_te = LassoLayer(mu=args.mu)(D.detach(), x_te, args.lam)
        z_tr = LassoLayer(mu=args.mu)(D.detach(), x_tr, args.lam)
        return {"method": f"task-driven ({mode})", "test_accuracy": accuracy(head(z_te), y_te),
                "train_accuracy": accuracy(head(z_tr), y_tr), "train_loss": loss_val,
                "time": elapsed, "D": D.detach().clone(),
                "sparsity": (z_te != 0).double().mean().item()}


def baselines(data, D0, args) -> tuple[list[dict], torch.nn.Linear]:
    x_tr, y_tr, x_te, y_te = data
    out = []
    t0 = time.perf_counter()
    head = train_linear(x_tr, y_tr, args.baseline_epochs, args.lr, args.seed, args.batch)
    with torch.no_grad():
        out.append({"method": "raw pixels (linear)", "test_accuracy": accuracy(head(x_te), y_te),
                    "train_accuracy": accuracy(head(x_tr), y_tr),
                    "train_loss": F.cross_entropy(head(x_tr), y_tr).item(),
                    "time": time.perf_counter() - t0, "sparsity": 1.0})
    t0 = time.perf_counter()
    layer = LassoLayer(mu=args.mu)
    with torch.no_grad():
        z_tr, z_te = layer(D0, x_tr, args.lam), layer(D0, x_te, args.lam)
    head = train_linear(z_tr, y_tr, args.baseline_epochs, args.lr, args.seed, args.batch)
    with torch.no_grad():
        out.append({"method": "unlearned dictionary", "test_accuracy": accuracy(head(z_te), y_te),
                    "train_accuracy": accuracy(head(z_tr), y_tr),
                    "train_loss": F.cross_entropy(head(z_tr), y_tr).item(),
                    "time": time.perf_counter() - t0, "sparsity": (z_te != 0).double().mean().item()})
    return out, head


def save_atoms(D0: torch.Tensor, learned: dict[str, torch.Tensor], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("initial", D0)] + list(learned.items())
    k = D0.shape[1]
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    axes = np.atleast_1d(axes)
    for ax, (name, D) in zip(axes, panels):
        grid = np.full((rows * 9 - 1, cols * 9 - 1), np.nan)
        for a in range(k):
            r, c = divmod(a, cols)
            atom = D[:, a].numpy().reshape(8, 8)
            grid[r * 9:r * 9 + 8, c * 9:c * 9 + 8] = atom / max(np.abs(atom).max(), 1e-12)
        ax.imshow(grid, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle("dictionary atoms (8×8, red +, blue −)")
    save_figure(fig, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="100 atoms, 30 epochs")
    p.add_argument("--atoms", type=int, default=None, help="dictionary size k (default 48; 100 with --full)")
    p.add_argument("--epochs", type=int, default=None, help="default 10 (30 with --full)")
    p.add_argument("--baseline-epochs", type=int, default=60,
                   help="epochs of the linear baselines (cheap: trained to convergence)")
    p.add_argument("--lam", type=float, default=0.1, help="ℓ1 weight (data have unit norm)")
    p.add_argument("--mu", type=float, default=0.01, help="elastic-net weight (stabilises the codes)")
    p.add_argument("--beta", type=float, default=0.01, help="nudging strength of the contrastive modes")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the classifier")
    p.add_argument("--lr-dict", type=float, default=2e-3, help="Adam learning rate of the dictionary")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    p.add_argument("--train-size", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-size", type=int, default=None, help="use only the first N test images")
    p.add_argument("--out", type=Path, default=Path("runs/dictionary_atoms.png"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--ddp", action="store_true",
                   help="data-parallel under torchrun (gloo): torchrun --nproc_per_node=2 "
                        "examples/dictionary_learning.py --ddp")
    args = p.parse_args(argv)
    if args.atoms is None:
        args.atoms = 100 if args.full else 48
    if args.epochs is None:
        args.epochs = 30 if args.full else 10
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in MODES]
    if bad:
        p.error(f"unknown mode(s) {bad}; choose from {MODES}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.ddp:
        return run(args)
    if "RANK" not in os.environ:
        raise SystemExit("--ddp: run under torchrun, e.g. torchrun --nproc_per_node=2 "
                         "examples/dictionary_learning.py --ddp")
    torch.distributed.init_process_group("gloo")
    try:
        result = run(args)
        torch.distributed.barrier()   # no rank tears the group down while another still uses it
        return result
    finally:
        torch.distributed.destroy_process_group()


def run(args) -> dict:
    """Baselines, then task-driven training in every mode; prints the table and saves the atoms
    (rank 0 only under ``--ddp``; every rank returns the results)."""
    rank, world = _rank_and_world()
    say = print if rank == 0 else (lambda *a, **k: None)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)   # the baseline heads' initialisation: reproducible, equal on every rank
    data = load_data(args.seed, args.train_size, args.test_size)
    D0 = initial_dictionary(data[0], args.atoms, args.seed)
    say(f"load_digits: {data[0].shape[0]} train / {data[2].shape[0]} test images, "
        f"{args.atoms} atoms, lam={args.lam}, mu={args.mu}, beta={args.beta}, {args.epochs} epochs"
        + (f", {world} processes" if world > 1 else ""))
    results, head0 = baselines(data, D0, args)
    learned = {}
    for mode in args.modes:
        r = train_task_driven(mode, data, D0, head0, args, progress=not args.no_progress)
        learned[mode] = r.pop("D")
        results.append(r)
    say(f"\n{'method':28s} {'test acc':>9s} {'train acc':>10s} {'train loss':>11s} "
        f"{'nonzeros':>9s} {'time (s)':>9s}")
    for r in results:
        say(f"{r['method']:28s} {r['test_accuracy']:9.4f} {r['train_accuracy']:10.4f} "
            f"{r['train_loss']:11.4f} {r['sparsity']:9.3f} {r['time']:9.1f}")
    if rank == 0:
        save_atoms(D0, learned, args.out)
        say(f"\natoms saved to {args.out}")
    return {"results": results, "out": args.out}


if __name__ == "__main__":
    main()
