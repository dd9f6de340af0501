"""Gradients of the lasso layer: implicit vs central finite differences of cvxpy solutions,
gradcheck, degenerate (weakly active) constructions vs Contrastive(1e-7) and the D = I closed form,
β-rates of the contrastive modes."""

import math

import numpy as np
import pytest
import torch

from contrastive import Contrastive, Symmetric
from declarative import LassoProblem, solve_lasso
from declarative.reference.lasso import ATOL, lasso_reference_batch

B, d, k = 3, 10, 15


def _problem(seed=0, B=B, d=d, k=k):
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(B, d, k, generator=gen, dtype=torch.float64)
    x = 2 * torch.randn(B, d, generator=gen, dtype=torch.float64)
    g = torch.randn(B, k, generator=gen, dtype=torch.float64)
    return D, x, g


def _grads(D, x, lam, mu, g, mode="implicit", beta=None):
    P = [t.clone().requires_grad_() for t in (D, x, lam, mu)]
    z = solve_lasso(*P, mode=mode, beta=beta).z
    return torch.autograd.grad((z * g).sum(), P)


def _ref_loss(D, x, lam, mu, g):
    lam_np = lam.numpy()
    z = lasso_reference_batch(D.numpy(), x.numpy(), lam_np, mu.numpy(), None)
    return float((z * g.numpy()).sum())


@pytest.mark.parametrize("lam_kind", ["scalar", "per_coordinate", "per_element"])
def test_implicit_matches_cvxpy_finite_differences(lam_kind):
    """⟨∇θ, V⟩ vs (ℓ(θ + hV) − ℓ(θ − hV))/2h with ℓ = gᵀz*(θ) solved by cvxpy/Clarabel.

    h = 1e-3: the reference error (ATOL = 1e-8) contributes ≲ ATOL/h = 1e-5 per unit of ‖g‖₁;
    z* is piecewise linear in x and lam (no truncation error) and rational in D and mu
    (truncation O(h²) ≈ 1e-6). The tolerance 5e-5 is set from these two terms.
    """
    D, x, g = _problem()
    gen = torch.Generator().manual_seed(5)
    lam = {"scalar": torch.tensor(0.5, dtype=torch.float64),
           "per_coordinate": 0.3 + 0.5 * torch.rand(k, generator=gen, dtype=torch.float64),
           "per_element": 0.3 + 0.5 * torch.rand(B, generator=gen, dtype=torch.float64)}[lam_kind]
    mu = torch.tensor(0.2, dtype=torch.float64)
    grads = _grads(D, x, lam, mu, g)
    h = 1e-3
    for i, theta in enumerate((D, x, lam, mu)):
        V = torch.randn(theta.shape, generator=gen, dtype=torch.float64)
        args_p = [t + h * V if j == i else t for j, t in enumerate((D, x, lam, mu))]
        args_m = [t - h * V if j == i else t for j, t in enumerate((D, x, lam, mu))]
        fd = (_ref_loss(*args_p, g) - _ref_loss(*args_m, g)) / (2 * h)
        an = float((grads[i] * V).sum())
        assert abs(fd - an) <= 5e-5 * (1 + abs(fd)), (i, fd, an)


def test_gradcheck_all_parameters():
    D, x, g = _problem(B=2, d=5, k=6)
    lam = torch.tensor([0.4, 0.6], dtype=torch.float64)
    mu = torch.tensor(0.1, dtype=torch.float64)
    P = [t.clone().requires_grad_() for t in (D, x, lam, mu)]
    assert torch.autograd.gradcheck(lambda *p: solve_lasso(*p).z, P)
    # unbatched D shared by the batch (gradient summed over the batch), per-coordinate lam
    lam_k = (0.3 + torch.rand(6, dtype=torch.float64)).requires_grad_()
    D0 = D[0].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda D_, x_, l_: solve_lasso(D_, x_, l_).z, (D0, P[1], lam_k))


def test_implicit_equals_contrastive_small_beta_and_symmetric():
    D, x, g = _problem(seed=1)
    lam, mu = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64)
    gi = _grads(D, x, lam, mu, g)
    gc = _grads(D, x, lam, mu, g, "contrastive", 1e-7)
    gs = _grads(D, x, lam, mu, g, "symmetric", 1e-4)
    for a, c, s in zip(gi, gc, gs):
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s, a, atol=1e-8, rtol=1e-8)


def test_identity_dictionary_soft_threshold_one_sided():
    """D = I: z = soft(x, lam), nudged ẑ_β = soft(x − βg, lam). On the support ∇x_i = g_i, off it 0;
    at a tie |x_i| = lam (weakly active) the one-sided limit is ∇x_i = g_i if sign(x_i)·g_i < 0
    (the coefficient leaves zero) and 0 otherwise; the symmetric contrast gives the average g_i/2."""
    lam = 0.5
    x = torch.tensor([[1.5, 0.5, -0.5, 0.2, -2.0, 0.5, -0.5]], dtype=torch.float64)
    g = torch.tensor([[0.3, -1.0, 0.7, 0.4, 0.2, 0.8, -0.6]], dtype=torch.float64)
    D = torch.eye(7, dtype=torch.float64).unsqueeze(0)
    weak = x.abs() == lam
    expected_gx = torch.where(x.abs() > lam, g,
                              torch.where(weak & (torch.sign(x) * g < 0), g, torch.zeros_like(g)))
    # lam: z_i = sign(x_i)(|x_i| − lam) on the support: ∂z/∂lam = −sign(x_i); ∇lam = −Σ g_i sign(x_i)
    # over the support plus the weakly active coordinates that leave zero
    moves = (x.abs() > lam) | (weak & (torch.sign(x) * g < 0))
    expected_glam = -(torch.sign(x) * g * moves).sum()
    for mode, beta in (("implicit", None), ("contrastive", 1e-7)):
        Dp, xp = D.clone().requires_grad_(), x.clone().requires_grad_()
        lp = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
        z = solve_lasso(Dp, xp, lp, mode=mode, beta=beta).z
        assert (z[weak] == 0).all()
        gD, gx, gl = torch.autograd.grad((z * g).sum(), (Dp, xp, lp))
        # implicit: exact up to rounding; contrastive: rounding of (ẑ_β − z*)/β, ≈ eps·|z|/β ≈ 3e-9
        tol = 1e-12 if mode == "implicit" else 1e-7
        torch.testing.assert_close(gx, expected_gx, atol=tol, rtol=0)
        torch.testing.assert_close(gl, expected_glam, atol=tol, rtol=0)
    # the symmetric contrast averages the two one-sided derivatives at the ties
    xs = x.clone().requires_grad_()
    zs = solve_lasso(D, xs, lam, mode="symmetric", beta=1e-7).z
    (gxs,) = torch.autograd.grad((zs * g).sum(), (xs,))
    expected_sym = torch.where(x.abs() > lam, g, torch.where(weak, g / 2, torch.zeros_like(g)))
    torch.testing.assert_close(gxs, expected_sym, atol=1e-7, rtol=0)


def _degenerate_problem(seed=0, d=12, k=10, n_support=4, n_weak=2, lam=0.3):
    """A problem with prescribed support S (signs s) and weakly active set W (d ≥ k): z_S ≠ 0 and
    the residual r = x − Dz solves Dᵀr = c with c_i = lam·s_i on S ∪ W (so |c_i| = lam exactly at
    the zero coefficients of W) and |c_i| ≤ lam/2 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(d, k, generator=gen, dtype=torch.float64)
    s = torch.sign(torch.randn(k, generator=gen, dtype=torch.float64))
    nu = n_support + n_weak
    c = torch.empty(k, dtype=torch.float64)
    c[:nu] = lam * s[:nu]
    c[nu:] = 0.5 * lam * (2 * torch.rand(k - nu, generator=gen, dtype=torch.float64) - 1)
    z = torch.zeros(k, dtype=torch.float64)
    z[:n_support] = s[:n_support] * (0.5 + torch.rand(n_support, generator=gen, dtype=torch.float64))
    r = torch.linalg.lstsq(D.T, c.unsqueeze(-1)).solution.squeeze(-1)
    x = D @ z + r
    return D, x, lam, n_support, n_weak


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weakly_active_implicit_vs_contrastive_and_cvxpy(seed):
    D, x, lam, ns, nw = _degenerate_problem(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    G = torch.randn(4, D.shape[1], generator=gen, dtype=torch.float64)  # 4 cotangents as a batch
    Db, xb = D.expand(4, *D.shape), x.expand(4, -1)
    sol = solve_lasso(Db, xb, lam)
    problem = LassoProblem()
    S, W, _ = problem.classify(sol, (Db, xb, torch.tensor(lam, dtype=torch.float64)))
    assert (W.sum(-1) == nw).all() and (sol.z[:, ns:] == 0).all()
    gi = _grads(Db, xb, torch.tensor(lam, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64), G)
    gc = _grads(Db, xb, torch.tensor(lam, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64), G,
                "contrastive", 1e-7)
    for a, c in zip(gi[:3], gc[:3]):
        torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-6)
    # the tangent itself vs a one-sided difference quotient with the cvxpy nudged solution (the
    # nudged solution is linear in β on [0, β₀) for small β₀: no truncation error). z* is taken
    # from our solver (exact by construction): at the degenerate z* the interior-point reference
    # is only ~1e-7 accurate in the weakly active coordinates, while the nudged problems are not
    # degenerate; but a coordinate that leaves zero slowly is tiny in ẑ_β (close to its kink) and
    # there Clarabel's error grows to ~4e-7 (measured), hence β = 0.02 (still inside the linear
    # piece for these constructions: checked against our own nudged solves) and atol = 1e-6/β.
    tangent = problem.implicit_tangent(sol, (Db, xb, torch.tensor(lam, dtype=torch.float64)), G).z
    beta = 0.02
    zb = lasso_reference_batch(Db.numpy(), xb.numpy(), lam, 0.0, G.numpy(), beta)
    np.testing.assert_allclose(tangent.numpy(), (zb - sol.z.numpy()) / beta, atol=1e-6 / beta)
    # at least one cotangent makes a weakly active coordinate leave zero, one keeps it at zero
    leaves = (tangent[:, ns:ns + nw] != 0)
    assert leaves.any() and (~leaves).any()


def test_beta_rates():
    """The nudged solution is piecewise *linear* in β (fixed support), so ∂_θE (quadratic in z for
    D and mu) makes the one-sided contrast exact up to a term linear in β: slope 1. The symmetric
    contrast cancels that term exactly — its error is at rounding level (≪ β², stronger than the
    generic O(β²) rate)."""
    D, x, g = _problem(seed=2)
    lam, mu = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64)
    ref = _grads(D, x, lam, mu, g)[0]
    betas = [1e-2, 3e-3, 1e-3, 3e-4]
    errs_c, errs_s = [], []
    for beta in betas:
        errs_c.append((_grads(D, x, lam, mu, g, "contrastive", beta)[0] - ref).norm().item())
        errs_s.append((_grads(D, x, lam, mu, g, "symmetric", beta)[0] - ref).norm().item())
    slope = np.polyfit(np.log(betas), np.log(errs_c), 1)[0]
    assert 0.9 < slope < 1.1, slope
    assert max(errs_s) < 1e-8 * ref.norm().item()


def test_polish_drops_rounding_level_coordinates_at_ties():
    """A weakly active coordinate (z*_i = 0, |c_i| = λ) still in the support when the polish runs
    came back as z_i ≈ ±1e-16 of the right sign and was kept: classified free instead of weakly
    active, so the implicit backward was two-sided at a tie depending on rounding (about half of
    these 1e-15 perturbations of the data). The polish drops coordinates whose value is below the
    solver's tolerance (|z_i|·H_ii ≤ th/2)."""
    D, x, lam, ns, nw = _degenerate_problem(1)
    gen = torch.Generator().manual_seed(7)
    problem = LassoProblem()
    for _ in range(30):
        Dp = D * (1 + 1e-15 * torch.randn(D.shape, generator=gen, dtype=torch.float64))
        xp = x * (1 + 1e-15 * torch.randn(x.shape, generator=gen, dtype=torch.float64))
        sol = solve_lasso(Dp, xp, lam)
        _, W, _ = problem.classify(sol, (Dp, xp, torch.tensor(lam, dtype=torch.float64)))
        assert int(W.sum()) == nw and bool((sol.z[ns:] == 0).all())
