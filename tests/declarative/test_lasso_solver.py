"""Forward of the batched lasso solver: against cvxpy/Clarabel and scikit-learn, exact zeros,
optimality residual, warm start, per-element status, shapes, bad input."""

import numpy as np
import pytest
import torch

import contrastive  # noqa: F401  (registers "contrastive"/"symmetric")
from declarative import LassoOptions, SolverError, Status, solve_lasso
from declarative.lasso import lasso_fista_polish
from declarative.reference.lasso import ATOL, lasso_reference_batch

B, d, k = 4, 10, 15


def _problem(dtype=torch.float64, device="cpu", seed=0, B=B, d=d, k=k):
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(B, d, k, generator=gen, dtype=torch.float64)
    x = 2 * torch.randn(B, d, generator=gen, dtype=torch.float64)
    return D.to(dtype=dtype, device=device), x.to(dtype=dtype, device=device)


@pytest.mark.parametrize("lam_kind", ["scalar", "per_element", "per_coordinate", "full"])
@pytest.mark.parametrize("mu", [0.0, 0.3])
def test_matches_cvxpy(device, lam_kind, mu):
    D, x = _problem(device=device)
    gen = torch.Generator().manual_seed(1)
    lam = {"scalar": torch.tensor(0.4, dtype=torch.float64),
           "per_element": 0.2 + torch.rand(B, generator=gen, dtype=torch.float64),
           "per_coordinate": 0.2 + torch.rand(k, generator=gen, dtype=torch.float64),
           "full": 0.2 + torch.rand(B, k, generator=gen, dtype=torch.float64)}[lam_kind]
    sol = solve_lasso(D, x, lam.to(device), mu)
    ref = lasso_reference_batch(D.cpu().numpy(), x.cpu().numpy(), lam.numpy(), mu)
    np.testing.assert_allclose(sol.z.cpu().numpy(), ref, atol=ATOL, rtol=0)
    assert (sol.status == Status.SOLVED).all()
    # float64 optimality residual ≤ 1e-10 and zeros are exact zeros
    assert sol.residuals["kkt"].max().item() <= 1e-10
    zero_ref = np.abs(ref) < 1e-7
    assert zero_ref.any() and (sol.z.cpu().numpy()[zero_ref] == 0).all()


def test_nudged_matches_cvxpy():
    D, x = _problem()
    g = torch.randn(B, k, dtype=torch.float64)
    lam = torch.full((B, k), 0.4, dtype=torch.float64)
    mu = torch.full((B,), 0.1, dtype=torch.float64)
    for beta in (0.5, -0.5):
        sol = lasso_fista_polish(D, x, lam, mu, beta * g)
        ref = lasso_reference_batch(D.numpy(), x.numpy(), 0.4, 0.1, g.numpy(), beta)
        np.testing.assert_allclose(sol.z.numpy(), ref, atol=ATOL, rtol=0)


def test_matches_sklearn_lasso_and_elastic_net():
    from sklearn.linear_model import ElasticNet, Lasso

    D, x = _problem(B=3)
    lam, mu = 0.5, 0.2
    z = solve_lasso(D, x, lam).z.numpy()
    z_en = solve_lasso(D, x, lam, mu).z.numpy()
    for b in range(3):
        # sklearn: (1/(2n))‖x − Dz‖² + α‖z‖₁ (n = d samples), i.e. ours divided by n: α = lam/n
        las = Lasso(alpha=lam / d, fit_intercept=False, tol=1e-14, max_iter=100000)
        las.fit(D[b].numpy(), x[b].numpy())
        np.testing.assert_allclose(z[b], las.coef_, atol=1e-8)
        # ElasticNet: (1/(2n))‖·‖² + α r‖z‖₁ + (α/2)(1 − r)‖z‖²: α = (lam + mu)/n, r = lam/(lam + mu)
        en = ElasticNet(alpha=(lam + mu) / d, l1_ratio=lam / (lam + mu), fit_intercept=False,
                        tol=1e-14, max_iter=100000)
        en.fit(D[b].numpy(), x[b].numpy())
        np.testing.assert_allclose(z_en[b], en.coef_, atol=1e-8)


def test_float32(device):
    D, x = _problem(torch.float32, device)
    sol = solve_lasso(D, x, 0.4)
    assert sol.z.dtype == torch.float32 and sol.z.device.type == torch.device(device).type
    ref = lasso_reference_batch(D.double().cpu().numpy(), x.double().cpu().numpy(), 0.4)
    np.testing.assert_allclose(sol.z.cpu().numpy(), ref, atol=1e-4)


def test_wide_dictionary_large_batch_solves_to_residual():
    D, x = _problem(B=16, d=20, k=60, seed=3)
    D = D / 20 ** 0.5
    sol = solve_lasso(D, x, 0.05)
    assert (sol.status == Status.SOLVED).all()
    assert sol.residuals["kkt"].max().item() <= 1e-10
    assert ((sol.z != 0).sum(-1) <= 20).all()  # at most d nonzeros at a unique solution


def test_warm_start_is_polished_first():
    D, x = _problem()
    sol = solve_lasso(D, x, 0.4)
    again = solve_lasso(D, x, 0.4, warm_start=sol)
    assert (again.iterations == 0).all()
    torch.testing.assert_close(again.z, sol.z, atol=1e-12, rtol=0)
    near = solve_lasso(D, x + 1e-4, 0.4, warm_start=sol)
    assert near.iterations.sum() < sol.iterations.sum()


def test_unbatched_equals_batch_of_one():
    D, x = _problem()
    z1 = solve_lasso(D[1], x[1], 0.4).z
    zb = solve_lasso(D[1:2], x[1:2], 0.4).z
    assert z1.shape == (k,)
    torch.testing.assert_close(z1, zb[0], atol=1e-12, rtol=0)
    # unbatched D broadcast over a batch of x
    zD = solve_lasso(D[0], x, 0.4).z
    assert zD.shape == (B, k)
    torch.testing.assert_close(zD[2], solve_lasso(D[0], x[2], 0.4).z, atol=1e-12, rtol=0)


def test_per_element_status_and_error():
    D, x = _problem()
    opts = LassoOptions(max_iter=1, check_every=1)
    sol = solve_lasso(D, x, 0.01, options=opts, check=False)
    assert sol.status.shape == (B,)
    assert (sol.status == Status.MAX_ITERATIONS).any()
    with pytest.raises(SolverError, match="MAX_ITERATIONS"):
        solve_lasso(D, x, 0.01, options=opts)


def test_large_lambda_gives_zero():
    D, x = _problem()
    lam_max = (D.transpose(1, 2) @ x.unsqueeze(-1)).abs().amax()
    z = solve_lasso(D, x, float(lam_max) * 1.01).z
    assert (z == 0).all()


@pytest.mark.parametrize("bad, match", [
    (dict(lam=-0.1), "lam: expected values >= 0"),
    (dict(lam=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)), "lam: expected a float or a tensor of shape"),
    (dict(x=torch.randn(B, d + 1, dtype=torch.float64)), "x: expected d"),
    (dict(x=torch.randn(B + 1, d, dtype=torch.float64)), "batch sizes differ"),
    (dict(D=torch.randn(d, dtype=torch.float64)), r"D: expected shape \(B, d, k\) or \(d, k\)"),
    (dict(x=torch.full((B, d), float("nan"), dtype=torch.float64)), "x: expected finite values"),
    (dict(x=torch.randn(B, d, dtype=torch.float32)), "mixed dtypes"),
    (dict(mu=-1.0), "mu: expected values >= 0"),
    (dict(D=torch.zeros(B, d, k, dtype=torch.int64)), "floating-point"),
])
def test_bad_input(bad, match):
    D, x = _problem()
    args = dict(D=D, x=x, lam=0.1)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        solve_lasso(**args)


def test_bad_mode_and_beta():
    D, x = _problem()
    with pytest.raises(ValueError, match="unknown gradient mode"):
        solve_lasso(D, x, 0.1, mode="nope")
    with pytest.raises(ValueError, match="beta"):
        solve_lasso(D, x, 0.1, mode="contrastive", beta=-1.0)
