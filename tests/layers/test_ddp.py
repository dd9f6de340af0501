"""Data-parallel training (``DistributedDataParallel``, gloo, CPU): two processes, each with half of
a batch, get the gradients of one process on the whole batch, for a model with ``ArgminReLU``
(contrastive), ``QPLayer`` and ``LassoLayer`` (with a learned dictionary).

The contrastive backward is not linear in the cotangent, so each rank's loss is its share of the
*global* batch loss (sum over its samples / global batch size: every sample receives the cotangent
it receives in one process) and the ranks' gradients are summed, not averaged
(``layers.ddp.allreduce_sum_hook``).

The processes are started by ``torch.multiprocessing.spawn`` and meet over TCP on localhost, on a
free port; the test is bounded by a timeout.
"""

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import layers
from layers.ddp import allreduce_sum_hook

WORLD = 2
BATCH = 8
F64 = torch.float64


class ArgminNet(nn.Module):
    """Linear → ArgminReLU → QP (projection of −q onto {z ≥ 0, 1ᵀz ≤ 1}) → Linear → lasso codes."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.lin1 = nn.Linear(6, 4).double()
        self.act = layers.ArgminReLU(mode="contrastive", beta=20.0)
        self.qp = layers.QPLayer()
        self.lin2 = nn.Linear(4, 5).double()
        self.D = nn.Parameter(torch.randn(5, 7, generator=gen, dtype=F64))
        self.lasso = layers.LassoLayer()
        with torch.no_grad():
            for p in (*self.lin1.parameters(), *self.lin2.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))

    def forward(self, x):
        n = 4
        Q = torch.eye(n, dtype=x.dtype)
        G = torch.cat([-torch.eye(n, dtype=x.dtype), torch.ones(1, n, dtype=x.dtype)])
        h = torch.cat([torch.zeros(n, dtype=x.dtype), torch.ones(1, dtype=x.dtype)])
        z = self.qp(Q, -self.act(self.lin1(x)), G, h)
        return self.lasso(self.D, self.lin2(z), 0.05)


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 6, generator=gen, dtype=F64), torch.randn(BATCH, 7, generator=gen, dtype=F64)


def _loss(model, x, y):
    """This batch's share of the global batch-mean loss (the mean when x is the whole batch)."""
    return ((model(x) - y) ** 2).sum() / BATCH


def _worker(rank, port, out_dir):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        model = nn.parallel.DistributedDataParallel(ArgminNet())
        model.register_comm_hook(None, allreduce_sum_hook)
        x, y = _data()
        shard = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        _loss(model, x[shard], y[shard]).backward()   # the hook sums the gradients over the ranks
        grads = {name: p.grad.detach().clone() for name, p in model.module.named_parameters()}
        # written under a temporary name and renamed: the parent polls for complete files
        tmp = os.path.join(out_dir, f"grads{rank}.tmp")
        torch.save(grads, tmp)
        os.replace(tmp, os.path.join(out_dir, f"grads{rank}.pt"))
    except BaseException:
        dist.destroy_process_group()
        raise
    # leave once both ranks' gradients are out (then every collective has completed on both
    # sides), without the process group's teardown, which can block at exit (what is tested is
    # the gradients, not the shutdown)
    others = [os.path.join(out_dir, f"grads{r}.pt") for r in range(WORLD)]
    for _ in range(6000):
        if all(os.path.exists(f) for f in others):
            break
        time.sleep(0.05)
    os._exit(0)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    ctx = mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=False,
                             start_method="spawn")
    # bounded: wait for both ranks' gradient files (a rank that fails raises through join), then
    # stop what is left (generous bound: each spawned process imports torch, tens of seconds on a
    # loaded two-core machine)
    files = [tmp_path / f"grads{r}.pt" for r in range(WORLD)]
    try:
        for _ in range(420):
            if all(f.exists() for f in files) or ctx.join(timeout=1):
                break
        else:
            pytest.fail("the DDP processes did not write their gradients within 420 s")
        if not all(f.exists() for f in files):
            pytest.fail("the DDP processes ended without writing their gradients")
    finally:
        for p in ctx.processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()

    model = ArgminNet()
    x, y = _data()
    _loss(model, x, y).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    per_rank = [torch.load(tmp_path / f"grads{r}.pt", weights_only=True) for r in range(WORLD)]
    assert set(per_rank[0]) == set(expected) == {"lin1.weight", "lin1.bias", "lin2.weight", "lin2.bias", "D"}
    # the test exercises the nonlinearity: twice the cotangent does not give twice the gradient
    model.zero_grad()
    (2 * _loss(model, x, y)).backward()
    assert not torch.allclose(model.lin1.weight.grad, 2 * expected["lin1.weight"], rtol=1e-3)
    for name, g in expected.items():
        assert bool((g != 0).any()), name
        torch.testing.assert_close(per_rank[1][name], per_rank[0][name], rtol=0, atol=0)  # all-reduced
        # equal up to round-off (summation order of the batch mean and of the all-reduce; measured 4e-16)
        torch.testing.assert_close(per_rank[0][name], g, rtol=1e-12, atol=1e-13)
