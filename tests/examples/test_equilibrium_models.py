"""examples/equilibrium_models.py (Grazzi et al. 2020, §3.2): the gradients of every mode on a tiny
equilibrium model against each other and against finite differences (torch.autograd.gradcheck on
the converged forward), and the ``--quick`` run."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

import equilibrium_models as eqm  # noqa: E402
from declarative import (ConjugateGradient, FixedPoint, Implicit, Unrolled, fixed_point,  # noqa: E402
                         project_spectral_ball)

DT = torch.float64


def _tiny(n=4, p=5, h=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = project_spectral_ball(torch.randn(h, h, dtype=DT, generator=gen), 0.6)
    B = torch.randn(h, p, dtype=DT, generator=gen)
    c = 0.1 * torch.randn(h, dtype=DT, generator=gen)
    W = torch.randn(3, h, dtype=DT, generator=gen)
    x = torch.randn(n, p, dtype=DT, generator=gen)
    y = torch.tensor([0, 1, 2, 1])[:n]
    return A, B, c, W, x, y


def _loss(A, B, c, W, x, y, mode, t=200):
    u = x @ B.T + c
    w = fixed_point(eqm.EquilibriumModel.phi, torch.zeros(x.shape[0], A.shape[0], dtype=DT), A, u,
                    mode=mode, tol=1e-13, max_iter=t, check=not isinstance(mode, Unrolled))
    return F.cross_entropy(w @ W.T, y)


@pytest.fixture(scope="module")
def finite_differences():
    """Central differences (ε = 1e-6) of the loss at the converged fixed point (forward only), for
    every entry of A, B, c of the tiny model."""
    A, B, c, W, x, y = _tiny()
    params = [A, B, c]
    out = []
    with torch.no_grad():
        for j, p in enumerate(params):
            fd = torch.zeros(p.numel(), dtype=DT)
            for i in range(p.numel()):
                d = torch.zeros(p.numel(), dtype=DT)
                d[i] = 1e-6
                plus = [q + d.reshape(q.shape) if k == j else q for k, q in enumerate(params)]
                minus = [q - d.reshape(q.shape) if k == j else q for k, q in enumerate(params)]
                fd[i] = (_loss(*plus, W, x, y, "first_order") - _loss(*minus, W, x, y, "first_order")) / 2e-6
            out.append(fd.reshape(p.shape))
    return out


@pytest.mark.parametrize("mode", [Implicit(), FixedPoint(200), ConjugateGradient(200), Unrolled(200),
                                  FixedPoint(200, jacobian="dense"), ConjugateGradient(200, jacobian="products")],
                         ids=repr)
def test_every_mode_matches_finite_differences(mode, finite_differences):
    A, B, c, W, x, y = _tiny()
    params = [p.requires_grad_(True) for p in (A, B, c)]
    grads = torch.autograd.grad(_loss(*params, W, x, y, mode), params)
    for g, fd in zip(grads, finite_differences):
        assert torch.allclose(g, fd, rtol=1e-6, atol=1e-8), (mode, (g - fd).abs().max())


def test_modes_agree_with_each_other_and_few_steps_do_not():
    A, B, c, W, x, y = _tiny(seed=1)
    params = [p.requires_grad_(True) for p in (A, B, c)]

    def grad(mode, t=200):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(_loss(*params, W, x, y, mode, t), params)])

    ref = grad(Implicit())
    for mode in (FixedPoint(200), ConjugateGradient(200), Unrolled(200)):
        assert (grad(mode) - ref).norm() <= 1e-9 * ref.norm(), mode
    # truncation shows: 2 steps of each are measurably off (the comparison can fail)
    for mode in (FixedPoint(2), ConjugateGradient(2), Unrolled(2)):
        assert (grad(mode, t=200 if not isinstance(mode, Unrolled) else 2) - ref).norm() > 1e-4 * ref.norm(), mode


def test_gradcheck_implicit():
    A, B, c, W, x, y = _tiny(n=2, p=3, h=4, seed=2)
    params = [p.requires_grad_(True) for p in (A, B, c)]
    assert torch.autograd.gradcheck(lambda *ps: _loss(*ps, W, x, y[:2], Implicit()), params)


def test_quick_run(tmp_path, capsys):
    out = tmp_path / "eqm.png"
    res = eqm.main(["--quick", "--no-progress", "--out", str(out), "--threads", "1"])
    printed = capsys.readouterr().out
    assert out.exists() and out.stat().st_size > 0
    assert "unconverged" in printed and "CG†" in printed
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"ITD", "FP", "CG", "ITD†", "FP†", "CG†"}
    for name, r in rows.items():
        assert r["objective"] < 1.0, name            # from ln 10 ≈ 2.3: every run learns
        assert 0.0 <= r["unconverged"] <= 1.0
    for name in ("ITD", "FP", "CG"):                 # projected: ‖A‖₂ ≤ 1 − ε after every step
        assert rows[name]["spectral_norm"] <= 0.99 + 1e-5
    # projected runs start from the same projected A and take nearly the same steps
    assert abs(rows["FP"]["objective"] - rows["ITD"]["objective"]) < 0.05
