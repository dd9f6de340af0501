"""Host synchronisations inside solver iterations (docs/gpu.md): one per iteration of the QP
interior-point loop and of ``minimize``'s L-BFGS in the common case, counted on the CPU by
intercepting every operation that copies a value to the host; and the rare paths that cost more
(a step taken again without its non-finite directions, a line search that backtracks) give every
element the result it gets where they do not occur."""

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from declarative import Status
from declarative.minimizer import minimize
from declarative.qp import QPOptions, solve_qp_ipm
from declarative.reference.qp import random_qp

_HOST_READS = {torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
               torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.nonzero, torch.nonzero}


class _CountHostReads(TorchFunctionMode):
    """Counts the operations that wait for the device and copy to the host (boolean-mask
    indexing included)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _HOST_READS:
            self.count += 1
        elif func is torch.Tensor.__getitem__:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            self.count += any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        return func(*args, **kwargs)


def _host_reads(fn):
    with _CountHostReads() as mode:
        out = fn()
    return mode.count, out


def test_qp_interior_point_one_synchronisation_per_iteration():
    """Every element runs to the iteration limit: each extra iteration costs exactly one host
    synchronisation (the setup and the end of the solve are the same for every limit)."""
    Q, q, G, h, A, b = random_qp(3, 8, 12, 2, seed=3)
    counts = {}
    for k in (3, 4, 6, 9):
        n, sol = _host_reads(lambda: solve_qp_ipm(Q, q, G, h, A, b, options=QPOptions(
            max_iter=k, polish=False, tol=1e-14, contract=False)))
        assert sol.status.tolist() == [Status.MAX_ITERATIONS] * 3 and sol.iterations.tolist() == [k] * 3
        counts[k] = n
    assert [counts[k] - counts[3] for k in (4, 6, 9)] == [1, 3, 6]


def test_minimize_one_synchronisation_per_iteration():
    """Where every element accepts its first line-search trial (one energy evaluation per
    iteration), each iteration costs one host synchronisation, whatever the iteration count."""
    g = torch.Generator().manual_seed(4)
    B, n = 5, 8
    M = torch.randn(B, n, n, dtype=torch.float64, generator=g)
    H = M @ M.transpose(1, 2) / n + torch.eye(n, dtype=torch.float64)
    c = torch.randn(B, n, dtype=torch.float64, generator=g)
    calls = [0]

    def fun(z):
        calls[0] += 1
        return 0.5 * torch.einsum("bi,bij,bj->b", z, H, z) - (c * z).sum(1)

    z0 = torch.zeros(B, n, dtype=torch.float64)
    base, _ = _host_reads(lambda: minimize(fun, z0, max_iter=0))
    seen = set()
    for k in (1, 3, 6):
        calls[0] = 0
        count, sol = _host_reads(lambda: minimize(fun, z0, max_iter=k, tol=1e-14))
        assert sol.iterations.tolist() == [k] * B
        assert calls[0] == k + 1   # no trial rejected: the count below is the common case's
        seen.add(count - base - k)
    # one synchronisation before the loop, then one per iteration
    assert seen == {1}


def _qp_mixed_batch():
    """Feasible elements, a primal infeasible one, a non-finite input, an unbounded one and one
    whose Newton directions overflow (its step is taken again without them)."""
    Q, q, G, h, A, b = (t.clone() for t in random_qp(6, 6, 8, 2, seed=11))
    G[1, 0], h[1, 0] = -G[1, 1], -h[1, 1] - 1.0
    q[2, 0] = math.nan
    Q[3], q[3], G[3], h[3], A[3], b[3] = 0.0, -1.0, 0.0, 1.0, 0.0, 0.0
    Q[4], q[4] = Q[4] * 1e150, q[4] * 1e300
    return Q, q, G, h, A, b


@pytest.mark.parametrize("polish", [True, False])
def test_qp_mixed_batch_matches_each_element_alone(polish):
    """The redone step (non-finite directions of one element) and the certificates leave every
    other element's iterates, status and iteration count as they are when it is solved alone."""
    params = _qp_mixed_batch()
    options = QPOptions(polish=polish)
    sol = solve_qp_ipm(*params, options=options)
    assert sol.status.tolist() == [Status.SOLVED, Status.PRIMAL_INFEASIBLE, Status.NON_FINITE,
                                   Status.DUAL_INFEASIBLE, Status.NON_FINITE, Status.SOLVED]
    for i in range(6):
        one = solve_qp_ipm(*(t[i:i + 1] for t in params), options=options)
        assert one.status.tolist() == sol.status[i:i + 1].tolist()
        assert one.iterations.tolist() == sol.iterations[i:i + 1].tolist()
        if sol.status[i] == Status.SOLVED:
            torch.testing.assert_close(one.z, sol.z[i:i + 1], rtol=0, atol=1e-12)


def test_minimize_mixed_batch_matches_each_element_alone():
    """Elements that backtrack (a curved valley; an energy that is NaN outside a ball), one that is
    unbounded below and one with a non-finite start, next to quadratics that accept every first
    trial: each element's iterates, status and iteration count are those it has alone."""
    g = torch.Generator().manual_seed(5)
    B, n = 6, 5
    M = torch.randn(B, n, n, dtype=torch.float64, generator=g)
    H = M @ M.transpose(1, 2) / n + 0.1 * torch.eye(n, dtype=torch.float64)
    c = torch.randn(B, n, dtype=torch.float64, generator=g)
    kind = torch.tensor([0, 0, 1, 2, 3, 4])
    nan = torch.where(kind == 4, math.nan, 0.0).to(torch.float64)

    def energies(z, kind, H, c, nan):
        quad = 0.5 * torch.einsum("bi,bij,bj->b", z, H, z) - (c * z).sum(1)
        valley = (100 * (z[:, 1:] - z[:, :-1] ** 2) ** 2 + (1 - z[:, :-1]) ** 2).sum(1)
        ball = quad - torch.log(0.1 - (z * z).sum(1))
        e = torch.where(kind == 1, valley, torch.where(kind == 2, ball, quad))
        return torch.where(kind == 3, -z.sum(1), e) + nan

    z0 = torch.randn(B, n, dtype=torch.float64, generator=g) * 0.2
    z0[3] = 0.0   # inside the ball
    sol = minimize(lambda z: energies(z, kind, H, c, nan), z0)
    assert sol.status.tolist() == [Status.SOLVED] * 4 + [Status.UNBOUNDED_BELOW, Status.NON_FINITE]
    for i in range(B):
        sl = slice(i, i + 1)
        calls = [0]

        def fun(z):
            calls[0] += 1
            return energies(z, kind[sl], H[sl], c[sl], nan[sl])

        one = minimize(fun, z0[sl])
        if i in (2, 3):   # the valley and the ball: some trials are rejected
            assert calls[0] > int(one.iterations) + 1
        assert one.status.tolist() == sol.status[sl].tolist()
        assert one.iterations.tolist() == sol.iterations[sl].tolist()
        torch.testing.assert_close(one.z, sol.z[sl], rtol=0, atol=0, equal_nan=True)
