"""Projections onto the spectral and ∞-norm balls vs references we did not write: NumPy's SVD
(singular values clipped, computed in float64 on the host) and the convex program
``min ‖X − A‖_F s.t. ‖X‖ ≤ r`` solved by cvxpy + Clarabel at tight tolerances."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from declarative import project_inf_norm_ball, project_spectral_ball

CLARABEL = dict(solver="CLARABEL", tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9)


def _svd_reference(A: np.ndarray, r: float) -> np.ndarray:
    U, S, Vt = np.linalg.svd(A, full_matrices=False)
    return (U * np.minimum(S, r)) @ Vt


def _cvxpy_projection(A: np.ndarray, r: float, norm: str) -> np.ndarray:
    X = cp.Variable(A.shape)
    cons = [cp.sigma_max(X) <= r] if norm == "spectral" else [cp.norm(X, "inf") <= r]
    cp.Problem(cp.Minimize(cp.sum_squares(X - A)), cons).solve(**CLARABEL)
    return X.value


@pytest.mark.parametrize("shape", [(3, 7, 7), (2, 6, 4), (2, 3, 4, 5)])
def test_spectral_matches_svd_reference(shape, dtype, device):
    A = 2 * torch.randn(shape, dtype=torch.float64)
    A[0] *= 0.05                                    # one matrix already inside the ball
    r = 1.0 - 1e-3
    P = project_spectral_ball(A.to(dtype=dtype, device=device), r)
    assert P.shape == A.shape and P.dtype == dtype and P.device.type == device.type
    ref = np.stack([_svd_reference(a, r) for a in A.reshape(-1, *shape[-2:]).numpy()]).reshape(shape)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert np.abs(P.double().cpu().numpy() - ref).max() < tol * 10
    assert torch.linalg.matrix_norm(P.double(), ord=2).max() <= r * (1 + 10 * tol)
    assert torch.equal(P[0], A[0].to(dtype=dtype, device=device))   # inside: unchanged, bit for bit


def test_spectral_matches_convex_program():
    A = 2 * torch.randn(6, 5, dtype=torch.float64)
    P = project_spectral_ball(A, 1.0)
    assert np.abs(P.numpy() - _cvxpy_projection(A.numpy(), 1.0, "spectral")).max() < 1e-5


def test_inf_norm_matches_convex_program(dtype, device):
    A = torch.randn(3, 6, 5, dtype=torch.float64)
    A[1, :2] *= 0.01                                   # two rows already inside the ball
    r = 0.9
    P = project_inf_norm_ball(A.to(dtype=dtype, device=device), r)
    for b in range(3):
        ref = _cvxpy_projection(A[b].numpy(), r, "inf")
        assert np.abs(P[b].double().cpu().numpy() - ref).max() < 1e-6
    assert P.abs().sum(-1).amax().item() <= r * (1 + 1e-6)
    assert torch.equal(P[1, :2], A[1, :2].to(dtype=dtype, device=device))


def test_per_matrix_radius_tensor():
    A = 3 * torch.randn(4, 5, 5, dtype=torch.float64)
    r = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    P = project_spectral_ball(A, r)
    assert torch.allclose(torch.linalg.matrix_norm(P, ord=2), torch.minimum(r, torch.linalg.matrix_norm(A, ord=2)))
    Q = project_inf_norm_ball(A, r)
    assert torch.allclose(Q.abs().sum(-1).amax(-1), torch.minimum(r, A.abs().sum(-1).amax(-1)))


def test_idempotent_and_nonexpansive():
    A, B = (2 * torch.randn(2, 8, 8, dtype=torch.float64)).unbind(0)
    for proj in (project_spectral_ball, project_inf_norm_ball):
        PA, PB = proj(A, 1.0), proj(B, 1.0)
        assert torch.allclose(proj(PA, 1.0), PA, atol=1e-12)
        assert torch.linalg.norm(PA - PB) <= torch.linalg.norm(A - B) + 1e-12


def test_gradcheck():
    A = 2 * torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: project_spectral_ball(a, 1.0), (A,))
    assert torch.autograd.gradcheck(lambda a: project_inf_norm_ball(a, 1.0), (A,))


@pytest.mark.parametrize("scale", [3.0, 30.0])
@pytest.mark.parametrize("r", [1 - 1e-3, 1 - 1e-4])
def test_spectral_float32_stays_in_the_ball_far_outside(scale, r, device):
    """σ_max ≫ r in float32: the result is in the ball up to the rounding of its entries to float32
    (measured before, with ``A − U diag((σ − r)₊) Vᵀ``: up to 1.0014 for r = 0.9999; with float32
    singular vectors on CUDA the rebuilt product exceeded r·(1 + 1e-5))."""
    gen = torch.Generator().manual_seed(0)
    A = (scale * torch.randn(200, 200, generator=gen)).to(device)
    P = project_spectral_ball(A, r)
    assert torch.linalg.matrix_norm(P.double(), ord=2) <= r * (1 + 1e-5)


def test_spectral_gradient_of_inside_matrices_with_repeated_singular_values_is_the_identity(device):
    """Inside the ball the projection is the identity, so is its gradient — also for repeated
    singular values (``0.5·I``, zero, rank one), where the SVD's backward is NaN; next to an outside
    matrix with distinct singular values, whose gradient is checked by finite differences
    (was NaN for all three inside matrices)."""
    inside = torch.stack([0.5 * torch.eye(4, 3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64),
                          0.1 * torch.ones(4, 3, dtype=torch.float64)])
    outside = 2 * torch.randn(1, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    A = torch.cat([inside, outside]).to(device).requires_grad_(True)
    G = torch.randn(A.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    (project_spectral_ball(A, 1.0) * G).sum().backward()
    assert torch.isfinite(A.grad).all()
    assert torch.equal(A.grad[:3], G[:3])
    assert torch.autograd.gradcheck(lambda a: project_spectral_ball(a, 1.0), (outside.clone().requires_grad_(True),))


def test_bad_inputs():
    with pytest.raises(TypeError, match="A: expected a torch.Tensor"):
        project_spectral_ball(np.eye(3), 1.0)
    with pytest.raises(TypeError, match="A: expected a floating-point"):
        project_inf_norm_ball(torch.eye(3, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match=r"A: expected a matrix"):
        project_spectral_ball(torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="radius: expected a finite number > 0"):
        project_spectral_ball(torch.eye(3), 0.0)
    with pytest.raises(ValueError, match="radius: expected finite positive"):
        project_inf_norm_ball(torch.eye(3), torch.tensor(-1.0))
    with pytest.raises(ValueError, match="radius: shape"):
        project_spectral_ball(torch.randn(2, 3, 3), torch.ones(3))
