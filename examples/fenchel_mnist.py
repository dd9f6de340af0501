#!/usr/bin/env python
r"""Fenchel back-propagation on MNIST: the experiment of Zach (2021), Sec. 4.2 and Fig. 1.

An MLP 784-256-128-64-10 (ReLU hidden layers, softmax + batch-mean cross-entropy output) is trained
with Adam (lr 1e-3), batch 50, on the first 50,000 MNIST training images (in order, no shuffling —
as ``partition(1:50000, 50)`` in the paper's Julia code, App. C), and tested on the 10,000 test
images. Two ways of training are compared:

* ``bp``: standard back-propagation (``torch.nn.ReLU``);
* ``fenchel``: Fenchel back-propagation — every hidden ReLU is ``layers.ArgminReLU(mode="contrastive",
  beta=β)``, whose backward hands down ``(relu(a) − relu(a − β δ))/β`` instead of ``relu'(a) δ``
  (the paper's custom ``rrule``); the softmax/cross-entropy output is differentiated as usual.

for two initialisations: ``glorot`` (Glorot-uniform weights, zero biases) and ``negative`` (the first
layer's weights ``−|Glorot-uniform|``: every first-layer ReLU is dead on the non-negative pixels, so
back-propagation passes no gradient below it and cannot learn). The initial weights depend only on
the initialisation (seed ``--seed`` + init index), so within an init every method starts from the same
network and the runs differ only by the backward.

"train error" is, as in the paper, the running error over the epoch's mini-batches (each batch is
scored by the network *before* its update); "test error" is measured after the epoch. (The paper's
code divides the summed batch accuracies by 1001 instead of 1000, which adds 0.1·(accuracy) points
to its train error; we take the plain mean.) The data file's pixels are bytes/256, MLDatasets' are
bytes/255 — an immaterial rescaling.

Note on β: with the batch-*mean* cross-entropy the cotangent reaching each sample is 1/50 of the
per-sample gradient, so the nudge ``β δ`` is small unless β is large; expect the negative-init
escape only for β in the hundreds or more.

Each (init, method, β) is a *configuration* with its own directory under ``--out`` holding
``history.json`` (per-epoch errors, read by the table and the plot) and ``checkpoint.pt`` (model,
optimiser, RNG state, history after the last finished epoch). A rerun skips finished configurations
and resumes unfinished ones from their last finished epoch; raising ``--epochs`` extends finished ones.

Usage::

    python examples/fenchel_mnist.py                       # default: 3 epochs, < 10 min on 2 cores
    python examples/fenchel_mnist.py --full                # the paper's 50 epochs (runs/fenchel_mnist_full/)
    python examples/fenchel_mnist.py --full --threads 1 --inits negative --betas 1e4,1e3
    python examples/fenchel_mnist.py --full --report-only  # table + plot from the histories so far
    torchrun --nproc_per_node=2 examples/fenchel_mnist.py --ddp   # data-parallel, 2 CPU processes (gloo)

Scaling out: with ``--ddp`` (under ``torchrun``) each of the ``W`` processes takes every ``W``-th
image of the training set (``DistributedSampler`` without shuffling) in mini-batches of ``50/W``,
so that the ``W`` shards of step ``b`` are exactly the single-process batch ``b``. Each rank's loss is
its share of that batch's mean loss (``sum / 50``) and ``DistributedDataParallel`` sums the ranks'
gradients (``layers.ddp.allreduce_sum_hook``): the contrastive backward is not linear in the
cotangent, so every sample must receive the cotangent it receives in one process (a per-rank mean
would hand it ``W`` times that). Rank 0 prints, evaluates and writes the checkpoints and histories.

Reference: C. Zach, "Bilevel Programs Meet Deep Learning: A Unifying View on Inference Learning
Methods", 2021, Sec. 4.2, Fig. 1 and App. C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
try:  # the package is normally installed (make setup); fall back to the source tree
    import layers
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(ROOT))
    import layers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_data import MNIST, load_mnist  # noqa: E402

__all__ = ["Config", "make_configs", "train_config", "read_histories", "format_table", "plot_histories",
           "main", "SIZES", "DEFAULT_BETAS"]

SIZES = (784, 256, 128, 64, 10)
DEFAULT_BETAS = (1e4, 1e3, 1e2, 1e1, 1.0, 1e-1, 1e-2)
INITS = ("negative", "glorot")
METHODS = ("bp", "fenchel")
BATCH_SIZE = 50
LR = 1e-3
DEFAULT_EPOCHS = 3
FULL_EPOCHS = 50


@dataclass(frozen=True)
class Config:
    """One training run: initialisation, method (``"bp"`` or ``"fenchel"``) and β (None for bp)."""

    init: str
    method: str
    beta: float | None = None

    @property
    def name(self) -> str:
        return f"{self.init}_bp" if self.method == "bp" else f"{self.init}_fenchel_beta{self.beta:g}"

    @property
    def label(self) -> str:
        return "BP" if self.method == "bp" else f"Fenchel BP, β={self.beta:g}"


def make_configs(inits: Sequence[str], methods: Sequence[str], betas: Sequence[float]) -> list[Config]:
    """Configurations in run order: per init, BP first, then Fenchel BP for each β in the given order."""
    configs = []
    for init in inits:
        if "bp" in methods:
            configs.append(Config(init, "bp"))
        if "fenchel" in methods:
            configs.extend(Config(init, "fenchel", float(b)) for b in betas)
    return configs


def build_model(config: Config, seed: int) -> torch.nn.Sequential:
    """The MLP of the paper for ``config``; weights drawn from a generator seeded by the init only."""
    gen = torch.Generator().manual_seed(seed + INITS.index(config.init))
    mode = "backprop" if config.method == "bp" else "contrastive"
    return layers.fenchel_mlp(SIZES, config.beta, mode=mode, init=config.init, generator=gen)


@torch.no_grad()
def error_rate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 5000) -> float:
    """Classification error in % of ``model`` on ``(x, y)``."""
    wrong = 0
    for i in range(0, x.shape[0], chunk):
        wrong += (model(x[i:i + chunk]).argmax(1) != y[i:i + chunk]).sum().item()
    return 100.0 * wrong / x.shape[0]


def _save_atomic(obj, path: Path, as_json: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if as_json:
        tmp.write_text(json.dumps(obj, indent=1))
    else:
        torch.save(obj, tmp)
    os.replace(tmp, path)


def _rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` unless a process group is initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of the training set: every ``world``-th sample (``DistributedSampler``
    without shuffling), so that consecutive mini-batches of ``BATCH_SIZE // world`` of the ranks
    together are the single-process mini-batches."""
    from torch.utils.data.distributed import DistributedSampler

    if world == 1:
        return x, y
    if BATCH_SIZE % world or x.shape[0] % BATCH_SIZE:
        raise ValueError(f"--ddp: the batch size {BATCH_SIZE} and the training set size {x.shape[0]} must "
                         f"be multiples of the number of processes {world} (resp. of {BATCH_SIZE})")
    idx = torch.tensor(list(DistributedSampler(range(x.shape[0]), num_replicas=world, rank=rank, shuffle=False)))
    return x[idx], y[idx]


def train_config(config: Config, data: MNIST, epochs: int, out_dir: Path, *, seed: int = 42,
                 train_size: int | None = None, test_size: int | None = None, progress: bool = True,
                 verbose: bool = True,
                 on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Train one configuration to ``epochs`` epochs, resuming from its checkpoint if there is one.

    Args:
        config: the (init, method, β) to train.
        data: MNIST splits (``load_mnist()``).
        epochs: total number of epochs wanted; a configuration with that many finished epochs is
            skipped, one with fewer is resumed from its last finished epoch.
        out_dir: the run directory; the configuration writes ``out_dir/config.name/``.
        seed: base seed of the initialisation.
        train_size, test_size: use only the first images (tests, quick looks); default all.
        progress: show a tqdm bar per epoch.
        verbose: print one line per finished epoch.
        on_batch: called as ``on_batch(epoch, batch_index)`` before every step (tests use it to
            interrupt a run).

    Under an initialised process group (``--ddp``) every rank trains on its shard (see ``_shard``)
    with ``DistributedDataParallel``; only rank 0 prints and writes files.

    Returns:
        The history: ``{"config", "seed", "train_size", "test_size", "epochs": [{"epoch",
        "train_error", "test_error", "train_loss", "seconds"}, ...]}``.
    """
    from tqdm.auto import tqdm

    cdir = Path(out_dir) / config.name
    cdir.mkdir(parents=True, exist_ok=True)
    ckpt_path, hist_path = cdir / "checkpoint.pt", cdir / "history.json"
    rank, world = _rank_and_world()
    progress, verbose = progress and rank == 0, verbose and rank == 0
    x_all, y_all = data.train.x[:train_size], data.train.y[:train_size]
    x_tr, y_tr = _shard(x_all, y_all, rank, world)
    x_te, y_te = data.test.x[:test_size], data.test.y[:test_size]
    net = build_model(config, seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    history = {"config": asdict(config), "seed": seed, "train_size": x_all.shape[0],
               "test_size": x_te.shape[0], "batch_size": BATCH_SIZE, "lr": LR, "epochs": []}
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=True)
        for key in ("config", "seed", "train_size", "test_size"):
            if ckpt["history"][key] != history[key]:
                raise ValueError(f"{ckpt_path}: checkpoint has {key}={ckpt['history'][key]!r}, this run "
                                 f"asks for {history[key]!r}; use another --out directory")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_state"])
        history = ckpt["history"]
    model = net
    if world > 1:   # DDP broadcasts rank 0's weights at construction; the hook sums the gradients
        model = torch.nn.parallel.DistributedDataParallel(net)
        model.register_comm_hook(None, layers.ddp.allreduce_sum_hook)
    batch = BATCH_SIZE // world
    n_batches = math.ceil(x_tr.shape[0] / batch)
    for epoch in range(len(history["epochs"]) + 1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        wrong = torch.zeros((), dtype=torch.int64)
        loss_sum = torch.zeros(())
        bar = tqdm(range(n_batches), desc=f"{config.name} epoch {epoch}/{epochs}", leave=False,
                   disable=not progress, mininterval=1.0)
        for b in bar:
            if on_batch is not None:
                on_batch(epoch, b)
            xb = x_tr[b * batch:(b + 1) * batch]
            yb = y_tr[b * batch:(b + 1) * batch]
            logits = model(xb)
            if world == 1:
                loss = F.cross_entropy(logits, yb)  # batch mean, as Flux's crossentropy
            else:   # this rank's share of the global batch mean
                loss = F.cross_entropy(logits, yb, reduction="sum") / BATCH_SIZE
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                wrong += (logits.argmax(1) != yb).sum()
                loss_sum += loss.detach() * (yb.shape[0] if world == 1 else BATCH_SIZE)
        model.eval()
        if world > 1:   # the epoch's counts over all ranks
            counts = torch.stack([wrong.double(), loss_sum.double()])
            torch.distributed.all_reduce(counts)
            wrong, loss_sum = counts[0], counts[1]
        record = {"epoch": epoch,
                  "train_error": 100.0 * wrong.item() / x_all.shape[0],
                  "test_error": error_rate(net, x_te, y_te),
                  "train_loss": loss_sum.item() / x_all.shape[0],
                  "seconds": time.perf_counter() - t0}
        history["epochs"].append(record)
        if rank == 0:
            _save_atomic({"model": net.state_dict(), "optimizer": opt.state_dict(),
                          "rng_state": torch.get_rng_state(), "history": history}, ckpt_path)
            _save_atomic(history, hist_path, as_json=True)
        if verbose:
            (tqdm.write if progress else print)(f"{config.name:28s} epoch {epoch:2d}: train error {record['train_error']:6.2f}%  "
                       f"test error {record['test_error']:6.2f}%  ({record['seconds']:.1f} s)")
    return history


def read_histories(out_dir: Path) -> list[dict]:
    """Every ``history.json`` under ``out_dir``, ordered by init, BP first, then β descending."""
    hists = []
    for path in sorted(Path(out_dir).glob("*/history.json")):
        h = json.loads(path.read_text())
        if h["epochs"]:
            hists.append(h)

    def key(h):
        c = h["config"]
        init_rank = INITS.index(c["init"]) if c["init"] in INITS else len(INITS)
        return (init_rank, c["method"] != "bp", -(c["beta"] or 0.0))

    return sorted(hists, key=key)


def format_table(histories: Iterable[dict]) -> str:
    """Markdown table of the last epoch's train/test error (and the best test error) per configuration."""
    lines = ["| init | method | β | epochs | train error % | test error % | best test error % |",
             "|---|---|---|---:|---:|---:|---:|"]
    for h in histories:
        c, last = h["config"], h["epochs"][-1]
        best = min(e["test_error"] for e in h["epochs"])
        beta = "—" if c["beta"] is None else f"{c['beta']:g}"
        method = "BP" if c["method"] == "bp" else "Fenchel BP"
        lines.append(f"| {c['init']} | {method} | {beta} | {last['epoch']} | {last['train_error']:.2f} | "
                     f"{last['test_error']:.2f} | {best:.2f} |")
    return "\n".join(lines)


def plot_histories(histories: Sequence[dict], path: Path, title: str = "") -> Path:
    """Error curves in the style of the paper's Fig. 1: train solid, test dashed, error vs epoch;
    left Glorot init, right negative init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    cmap = plt.get_cmap("viridis")
    lo, hi = math.log10(min(DEFAULT_BETAS)), math.log10(max(DEFAULT_BETAS))

    def colour(beta: float):  # fixed per β across runs: log10 β over the default sweep's range
        return cmap(min(1.0, max(0.0, (math.log10(beta) - lo) / (hi - lo))))
    for ax, init in zip(axes, ("glorot", "negative")):
        for h in histories:
            c = h["config"]
            if c["init"] != init:
                continue
            ep = [e["epoch"] for e in h["epochs"]]
            bp = c["method"] == "bp"
            style = dict(color="black" if bp else colour(c["beta"]), lw=2.2 if bp else 1.3, zorder=3 if bp else 2,
                         marker="o" if len(ep) <= 5 else None, ms=3)
            label = "BP" if bp else f"Fenchel BP β={c['beta']:g}"
            ax.plot(ep, [e["train_error"] for e in h["epochs"]], "-", label=label, **style)
            ax.plot(ep, [e["test_error"] for e in h["epochs"]], "--", **style)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(f"{'Glorot' if init == 'glorot' else 'negative'} initialisation")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("error % (train solid, test dashed)")
    handles = {}
    for ax in axes:
        for hnd, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, hnd)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8)
    fig.suptitle(title or "MLP 784-256-128-64-10 on MNIST: BP vs Fenchel BP")
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def _names(valid: Sequence[str]):
    def parse(s: str) -> list[str]:
        out = [v.strip() for v in s.split(",") if v.strip()]
        bad = [v for v in out if v not in valid]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; valid: {', '.join(valid)}")
        return out
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help=f"the paper's {FULL_EPOCHS} epochs "
                   "(default output runs/fenchel_mnist_full/)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs per configuration (default {DEFAULT_EPOCHS}, {FULL_EPOCHS} with --full)")
    p.add_argument("--inits", type=_names(INITS), default=list(INITS),
                   help="comma-separated, in run order (default negative,glorot)")
    p.add_argument("--methods", type=_names(METHODS), default=list(METHODS), help="bp,fenchel (default both)")
    p.add_argument("--betas", type=_floats, default=list(DEFAULT_BETAS),
                   help="comma-separated β of Fenchel BP, in run order (default 1e4,1e3,100,10,1,0.1,0.01)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/fenchel_mnist[_full]/)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with batch 50 a second thread gains little and suffers "
                        "badly when the cores are shared)")
    p.add_argument("--seed", type=int, default=42, help="base seed of the initialisation (default 42)")
    p.add_argument("--train-size", type=int, default=None, help="use the first N training images (default 50000)")
    p.add_argument("--test-size", type=int, default=None, help="use the first N test images (default 10000)")
    p.add_argument("--report-only", action="store_true",
                   help="no training: print the table and draw the plot from the histories in --out")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--ddp", action="store_true",
                   help="data-parallel training under torchrun (gloo): torchrun --nproc_per_node=2 "
                        "examples/fenchel_mnist.py --ddp")
    args = p.parse_args(argv)
    if args.epochs is None:
        args.epochs = FULL_EPOCHS if args.full else DEFAULT_EPOCHS
    if args.out is None:
        args.out = ROOT / "runs" / ("fenchel_mnist_full" if args.full else "fenchel_mnist")
    if any(not (b > 0 and math.isfinite(b)) for b in args.betas):
        p.error(f"--betas must be finite and > 0, got {args.betas}")
    return args


def report(out_dir: Path) -> str:
    """Print the table and write ``out_dir/fenchel_mnist.png`` from the histories in ``out_dir``."""
    hists = read_histories(out_dir)
    if not hists:
        print(f"no history.json under {out_dir}")
        return ""
    table = format_table(hists)
    print(table)
    (Path(out_dir) / "table.md").write_text(table + "\n")
    png = plot_histories(hists, Path(out_dir) / "fenchel_mnist.png")
    print(f"\ntable: {Path(out_dir) / 'table.md'}\nplot:  {png}")
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report_only:
        report(args.out)
        return 0
    torch.set_num_threads(args.threads)
    if args.ddp:
        if "RANK" not in os.environ:
            raise SystemExit("--ddp: run under torchrun, e.g. torchrun --nproc_per_node=2 "
                             "examples/fenchel_mnist.py --ddp")
        torch.distributed.init_process_group("gloo")
    try:
        rank, world = _rank_and_world()
        t0 = time.perf_counter()
        data = load_mnist()
        configs = make_configs(args.inits, args.methods, args.betas)
        if rank == 0:
            print(f"{len(configs)} configurations x {args.epochs} epochs, {args.threads} thread(s) x "
                  f"{world} process(es), output {args.out}")
        for config in configs:
            train_config(config, data, args.epochs, args.out, seed=args.seed, train_size=args.train_size,
                         test_size=args.test_size, progress=not args.no_progress)
        if rank == 0:
            print(f"\ntotal time {time.perf_counter() - t0:.0f} s\n")
            report(args.out)
        if args.ddp:
            torch.distributed.barrier()   # no rank tears the group down while another still uses it
    finally:
        if args.ddp:
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
