"""``declarative.minimize``: the batched projected L-BFGS minimiser, against references we did not
write (``torch.linalg.solve`` for quadratics, SciPy's L-BFGS-B for box constraints, cvxpy/Clarabel
for a box-constrained logistic regression)."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from declarative import Status
from declarative.minimizer import default_tol, minimize


def _quadratic(B, n, dtype, device, mu=0.1):
    A = torch.randn(B, n, n, dtype=torch.float64)
    H = A @ A.transpose(1, 2) / n + mu * torch.eye(n, dtype=torch.float64)
    b = torch.randn(B, n, dtype=torch.float64)
    H, b = H.to(dtype=dtype, device=device), b.to(dtype=dtype, device=device)

    def fun(z):
        return 0.5 * torch.einsum("bi,bij,bj->b", z, H, z) - (b * z).sum(1)

    return fun, H, b


def test_quadratic_matches_linear_solve(device, dtype):
    fun, H, b = _quadratic(6, 15, dtype, device)
    sol = minimize(fun, torch.zeros(6, 15, dtype=dtype, device=device))
    assert sol.z.dtype == dtype and sol.z.device.type == device.type
    assert (sol.status == Status.SOLVED).all()
    assert (sol.residuals["grad_norm"] <= default_tol(dtype)).all()
    ref = torch.linalg.solve(H.double(), b.double())
    # |z − z*| ≤ |∇E| / μ with μ ≥ 0.1; float32 default tol 3.5e-4 -> 3.5e-3
    atol = 1e-6 if dtype == torch.float64 else 5e-3
    torch.testing.assert_close(sol.z.double(), ref, atol=atol, rtol=0)
    # a warm start at the solution stops at once
    again = minimize(fun, sol.z)
    assert (again.iterations <= 1).all()


def test_tight_tolerance_float64():
    fun, H, b = _quadratic(4, 10, torch.float64, "cpu")
    sol = minimize(fun, torch.zeros(4, 10, dtype=torch.float64), tol=1e-13)
    assert (sol.status == Status.SOLVED).all()
    torch.testing.assert_close(sol.z, torch.linalg.solve(H, b), atol=1e-11, rtol=0)


def test_box_constraints_match_scipy_lbfgsb():
    B, n = 4, 12
    fun, H, b = _quadratic(B, n, torch.float64, "cpu")
    lo = -0.2 * torch.ones(n, dtype=torch.float64)
    hi = torch.rand(B, n, dtype=torch.float64) * 0.5
    sol = minimize(fun, torch.zeros(B, n, dtype=torch.float64), lower=lo, upper=hi, tol=1e-10)
    assert (sol.status == Status.SOLVED).all()
    assert (sol.z >= lo - 1e-15).all() and (sol.z <= hi + 1e-15).all()
    for k in range(B):
        Hk, bk = H[k].numpy(), b[k].numpy()
        ref = scipy.optimize.minimize(lambda x: (0.5 * x @ Hk @ x - bk @ x, Hk @ x - bk), np.zeros(n),
                                      jac=True, method="L-BFGS-B",
                                      bounds=list(zip(lo.numpy(), hi[k].numpy())),
                                      options=dict(ftol=1e-15, gtol=1e-12, maxiter=10000))
        np.testing.assert_allclose(sol.z[k].numpy(), ref.x, atol=1e-7)


def test_one_sided_bound_nonnegative_least_squares():
    # min ½|Az − y|² s.t. z ≥ 0 against SciPy's NNLS (an active-set method)
    A = torch.randn(3, 20, 8, dtype=torch.float64)
    y = torch.randn(3, 20, dtype=torch.float64)
    sol = minimize(lambda z: 0.5 * ((torch.einsum("bmn,bn->bm", A, z) - y) ** 2).sum(1),
                   torch.ones(3, 8, dtype=torch.float64), lower=0.0, tol=1e-11)
    assert (sol.status == Status.SOLVED).all()
    for k in range(3):
        ref, _ = scipy.optimize.nnls(A[k].numpy(), y[k].numpy())
        np.testing.assert_allclose(sol.z[k].numpy(), ref, atol=1e-8)


def test_rosenbrock_and_event_shape(dtype):
    def rosen(z):
        z = z.reshape(z.shape[0], -1)
        return ((1 - z[:, :-1]) ** 2).sum(1) + 100 * ((z[:, 1:] - z[:, :-1] ** 2) ** 2).sum(1)

    z0 = torch.full((3, 2, 2), 0.5, dtype=dtype) + 0.1 * torch.rand(3, 2, 2, dtype=dtype)
    sol = minimize(rosen, z0, max_iter=2000)
    assert sol.z.shape == (3, 2, 2)
    assert (sol.status == Status.SOLVED).all()
    # near the minimiser z = 1 the Hessian's smallest eigenvalue is ≈ 0.4, so |z − 1| ≲ 3·tol
    atol = 1e-6 if dtype == torch.float64 else 3e-3
    torch.testing.assert_close(sol.z, torch.ones_like(sol.z), atol=atol, rtol=0)


def test_unbounded_below_detected_per_element(dtype):
    c = torch.randn(3, 4, dtype=dtype)
    quad = torch.tensor([True, False, False])  # element 0 bounded (quadratic), others linear

    def fun(z):
        # (not quad * |z|²: in float32 |z|² overflows to inf at |z| ~ 1e19 and 0·inf = NaN)
        return (c * z).sum(1) + torch.where(quad, (z ** 2).sum(1), torch.zeros_like(z[:, 0]))

    sol = minimize(fun, torch.zeros(3, 4, dtype=dtype))
    assert sol.status.tolist() == [Status.SOLVED, Status.UNBOUNDED_BELOW, Status.UNBOUNDED_BELOW]
    # detected quickly (step doubling), not after ~1e20 unit steps
    assert (sol.iterations[1:] < 200).all()
    # with a box the same linear energy is bounded: the solution is a vertex
    boxed = minimize(fun, torch.zeros(3, 4, dtype=dtype), lower=-1.0, upper=2.0)
    assert (boxed.status == Status.SOLVED).all()
    expect = torch.where(c[1:] > 0, -1.0, 2.0).to(dtype)
    torch.testing.assert_close(boxed.z[1:], expect)


def test_negative_infinite_energy_is_unbounded():
    # E = −log(z) is finite only for z > 0 and goes to −inf as z → +inf only logarithmically; use
    # E = z for z < 0 with -inf beyond: the iterate reaches −inf energy
    def fun(z):
        e = z.sum(1)
        return torch.where(e < -1e6, torch.full_like(e, -math.inf), e)

    sol = minimize(fun, torch.zeros(2, 3, dtype=torch.float64))
    assert (sol.status == Status.UNBOUNDED_BELOW).all()


def test_non_finite_start_and_max_iterations():
    def fun(z):
        return (z ** 2).sum(1) + torch.tensor([0.0, math.nan], dtype=z.dtype)

    sol = minimize(fun, torch.ones(2, 3, dtype=torch.float64))
    assert sol.status.tolist() == [Status.SOLVED, Status.NON_FINITE]
    # an ill-conditioned quadratic cannot be solved in 2 iterations
    fun2, _, _ = _quadratic(2, 10, torch.float64, "cpu", mu=1e-3)
    short = minimize(fun2, torch.zeros(2, 10, dtype=torch.float64), max_iter=2)
    assert (short.status == Status.MAX_ITERATIONS).all() and (short.iterations == 2).all()
    with pytest.raises(Exception, match="iteration limit"):
        short.raise_for_status()


def test_converged_elements_are_frozen():
    # element 0 starts at its minimiser; element 1 needs iterations: element 0 must not move
    target = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    scale = torch.tensor([1.0, 100.0], dtype=torch.float64)

    def fun(z):
        return ((z - 3.0) ** 2 * torch.tensor([1.0, 50.0], dtype=z.dtype)).sum(1) * scale \
            + ((z - target) ** 2).sum(1) * 0

    z0 = torch.tensor([[3.0, 3.0], [-5.0, 9.0]], dtype=torch.float64)
    sol = minimize(fun, z0)
    assert sol.iterations[0] == 0 and torch.equal(sol.z[0], z0[0])
    assert sol.iterations[1] > 0 and sol.status[1] == Status.SOLVED


def test_function_closing_over_parameters_returns_detached():
    w = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    sol = minimize(lambda z: ((z - w) ** 2).sum(1), torch.zeros(2, 3, dtype=torch.float64))
    assert not sol.z.requires_grad
    torch.testing.assert_close(sol.z, w.detach())


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(z0=torch.zeros(3)), ValueError, r"expected shape \(B, n\)"),
    (dict(z0=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "floating-point"),
    (dict(lower=torch.zeros(4)), ValueError, "does not broadcast"),
    (dict(lower=1.0, upper=0.0), ValueError, "lower <= upper"),
    (dict(lower=torch.zeros(3, dtype=torch.float64)), TypeError, "mixed dtypes"),
    (dict(tol=-1.0), ValueError, "tol"),
    (dict(max_iter=-1), ValueError, "max_iter"),
    (dict(history=0), ValueError, "history"),
    (dict(method="newton"), ValueError, "method"),
    (dict(fun=lambda z: z), ValueError, r"shape \(B,\)"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(fun=lambda z: (z ** 2).sum(1), z0=torch.zeros(2, 3))
    args.update(kwargs)
    fun, z0 = args.pop("fun"), args.pop("z0")
    with pytest.raises(exc, match=match):
        minimize(fun, z0, **args)


def test_coordinates_near_a_bound_reach_it_instead_of_stalling():
    # Regression: a coordinate within eps of its bound whose gradient pushes outward was frozen
    # (direction 0) instead of being moved onto the bound, so an element whose only non-zero
    # projected-gradient entries were such coordinates stalled at MAX_ITERATIONS. Random
    # non-negative QPs hit this (e.g. z = (0, 6e-4, 0, …) with every gradient entry > 0).
    gen = torch.Generator().manual_seed(0)
    B, n = 200, 6
    A = torch.randn(B, n, n, generator=gen, dtype=torch.float64)
    H = A @ A.transpose(1, 2) / n + 0.1 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(B, n, generator=gen, dtype=torch.float64)
    z0 = torch.rand(B, n, generator=gen, dtype=torch.float64)
    fun = lambda z: 0.5 * torch.einsum("bi,bij,bj->b", z, H, z) - (b * z).sum(1)
    sol = minimize(fun, z0, lower=0.0, tol=1e-8, max_iter=300)
    assert (sol.status == Status.SOLVED).all(), sol.status.bincount()
    for k in range(0, B, 20):
        Hk, bk = H[k].numpy(), b[k].numpy()
        ref = scipy.optimize.minimize(lambda x: (0.5 * x @ Hk @ x - bk @ x, Hk @ x - bk), np.zeros(n),
                                      jac=True, method="L-BFGS-B", bounds=[(0, None)] * n,
                                      options=dict(ftol=1e-15, gtol=1e-12, maxiter=10000))
        np.testing.assert_allclose(sol.z[k].numpy(), ref.x, atol=1e-6)
