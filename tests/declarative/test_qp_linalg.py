"""The batched helpers of ``declarative.qp.linalg`` against their plain forms, on the paths taken
by large inputs (no temporaries of the input's size)."""

from __future__ import annotations

import pytest
import torch

from declarative.qp import linalg
from declarative.qp.ipm import solve_qp_ipm
from declarative.qp.linalg import _abs_max, _abs_products, _Scratch
from tests.helpers import seeded_randn as _randn


@pytest.mark.parametrize("dim", [-1, -2, (-2, -1)])
def test_abs_max_of_large_tensors_is_that_of_the_absolute_values(dim):
    x = _randn(40, 60, 50)
    assert x.numel() >= linalg._NORM_LARGE
    x[3, 4, 5] = float("nan")
    x[7, 1, 2] = float("-inf")
    x[9, 2] = -0.0
    torch.testing.assert_close(_abs_max(x, dim), x.abs().amax(dim), equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(_abs_max(x, dim, keepdim=True), x.abs().amax(dim, keepdim=True),
                               equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("Bm, B, r, c", [(6, 6, 700, 900), (1, 5, 700, 900), (6, 6, 1, 400000), (3, 3, 5, 4)])
def test_abs_products_in_blocks_of_rows(monkeypatch, Bm, B, r, c):
    """|M|x and |M|ᵀy (non-negative x, y, as the residuals' scales use them) as the plain
    products to rounding: batched and shared M, one row, small M."""
    M, x, y = _randn(Bm, r, c, seed=1), _randn(B, c, seed=2).abs(), _randn(B, r, seed=3).abs()
    ax, ay = _abs_products(M, x, y)
    aM = M.abs()
    torch.testing.assert_close(ax, (aM @ x.unsqueeze(-1)).squeeze(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(ay, (aM.mT @ y.unsqueeze(-1)).squeeze(-1), rtol=1e-12, atol=0)
    assert _abs_products(M, x)[1] is None and _abs_products(M, y=y)[0] is None


def test_abs_products_of_an_expanded_and_an_unbatched_matrix():
    M = _randn(800, 3000, seed=4)
    x = _randn(4, 3000, seed=5).abs()
    ref = (M.abs() @ x.mT).mT
    torch.testing.assert_close(_abs_products(M, x)[0], ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(_abs_products(M.expand(4, 800, 3000), x)[0], ref, rtol=1e-12, atol=0)


def test_abs_products_under_autograd():
    """With an input that requires grad: the plain products, differentiable."""
    M = _randn(2, 1200, 1000, seed=6).requires_grad_()
    x = _randn(2, 1000, seed=7).requires_grad_()
    ax, _ = _abs_products(M, x)
    ax.sum().backward()
    assert x.grad is not None and M.grad is not None


def test_scratch_views_of_two_dtypes_share_memory():
    s = _Scratch("cpu", itemsize=8)
    a = s.view("H", (3, 4, 5), torch.float32)
    b = s.view("H", (3, 4, 5), torch.float64)
    assert a.data_ptr() == b.data_ptr() and b.is_contiguous()
    g = s.view("sG", (2, 3, 5), torch.float64, reserve=60)
    assert s.view("sG", (2, 6, 5), torch.float64).data_ptr() == g.data_ptr()   # reserved: no regrowth


def test_solver_with_vectors_that_require_grad_uses_no_scratch():
    """A cold start into reused memory under autograd would fail (``out=`` is not differentiable):
    at B·n² ≥ 2¹⁶ with only ``q`` requiring grad the iterates do, and the loop's buffers are off."""
    n, m = 256, 20
    Q = torch.eye(n, dtype=torch.float64)
    q = _randn(n, seed=8).requires_grad_()
    G, h = _randn(m, n, seed=9), torch.ones(m, dtype=torch.float64)
    sol = solve_qp_ipm(Q, q, G, h)
    assert int(sol.status.reshape(-1)[0]) == 0


@pytest.mark.parametrize("n", [130, 300, 520])
@pytest.mark.parametrize("shared_q", [False, True])
def test_gram_lower_is_the_lower_triangle_of_the_product(n, shared_q):
    """``_gram_lower`` in one, two and four row blocks, with a batched and an expanded ``Q``."""
    B, k = 3, 70
    Q = _randn(1 if shared_q else B, n, n, seed=n).expand(B, n, n)
    S = _randn(B, k, n, seed=n + 1)
    out = torch.full((B, n, n), float("nan"), dtype=torch.float64)
    linalg._gram_lower(Q, S, out)
    ref = Q + S.mT @ S
    lower = torch.ones(n, n, dtype=torch.bool).tril()
    assert (out - ref)[:, lower].abs().max() <= 1e-13 * ref.abs().max()


def test_factor_into_buffers_equals_the_plain_factor():
    """``_Factor`` into reused buffers and into fresh memory (both forming the matrix's lower
    triangle in row blocks and factorising it in place) give the factor of the whole matrix, and
    so does a fresh factor whose regularisation is recorded by autograd (whole matrix, plain
    factorisation)."""
    B, n, m = 2, 300, 120
    R = _randn(B, n, n, seed=11)
    Q = R @ R.mT / n
    G = _randn(B, m, n, seed=12)
    w = _randn(B, m, seed=13).abs() + 0.1
    reg = torch.full((B, 1), 1e-9, dtype=torch.float64)
    s = _Scratch("cpu")
    bufs = (s.view("sG", (B, m, n), torch.float64), s.view("H", (B, n, n), torch.float64))
    plain = linalg._Factor(Q, G, None, None, w, reg, None)
    into = linalg._Factor(Q, G, None, None, w, reg, None, bufs=bufs)
    recorded = linalg._Factor(Q, G, None, None, w, reg.clone().requires_grad_(), None)
    assert into.L.data_ptr() == bufs[1].data_ptr()
    H = Q + G.mT @ (w.unsqueeze(-1) * G) + 1e-9 * torch.eye(n, dtype=torch.float64)
    ref = torch.linalg.cholesky(H, upper=True)
    for fac in (into, plain, recorded):
        assert (fac.L - ref).abs().max() <= 1e-12 * ref.abs().max()


def test_scratch_gives_freed_memory_to_later_keys():
    """``free`` makes a key's memory spare; a later key too large for any spare block is given fresh
    memory, one that fits takes the smallest fitting block."""
    s = _Scratch("cpu")
    big = s.view("a", (100,), torch.float64)
    small = s.view("b", (40,), torch.float64)
    s.free("a", "b", "absent")
    assert s.held("a") == 0 and s.held("b") == 0
    assert s.view("c", (200,), torch.float64).data_ptr() not in (big.data_ptr(), small.data_ptr())
    assert s.view("d", (30,), torch.float64).data_ptr() == small.data_ptr()     # the smallest that fits
    assert s.view("e", (10, 9), torch.float32).data_ptr() == big.data_ptr()     # (a cast: any dtype)
    assert s.view("f", (5,), torch.float64).data_ptr() not in (big.data_ptr(), small.data_ptr())
    s.free("c")
    r = s.view("r", (10,), torch.float64, reserve=200)   # a spare block that holds the reserve
    assert s.held("r") == 1600 and s.view("r", (200,), torch.float64).data_ptr() == r.data_ptr()
    x = _randn(4, 5, seed=1)
    assert torch.equal(s.select("g", x, torch.tensor([3, 1])), x[[3, 1]])
    assert torch.equal(s.copy("h", x, torch.float32), x.float())
