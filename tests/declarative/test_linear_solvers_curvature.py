"""Conjugate gradient's negative-curvature flag (``LinearSolve.negative_curvature``) on positive
*semi*definite systems — a convex energy with flat directions — and on genuinely indefinite ones.

Once CG's direction lies in the null space of a PSD matrix, ``Ap`` is round-off and the sign of
``pᵀAp`` arbitrary: the flag must be judged against the operator's curvature scale, not against
``‖p‖‖Ap‖`` (itself round-off there). A negative eigenvalue well above round-off must still be
flagged. Matrices are built from a float64 QR factor with chosen eigenvalues.
"""

import warnings

import pytest
import torch

from declarative import SolverError, Status, argmin
from declarative.linear_solvers import conjugate_gradient


def _psd_with_null_space(B, n, zeros, dtype, negative=None, seed=0):
    """``(A, Q)``: ``B`` symmetric ``n×n`` matrices with eigenvalues in [1, 2], the last ``zeros`` of
    them 0 (or ``negative`` for the last one), eigenvectors the columns of ``Q`` (float64)."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(B, n, n, dtype=torch.float64, generator=gen))
    ev = torch.linspace(1, 2, n, dtype=torch.float64).expand(B, n).clone()
    ev[:, n - zeros:] = 0
    if negative is not None:
        ev[:, -1] = negative
    return ((Q * ev.unsqueeze(-2)) @ Q.transpose(-1, -2)).to(dtype), Q


def _matvec(A):
    return lambda v: (A @ v.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rhs", ["null space", "null space + 1e-3 range"])
@pytest.mark.parametrize("rtol", [0.0, 1e-4])
def test_psd_singular_system_is_not_flagged_indefinite(dtype, rhs, rtol):
    # measured before the curvature scale: 6–14 of 16 elements flagged, depending on the case
    A, Q = _psd_with_null_space(16, 100, 5, dtype)
    b = Q[:, :, -1] if rhs == "null space" else Q[:, :, -1] + 1e-3 * Q[:, :, 0]
    res = conjugate_gradient(_matvec(A), b.to(dtype), max_iter=50, rtol=rtol)
    assert not bool(res.negative_curvature.any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rtol", [0.0, 1e-6])
def test_negative_eigenvalue_above_round_off_is_flagged(dtype, rtol):
    # λ_min = −0.01·λ_max: 30× √eps in float32; a generic right-hand side meets it
    A, _ = _psd_with_null_space(8, 40, 0, dtype, negative=-0.02)
    b = torch.randn(8, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    res = conjugate_gradient(_matvec(A), b, max_iter=200, rtol=rtol)
    assert bool(res.negative_curvature.all())


def _flat_energy(dtype, n, zeros=2):
    A, Q = _psd_with_null_space(1, n, zeros, dtype)
    H = A[0]

    def energy(z, theta):
        return 0.5 * ((z @ H) * z).sum(-1) - (z * theta).sum(-1)

    return energy, H, Q[0].to(dtype)


def _flat_problem(dtype, B=8, n=20, seed=2):
    energy, H, Q = _flat_energy(dtype, n)
    gen = torch.Generator().manual_seed(seed)
    theta = (torch.randn(B, n, dtype=torch.float64, generator=gen).to(dtype) @ H).requires_grad_(True)
    c = torch.randn(B, n, dtype=torch.float64, generator=gen).to(dtype)
    return energy, H, Q, theta, c


def test_argmin_convex_with_flat_directions_gradient_along_the_range():
    """``E = ½zᵀHz − θᵀz``, ``H`` PSD of rank n − 2, θ in the range of ``H`` (minimisers exist,
    ``z* = H⁺θ`` from ``z0 = 0``): an outer loss ``cᵀz`` with ``c`` in the range of ``H`` has the
    gradient ``H⁺c`` (pseudo-inverse in float64 as the reference). float64 only: rounded to
    float32, ``H`` has eigenvalues ~1e-7 instead of 0 and ``c`` components ~1e-7 along them, so the
    float32 system's own solution differs from ``H⁺c`` by O(1) along the flat directions."""
    dtype = torch.float64
    energy, H, Q, theta, c = _flat_problem(dtype)
    rng = Q[:, :-2]                                          # orthonormal basis of range(H)
    c = c @ rng @ rng.T
    z = argmin(energy, torch.zeros_like(c), theta)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (g,) = torch.autograd.grad((z * c).sum(), theta)
    ref = c @ torch.linalg.pinv(H, hermitian=True)
    assert torch.allclose(g, ref, atol=1e-8 * ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("check", [True, False])
def test_argmin_convex_with_flat_directions_is_not_indefinite(dtype, check):
    """The same energy and an outer loss with a component along a flat direction: ``H dz = −g`` is
    inconsistent, the implicit CG does not converge (a warning says so), but nothing is INDEFINITE
    (measured before the curvature scale: float32 raised INDEFINITE for 4 of the 8 elements,
    also with ``check=False``)."""
    energy, H, Q, theta, c = _flat_problem(dtype)
    z = argmin(energy, torch.zeros_like(c), theta, check=check)
    with pytest.warns(RuntimeWarning, match="did not reach rtol"):
        (g,) = torch.autograd.grad((z * c).sum(), theta)
    assert torch.isfinite(g).all()


def test_argmin_flat_direction_cotangent_is_not_indefinite_float64():
    """An outer loss purely along a flat direction (CG's Krylov space is the null space: no
    curvature to compare with; raised INDEFINITE for all 8 elements before)."""
    B, n = 8, 20
    energy, H, Q = _flat_energy(torch.float64, n)
    theta = (torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) @ H)
    theta.requires_grad_(True)
    z = argmin(energy, torch.zeros(B, n, dtype=torch.float64), theta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # unconverged: the system is inconsistent
        (g,) = torch.autograd.grad((z * Q[:, -1]).sum(), theta)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("solver", ["cg", "fixed_point"])
def test_sync_every_changes_no_result(solver):
    """A solve to a tolerance that asks for remaining active elements only every few steps (the
    accelerator default) returns the same iterates, iteration counts and flags as every step: the
    converged elements are frozen in between."""
    from declarative.linear_solvers import fixed_point_iteration
    A, _ = _psd_with_null_space(6, 30, 0, torch.float64)
    b = torch.randn(6, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    b[2] *= 1e-3
    if solver == "cg":
        run = lambda k: conjugate_gradient(_matvec(A), b, max_iter=80, rtol=1e-10, sync_every=k)  # noqa: E731
    else:
        T = torch.eye(30, dtype=torch.float64) - 0.4 * A        # spectral radius ≤ 0.6
        run = lambda k: fixed_point_iteration(_matvec(T), b, max_iter=200, rtol=1e-10, sync_every=k)  # noqa: E731
    every, fourth = run(1), run(4)
    assert bool(every.converged.all()) and len(set(every.iterations.tolist())) > 1
    assert torch.equal(every.x, fourth.x) and torch.equal(every.iterations, fourth.iterations)
    assert torch.equal(every.residual, fourth.residual) and torch.equal(every.converged, fourth.converged)
    with pytest.raises(ValueError, match="sync_every"):
        run(0)
